//! The simulated hosts as the shared schedule ([`crate::driver::schedule`]) sees them: the
//! same calls the io_uring wings make, with the simulated link as the outlet.
//!
//! A buffer is the world's one scratch vector. The source gets one bulk buffer per bulk turn
//! while the link's send window has room (the link sets the pace); urgent buffers are never
//! short. Encoding takes no virtual time, so nothing new is urgent while the source fills a
//! buffer; placing a chunk takes [`PLACE_CHUNK_US`], during which a vCPU runs a step and
//! urgent segments that fell due arrive.

use super::{SimRunError, SimSink, World};
use crate::dest::DestEngine;
use crate::driver::schedule::{self, DestSide, Outlet, SourceSide};
use crate::ports::MigratableVm;
use crate::source::SourceEngine;
use crate::transport::sim::Side;
use crate::wire::StreamKind;

/// Virtual time one chunk of a window takes to place.
pub(super) const PLACE_CHUNK_US: u64 = 1;

/// The source host for one loop turn.
pub(super) struct SourceTurn<'a, 's> {
    pub(super) world: &'a mut World<'s>,
    /// Bulk buffers the link takes this turn.
    pub(super) bulk_bufs: u32,
}

impl Outlet for SourceTurn<'_, '_> {
    type Error = SimRunError;

    fn take_buf(&mut self, stream: StreamKind) -> Option<Vec<u8>> {
        if stream == StreamKind::Bulk {
            self.bulk_bufs = self.bulk_bufs.checked_sub(1)?;
        }
        Some(std::mem::take(&mut self.world.out))
    }

    fn put_back(&mut self, stream: StreamKind, buf: Vec<u8>) {
        if stream == StreamKind::Bulk {
            self.bulk_bufs += 1;
        }
        self.world.put_back(buf);
    }

    fn send(&mut self, stream: StreamKind, buf: Vec<u8>) -> Result<(), SimRunError> {
        if stream == StreamKind::Urgent {
            return self.world.send(Side::Source, stream, buf);
        }
        let len = buf.len() as u64;
        let world = &mut *self.world;
        if world.planted_drop(&buf) {
            world.trace.event(super::TraceKind::Planted, world.net.now_us(), &[len]);
            world.put_back(buf);
        } else {
            world.bulk_in_flight_bytes += len;
            world.send(Side::Source, stream, buf)?;
        }
        world.source.on_bulk_sent(len, world.net.now_us() * 1000 + 1);
        Ok(())
    }

    fn push_now(&mut self) -> Result<(), SimRunError> {
        Ok(())
    }
}

impl SourceSide for SourceTurn<'_, '_> {
    fn parts(&mut self) -> (&mut SourceEngine, &mut dyn MigratableVm) {
        (&mut self.world.source, &mut self.world.src_vm)
    }

    fn serve_urgent(&mut self) -> Result<bool, SimRunError> {
        Ok(false)
    }
}

/// The destination host.
pub(super) struct DestTurn<'a, 's>(pub(super) &'a mut World<'s>);

impl Outlet for DestTurn<'_, '_> {
    type Error = SimRunError;

    fn take_buf(&mut self, _stream: StreamKind) -> Option<Vec<u8>> {
        Some(std::mem::take(&mut self.0.out))
    }

    fn put_back(&mut self, _stream: StreamKind, buf: Vec<u8>) {
        self.0.put_back(buf);
    }

    fn send(&mut self, stream: StreamKind, buf: Vec<u8>) -> Result<(), SimRunError> {
        self.0.send(Side::Dest, stream, buf)
    }

    fn push_now(&mut self) -> Result<(), SimRunError> {
        Ok(())
    }
}

impl DestSide for DestTurn<'_, '_> {
    fn engine(&mut self) -> &mut DestEngine {
        &mut self.0.dest
    }

    fn place_chunk(&mut self) -> Result<(), SimRunError> {
        let world = &mut *self.0;
        let mut sink = SimSink { vm: &mut world.dst_vm, placed_twice: &mut world.placed_twice };
        world.dest.place_more(&mut sink)?;
        Ok(())
    }

    /// The chunk took [`PLACE_CHUNK_US`]: a vCPU ran meanwhile, and urgent segments that fell
    /// due are read before the next chunk.
    fn serve_urgent(&mut self) -> Result<(), SimRunError> {
        let world = &mut *self.0;
        let now_us = world.net.advance_to(world.net.now_us() + PLACE_CHUNK_US);
        world.clock.set_ns(now_us * 1000);
        if world.stalled(now_us) {
            return Ok(());
        }
        world.step_dest_guest()?;
        while let Some(bytes) = world.net.take_due(Side::Dest, StreamKind::Urgent, now_us) {
            world.trace_delivery(now_us, Side::Dest, StreamKind::Urgent, &bytes);
            world.receive(Side::Dest, StreamKind::Urgent, &bytes)?;
        }
        schedule::dest_flush(self)
    }
}
