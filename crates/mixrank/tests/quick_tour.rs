//! The README's quick tour, run top to bottom: the fenced `sh` block under
//! `## Quick tour` becomes a bash script (`set -euo pipefail`) in which
//! `cargo run --release --` is this test's `mixrank` binary, run in a temporary
//! directory with the repository's `configs/` linked in. Every command must succeed; the
//! test then checks what the tour says it does.

use std::path::Path;
use std::process::Command;

/// The quick tour's commands, as written in README.md.
fn quick_tour() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let after = readme.split_once("\n## Quick tour\n").expect("README has a `## Quick tour` section").1;
    let block = after.split_once("```sh\n").expect("the quick tour has a ```sh block").1;
    block.split_once("\n```").expect("the block ends").0.to_string()
}

#[test]
fn readme_quick_tour_runs_top_to_bottom() {
    let tour = quick_tour();
    let commands = tour.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).count();
    assert!(commands >= 15, "the tour lost commands ({commands}):\n{tour}");
    assert!(tour.contains("cargo run --release -- serve") && tour.contains("curl"), "{tour}");
    let d = tempfile::tempdir().unwrap();
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs").canonicalize().unwrap();
    std::os::unix::fs::symlink(&configs, d.path().join("configs")).unwrap();
    // `mixrank` on PATH is this test's binary (a link, so `… &` and `kill %1` act on the
    // process itself); a background job still running when the script ends is killed.
    let bin = d.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mixrank"), bin.join("mixrank")).unwrap();
    let script = format!(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{}\n",
        tour.replace("cargo run --release --", "mixrank")
    );
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let t0 = std::time::Instant::now();
    let out =
        Command::new("bash").arg("-c").arg(&script).env("PATH", path).current_dir(d.path()).output().expect("run bash");
    eprintln!("the quick tour took {:.1} s", t0.elapsed().as_secs_f64());
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the quick tour failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    // What the tour says happened.
    for want in [
        "wrote 80000 rows",
        "stopped: all 1 epoch(s) done",
        "validation split, scored by",
        "ΔAUC",
        "stopped: max_steps = 200 reached",
        "warm start from",
        "\"tasks\"",
        "shutting down",
    ] {
        assert!(
            stdout.contains(want) || stderr.contains(want),
            "missing {want:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    for f in ["runs/baseline/checkpoint", "runs/candidate/checkpoint", "runs/ple/checkpoint", "runs/next/checkpoint"] {
        assert!(d.path().join(f).join("manifest.json").is_file(), "{f}");
    }
    assert!(d.path().join("runs/candidate/report.html").is_file());
}
