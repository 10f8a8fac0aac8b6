//! Serves a [`Control`] on a Unix socket: one thread accepts, one thread per client (at most
//! [`MAX_CLIENTS`]) reads request lines (at most [`MAX_LINE_BYTES`] each), answers each one,
//! and writes the events queued for it between reads.
//!
//! The socket file is made mode 0600 and a client whose peer credentials name another user is
//! turned away, so only the owner of the migration drives it. Dropping the server stops its
//! threads (each wakes every 50 ms) and removes the socket file.

use super::protocol::{self, Command, Request, MAX_LINE_BYTES};
use super::{Control, ControlError, CANCEL_ANSWER_TIMEOUT};
use serde_json::json;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Clients served at once; one more is answered with an error and closed.
pub const MAX_CLIENTS: usize = 8;
/// How often the accepting thread and each client's thread look at the stop flag and (clients)
/// at their queued events.
const POLL: Duration = Duration::from_millis(50);
/// A client that takes longer than this to take an answer is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// A running control socket; see the module docs.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Listens on `path` (a stale socket file there is replaced; anything else is an error)
    /// and serves `control` until dropped.
    pub fn start(path: &Path, control: Arc<Control>) -> Result<ControlServer, ControlError> {
        let shown = path.display().to_string();
        let io_err = |what| {
            let path = shown.clone();
            move |source| ControlError::Io { path, what, source }
        };
        clear_stale(path)?;
        let listener = UnixListener::bind(path).map_err(io_err("bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("chmod 0600"))?;
        listener.set_nonblocking(true).map_err(io_err("set nonblocking"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("control".into())
                .spawn(move || accept_loop(listener, control, stop))
                .map_err(io_err("spawn the accepting thread"))?
        };
        Ok(ControlServer { path: path.to_path_buf(), stop, thread: Some(thread) })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Best effort: the file may already be gone.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes a socket file nothing answers on; refuses a live socket or any other file.
fn clear_stale(path: &Path) -> Result<(), ControlError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    let in_use = |why| ControlError::PathInUse { path: path.display().to_string(), why };
    if !meta.file_type().is_socket() {
        return Err(in_use("the path exists and is not a socket (left as it is)"));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(in_use("another process answers on this socket"));
    }
    std::fs::remove_file(path).map_err(|source| ControlError::Io {
        path: path.display().to_string(),
        what: "remove the stale socket",
        source,
    })
}

fn accept_loop(listener: UnixListener, control: Arc<Control>, stop: Arc<AtomicBool>) {
    let clients = Arc::new(AtomicUsize::new(0));
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Some(t) = admit(stream, &control, &stop, &clients) {
                    threads.push(t);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                tracing::warn!("control socket: accept failed: {e}");
                std::thread::sleep(POLL);
            }
        }
        threads.retain(|t| !t.is_finished());
    }
    for t in threads {
        let _ = t.join();
    }
}

/// Starts a client's thread, or turns the client away (another user, too many clients).
fn admit(
    mut stream: UnixStream,
    control: &Arc<Control>,
    stop: &Arc<AtomicBool>,
    clients: &Arc<AtomicUsize>,
) -> Option<JoinHandle<()>> {
    // Best effort on a client being turned away: it may not read at all.
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let refuse = |mut stream: UnixStream, class: &str, desc: &str| {
        let _ = writeln!(stream, "{}", protocol::error_line(class, desc, None));
    };
    match peer_uid(&stream) {
        // SAFETY: geteuid has no preconditions and cannot fail.
        Ok(uid) if uid == unsafe { libc::geteuid() } => {}
        Ok(uid) => {
            tracing::warn!("control socket: refused a client of uid {uid}");
            refuse(stream, "NotOwner", "this control socket answers only its owner");
            return None;
        }
        Err(e) => {
            tracing::warn!("control socket: no peer credentials: {e}");
            return None;
        }
    }
    if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
        clients.fetch_sub(1, Ordering::AcqRel);
        let desc = format!("at most {MAX_CLIENTS} clients at once");
        refuse(stream, "TooManyClients", &desc);
        return None;
    }
    let (control, stop, clients) = (control.clone(), stop.clone(), clients.clone());
    let spawned = std::thread::Builder::new().name("control-client".into()).spawn(move || {
        if let Err(e) = serve_client(&mut stream, &control, &stop) {
            tracing::debug!("control socket: client left: {e}");
        }
        clients.fetch_sub(1, Ordering::AcqRel);
    });
    spawned.map_err(|e| tracing::warn!("control socket: no thread for a client: {e}")).ok()
}

/// The uid of the process at the other end of `stream`.
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live locals of the size SO_PEERCRED writes, and the
    // descriptor belongs to `stream`, open for the whole call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Greets a client, then answers its lines and forwards its events until it leaves or the
/// server stops (events already queued are written first).
fn serve_client(stream: &mut UnixStream, control: &Control, stop: &AtomicBool) -> io::Result<()> {
    let events = control.subscribe();
    stream.set_read_timeout(Some(POLL))?;
    writeln!(stream, "{}", protocol::greeting())?;
    let mut lines = LineSplitter::default();
    let mut chunk = [0u8; 1024];
    loop {
        while let Ok(event) = events.try_recv() {
            writeln!(stream, "{event}")?;
        }
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for line in lines.feed(&chunk[..n]) {
            let answer = match line {
                Line::Whole(bytes) => answer(control, &bytes),
                Line::TooLong => {
                    let e = protocol::ProtocolError::LineTooLong { limit: MAX_LINE_BYTES };
                    Some(protocol::error_line(e.class(), &e.to_string(), None))
                }
            };
            if let Some(answer) = answer {
                writeln!(stream, "{answer}")?;
            }
        }
    }
}

/// One request line's answer (None for a blank line).
pub fn answer(control: &Control, line: &[u8]) -> Option<String> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return None;
    }
    let Request { id, command } = match protocol::parse_request(line) {
        Ok(request) => request,
        Err((id, e)) => return Some(protocol::error_line(e.class(), &e.to_string(), id)),
    };
    let result = match command {
        Command::Capabilities => Ok(json!({})),
        Command::QueryMigrate => Ok(control.query()),
        Command::Cancel => control.request_cancel(CANCEL_ANSWER_TIMEOUT).map(|()| json!({})),
        Command::Recover { addr } => control.request_recover(addr).map(|()| json!({})),
        Command::SetParameters { max_postcopy_bandwidth } => {
            control.set_push_cap(max_postcopy_bandwidth).map(|()| json!({}))
        }
        Command::QueryParameters => Ok(json!({ "max-postcopy-bandwidth": control.push_cap() })),
    };
    Some(match result {
        Ok(value) => protocol::return_line(value, id),
        Err(e) => protocol::error_line(error_class(&e), &e.to_string(), id),
    })
}

/// The class an answer gives a refused or failed command.
fn error_class(e: &ControlError) -> &'static str {
    match e {
        ControlError::CancelRefused { .. } | ControlError::RecoverEnded { .. } => "Refused",
        ControlError::CancelNotAnswered { .. } => "Timeout",
        ControlError::RecoverListen(_) => "ListenFailed",
        ControlError::OtherSide { .. } => "NotSupported",
        _ => "GenericError",
    }
}

/// A line read from a client.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A whole line, newline excluded.
    Whole(Vec<u8>),
    /// A line longer than [`MAX_LINE_BYTES`]; its bytes up to the next newline are dropped.
    TooLong,
}

/// Splits bytes into lines of at most [`MAX_LINE_BYTES`], holding at most that many.
#[derive(Debug, Default)]
struct LineSplitter {
    buf: Vec<u8>,
    discarding: bool,
}

impl LineSplitter {
    fn feed(&mut self, mut bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let (piece, rest) = match newline {
                Some(i) => (&bytes[..i], &bytes[i + 1..]),
                None => (bytes, &[][..]),
            };
            if !self.discarding {
                if self.buf.len() + piece.len() > MAX_LINE_BYTES {
                    self.buf.clear();
                    self.discarding = true;
                    out.push(Line::TooLong);
                } else {
                    self.buf.extend_from_slice(piece);
                }
            }
            if newline.is_some() {
                if !self.discarding {
                    out.push(Line::Whole(std::mem::take(&mut self.buf)));
                }
                self.discarding = false;
            }
            bytes = rest;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_and_an_over_long_one_is_dropped_once() {
        let mut s = LineSplitter::default();
        assert_eq!(s.feed(b"ab"), vec![]);
        assert_eq!(
            s.feed(b"c\nd\n"),
            vec![Line::Whole(b"abc".to_vec()), Line::Whole(b"d".to_vec())]
        );
        let long = vec![b'x'; MAX_LINE_BYTES + 1];
        assert_eq!(s.feed(&long), vec![Line::TooLong]);
        assert_eq!(s.feed(&long), vec![]);
        assert_eq!(s.feed(b"yy\nok\n"), vec![Line::Whole(b"ok".to_vec())]);
        let exact = vec![b'x'; MAX_LINE_BYTES];
        assert_eq!(s.feed(&[&exact[..], b"\n"].concat()), vec![Line::Whole(exact)]);
    }

    #[test]
    fn the_socket_serves_clients_up_to_its_bound_and_goes_at_drop() {
        let path = std::env::temp_dir().join(format!("hm-ctl-unit-{}.sock", std::process::id()));
        // A stale socket file (nothing answers on it) is replaced.
        drop(UnixListener::bind(&path).expect("a stale socket"));
        let control = Arc::new(Control::new(super::super::Side::Destination));
        let server = ControlServer::start(&path, control.clone()).expect("start");
        let mode = std::fs::metadata(&path).expect("socket file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let taken = ControlServer::start(&path, control.clone()).expect_err("a live socket");
        assert!(matches!(taken, ControlError::PathInUse { .. }), "{taken}");
        let q = super::super::client::execute(&path, "query-migrate", None).expect("query");
        assert_eq!(q["status"], "setup");
        assert_eq!(q["side"], "destination");
        let err = super::super::client::execute(&path, "nope", None).expect_err("unknown");
        assert!(matches!(&err, ControlError::Remote { class, .. } if class == "CommandNotFound"));
        let held: Vec<UnixStream> =
            (0..MAX_CLIENTS).map(|_| UnixStream::connect(&path).expect("client")).collect();
        std::thread::sleep(Duration::from_millis(200));
        let err = super::super::client::execute(&path, "query-migrate", None).expect_err("full");
        assert!(matches!(&err, ControlError::Remote { class, .. } if class == "TooManyClients"));
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
        super::super::client::execute(&path, "query-migrate", None).expect("room again");
        drop(server);
        assert!(!path.exists(), "the socket file outlived the server");
    }

    #[test]
    fn answers_name_what_was_wrong_and_a_cancel_before_the_start_is_taken() {
        let control = Arc::new(Control::new(super::super::Side::Source));
        let class = |line: &str| {
            let a = answer(&control, line.as_bytes()).expect("answer");
            let v: serde_json::Value = serde_json::from_str(&a).expect("json");
            v["error"]["class"].as_str().unwrap_or("").to_string()
        };
        assert_eq!(class("nope"), "JSONParsing");
        assert_eq!(class(r#"{"execute":"x"}"#), "CommandNotFound");
        let q = answer(&control, br#"{"execute":"query-migrate"}"#).expect("query");
        assert!(q.contains(r#""status":"setup""#), "{q}");
        let taker = {
            let control = control.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    if control.take_cancel_request(|| Ok(())) {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                false
            })
        };
        let a = answer(&control, br#"{"execute":"migrate-cancel"}"#).expect("cancel");
        assert!(taker.join().expect("taker"), "the cancel was never taken");
        assert_eq!(a, r#"{"return":{}}"#);
        assert_eq!(control.status(), super::super::MigrationStatus::Cancelled);
        assert_eq!(class(r#"{"execute":"migrate-cancel"}"#), "Refused");
    }
}
