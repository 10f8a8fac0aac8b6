//! Page sets and the page-index space that both engines share.
//!
//! Guest memory is a list of regions (guest-physical start, size). The engines number every
//! guest page densely across the regions ([`Layout`]), so one [`PageBitmap`] can say which
//! pages are dirty, sent, present or requested. The wire names a page as (region, page in
//! region); [`Layout`] converts between the two forms and checks ranges.

mod bitmap;

pub use bitmap::PageBitmap;

/// Size of a guest page. Only 4 KiB pages are migrated.
pub const PAGE_SIZE: usize = 4096;

/// Errors from layout look-ups.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryError {
    /// A region is not page-aligned or is empty.
    #[error("region {index} (guest_phys {guest_phys:#x}, {size_bytes} bytes) is empty or not page-aligned")]
    BadRegion {
        /// Region index.
        index: usize,
        /// Guest-physical start.
        guest_phys: u64,
        /// Size in bytes.
        size_bytes: u64,
    },
    /// A region index past the table.
    #[error("region {region} does not exist (the layout has {regions})")]
    NoSuchRegion {
        /// Region asked for.
        region: u32,
        /// Regions in the layout.
        regions: usize,
    },
    /// A page range that leaves its region.
    #[error("pages {first}..{first}+{count} leave region {region} of {pages} pages")]
    OutOfRegion {
        /// Region index.
        region: u32,
        /// First page within the region.
        first: u64,
        /// Page count.
        count: u64,
        /// Pages in the region.
        pages: u64,
    },
    /// A guest-physical address that no region holds.
    #[error("guest address {0:#x} is in no region")]
    NoRegionAt(u64),
}

/// One region of guest memory as the engines see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionSpan {
    /// Guest-physical start address.
    pub guest_phys: u64,
    /// Size in bytes (a multiple of [`PAGE_SIZE`]).
    pub size_bytes: u64,
    /// Global index of the region's first page.
    pub first_page: u64,
}

impl RegionSpan {
    /// Pages in the region.
    pub fn pages(&self) -> u64 {
        self.size_bytes / PAGE_SIZE as u64
    }
}

/// The dense page-index space over all regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    regions: Vec<RegionSpan>,
    total_pages: u64,
}

impl Layout {
    /// Builds the layout from (guest_phys, size_bytes) pairs, in order.
    pub fn new(regions: &[(u64, u64)]) -> Result<Self, MemoryError> {
        let mut spans = Vec::with_capacity(regions.len());
        let mut next = 0u64;
        for (index, &(guest_phys, size_bytes)) in regions.iter().enumerate() {
            let page = PAGE_SIZE as u64;
            if size_bytes == 0 || size_bytes % page != 0 || guest_phys % page != 0 {
                return Err(MemoryError::BadRegion { index, guest_phys, size_bytes });
            }
            spans.push(RegionSpan { guest_phys, size_bytes, first_page: next });
            next += size_bytes / page;
        }
        Ok(Self { regions: spans, total_pages: next })
    }

    /// The regions, in order.
    pub fn regions(&self) -> &[RegionSpan] {
        &self.regions
    }

    /// Pages over all regions.
    pub fn total_pages(&self) -> u64 {
        self.total_pages
    }

    /// Bytes over all regions.
    pub fn total_bytes(&self) -> u64 {
        self.total_pages * PAGE_SIZE as u64
    }

    /// Global page index of `count` pages starting at `first` in `region`, range-checked.
    pub fn global(&self, region: u32, first: u64, count: u64) -> Result<u64, MemoryError> {
        let span = self
            .regions
            .get(region as usize)
            .ok_or(MemoryError::NoSuchRegion { region, regions: self.regions.len() })?;
        let pages = span.pages();
        if count == 0 || first >= pages || count > pages - first {
            return Err(MemoryError::OutOfRegion { region, first, count, pages });
        }
        Ok(span.first_page + first)
    }

    /// (region, page within region) of a global page index.
    pub fn locate(&self, page: u64) -> Option<(u32, u64)> {
        let index = self.regions.partition_point(|r| r.first_page + r.pages() <= page);
        let span = self.regions.get(index)?;
        Some((index as u32, page - span.first_page))
    }

    /// Pages from `page` to the end of its region (0 if `page` is past the end).
    pub fn pages_left_in_region(&self, page: u64) -> u64 {
        match self.locate(page) {
            Some((region, offset)) => self.regions[region as usize].pages() - offset,
            None => 0,
        }
    }

    /// Global page index holding a guest-physical address.
    pub fn page_of_guest_phys(&self, guest_phys: u64) -> Result<u64, MemoryError> {
        self.regions
            .iter()
            .find(|r| guest_phys >= r.guest_phys && guest_phys - r.guest_phys < r.size_bytes)
            .map(|r| r.first_page + (guest_phys - r.guest_phys) / PAGE_SIZE as u64)
            .ok_or(MemoryError::NoRegionAt(guest_phys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_and_locate_agree() {
        let layout = Layout::new(&[(0, 2 << 20), (2 << 20, 8 << 20)]).unwrap();
        assert_eq!(layout.total_pages(), 512 + 2048);
        assert_eq!(layout.global(1, 0, 1).unwrap(), 512);
        assert_eq!(layout.locate(512), Some((1, 0)));
        assert_eq!(layout.locate(511), Some((0, 511)));
        assert_eq!(layout.locate(2560), None);
        assert_eq!(layout.pages_left_in_region(500), 12);
        assert_eq!(layout.page_of_guest_phys((2 << 20) + 4096).unwrap(), 513);
        assert!(matches!(layout.global(1, 2047, 2), Err(MemoryError::OutOfRegion { .. })));
        assert!(matches!(layout.global(0, 0, 0), Err(MemoryError::OutOfRegion { .. })));
        assert!(matches!(layout.global(2, 0, 1), Err(MemoryError::NoSuchRegion { .. })));
        assert!(Layout::new(&[(0, 100)]).is_err());
    }
}
