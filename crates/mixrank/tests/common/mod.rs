//! Helpers shared by the CLI's integration tests (`mod common;` in each test file).

use std::process::Command;

/// The `mixrank` binary under test: cargo's, or `MIXRANK_BIN` when set (a test binary
/// carried to another machine with the binary beside it: `bench/gpu_check.sh`).
#[allow(dead_code)] // not every test file that includes this module uses it
pub fn bin() -> String {
    std::env::var("MIXRANK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mixrank").to_string())
}

/// Runs the `mixrank` binary under test with `args`: (success, stdout, stderr).
#[allow(dead_code)] // not every test file that includes this module uses it
pub fn mixrank(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).output().expect("run mixrank");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One `--trace-rows` line: (step, epoch, rows as (request id, position)).
#[allow(dead_code)] // not every test file that includes this module uses it
pub type Step = (u64, u64, Vec<(u64, u64)>);

/// A `--trace-rows` file's complete lines, and how many lines did not parse (a process
/// killed mid-write leaves the last one cut short).
#[allow(dead_code)] // not every test file that includes this module uses it
pub fn read_trace(path: &std::path::Path) -> (Vec<Step>, usize) {
    let mut out = Vec::new();
    let mut partial = 0;
    for line in std::fs::read_to_string(path).unwrap().lines() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => {
                let rows =
                    v["rows"].as_array().unwrap().iter().map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()));
                out.push((v["step"].as_u64().unwrap(), v["epoch"].as_u64().unwrap(), rows.collect()));
            }
            Err(_) => partial += 1,
        }
    }
    (out, partial)
}
