//! The control socket on the real path: `hybridmig dest` and `hybridmig source` with
//! `--control PATH`, a real 256 MiB KVM guest, real userfaultfd, io_uring and TCP on loopback.
//! An operator queries the migration while it runs, cancels it before the hand-over (and is
//! refused after), and moves a recovery to a new address; malformed requests get typed
//! errors and the socket keeps serving. Every run ends exact against an unmigrated run.

mod cli_common;

use cli_common::{reference_digest, KeyFile, Killed, BIN};
use hybridmig::host_check::{require_kvm, require_uffd};
use hybridmig::migration::{DestReport, MigrationReport, SourceReport};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

/// Ops per second per vCPU.
const PACE: u64 = 100_000;
/// About 2 s of guest time at the pace.
const OPS: u64 = 200_000;
/// The push cap set during the first test (bytes/s).
const PUSH_CAP_BYTES_PER_S: u64 = 2_000_000;
/// Longest any host process may run in these tests.
const PROCESS_LIMIT: Duration = Duration::from_secs(60);

fn guest_args() -> Vec<String> {
    let (ops, pace) = (OPS.to_string(), PACE.to_string());
    ["--workload", "hotcold", "--mem", "256M", "--ops", &ops, "--pace", &pace, "--seed", "9"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The unmigrated run's digest, computed once for the whole file.
fn expected_digest() -> u64 {
    static DIGEST: OnceLock<u64> = OnceLock::new();
    *DIGEST.get_or_init(|| {
        u64::from_str_radix(&reference_digest(&guest_args()), 16).expect("hex digest")
    })
}

fn ready(test: &str) -> bool {
    require_kvm(test) && require_uffd(test)
}

/// A socket path of this test's own (removed first if a failed run left it).
fn socket_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("hm-ctl-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// A host process whose stdout is read on a thread (its first line, then the rest).
struct Host {
    child: Killed,
    out: std::thread::JoinHandle<String>,
    first_line: mpsc::Receiver<String>,
}

impl Host {
    fn spawn(cmd: &mut Command) -> Host {
        let mut child: Child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a host");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, first_line) = mpsc::channel();
        let out = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            let _ = tx.send(lines.next().unwrap_or_default());
            lines.collect::<Vec<_>>().join("\n")
        });
        Host { child: Killed(child), out, first_line }
    }

    /// Waits for the end; exit code, stdout (after the first line) and stderr.
    fn finish(mut self, what: &str) -> (Option<i32>, String, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.0.try_wait().expect("try_wait") {
                break status;
            }
            assert!(started.elapsed() < PROCESS_LIMIT, "{what} did not end in {PROCESS_LIMIT:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        if let Some(mut s) = self.child.0.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        let first = self.first_line.try_recv().unwrap_or_default();
        let out = format!("{first}\n{}", self.out.join().expect("stdout thread"));
        (status.code(), out, err)
    }
}

fn last_json<T: serde::de::DeserializeOwned>(out: &str, what: &str) -> T {
    let line = out.lines().rev().find(|l| l.starts_with('{'));
    serde_json::from_str(line.unwrap_or_else(|| panic!("{what}: no JSON in {out}"))).expect(what)
}

/// `hybridmig dest` on loopback with a control socket; its listening address.
fn spawn_dest(control: &Path, key: &KeyFile, extra: &[&str]) -> (Host, SocketAddr) {
    let mut cmd = Command::new(BIN);
    cmd.arg("dest").args(guest_args()).args(["--listen", "127.0.0.1:0", "--json"]);
    cmd.arg("--key-file").arg(&key.0);
    cmd.arg("--control").arg(control).args(extra);
    let host = Host::spawn(&mut cmd);
    let line = host.first_line.recv_timeout(Duration::from_secs(30)).expect("LISTENING");
    let addr = line.trim().strip_prefix("LISTENING ").unwrap_or_else(|| panic!("got `{line}`"));
    // The first line was taken here: give the report reader an empty one back.
    let (tx, rx) = mpsc::channel();
    let _ = tx.send(String::new());
    (Host { first_line: rx, ..host }, addr.parse().expect("address"))
}

fn spawn_source(
    control: &Path,
    key: &KeyFile,
    connect: SocketAddr,
    mode: &str,
    extra: &[&str],
) -> Host {
    let mut cmd = Command::new(BIN);
    cmd.arg("source").arg("--key-file").arg(&key.0);
    cmd.args(guest_args()).args(["--mode", mode, "--migrate-after-ms", "300"]);
    cmd.args(["--connect", &connect.to_string(), "--json"]).arg("--control").arg(control);
    Host::spawn(cmd.args(extra))
}

/// A client of a control socket; events seen while waiting for answers are kept.
struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    events: Vec<String>,
}

impl Client {
    /// Connects once the socket exists (the process may still be starting).
    fn connect(path: &Path) -> Client {
        let started = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(started.elapsed() < Duration::from_secs(20), "{path:?}: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut client = Client { stream, reader, events: Vec::new() };
        let greeting = client.line().expect("greeting");
        assert!(greeting.get("QMP").is_some(), "{greeting}");
        client
    }

    fn line(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))),
        }
    }

    /// Sends raw bytes and returns the next answer (`return` or `error`).
    fn send(&mut self, bytes: &[u8]) -> Value {
        self.stream.write_all(bytes).expect("send");
        loop {
            let v = self.line().expect("an answer");
            if let Some(status) = v.get("event").and(v["data"]["status"].as_str()) {
                self.events.push(status.to_string());
                continue;
            }
            return v;
        }
    }

    fn execute(&mut self, command: &str, args: Option<Value>) -> Value {
        let mut req = json!({ "execute": command });
        if let Some(args) = args {
            req["arguments"] = args;
        }
        self.send(format!("{req}\n").as_bytes())
    }

    fn query(&mut self) -> Value {
        let v = self.execute("query-migrate", None);
        v.get("return").unwrap_or_else(|| panic!("query-migrate: {v}")).clone()
    }

    /// Reads events until the server closes (the process exits); every status seen.
    fn drain_events(mut self) -> Vec<String> {
        while let Some(v) = self.line() {
            if let Some(status) = v["data"]["status"].as_str() {
                self.events.push(status.to_string());
            }
        }
        self.events
    }
}

/// Polls `query-migrate` every 20 ms until `want` holds, for at most `limit`.
fn wait_status(client: &mut Client, limit: Duration, want: impl Fn(&str) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let q = client.query();
        if want(q["status"].as_str().unwrap_or("")) {
            return q;
        }
        assert!(started.elapsed() < limit, "status stayed {} for {limit:?}: {q}", q["status"]);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn class_of(answer: &Value) -> &str {
    answer["error"]["class"].as_str().unwrap_or_else(|| panic!("not an error: {answer}"))
}

/// Checks a completed migration from both reports: exact, and `recoveries` at least `min`.
fn check_completed(
    src: (Option<i32>, String, String),
    dst: (Option<i32>, String, String),
) -> MigrationReport {
    assert_eq!(src.0, Some(0), "source: {}\n{}", src.1, src.2);
    assert_eq!(dst.0, Some(0), "destination: {}\n{}", dst.1, dst.2);
    let s: SourceReport = last_json(&src.1, "source report");
    let d: DestReport = last_json(&dst.1, "destination report");
    let r = MigrationReport::merge(&s, &d, expected_digest(), [d.run.sent_bulk, d.run.sent_urgent]);
    assert!(r.verified, "digest {} vs expected {}", r.digest, r.digest_expected);
    r
}

/// Malformed lines, an unknown command, a bad argument and an over-long line each get a typed
/// error, and the socket answers the next request. Then, during a hybrid migration whose
/// post-copy lasts (push held 1.2 s, the cold part left to faults), queries show the counters
/// growing, a push cap (`max-postcopy-bandwidth`) holds the push to its rate until lifted, a
/// cancel is refused on both hosts once the guest runs on the destination, and the events
/// walk through the statuses to `completed`; the socket files are gone after the processes
/// exit.
#[test]
fn queries_errors_and_a_refused_cancel_during_a_migration() {
    if !ready("queries_errors_and_a_refused_cancel_during_a_migration") {
        return;
    }
    let expected = expected_digest();
    let (dst_path, src_path) = (socket_path("q-dst"), socket_path("q-src"));
    let key = KeyFile::new("control");
    let (dest, addr) = spawn_dest(&dst_path, &key, &[]);
    let mut dc = Client::connect(&dst_path);
    assert_eq!(class_of(&dc.send(b"{not json\n")), "JSONParsing");
    assert_eq!(class_of(&dc.send(b"[1,2,3]\n")), "InvalidRequest");
    assert_eq!(class_of(&dc.execute("migrate-frobnicate", None)), "CommandNotFound");
    let bad_uri = Some(json!({ "uri": "unix:/nowhere" }));
    assert_eq!(class_of(&dc.execute("migrate-recover", bad_uri)), "InvalidParameter");
    let long = format!("{{\"execute\":\"query-migrate\",\"pad\":\"{}\"}}\n", "x".repeat(10_000));
    let answer = dc.send(long.as_bytes());
    assert_eq!(class_of(&answer), "LineTooLong", "{answer}");
    assert_eq!(dc.query()["status"], "setup", "the socket still serves");

    // The cold part faults after the resume (only the working set crosses live).
    let extra = ["--push-delay-ms", "1200", "--live-pass", "ws"];
    let source = spawn_source(&src_path, &key, addr, "hybrid", &extra);
    let mut sc = Client::connect(&src_path);
    let events = Client::connect(&src_path);
    let q = wait_status(&mut sc, Duration::from_secs(20), |s| s == "postcopy-active");
    let first = q["ram"]["transferred"].as_u64().expect("ram.transferred");
    assert!(q["total-time"].as_u64().is_some(), "{q}");
    assert!(q["ram"]["total"].as_u64().unwrap_or(0) >= 256 << 20, "{q}");
    assert_eq!(q["handed-over"], true, "{q}");
    let since_resume = Instant::now();
    // Cap the push (held until 1.2 s after the resume) at 2 MB/s.
    let cap = json!({ "max-postcopy-bandwidth": PUSH_CAP_BYTES_PER_S });
    assert_eq!(sc.execute("migrate-set-parameters", Some(cap.clone())), json!({ "return": {} }));
    let params = sc.execute("query-migrate-parameters", None);
    assert_eq!(params["return"]["max-postcopy-bandwidth"], PUSH_CAP_BYTES_PER_S, "{params}");
    assert_eq!(class_of(&dc.execute("migrate-set-parameters", Some(cap))), "NotSupported");
    let refused = sc.execute("migrate-cancel", None);
    assert_eq!(class_of(&refused), "Refused", "{refused}");
    assert!(refused["error"]["desc"].as_str().unwrap_or("").contains("destination"), "{refused}");
    let refused = dc.execute("migrate-cancel", None);
    assert_eq!(class_of(&refused), "Refused", "{refused}");
    std::thread::sleep(Duration::from_millis(1600).saturating_sub(since_resume.elapsed()));
    let q = sc.query();
    let later = q["ram"]["transferred"].as_u64().expect("ram.transferred");
    assert!(later > first, "ram.transferred did not grow: {first} then {later}: {q}");
    // The push began 0.4 s ago: under the cap, bulk moves at most 2 MB/s (plus the two
    // 64 KiB send buffers in flight and a view up to 100 ms old at each end).
    let bulk_at = |q: &Value| q["counters"]["bytes_bulk"].as_u64().expect("bytes_bulk");
    let before = bulk_at(&q);
    std::thread::sleep(Duration::from_millis(500));
    let q = sc.query();
    let pushed = bulk_at(&q) - before;
    assert_eq!(q["phase"], "Push", "the capped push ended: {q}");
    let bound = PUSH_CAP_BYTES_PER_S * 7 / 10 + (256 << 10);
    assert!(pushed <= bound, "{pushed} bytes pushed in 0.5 s under a 2 MB/s cap: {q}");
    assert!(pushed > 0, "the push did not move under the cap: {q}");
    eprintln!("pushed {pushed} bytes in 0.5 s under a {PUSH_CAP_BYTES_PER_S} B/s cap");
    let lift = Some(json!({ "max-postcopy-bandwidth": 0 }));
    assert_eq!(sc.execute("migrate-set-parameters", lift), json!({ "return": {} }));
    let dq = dc.query();
    assert_eq!(dq["side"], "destination");
    assert!(dq["ram"]["postcopy-requests"].as_u64().unwrap_or(0) > 0, "no faults: {dq}");

    let r = check_completed(source.finish("source"), dest.finish("destination"));
    assert_eq!(r.outcome, hybridmig::migration::Outcome::Completed);
    assert_eq!(r.digest_expected, format!("{expected:016x}"));
    let src_events = events.drain_events();
    let dst_events = dc.drain_events();
    eprintln!("source events {src_events:?}\ndestination events {dst_events:?}");
    // `device` lasts a single loop turn or less in hybrid, so it may never be published.
    let order = ["active", "postcopy-active", "completed"];
    let mut at = 0;
    for status in &src_events {
        if at < order.len() && status == order[at] {
            at += 1;
        }
    }
    assert_eq!(at, order.len(), "the source's events miss {:?}: {src_events:?}", order.get(at));
    assert_eq!(src_events.last().map(String::as_str), Some("completed"));
    assert_eq!(dst_events.last().map(String::as_str), Some("completed"));
    assert!(!src_path.exists() && !dst_path.exists(), "a socket file outlived its process");
}

/// A cancel while the source is still sending memory (the destination stalls 1.5 s, within
/// the liveness time, so the live pass cannot end): the source's guest runs on and finishes exact, the destination cancels
/// on its own socket, and both exit 3.
#[test]
fn a_cancel_before_the_hand_over_leaves_the_guest_on_the_source() {
    if !ready("a_cancel_before_the_hand_over_leaves_the_guest_on_the_source") {
        return;
    }
    let (dst_path, src_path) = (socket_path("c-dst"), socket_path("c-src"));
    let key = KeyFile::new("control");
    let (dest, addr) = spawn_dest(&dst_path, &key, &["--inject", "stall@start+0:1500"]);
    let source = spawn_source(&src_path, &key, addr, "hybrid", &[]);
    let mut sc = Client::connect(&src_path);
    let q = wait_status(&mut sc, Duration::from_secs(20), |s| s != "setup");
    assert_eq!(q["status"], "active", "{q}");
    assert_eq!(q["handed-over"], false, "{q}");
    let answer = sc.execute("migrate-cancel", None);
    assert_eq!(answer, json!({ "return": {} }));
    assert_eq!(sc.query()["status"], "cancelled");
    let mut dc = Client::connect(&dst_path);
    let answer = dc.execute("migrate-cancel", None);
    assert_eq!(answer, json!({ "return": {} }), "the destination never ran the guest");

    let (code, out, err) = source.finish("source");
    assert_eq!(code, Some(3), "source: {out}\n{err}");
    let s: SourceReport = last_json(&out, "source report");
    let (dcode, dout, derr) = dest.finish("destination");
    assert_eq!(dcode, Some(3), "destination: {dout}\n{derr}");
    let d: DestReport = last_json(&dout, "destination report");
    let r = MigrationReport::merge_cancelled(&s, Some(&d), expected_digest());
    assert_eq!(r.outcome, hybridmig::migration::Outcome::Cancelled);
    assert!(r.verified, "the source guest ended at {} not {}", r.digest, r.digest_expected);
    let reason = s.cancel_reason.unwrap_or_default();
    assert!(reason.contains("migrate-cancel"), "{reason}");
    eprintln!("cancelled: {reason}; destination: {:?}", d.cancel_reason);
}

/// A TCP forwarder that accepts `connections` connections, then closes its listening socket:
/// the source's path to the destination, which is gone once the first connections break.
fn one_time_path(to: SocketAddr, connections: usize) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the path");
    let addr = listener.local_addr().expect("addr");
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        for _ in 0..connections {
            let Ok((near, _)) = listener.accept() else { return };
            let Ok(far) = TcpStream::connect(to) else { return };
            for (mut from, mut into) in
                [(near.try_clone().expect("clone"), far.try_clone().expect("clone")), (far, near)]
            {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut into);
                    let _ = into.shutdown(std::net::Shutdown::Both);
                    let _ = from.shutdown(std::net::Shutdown::Both);
                });
            }
        }
        flag.store(true, Ordering::Release);
    });
    (addr, done)
}

/// Manual recovery to a new address: the source reaches the destination through a path that
/// closes after the first two connections; the source cuts both after the resume. Neither
/// side can reconnect by itself, so both pause with their halves. The operator moves the
/// destination's listener to a new port B and sends the source there (`hybridmig recover`):
/// the migration resumes and ends exact, with a recovery counted.
#[test]
fn a_recovery_moves_to_a_new_address_on_the_operators_word() {
    if !ready("a_recovery_moves_to_a_new_address_on_the_operators_word") {
        return;
    }
    let (dst_path, src_path) = (socket_path("r-dst"), socket_path("r-src"));
    let key = KeyFile::new("control");
    let (dest, addr) = spawn_dest(&dst_path, &key, &[]);
    let (path, path_closed) = one_time_path(addr, 2);
    let extra = ["--push-delay-ms", "1500", "--inject", "disconnect@resume+300"];
    let source = spawn_source(&src_path, &key, path, "postcopy", &extra);
    let events = Client::connect(&src_path);
    let mut dc = Client::connect(&dst_path);
    let q = wait_status(&mut dc, Duration::from_secs(20), |s| s == "postcopy-paused");
    assert!(path_closed.load(Ordering::Acquire), "the path still accepts: {q}");
    let mut sc = Client::connect(&src_path);
    // The source may see the cut a moment after the destination did.
    let q = wait_status(&mut sc, Duration::from_secs(20), |s| s == "postcopy-paused");
    assert_eq!(q["status"], "postcopy-paused");
    let new_port =
        TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr");
    let uri = format!("tcp:{new_port}");
    let answer = dc.execute("migrate-recover", Some(json!({ "uri": uri })));
    assert_eq!(answer, json!({ "return": {} }), "the destination listens on {new_port}");
    assert_eq!(dc.query()["status"], "postcopy-recover");
    let out = Command::new(BIN)
        .args(["recover", "--control"])
        .arg(&src_path)
        .args(["--to", &new_port.to_string()])
        .output()
        .expect("hybridmig recover");
    assert!(out.status.success(), "recover: {}", String::from_utf8_lossy(&out.stderr));

    let r = check_completed(source.finish("source"), dest.finish("destination"));
    assert!(r.recoveries >= 1, "no recovery counted");
    let src_events = events.drain_events();
    eprintln!("recovered in {} ms over {new_port}; source events {src_events:?}", r.recovery_ms);
    let paused = src_events.iter().position(|s| s == "postcopy-paused").expect("paused");
    let active_again = src_events[paused..].iter().any(|s| s == "postcopy-active");
    assert!(active_again, "{src_events:?}");
    assert_eq!(src_events.last().map(String::as_str), Some("completed"));
}
