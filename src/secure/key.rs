//! The migration's pre-shared key: made from the OS random source, kept in a text file of
//! mode 0600 (one line of hex), and refused when that file is readable by others or malformed.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

/// Bytes of a pre-shared key.
pub const PSK_BYTES: usize = 32;

/// Longest key file read: a key line and some whitespace; anything longer is malformed.
const KEY_FILE_MAX_BYTES: u64 = 4096;

/// Errors of making, writing and loading keys; each names the file and what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The OS random source failed.
    #[error("the OS random source failed: {0}")]
    Random(getrandom::Error),
    /// `keygen` would overwrite a file.
    #[error("{path} exists: pass --force to overwrite it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Reading, writing or inspecting the file failed.
    #[error("{doing} key file {path}: {source}")]
    Io {
        /// "reading", "writing", ...
        doing: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is readable or writable by its group or by others.
    #[error(
        "key file {path} has mode {mode:04o}: group and others may read or change it; a key \
         must be private to its owner (run `chmod 600 {path}`)"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The path is not a regular file.
    #[error("key file {path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file holds no key.
    #[error("key file {path} is empty (make one with `hybridmig keygen --out {path}`)")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The key has the wrong length.
    #[error(
        "key file {path} holds {got_chars} characters; a key is {} hex digits ({PSK_BYTES} bytes) \
         on one line",
        PSK_BYTES * 2
    )]
    WrongLength {
        /// The file.
        path: PathBuf,
        /// Characters of the key line.
        got_chars: usize,
    },
    /// The key has a character that is not a hex digit.
    #[error("key file {path}: character {at} of the key is not a hex digit")]
    NotHex {
        /// The file.
        path: PathBuf,
        /// Its position (from 1).
        at: usize,
    },
}

/// A 32-byte pre-shared key. Its `Debug` never shows the bytes, and it is wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk([u8; PSK_BYTES]);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(..)")
    }
}

impl Drop for Psk {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Psk {
    /// A fresh key from the OS random source.
    pub fn generate() -> Result<Psk, KeyError> {
        let mut bytes = [0u8; PSK_BYTES];
        getrandom::fill(&mut bytes).map_err(KeyError::Random)?;
        Ok(Psk(bytes))
    }

    /// A key of the given bytes (tests, or a key delivered by other means).
    pub fn from_bytes(bytes: [u8; PSK_BYTES]) -> Psk {
        Psk(bytes)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; PSK_BYTES] {
        &self.0
    }

    /// The key as one line of lowercase hex (the key file's form).
    fn to_hex_line(&self) -> String {
        let mut line: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        line.push('\n');
        line
    }

    /// Parses the key file's text: one line of 64 hex digits, whitespace around it ignored.
    pub fn parse(text: &str, path: &Path) -> Result<Psk, KeyError> {
        let path_buf = || path.to_path_buf();
        let line = text.trim();
        if line.is_empty() {
            return Err(KeyError::Empty { path: path_buf() });
        }
        let chars = line.chars().count();
        if chars != PSK_BYTES * 2 {
            return Err(KeyError::WrongLength { path: path_buf(), got_chars: chars });
        }
        if let Some(at) = line.chars().position(|c| !c.is_ascii_hexdigit()) {
            return Err(KeyError::NotHex { path: path_buf(), at: at + 1 });
        }
        // All ASCII hex digits from here, so byte pairs are digit pairs.
        let mut bytes = [0u8; PSK_BYTES];
        for (byte, pair) in bytes.iter_mut().zip(line.as_bytes().chunks_exact(2)) {
            *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
        }
        Ok(Psk(bytes))
    }
}

/// The value of one ASCII hex digit (checked by the caller).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit.to_ascii_lowercase().wrapping_sub(b'a').wrapping_add(10),
    }
}

/// What a side proves it holds. Today only a pre-shared key; an x509 identity may join it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// The migration's pre-shared key, the same on both hosts.
    Psk(Psk),
}

impl Credential {
    /// Loads a pre-shared key file (see [`load_key_file`]).
    pub fn from_key_file(path: &Path) -> Result<Credential, KeyError> {
        load_key_file(path).map(Credential::Psk)
    }
}

/// Writes `key` to `path` as one hex line with mode 0600. An existing file is refused unless
/// `force`, which replaces it (and makes its mode 0600).
pub fn write_key_file(path: &Path, key: &Psk, force: bool) -> Result<(), KeyError> {
    let io = |doing, source| KeyError::Io { doing, path: path.to_path_buf(), source };
    let mut options = OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            KeyError::Exists { path: path.to_path_buf() }
        } else {
            io("creating", e)
        }
    })?;
    // The mode given at creation does not apply to a file that existed (--force).
    file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(|e| io("protecting", e))?;
    let mut line = key.to_hex_line();
    let written = file.write_all(line.as_bytes()).and_then(|()| file.sync_all());
    line.zeroize();
    written.map_err(|e| io("writing", e))
}

/// Loads the key of `path`: refused when the file is readable or writable by group or others,
/// not a regular file, unreadable, empty, or not one line of 64 hex digits.
pub fn load_key_file(path: &Path) -> Result<Psk, KeyError> {
    let io = |doing, source| KeyError::Io { doing, path: path.to_path_buf(), source };
    let file = fs::File::open(path).map_err(|e| io("opening", e))?;
    // The open file's own metadata, so the checked file is the one read.
    let meta = file.metadata().map_err(|e| io("inspecting", e))?;
    if !meta.is_file() {
        return Err(KeyError::NotAFile { path: path.to_path_buf() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions { path: path.to_path_buf(), mode });
    }
    let mut raw = Vec::new();
    file.take(KEY_FILE_MAX_BYTES + 1).read_to_end(&mut raw).map_err(|e| io("reading", e))?;
    if raw.len() as u64 > KEY_FILE_MAX_BYTES {
        let got_chars = raw.len();
        raw.zeroize();
        return Err(KeyError::WrongLength { path: path.to_path_buf(), got_chars });
    }
    let parsed = match std::str::from_utf8(&raw) {
        Ok(text) => Psk::parse(text, path),
        Err(e) => Err(KeyError::NotHex { path: path.to_path_buf(), at: e.valid_up_to() + 1 }),
    };
    raw.zeroize();
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hm-key-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        dir.join(name)
    }

    #[test]
    fn a_written_key_loads_back_and_is_private() {
        let path = temp_path("roundtrip");
        let _ = fs::remove_file(&path);
        let key = Psk::generate().expect("random");
        write_key_file(&path, &key, false).expect("write");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_key_file(&path).expect("load"), key);
        let again = write_key_file(&path, &key, false).expect_err("exists");
        assert!(matches!(again, KeyError::Exists { .. }), "{again}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let other = Psk::generate().expect("random");
        write_key_file(&path, &other, true).expect("force");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "--force makes the file private again");
        assert_eq!(load_key_file(&path).expect("load"), other);
        assert_ne!(key, other);
    }

    #[test]
    fn bad_key_files_are_refused_with_the_reason() {
        let path = temp_path("bad");
        let write = |text: &str, mode: u32| {
            fs::write(&path, text).expect("write");
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        };
        let good = "ab".repeat(32);
        write(&good, 0o640);
        let err = load_key_file(&path).expect_err("group readable");
        assert!(matches!(err, KeyError::Permissions { mode: 0o640, .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        write(&good, 0o604);
        assert!(matches!(load_key_file(&path), Err(KeyError::Permissions { .. })));
        write("", 0o600);
        assert!(matches!(load_key_file(&path), Err(KeyError::Empty { .. })));
        write(&"ab".repeat(31), 0o600);
        let err = load_key_file(&path).expect_err("short");
        assert!(matches!(err, KeyError::WrongLength { got_chars: 62, .. }), "{err}");
        write(&format!("{}zz", "ab".repeat(31)), 0o600);
        assert!(matches!(load_key_file(&path), Err(KeyError::NotHex { at: 63, .. })));
        write(&format!("  {good}\n"), 0o400);
        assert!(load_key_file(&path).is_ok(), "whitespace around the line and mode 0400 are fine");
        let missing = load_key_file(&temp_path("missing")).expect_err("missing");
        assert!(matches!(missing, KeyError::Io { doing: "opening", .. }), "{missing}");
        let dir = load_key_file(&std::env::temp_dir()).expect_err("a directory");
        assert!(matches!(dir, KeyError::NotAFile { .. } | KeyError::Io { .. }), "{dir}");
    }
}
