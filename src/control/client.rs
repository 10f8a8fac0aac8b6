//! The small client behind `hybridmig control` and `hybridmig recover`: sends one request on
//! a control socket and returns its answer, skipping the greeting and any event before it.

use super::protocol::MAX_LINE_BYTES;
use super::{ControlError, CANCEL_ANSWER_TIMEOUT};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest answer line read (a `query-migrate` answer is a few KiB).
const MAX_ANSWER_BYTES: u64 = 1 << 20;
/// Lines read before giving up on an answer (the greeting, events, then the answer).
const MAX_LINES: usize = 256;

/// Sends `{"execute": command, "arguments": arguments}` to the socket at `path` and returns
/// the answer's `return` object; an `error` answer is [`ControlError::Remote`].
pub fn execute(
    path: &Path,
    command: &str,
    arguments: Option<Value>,
) -> Result<Value, ControlError> {
    let shown = path.display().to_string();
    let io_err = |what| {
        let path = shown.clone();
        move |source| ControlError::Io { path, what, source }
    };
    let mut stream = UnixStream::connect(path).map_err(io_err("connect"))?;
    // A cancel may wait for its answer this long on the server, plus a margin.
    let answer_time = CANCEL_ANSWER_TIMEOUT + Duration::from_secs(5);
    stream.set_read_timeout(Some(answer_time)).map_err(io_err("set a read timeout"))?;
    let mut request = json!({ "execute": command });
    if let Some(arguments) = arguments {
        request["arguments"] = arguments;
    }
    let line = request.to_string();
    if line.len() > MAX_LINE_BYTES {
        let desc = format!("the request is longer than {MAX_LINE_BYTES} bytes");
        return Err(ControlError::Remote { class: "LineTooLong".into(), desc });
    }
    writeln!(stream, "{line}").map_err(io_err("send the request"))?;
    let mut reader = BufReader::new(stream);
    for _ in 0..MAX_LINES {
        let mut line = String::new();
        let n = (&mut reader)
            .take(MAX_ANSWER_BYTES)
            .read_line(&mut line)
            .map_err(io_err("read the answer"))?;
        if n == 0 {
            break;
        }
        let bad = || ControlError::BadAnswer { path: shown.clone(), line: line.trim().to_string() };
        let value: Value = serde_json::from_str(&line).map_err(|_| bad())?;
        if let Some(ret) = value.get("return") {
            return Ok(ret.clone());
        }
        if let Some(err) = value.get("error") {
            let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
            return Err(ControlError::Remote { class: field("class"), desc: field("desc") });
        }
        if value.get("QMP").is_none() && value.get("event").is_none() {
            return Err(bad());
        }
    }
    Err(ControlError::BadAnswer {
        path: shown,
        line: "(no answer before the socket closed)".into(),
    })
}
