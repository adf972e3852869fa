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
