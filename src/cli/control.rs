//! `hybridmig control` and `hybridmig recover`, and the `--control PATH` socket of `source`
//! and `dest` (the library's [`hybridmig::control`] does the work).

use anyhow::{Context, Result};
use hybridmig::control::{client::execute, Control, ControlError, ControlServer, Side};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct ControlArgs {
    /// The control socket of a `source` or `dest` process.
    pub path: std::path::PathBuf,
    /// query-migrate, migrate-cancel, migrate-recover or qmp_capabilities.
    pub command: String,
    /// The command's arguments, a JSON object, e.g. '{"uri":"tcp:127.0.0.1:4444"}'.
    pub args: Option<String>,
}

#[derive(clap::Args)]
pub struct RecoverArgs {
    /// The control socket of a `source` or `dest` process.
    #[arg(long)]
    pub control: std::path::PathBuf,
    /// The new address: the destination listens there, the source dials it.
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
}

/// `hybridmig control PATH COMMAND [JSON-ARGS]`.
pub fn control(a: ControlArgs) -> Result<()> {
    let args = a.args.as_deref().map(serde_json::from_str).transpose();
    control_request(&a.path, &a.command, args.context("JSON-ARGS is not valid JSON")?)
}

/// `hybridmig recover --control PATH --to HOST:PORT`.
pub fn recover(a: RecoverArgs) -> Result<()> {
    let args = serde_json::json!({ "uri": format!("tcp:{}", a.to) });
    control_request(&a.control, "migrate-recover", Some(args))
}

/// Prints a control socket's answer as one JSON line; an error answer exits 1.
pub fn control_request(
    path: &std::path::Path,
    command: &str,
    args: Option<serde_json::Value>,
) -> Result<()> {
    match execute(path, command, args) {
        Ok(ret) => println!("{}", serde_json::json!({ "return": ret })),
        Err(ControlError::Remote { class, desc }) => {
            println!("{}", serde_json::json!({ "error": { "class": class, "desc": desc } }));
            anyhow::bail!("{command}: {class}: {desc}");
        }
        Err(e) => return Err(e).context(command.to_string()),
    }
    Ok(())
}

/// The control channel and its socket, when `--control PATH` was given.
pub fn control_server(
    path: Option<&std::path::Path>,
    side: Side,
) -> Result<(Option<Arc<Control>>, Option<ControlServer>)> {
    let Some(path) = path else { return Ok((None, None)) };
    let control = Arc::new(Control::new(side));
    let server = ControlServer::start(path, control.clone())?;
    Ok((Some(control), Some(server)))
}
