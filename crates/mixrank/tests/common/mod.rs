//! Helpers shared by the CLI's integration tests (`mod common;` in each test file).

use std::process::Command;

/// Runs the `mixrank` binary under test with `args`: (success, stdout, stderr).
pub fn mixrank(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mixrank")).args(args).output().expect("run mixrank");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
