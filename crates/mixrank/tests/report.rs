//! `mixrank report` on a real MMoE run: every section is on the page and the SVG is
//! well formed.

mod common;

use common::mixrank;
use std::path::Path;
use std::process::Command;

/// Every opened tag inside each `<svg>` is closed in order (self-closing tags aside).
fn assert_balanced_svg(html: &str) {
    for (k, part) in html.split("<svg").skip(1).enumerate() {
        let body = &part[..part.find("</svg>").unwrap_or_else(|| panic!("svg {k} is not closed"))];
        let mut stack: Vec<&str> = Vec::new();
        for tag in body.split('<').skip(1) {
            let tag = &tag[..tag.find('>').unwrap_or_else(|| panic!("svg {k}: unterminated tag"))];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name), "svg {k}: </{name}> closes the wrong element");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap());
            }
        }
        assert!(stack.is_empty(), "svg {k}: unclosed {stack:?}");
    }
}

#[test]
fn report_of_an_mmoe_run_has_every_section() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let (ok, _, err) =
        mixrank(&["simulate", "--out", data.to_str().unwrap(), "--days", "3", "--requests-per-day", "300"]);
    assert!(ok, "{err}");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/models/mmoe_heterogeneous.toml");
    let run = d.path().join("run");
    let cfg = data.join("mixrank.toml");
    let (ok, _, err) = mixrank(&[
        "train",
        cfg.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--log-every",
        "1",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = mixrank(&["report", run.to_str().unwrap()]);
    assert!(ok, "{err}");
    let page = run.join("report.html");
    assert!(out.contains(&page.display().to_string()), "{out}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    // Self-contained: no scripts, no links out (the SVG namespace URI is not fetched).
    assert!(!html.contains("<script"));
    assert_eq!(html.matches("http").count(), html.matches("http://www.w3.org/2000/svg").count());
    for section in ["Training", "Metrics on split", "Expert utilisation", "Calibration on split"] {
        assert!(html.contains(section), "missing section {section}");
    }
    for t in ["training loss, binary tasks", "training loss, regression tasks", "validation AUC", "validation RMSE"] {
        assert!(html.contains(t), "missing chart {t}");
    }
    // A heatmap per surface; a reliability diagram per binary task.
    for s in ["home_feed", "related_pins", "search"] {
        assert!(html.contains(&format!("segment {s}: gate × expert")), "no heatmap for {s}");
    }
    for t in ["click", "save", "conversion"] {
        assert!(html.contains(&format!("{t}: observed rate vs mean prediction")), "no calibration for {t}");
    }
    assert!(!html.contains("dwell: observed rate"), "regression tasks get no reliability diagram");
    assert_balanced_svg(&html);
    // A run directory without a training log is refused with its path.
    std::fs::remove_file(run.join("train_log.jsonl")).unwrap();
    let (ok, _, err) = mixrank(&["report", run.to_str().unwrap()]);
    assert!(!ok && err.contains("train_log.jsonl"), "{err}");

    // PLE: every gate mixes its own experts, so each gets its own table and heatmap.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/models/ple.toml");
    let run = d.path().join("ple");
    let args = ["train", cfg.to_str().unwrap(), "--model", model.to_str().unwrap(), "--max-steps", "3"];
    let (ok, _, err) = mixrank(&[&args[..], &["--out", run.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    let (ok, out, err) = mixrank(&["eval", run.to_str().unwrap(), "--split", "validation"]);
    assert!(ok, "{err}");
    // configs/models/ple.toml: 2 levels, 1 task expert, 3 shared; 4 tasks.
    assert_eq!(out.matches("mean gate weight per expert").count(), 2 * 4 + 1, "{out}");
    for row in ["L0 click", "L0 shared", "L1 conversion"] {
        assert!(out.contains(&format!("  {row} ")), "no gate row {row}: {out}");
    }
    assert!(out.contains("click.0:mlp") && out.contains("shared.1:dcnv2"), "{out}");
    let (ok, _, err) = mixrank(&["report", run.to_str().unwrap(), "--split", "validation"]);
    assert!(ok, "{err}");
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    for gate in ["L0 click", "L0 shared", "L1 dwell"] {
        assert!(html.contains(&format!("gate {gate}: segment × expert")), "no heatmap for gate {gate}");
    }
    assert!(!html.contains("L1 shared"), "the last level has no shared gate");
    assert_balanced_svg(&html);
}

#[test]
fn demo_runs_end_to_end_on_a_small_simulation() {
    // As the README runs it: from a working directory, with the default relative `--out`.
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("mixrank-demo");
    let run = Command::new(env!("CARGO_BIN_EXE_mixrank"))
        .args(["demo", "--requests-per-day", "150", "--resamples", "20"])
        .current_dir(d.path())
        .output()
        .expect("run mixrank");
    let (stdout, err) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{err}");
    assert!(
        stdout.contains("[6/7] comparing mmoe_position_tower (B) against shared_bottom_position_tower (A)"),
        "{stdout}"
    );
    // The light ranker, distilled from the MMoE, then compared with it.
    assert!(stdout.contains("[7/7] training the light ranker two_tower_distilled distilled from mmoe_position_tower"));
    assert!(stdout.contains("two_tower_distilled (B) against its teacher mmoe_position_tower (A)"), "{stdout}");
    let manifest = std::fs::read_to_string(out.join("runs/two_tower_distilled/checkpoint/manifest.json")).unwrap();
    let teacher = format!("\"teacher\": \"checkpoint {}\"", out.join("runs/mmoe_position_tower").display());
    assert!(manifest.contains(&teacher), "the light ranker's lineage names its teacher: {manifest}");
    assert!(manifest.contains("two_tower"), "{manifest}");
    assert!(stdout.contains("mean gate weight per expert"), "{stdout}");
    // The MMoE against the baseline also against the simulator's true probabilities and
    // in the replayed auction (the simulator's [eval] section).
    assert!(stdout.contains("against the true probabilities"), "{stdout}");
    assert!(stdout.contains("auction per request"), "{stdout}");
    // It ends with the comparison table and the reports' paths.
    let tail: Vec<&str> = stdout.lines().rev().take(2).collect();
    for (line, name) in tail.iter().rev().zip(["shared_bottom_position_tower", "mmoe_position_tower"]) {
        let page = Path::new("mixrank-demo").join("runs").join(name).join("report.html");
        assert_eq!(*line, format!("report: {}", page.display()));
        assert!(std::fs::read_to_string(d.path().join(&page)).unwrap().contains("Metrics on split"));
    }
    let (ok, help, _) = mixrank(&["report", "--help"]);
    assert!(ok && help.contains("Usage: mixrank report"));
}
