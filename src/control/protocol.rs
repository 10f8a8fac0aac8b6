//! The control channel's lines, in the manner of QEMU's QMP, without I/O: a request is one
//! JSON object per line, `{"execute": NAME, "arguments": {...}, "id": ANY}`; an answer is
//! `{"return": {...}}` or `{"error": {"class": ..., "desc": ...}}` (with the request's `id`
//! when it had one); an event is `{"event": "MIGRATION", "data": {"status": ...}, ...}`.

use super::MigrationStatus;
use serde_json::{json, Map, Value};
use std::net::{SocketAddr, ToSocketAddrs};

/// The longest request line accepted, newline excluded.
pub const MAX_LINE_BYTES: usize = 4096;

/// The commands the channel answers.
pub const COMMANDS: &[&str] =
    &["query-migrate", "migrate-cancel", "migrate-recover", "qmp_capabilities"];

/// A request the channel understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// QMP's capabilities negotiation: accepted and ignored (events are always on).
    Capabilities,
    /// The status and every counter.
    QueryMigrate,
    /// Cancel before the hand-over.
    Cancel,
    /// The next connection of a recovery goes to (or, on the destination, listens on) `addr`.
    Recover {
        /// The address `uri` named.
        addr: SocketAddr,
    },
    /// Caps the source's background push (`max-postcopy-bandwidth`, bytes/s; 0: no cap).
    SetParameters {
        /// The cap.
        max_postcopy_bandwidth: u64,
    },
    /// The parameters in force.
    QueryParameters,
}

/// A request and the `id` to answer it with.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The request's `id`, echoed in the answer.
    pub id: Option<Value>,
    /// What it asks.
    pub command: Command,
}

/// What was wrong with a request line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The line is not JSON.
    #[error("the line is not valid JSON: {detail}")]
    Json {
        /// The parser's message.
        detail: String,
    },
    /// The line is JSON but not a request object.
    #[error("expected a JSON object {{\"execute\": COMMAND, \"arguments\": {{...}}}}: {what}")]
    NotARequest {
        /// What is missing or unexpected.
        what: String,
    },
    /// `execute` names no known command.
    #[error("unknown command {name:?} (known: {})", COMMANDS.join(", "))]
    CommandNotFound {
        /// The name given.
        name: String,
    },
    /// The line is longer than [`MAX_LINE_BYTES`].
    #[error("the line is longer than {limit} bytes; it was dropped")]
    LineTooLong {
        /// The limit.
        limit: usize,
    },
    /// An argument is missing, unknown or malformed.
    #[error("{command}: {what}")]
    InvalidParameter {
        /// The command.
        command: String,
        /// What was wrong.
        what: String,
    },
}

impl ProtocolError {
    /// The error's class in the answer.
    pub fn class(&self) -> &'static str {
        match self {
            ProtocolError::Json { .. } => "JSONParsing",
            ProtocolError::NotARequest { .. } => "InvalidRequest",
            ProtocolError::CommandNotFound { .. } => "CommandNotFound",
            ProtocolError::LineTooLong { .. } => "LineTooLong",
            ProtocolError::InvalidParameter { .. } => "InvalidParameter",
        }
    }
}

/// Parses one request line (without its newline). On error, the `id` if one could be read.
pub fn parse_request(line: &[u8]) -> Result<Request, (Option<Value>, ProtocolError)> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| (None, ProtocolError::Json { detail: e.to_string() }))?;
    let Value::Object(mut obj) = value else {
        let what = "the line is not an object".to_string();
        return Err((None, ProtocolError::NotARequest { what }));
    };
    let id = obj.remove("id");
    let fail = |e| (id.clone(), e);
    let name = match obj.remove("execute") {
        Some(Value::String(name)) => name,
        Some(_) => return Err(fail(not_a_request("\"execute\" is not a string"))),
        None => return Err(fail(not_a_request("no \"execute\""))),
    };
    let args = match obj.remove("arguments") {
        None => Map::new(),
        Some(Value::Object(args)) => args,
        Some(_) => return Err(fail(not_a_request("\"arguments\" is not an object"))),
    };
    if let Some(key) = obj.keys().next() {
        return Err(fail(not_a_request(&format!("unknown member {key:?}"))));
    }
    let command = command(&name, args).map_err(fail)?;
    Ok(Request { id, command })
}

fn not_a_request(what: &str) -> ProtocolError {
    ProtocolError::NotARequest { what: what.to_string() }
}

fn command(name: &str, mut args: Map<String, Value>) -> Result<Command, ProtocolError> {
    let command = match name {
        "qmp_capabilities" => {
            // QMP clients may pass an "enable" list; nothing to enable here.
            args.remove("enable");
            Command::Capabilities
        }
        "query-migrate" => Command::QueryMigrate,
        // QEMU's older spelling.
        "migrate-cancel" | "migrate_cancel" => Command::Cancel,
        "migrate-recover" => {
            let uri = match args.remove("uri") {
                Some(Value::String(uri)) => uri,
                Some(other) => {
                    return Err(invalid("migrate-recover", format!("uri {other} is not a string")))
                }
                None => return Err(invalid("migrate-recover", "missing argument \"uri\"".into())),
            };
            Command::Recover { addr: parse_uri(&uri)? }
        }
        "migrate-set-parameters" => {
            let key = "max-postcopy-bandwidth";
            let max_postcopy_bandwidth = match args.remove(key) {
                Some(v) => v.as_u64().ok_or_else(|| {
                    invalid(name, format!("{key} {v} is not a whole number of bytes per second"))
                })?,
                None => return Err(invalid(name, format!("missing argument {key:?}"))),
            };
            Command::SetParameters { max_postcopy_bandwidth }
        }
        "query-migrate-parameters" => Command::QueryParameters,
        _ => return Err(ProtocolError::CommandNotFound { name: name.to_string() }),
    };
    if let Some(key) = args.keys().next() {
        let known = match name {
            "migrate-recover" => "uri",
            "migrate-set-parameters" => "max-postcopy-bandwidth",
            _ => "none",
        };
        let what = format!("unknown argument {key:?} (takes: {known})");
        return Err(invalid(name, what));
    }
    Ok(command)
}

fn invalid(command: &str, what: String) -> ProtocolError {
    ProtocolError::InvalidParameter { command: command.to_string(), what }
}

/// `tcp:HOST:PORT` to an address (the first one HOST resolves to).
pub fn parse_uri(uri: &str) -> Result<SocketAddr, ProtocolError> {
    let bad = |why: &str| invalid("migrate-recover", format!("uri {uri:?}: {why}"));
    let Some(host_port) = uri.strip_prefix("tcp:") else {
        return Err(bad("expected tcp:HOST:PORT"));
    };
    let mut addrs = host_port
        .to_socket_addrs()
        .map_err(|e| bad(&format!("not a HOST:PORT that resolves ({e})")))?;
    addrs.next().ok_or_else(|| bad("resolves to no address"))
}

/// An answer line's object.
pub fn return_line(value: Value, id: Option<Value>) -> String {
    with_id(json!({ "return": value }), id)
}

/// An error answer's object.
pub fn error_line(class: &str, desc: &str, id: Option<Value>) -> String {
    with_id(json!({ "error": { "class": class, "desc": desc } }), id)
}

fn with_id(mut obj: Value, id: Option<Value>) -> String {
    if let Some(id) = id {
        obj["id"] = id;
    }
    obj.to_string()
}

/// The greeting a client reads first.
pub fn greeting() -> String {
    json!({ "QMP": {
        "version": { "package": concat!("hybridmig ", env!("CARGO_PKG_VERSION")) },
        "capabilities": ["events"],
    } })
    .to_string()
}

/// A `MIGRATION` event line for `status` (and the engine's phase, when known).
pub fn migration_event(status: MigrationStatus, phase: Option<&str>) -> String {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut data = json!({ "status": status.as_str() });
    if let Some(phase) = phase {
        data["phase"] = json!(phase);
    }
    json!({
        "event": "MIGRATION",
        "data": data,
        "timestamp": { "seconds": now.as_secs(), "microseconds": now.subsec_micros() },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(line: &str) -> &'static str {
        parse_request(line.as_bytes()).expect_err(line).1.class()
    }

    #[test]
    fn requests_parse_and_bad_ones_get_their_class() {
        let r = parse_request(br#"{"execute":"query-migrate","id":7}"#).expect("query");
        assert_eq!(r.command, Command::QueryMigrate);
        assert_eq!(r.id, Some(json!(7)));
        let r = parse_request(
            br#"{"execute":"migrate-recover","arguments":{"uri":"tcp:127.0.0.1:4444"}}"#,
        )
        .expect("recover");
        assert_eq!(r.command, Command::Recover { addr: "127.0.0.1:4444".parse().unwrap() });
        assert_eq!(class_of("{nope"), "JSONParsing");
        assert_eq!(class_of("[1,2]"), "InvalidRequest");
        assert_eq!(class_of(r#"{"execute":"migrate-frobnicate"}"#), "CommandNotFound");
        assert_eq!(class_of(r#"{"execute":"migrate-recover"}"#), "InvalidParameter");
        assert_eq!(
            class_of(r#"{"execute":"migrate-recover","arguments":{"uri":"unix:/x"}}"#),
            "InvalidParameter"
        );
        assert_eq!(
            class_of(r#"{"execute":"query-migrate","arguments":{"x":1}}"#),
            "InvalidParameter"
        );
        assert_eq!(class_of(r#"{"execute":"query-migrate","extra":1}"#), "InvalidRequest");
        let r = parse_request(
            br#"{"execute":"migrate-set-parameters","arguments":{"max-postcopy-bandwidth":1000}}"#,
        )
        .expect("set");
        assert_eq!(r.command, Command::SetParameters { max_postcopy_bandwidth: 1000 });
        let bad = r#"{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":1}}"#;
        assert_eq!(class_of(bad), "InvalidParameter");
        let bad =
            r#"{"execute":"migrate-set-parameters","arguments":{"max-postcopy-bandwidth":-1}}"#;
        assert_eq!(class_of(bad), "InvalidParameter");
    }

    #[test]
    fn an_error_keeps_the_id() {
        let (id, _) = parse_request(br#"{"execute":"nope","id":"a"}"#).expect_err("unknown");
        let line = error_line("CommandNotFound", "x", id);
        let v: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["id"], "a");
        assert_eq!(v["error"]["class"], "CommandNotFound");
    }
}
