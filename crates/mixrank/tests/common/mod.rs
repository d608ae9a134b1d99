//! Helpers shared by the CLI's integration tests (`mod common;` in each test file).

use std::process::Command;

/// The `mixrank` binary under test: cargo's, or `MIXRANK_BIN` when set (a test binary
/// carried to another machine with the binary beside it: `bench/gpu_check.sh`).
#[allow(dead_code)] // not every test file that includes this module uses it
pub fn bin() -> String {
    std::env::var("MIXRANK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mixrank").to_string())
}

/// Runs the `mixrank` binary under test with `args`: (success, stdout, stderr).
pub fn mixrank(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).output().expect("run mixrank");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
