//! Crash safety and stages on the real binary: a training process is SIGKILLed after a
//! periodic checkpoint, its newest checkpoint is corrupted, and `--resume` falls back to
//! the previous one and finishes with every training row seen exactly once per epoch
//! and the same weights as an uninterrupted run; `--stage incremental --init` warm-starts
//! across config changes and records the lineage.

mod common;

use common::{mixrank, read_trace, Step};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Simulated engagement data (`days` days of 100 requests x 10 candidates) with small
/// batches; returns the config path.
fn simulate(dir: &Path, days: usize) -> PathBuf {
    let sim = dir.join("sim");
    let days = days.to_string();
    let (ok, _, err) = mixrank(&[
        "simulate",
        "--out",
        s(&sim),
        "--days",
        &days,
        "--requests-per-day",
        "100",
        "--users",
        "300",
        "--initial-ads",
        "200",
    ]);
    assert!(ok, "{err}");
    let cfg = sim.join("mixrank.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("batch_size = 2048") && text.contains("shuffle_buffer = 65536"));
    std::fs::write(
        &cfg,
        text.replace("batch_size = 2048", "batch_size = 64").replace("shuffle_buffer = 65536", "shuffle_buffer = 256"),
    )
    .unwrap();
    cfg
}

const MODEL: &str = "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 8\ntower = { hidden = [8] }\n\
[[model.experts]]\nkind = \"mlp\"\nhidden = [16]\n\
[train]\nepochs = 3\ncheckpoint_every_steps = 5\nkeep_checkpoints = 3\nthreads = 2\nseed = 5\nsparse_optimizer = \"lazy_adam\"\n";

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

fn log_events(run: &Path, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

#[test]
fn kill_corrupt_and_resume_sees_every_row_once_and_matches_an_uninterrupted_run() {
    let d = tempfile::tempdir().unwrap();
    let cfg = simulate(d.path(), 3);
    let model = d.path().join("model.toml");
    std::fs::write(&model, MODEL).unwrap();
    let train = |run: &Path, extra: &[&str]| {
        let mut args = vec!["train", s(&cfg), "--model", s(&model), "--out", s(run), "--log-every", "4"];
        args.extend_from_slice(extra);
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };

    // The reference: one uninterrupted run.
    let run_a = d.path().join("a");
    let trace_a = d.path().join("trace_a.jsonl");
    let args = train(&run_a, &["--trace-rows", s(&trace_a)]);
    let (ok, _, err) = mixrank(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    let (steps_a, partial) = read_trace(&trace_a);
    assert_eq!(partial, 0);
    // 1000 training rows (day 0) in batches of 64: 16 steps per epoch, 3 epochs.
    assert_eq!(steps_a.len(), 48);
    let all_rows: HashSet<(u64, u64)> = steps_a.iter().flat_map(|s| s.2.iter().copied()).collect();
    assert_eq!(all_rows.len(), 1000, "1000 distinct training rows");
    for epoch in 0..3 {
        let rows: Vec<(u64, u64)> = steps_a.iter().filter(|s| s.1 == epoch).flat_map(|s| s.2.clone()).collect();
        assert_eq!(rows.len(), 1000, "epoch {epoch}");
        assert_eq!(rows.iter().copied().collect::<HashSet<_>>(), all_rows, "epoch {epoch}: every row once");
    }

    // The same run, slowed down, killed after its checkpoint at step 20 or later (typically
    // falling back to step 15, the end of epoch 0: a cursor at an epoch boundary).
    let run_b = d.path().join("b");
    let trace_b = d.path().join("trace_b.jsonl");
    let args = train(&run_b, &["--trace-rows", s(&trace_b), "--debug-step-delay-ms", "50"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mixrank"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let latest = run_b.join("checkpoints/LATEST");
    let t0 = Instant::now();
    loop {
        let step = std::fs::read_to_string(&latest)
            .ok()
            .and_then(|t| t.trim().strip_prefix("step-").and_then(|n| n.parse::<u64>().ok()));
        if step.is_some_and(|s| s >= 20) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the training process ended before it could be killed");
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint at step 20 after 300 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not finished");
    assert!(!run_b.join("checkpoint").exists(), "no final checkpoint from the killed run");

    // Corrupt the newest periodic checkpoint: resume must refuse it and use the one before.
    let mut periodic: Vec<u64> = std::fs::read_dir(run_b.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .collect();
    periodic.sort();
    // keep_checkpoints = 3, plus one when the kill fell between a save and its pruning.
    assert!(periodic.len() >= 2 && periodic.len() <= 4, "{periodic:?}");
    let newest = *periodic.last().unwrap();
    let fallback = periodic[periodic.len() - 2];
    assert_eq!(newest - fallback, 5);
    let bad = run_b.join(format!("checkpoints/step-{newest}/weights.safetensors"));
    let mut bytes = std::fs::read(&bad).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x10;
    std::fs::write(&bad, bytes).unwrap();

    let args = train(&run_b, &["--trace-rows", s(&trace_b), "--resume"]);
    let (ok, _, err) = mixrank(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("step-{newest}")) && err.contains("weights.safetensors is corrupt or partial"),
        "{err}"
    );
    assert!(err.contains("resuming from") && err.contains(&format!("at step {fallback}")), "{err}");
    assert!(run_b.join(format!("checkpoints/refused-step-{newest}")).is_dir(), "refused checkpoint moved aside");
    let refused = log_events(&run_b, "checkpoint_refused");
    assert_eq!(refused.len(), 1);
    assert!(refused[0]["reason"].as_str().unwrap().contains("checksum"));
    let resumed = log_events(&run_b, "resume");
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0]["step"], fallback);
    // The log was appended to, not truncated: the killed run's first train lines are there.
    assert_eq!(log_events(&run_b, "train")[0]["step"], 4);

    // Rows: the killed run's steps up to the checkpoint, then the resumed run's.
    let (lines_b, partial) = read_trace(&trace_b);
    assert!(partial <= 1, "at most the line the kill cut short");
    let split = lines_b.windows(2).position(|w| w[1].0 != w[0].0 + 1).expect("a resumed part") + 1;
    let (killed, after) = lines_b.split_at(split);
    assert!(killed.len() as u64 >= newest && killed.len() < 48, "killed after step {}", killed.len());
    assert_eq!(after[0].0, fallback + 1, "the resumed run continues right after its checkpoint");
    let used: Vec<&Step> = killed.iter().take(fallback as usize).chain(after).collect();
    assert_eq!(used.len(), 48);
    for (i, (b, a)) in used.iter().zip(&steps_a).enumerate() {
        assert_eq!(*b, a, "step {}: the kill-and-resume run trained on other rows than the uninterrupted run", i + 1);
    }
    for epoch in 0..3 {
        let rows: Vec<(u64, u64)> = used.iter().filter(|s| s.1 == epoch).flat_map(|s| s.2.clone()).collect();
        let set: HashSet<_> = rows.iter().copied().collect();
        assert_eq!((rows.len(), set.len()), (1000, 1000), "epoch {epoch}: no row skipped or repeated");
        assert_eq!(set, all_rows);
    }

    // Same data, same order, same optimizer state: bit-identical weights and state.
    let (ma, mb) = (manifest(&run_a.join("checkpoint")), manifest(&run_b.join("checkpoint")));
    assert_eq!(ma["step"], 48);
    assert_eq!(mb["step"], 48);
    assert_eq!(ma["examples"], mb["examples"]);
    assert_eq!(ma["files"]["weights.safetensors"], mb["files"]["weights.safetensors"], "weights differ");
    assert_eq!(ma["files"]["optimizer.safetensors"], mb["files"]["optimizer.safetensors"], "optimizer state differs");
}

#[test]
fn incremental_stage_warm_starts_across_config_changes_and_records_lineage() {
    let d = tempfile::tempdir().unwrap();
    let cfg = simulate(d.path(), 5);
    let model = d.path().join("model.toml");
    std::fs::write(&model, MODEL.replace("epochs = 3", "epochs = 1")).unwrap();
    let parent = d.path().join("parent");
    let (ok, _, err) = mixrank(&["train", s(&cfg), "--model", s(&model), "--out", s(&parent)]);
    assert!(ok, "{err}");
    // Incremental without a parent is refused.
    let child = d.path().join("child");
    let (ok, _, err) = mixrank(&["train", s(&cfg), "--model", s(&model), "--out", s(&child), "--stage", "incremental"]);
    assert!(!ok && err.contains("--init"), "{err}");

    // The next day, with ad_id's table doubled, advertiser_id and bid removed and a new
    // categorical feature.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let m = manifest(&parent.join("checkpoint"));
    let days = m["lineage"]["days"][0].as_str().unwrap().to_string();
    let (first, last) = days.split_once("..").unwrap();
    let next = {
        let v = log_events(&parent, "validation");
        assert!(!v.is_empty());
        // Day 4 of 5 is the validation day; train the increment on it.
        text.lines()
            .skip_while(|l| !l.starts_with("[data.splits.validation]"))
            .find_map(|l| l.strip_prefix("days = { from = \"").map(|r| r[..10].to_string()))
            .unwrap()
    };
    let mut new = text.replace(
        &format!("days = {{ from = \"{first}\", to = \"{last}\" }}"),
        &format!("days = {{ from = \"{next}\", to = \"{next}\" }}"),
    );
    assert_ne!(new, text);
    let ad = "name = \"ad_id\"\nbuckets = ";
    let at = new.find(ad).unwrap() + ad.len();
    let end = at + new[at..].find('\n').unwrap();
    let buckets: u64 = new[at..end].parse().unwrap();
    new.replace_range(at..end, &(buckets * 2).to_string());
    new = new.replace(
        "[[features.categorical]]\nname = \"advertiser_id\"",
        "[[features.categorical]]\nname = \"advertiser_gone\"\ncolumn = \"advertiser_id\"",
    );
    new = new.replace("[[features.dense]]\nname = \"bid\"\nlog1p = true\nstandardize = true\n", "");
    // A teacher column: the incremental stage turns distillation off unless told not to.
    let click = "name = \"click\"\nkind = \"binary\"\nlabel = \"click\"\n";
    assert!(new.contains(click));
    new = new.replace(click, &format!("{click}teacher = {{ column = \"p_click_true\", kind = \"probability\" }}\n"));
    new.push_str("\n[distill]\nsource = \"columns\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"pointwise_bce\"\n");
    let cfg2 = d.path().join("sim/next.toml");
    std::fs::write(&cfg2, new).unwrap();
    let (ok, _, err) = mixrank(&[
        "train",
        s(&cfg2),
        "--model",
        s(&model),
        "--out",
        s(&child),
        "--stage",
        "incremental",
        "--init",
        s(&parent),
    ]);
    assert!(ok, "{err}");
    for want in [
        "table `ad_id`: remapped",
        "table `advertiser_id`: dropped",
        "table `advertiser_gone`: added",
        "dense feature `bid`: removed",
        "categorical feature `advertiser_gone`: added",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let c = manifest(&child.join("checkpoint"));
    assert_eq!(c["lineage"]["stage"], "incremental");
    assert_eq!(c["lineage"]["parent"], s(&parent.join("checkpoint")));
    assert_eq!(c["lineage"]["days"], serde_json::json!([days, format!("{next}..{next}")]));
    assert!(c["lineage"]["warm_start"].as_array().unwrap().len() >= 5);
    assert_eq!(log_events(&child, "warm_start").len(), 1);
    assert!(err.contains("incremental stage: distillation is off"), "{err}");
    assert_eq!(c["lineage"]["teacher"], serde_json::Value::Null);
    assert_eq!(log_events(&child, "distillation")[0]["distillation"], "off");
    // Kept on explicitly: a warning, and the teacher in the lineage.
    let child2 = d.path().join("child2");
    let (ok, _, err) = mixrank(&[
        "train",
        s(&cfg2),
        "--model",
        s(&model),
        "--out",
        s(&child2),
        "--stage",
        "incremental",
        "--init",
        s(&child),
        "--distill-in-incremental",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("warning: distillation kept on in the incremental stage"), "{err}");
    let c2 = manifest(&child2.join("checkpoint"));
    assert_eq!(c2["lineage"]["teacher"], "click<-p_click_true");
    assert_eq!(c2["lineage"]["parent"], s(&child.join("checkpoint")));
    assert_eq!(c2["lineage"]["days"].as_array().unwrap().len(), 3, "parent's days, its parent's, this run's");
    assert!(c2["lineage"]["warm_start"].as_array().unwrap().is_empty(), "same config as the parent");
}
