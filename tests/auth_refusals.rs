//! Every way in without the migration's key, or into another session, is refused with an
//! error that names the cause, on real TCP against a real `hybridmig dest` (a 256 MiB KVM
//! guest). Its log names each refusal; then the real source, with the right key, migrates to
//! that same destination and the merged reports say verified: nothing of the refused peers
//! reached its guest (its pages and state are the real source's, the memory digests match).
//! Two refusals of the source's side (a wrong key; a destination that answers without the
//! Noise handshake) end a real `hybridmig source` before it sends any page.

mod cli_common;

use cli_common::{code_and_json, wait_bounded, KeyFile, Killed, BIN};
use hybridmig::host_check::{require_kvm, require_uffd};
use hybridmig::migration::{DestReport, MigrationReport, SourceReport};
use hybridmig::ports::MigratableVm;
use hybridmig::secure::{
    self, open_handshake, Credential, RecordCipher, SecureConfig, ANSWER_STATUS_BYTES,
};
use hybridmig::session::{wire_regions, Initiator, Offer, SessionIntent};
use hybridmig::transport::tcp::{PairListener, TcpOptions};
use hybridmig::wire::{self, FrameBody, MigrationMode, StreamKind, Verdict};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const MEM: &str = "256M";
const PACE: u64 = 150_000;
const WAIT: Duration = Duration::from_secs(5);

fn guest_args(ops: u64) -> Vec<String> {
    let ops = ops.to_string();
    ["--workload", "hotcold", "--mem", MEM, "--ops", &ops, "--seed", "33"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The memory layout of a `MEM` guest, as the destination's Hello check wants it.
fn layout() -> Vec<wire::Region> {
    use hybridmig::vm::{VmConfig, WorkloadKind, WorkloadSpec};
    let workload = WorkloadSpec::new(WorkloadKind::HotCold, 33);
    let cfg = VmConfig { mem_bytes: 256 << 20, vcpus: 1, workload };
    let mut vm = hybridmig::vm::Vm::new_incoming(&cfg).expect("a VM for its layout");
    wire_regions(&hybridmig::migration::KvmGuest::new(&mut vm).regions())
}

fn secure_cfg(key: &KeyFile) -> SecureConfig {
    SecureConfig::new(Credential::from_key_file(&key.0).expect("key"))
}

/// One stream's handshake by hand (the connector's steps, one stream at a time): Noise
/// opening and answer, the sealed Hello, the sealed HelloAck. The socket, its cipher and the
/// initiator's result.
fn open_stream(
    addr: SocketAddr,
    cfg: &SecureConfig,
    initiator: &mut Initiator,
    kind: StreamKind,
) -> (TcpStream, Result<(), String>) {
    let mut sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    let (hs, opening) = open_handshake(cfg, kind).expect("opening");
    sock.write_all(&opening).expect("opening");
    let mut answer = vec![0u8; ANSWER_STATUS_BYTES];
    sock.read_exact(&mut answer).expect("status");
    let mut rest = vec![0u8; secure::answer_len(answer[0])];
    sock.read_exact(&mut rest).expect("answer");
    answer.extend_from_slice(&rest);
    let mut cipher = hs.on_answer(&answer).expect("the destination holds the key");
    let hello = initiator.hello(kind).map_err(|e| e.to_string());
    let hello = match hello {
        Ok(hello) => hello,
        Err(e) => return (sock, Err(e)),
    };
    sock.write_all(&cipher.seal_one(&hello).expect("seal")).expect("hello");
    let ack = read_record(&mut sock, &mut cipher);
    let seen = initiator.on_bytes(kind, &ack).map(drop).map_err(|e| e.to_string());
    (sock, seen)
}

fn read_record(sock: &mut TcpStream, cipher: &mut RecordCipher) -> Vec<u8> {
    let mut len = [0u8; 2];
    sock.read_exact(&mut len).expect("record length");
    let mut record = len.to_vec();
    record.resize(2 + usize::from(u16::from_be_bytes(len)), 0);
    sock.read_exact(&mut record[2..]).expect("record");
    cipher.open_one(&record).expect("open")
}

/// A proxy that forwards one connection to `to` and records what the client sent.
fn recording_proxy(to: SocketAddr) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = std::thread::spawn(move || {
        let (client, _) = listener.accept().expect("accept");
        let server = TcpStream::connect(to).expect("connect");
        let (mut c_read, mut s_write) =
            (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
        let back = std::thread::spawn(move || {
            let (mut s_read, mut c_write) = (server, client);
            let _ = std::io::copy(&mut s_read, &mut c_write);
        });
        let mut recorded = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = c_read.read(&mut buf) {
            if n == 0 {
                break;
            }
            recorded.extend_from_slice(&buf[..n]);
            if s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(std::net::Shutdown::Write);
        let _ = back.join();
        recorded
    });
    (addr, handle)
}

/// Records the bulk connection of an authenticated library source (the connector's own code)
/// talking to a stand-in destination that holds the same key.
fn record_a_real_handshake(key: &KeyFile, regions: Vec<wire::Region>) -> Vec<u8> {
    let options = TcpOptions { security: Some(secure_cfg(key)), ..TcpOptions::default() };
    let accept = hybridmig::session::AcceptorConfig::new(regions.clone());
    let mut standin =
        PairListener::bind("127.0.0.1:0".parse().expect("addr"), options.clone(), accept)
            .expect("stand-in");
    let standin_addr = standin.local_addr().expect("addr");
    let (proxy, recorded) = recording_proxy(standin_addr);
    // Both streams through the proxy would need two; the bulk stream is what gets replayed,
    // so the urgent stream goes straight to the stand-in.
    let source = std::thread::spawn(move || {
        let offer = Offer::new(0x5EC0, MigrationMode::Hybrid, regions);
        let mut initiator = Initiator::new(offer).bound();
        let cfg = options.security.clone().expect("security");
        let (bulk, seen) = open_stream(proxy, &cfg, &mut initiator, StreamKind::Bulk);
        seen.expect("bulk through the proxy");
        let (urgent, seen) = open_stream(standin_addr, &cfg, &mut initiator, StreamKind::Urgent);
        seen.expect("urgent");
        (bulk, urgent)
    });
    let pair = standin.accept_pair(WAIT).expect("the stand-in pairs the recorded session");
    let (bulk, urgent) = source.join().expect("source");
    drop((pair, bulk, urgent));
    recorded.join().expect("proxy")
}

/// A destination that answers the Noise opening with a plain HelloAck: it speaks the
/// protocol but skips the authentication.
fn plain_destination() -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = std::thread::spawn(move || {
        let Ok((mut sock, _)) = listener.accept() else { return };
        let _ = sock.set_read_timeout(Some(WAIT));
        let mut opening = [0u8; secure::OPENING_BYTES];
        let _ = sock.read_exact(&mut opening);
        let ack = wire::HelloAck {
            version: wire::VERSION_CURRENT,
            session_id: 0,
            stream: StreamKind::Bulk,
            verdict: Verdict::Accept,
            auth_token: &[],
        };
        let mut out = Vec::new();
        let body = FrameBody::HelloAck(ack);
        wire::encode_frame(&mut out, wire::VERSION_CURRENT, &body, &wire::Limits::default())
            .expect("encode");
        let _ = sock.write_all(&out);
        let mut rest = Vec::new();
        let _ = sock.read_to_end(&mut rest);
    });
    (addr, handle)
}

/// Runs `hybridmig source` against `addr` with `key`; it must be refused before any page.
fn refused_source(addr: &str, key: &KeyFile, says: &str) {
    let source = Killed(
        Command::new(BIN)
            .arg("source")
            .args(key.args())
            .args(guest_args(20_000))
            .args(["--connect", addr, "--mode", "hybrid", "--migrate-after-ms", "100", "--json"])
            .args(["--recover-timeout-s", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn source"),
    );
    let (status, stdout, stderr) = wait_bounded(source, Duration::from_secs(60));
    let out =
        std::process::Output { status, stdout: stdout.into_bytes(), stderr: stderr.into_bytes() };
    let (code, report) = code_and_json(out, "refused source");
    assert_eq!(code, Some(3), "a refused source cancels and keeps its guest: {report}");
    let reason = report["cancel_reason"].as_str().unwrap_or_default();
    assert!(reason.contains(says), "the source's reason `{reason}` should say `{says}`");
    let stats = &report["stats"];
    for field in ["bytes_bulk", "bytes_urgent", "pages_raw", "pages_lz4", "pages_zero"] {
        assert_eq!(stats[field], 0, "the refused source sent no page ({field}): {report}");
    }
}

#[test]
fn every_unauthenticated_or_foreign_peer_is_refused_and_the_real_source_then_migrates() {
    let name = "every_unauthenticated_or_foreign_peer_is_refused_and_the_real_source_then_migrates";
    if !require_kvm(name) || !require_uffd(name) {
        return;
    }
    let key = KeyFile::new("refusals");
    let other_key = KeyFile::new("refusals-other");
    let regions = layout();
    let replay = record_a_real_handshake(&key, regions.clone());
    let ops = PACE * 2;
    let expected = cli_common::reference_digest(&guest_args(ops));

    // No key at all: the command line refuses to start a host without one.
    let out = Command::new(BIN)
        .arg("source")
        .args(guest_args(ops))
        .args(["--connect", "127.0.0.1:9"])
        .output()
        .expect("source without a key");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no --key-file"), "{out:?}");

    // A peer that skips the authentication (a destination answering in the clear): the real
    // source refuses it before sending anything.
    let (plain_addr, plain) = plain_destination();
    refused_source(&plain_addr.to_string(), &key, "without the Noise handshake");
    plain.join().expect("plain destination");

    let mut dest = Killed(
        Command::new(BIN)
            .arg("dest")
            .args(key.args())
            .args(guest_args(ops))
            .args(["--listen", "127.0.0.1:0", "--accept-timeout-s", "90", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dest"),
    );
    let stdout = dest.0.stdout.take().expect("dest stdout");
    let (tx, rx) = mpsc::channel();
    let dest_out = std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        let _ = tx.send(lines.next().unwrap_or_default());
        lines.collect::<Vec<_>>().join("\n")
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).expect("LISTENING within 30 s");
    let addr_text = line.trim().strip_prefix("LISTENING ").expect("LISTENING line").to_string();
    let addr: SocketAddr = addr_text.parse().expect("address");

    // A wrong key: the real source is refused and sends no page.
    refused_source(&addr_text, &other_key, "wrong key");

    // No key: a plain Hello, as a source without the handshake sends it.
    let mut plain = TcpStream::connect(addr).expect("connect");
    let hello = Initiator::new(Offer::new(1, MigrationMode::Hybrid, regions.clone()))
        .hello(StreamKind::Bulk)
        .expect("hello");
    plain.write_all(&hello).expect("plain hello");
    plain.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut sink = Vec::new();
    let _ = plain.read_to_end(&mut sink);
    assert!(sink.is_empty(), "a plain Hello gets no HelloAck: {sink:?}");

    // A replayed handshake: the recorded bytes of a real bulk connection.
    let mut replayed = TcpStream::connect(addr).expect("connect");
    replayed.write_all(&replay).expect("replay");
    replayed.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut answer = Vec::new();
    let _ = replayed.read_to_end(&mut answer);
    assert_eq!(
        answer.len(),
        ANSWER_STATUS_BYTES + secure::answer_len(0),
        "the replayed opening is answered (fresh keys), and nothing follows its Hello"
    );

    // An urgent stream from another session: a holder of the key opens its own session's
    // bulk stream, learns that session's ticket, and tries to attach an urgent stream to the
    // victim's session (whose bulk stream is open) with it.
    let cfg = secure_cfg(&key);
    let victim = Offer::new(0xF00D, MigrationMode::Hybrid, regions.clone());
    let mut victim_init = Initiator::new(victim.clone()).bound();
    let (victim_bulk, seen) = open_stream(addr, &cfg, &mut victim_init, StreamKind::Bulk);
    seen.expect("the victim's bulk stream");
    let mut stranger =
        Initiator::new(Offer::new(0xBAD, MigrationMode::Hybrid, regions.clone())).bound();
    let (stranger_bulk, seen) = open_stream(addr, &cfg, &mut stranger, StreamKind::Bulk);
    seen.expect("the stranger's own bulk stream");
    let stolen = stranger.ticket().expect("the stranger's ticket");
    let attach = Offer { intent: SessionIntent::New, ticket: Some(stolen), ..victim };
    let mut attacker = Initiator::new(attach).bound();
    let (_, seen) = open_stream(addr, &cfg, &mut attacker, StreamKind::Urgent);
    let err = seen.expect_err("the attacker's urgent stream is refused");
    assert!(err.contains("authentication failed"), "{err}");

    // The real source, with the right key.
    let source = Killed(
        Command::new(BIN)
            .arg("source")
            .args(key.args())
            .args(guest_args(ops))
            .args(["--pace", &PACE.to_string(), "--connect", &addr_text, "--mode", "hybrid"])
            .args(["--migrate-after-ms", "300", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn source"),
    );
    let (status, src_out, src_err) = wait_bounded(source, Duration::from_secs(120));
    assert!(status.success(), "the source failed: {src_err}");
    let (status, _, dst_err) = wait_bounded(dest, Duration::from_secs(120));
    assert!(status.success(), "the destination failed: {dst_err}");
    drop((victim_bulk, stranger_bulk, plain, replayed));
    let dst_out = dest_out.join().expect("dest stdout");
    let json =
        |out: &str| out.lines().rev().find(|l| l.starts_with('{')).unwrap_or("{}").to_string();
    let src: SourceReport = serde_json::from_str(&json(&src_out)).expect("source report");
    let dst: DestReport = serde_json::from_str(&json(&dst_out)).expect("dest report");
    let expected = u64::from_str_radix(&expected, 16).expect("hex digest");
    let report =
        MigrationReport::merge(&src, &dst, expected, [dst.run.sent_bulk, dst.run.sent_urgent]);
    assert!(report.verified, "digest {} vs expected {:#x}", report.digest, expected);
    assert!(report.memory_digest_match, "every page placed is the real source's");
    assert!(report.dest_resumed_after_state, "the state restored is the real source's");
    assert!(report.encrypted, "authenticated and encrypted by default");

    let dropped: Vec<&str> =
        dst_err.lines().filter(|l| l.contains("dropped a connection")).collect();
    for cause in [
        "wrong key",
        "plain Hello without the Noise handshake",
        "the first message after the handshake did not decrypt: a replayed handshake",
        "urgent stream from another session",
    ] {
        assert!(
            dropped.iter().any(|l| l.contains(cause)),
            "no refusal naming `{cause}`: {dst_err}"
        );
    }
    eprintln!("destination log:\n{dst_err}");
}

#[test]
fn migrate_encrypts_by_default_and_no_encrypt_keeps_authentication_only() {
    let name = "migrate_encrypts_by_default_and_no_encrypt_keeps_authentication_only";
    if !require_kvm(name) || !require_uffd(name) {
        return;
    }
    let guest = guest_args(PACE);
    let expected = cli_common::reference_digest(&guest);
    for (extra, encrypted) in [(None, true), (Some("--no-encrypt"), false)] {
        let out = Command::new(BIN)
            .arg("migrate")
            .args(&guest)
            .args(["--pace", &PACE.to_string(), "--mode", "postcopy", "--migrate-after-ms", "200"])
            .args(["--expected-digest", &expected, "--json"])
            .args(extra)
            .output()
            .expect("migrate");
        let report = cli_common::json_of(out, "migrate");
        assert_eq!(report["verified"], true, "{report}");
        assert_eq!(report["encrypted"], encrypted, "{extra:?}: {report}");
    }
}
