//! The library on its own: a VMM that depends on hybridmig with `default-features = false`
//! gets the engines, wire, ring, transport, session, drivers and simulator, and none of the
//! CLI's, plots', bench's or built-in VMM's dependencies.

use std::process::Command;

/// Crates that only the CLI, the bench, its plots and the built-in VMM need.
const NOT_IN_THE_LIBRARY: [&str; 9] = [
    "clap",
    "plotters",
    "indicatif",
    "anyhow",
    "iced-x86",
    "kvm-ioctls",
    "kvm-bindings",
    "vmm-sys-util",
    "tracing-subscriber",
];

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

#[test]
fn the_library_alone_pulls_in_no_cli_plot_bench_or_vmm_crate() {
    let out = cargo()
        .args(["tree", "--no-default-features", "-e", "normal", "--prefix", "none", "--offline"])
        .output()
        .expect("cargo tree");
    assert!(out.status.success(), "cargo tree: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    for unwanted in NOT_IN_THE_LIBRARY {
        assert!(!crates.contains(&unwanted), "the library alone depends on {unwanted}:\n{tree}");
    }
    assert!(crates.contains(&"io-uring"), "the tree is not the library's:\n{tree}");
}

#[test]
fn the_library_alone_builds() {
    // Its own target directory: the test binary's build lock is not held while tests run,
    // but a second feature set would evict the default build's artifacts.
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("library-alone");
    let out = cargo()
        .args(["check", "--no-default-features", "--lib", "--offline", "--target-dir"])
        .arg(&target)
        .output()
        .expect("cargo check");
    assert!(
        out.status.success(),
        "cargo check --no-default-features --lib failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_library_alone_is_documented_without_a_warning() {
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("library-alone");
    let out = cargo()
        .args(["doc", "--no-deps", "--no-default-features", "--offline", "--target-dir"])
        .arg(&target)
        .env("RUSTDOCFLAGS", "-D warnings")
        .output()
        .expect("cargo doc");
    assert!(
        out.status.success(),
        "cargo doc --no-deps --no-default-features with -D warnings failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
