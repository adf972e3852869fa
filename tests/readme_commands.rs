//! The README's first command must work as written: `cargo run --release -- mount DIR` has to
//! pick the daemon among the crate's binaries (default-run) and mount with defaults.

use std::process::Command;

#[test]
fn readme_starts_with_the_two_setup_commands() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block: Vec<&str> = readme.lines().skip_while(|l| !l.starts_with("```sh")).skip(1).take(2).collect();
    assert!(block[0].contains("cargo run --release -- mount"), "{block:?}");
    assert!(block[1].starts_with("cargo test"), "{block:?}");
    // .ci/run runs that same test command.
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    assert!(ci.lines().any(|l| l.trim() == "cargo test"), ".ci/run must run `cargo test`");
}

#[test]
fn cargo_run_picks_the_daemon() {
    let toml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    assert!(toml.lines().any(|l| l.trim() == "default-run = \"mmapfs\""), "cargo run must start the daemon");
    let out = Command::new(env!("CARGO_BIN_EXE_mmapfs")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("mount") && help.contains("format") && help.contains("stats"), "{help}");
}

/// The manual pages in docs/man/ are what the command line generates now, and completions come
/// for bash, zsh and fish and name the subcommands.
#[test]
fn man_pages_are_current_and_completions_work() {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_mmapfs")).arg("man").arg(dir.path()).status().unwrap();
    assert!(st.success());
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/man");
    let mut pages = 0;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        let now = std::fs::read(e.path()).unwrap();
        let name = e.file_name();
        let committed = std::fs::read(std::path::Path::new(shipped).join(&name)).unwrap_or_default();
        assert!(now == committed, "docs/man/{name:?} is stale: run `cargo run -- man docs/man`");
        pages += 1;
    }
    assert!(pages >= 5, "{pages} pages");
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_mmapfs")).args(["completions", shell]).output().unwrap();
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && script.contains("fsck") && script.contains("mount"), "{shell}");
    }
}
