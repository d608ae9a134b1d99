//! The CLI end to end: a real process, real files. The text outputs are compared with
//! committed snapshots (`tests/snapshots/`, see [`snapshot`]); after an intended change
//! of output, `MIXRANK_UPDATE_SNAPSHOTS=1 cargo test --workspace --release --test cli` rewrites
//! them for review.

mod snapshot;

mod common;

use common::mixrank;
use std::path::Path;
use std::process::Command;

/// `mixrank simulate` of 3 small days (500 users, 300 ads) into `out`.
fn simulate_small(out: &Path, requests_per_day: usize) -> (bool, String, String) {
    let rpd = requests_per_day.to_string();
    let args = ["--days", "3", "--requests-per-day", &rpd, "--users", "500", "--initial-ads", "300"];
    let mut all = vec!["simulate", "--out", out.to_str().unwrap()];
    all.extend_from_slice(&args);
    mixrank(&all)
}

#[test]
fn simulate_then_stats_with_json() {
    let d = tempfile::tempdir().unwrap();
    let sim = d.path().join("sim");
    let (ok, out, err) = simulate_small(&sim, 400);
    assert!(ok, "{err}");
    assert!(out.contains("wrote 12000 rows in 3 files"), "{out}");
    let cfg = sim.join("mixrank.toml");
    let json = d.path().join("stats.json");
    let (ok, out, err) = mixrank(&["data", "stats", cfg.to_str().unwrap(), "--json", json.to_str().unwrap()]);
    assert!(ok, "{err}");
    for want in
        ["split `train`: 4000 rows", "split `test`: 4000 rows", "home_feed", "click", "user_interests", "ad_hist_ctr"]
    {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let splits = v.as_array().unwrap();
    assert_eq!(splits.len(), 3);
    let train = splits.iter().find(|s| s["split"] == "train").unwrap();
    assert_eq!(train["rows"], 4000);
    assert_eq!(train["bad_rows"], 0);
    assert_eq!(train["tasks"].as_array().unwrap().len(), 4);
    assert_eq!(train["segments"].as_array().unwrap().len(), 3);
}

#[test]
fn mmoe_paper_kind_writes_three_splits() {
    let d = tempfile::tempdir().unwrap();
    let out_dir = d.path().join("m");
    let (ok, out, err) = mixrank(&[
        "simulate",
        "--kind",
        "mmoe-paper",
        "--correlation",
        "0.9",
        "--rows",
        "2000",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("wrote 2400 rows in 3 files"), "{out}");
    for f in ["train.parquet", "validation.parquet", "test.parquet", "mixrank.toml"] {
        assert!(Path::new(&out_dir).join(f).is_file(), "{f}");
    }
}

#[test]
fn bad_config_exits_non_zero_naming_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("bad.toml");
    std::fs::write(&cfg, "[data]\nformat = \"xml\"\n").unwrap();
    let (ok, _, err) = mixrank(&["data", "stats", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("bad.toml") && err.contains("data.format") && err.contains("xml"), "{err}");
}

#[test]
fn bad_data_exits_non_zero_naming_file_row_and_column() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("data.csv"), "user,click\na,0\nb,7\n").unwrap();
    let cfg = d.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[data]\nformat = \"csv\"\n[data.splits.train]\npaths = [\"data.csv\"]\n[[features.categorical]]\nname = \"user\"\nbuckets = 8\ndim = 2\n[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"click\"\n",
    )
    .unwrap();
    let (ok, _, err) = mixrank(&["data", "stats", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("data.csv") && err.contains("line 3") && err.contains("column `click`"), "{err}");
}

/// The committed `configs/frappe.toml` over synthetic files of Frappe's shape written to
/// `dir` (20,000 rows to split 90/10 into train and validation, 5,000 test rows; ten
/// one-hot fields of disjoint index ranges, the label a noisy function of three of them),
/// so the CLI's train, eval and compare paths run with nothing beside the repository.
fn frappe_shaped(dir: &Path) -> std::path::PathBuf {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/frappe.toml");
    let text = std::fs::read_to_string(committed).unwrap();
    assert!(text.contains("../../shared/data/frappe/"), "configs/frappe.toml changed its paths");
    // The data in `dir/frappe/`, as in ../shared/data/frappe/: the row-fraction split
    // hashes (parent directory, file name, row), so the split does not depend on `dir`.
    std::fs::write(dir.join("frappe.toml"), text.replace("../../shared/data/frappe/", "frappe/")).unwrap();
    std::fs::create_dir_all(dir.join("frappe")).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |m: u64| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % m
    };
    for (name, rows) in [("frappe.validation.libfm", 20_000), ("frappe.test.libfm", 5_000)] {
        let mut out = String::new();
        for _ in 0..rows {
            let fields: Vec<u64> = (0..10u64).map(|f| f * 100 + next(20)).collect();
            let score = (fields[0] % 7) as i64 + (fields[1] % 5) as i64 - (fields[2] % 3) as i64 + next(6) as i64;
            out.push_str(if score > 6 { "1" } else { "-1" });
            for f in fields {
                out.push_str(&format!(" {f}:1"));
            }
            out.push('\n');
        }
        std::fs::write(dir.join("frappe").join(name), out).unwrap();
    }
    dir.join("frappe.toml")
}

#[test]
fn train_with_a_model_file_writes_the_run_dir() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("m.toml");
    std::fs::write(
        &model,
        "[model]\narchitecture = \"single_task\"\nexpert_dim = 16\n[[model.experts]]\nkind = \"mlp\"\nhidden = [16]\n",
    )
    .unwrap();
    let cfg = frappe_shaped(d.path());
    let run = d.path().join("run");
    let (ok, out, err) = mixrank(&[
        "train",
        cfg.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--max-steps",
        "4",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("trained 4 steps, 16384 examples"), "{out}");
    assert!(out.contains("click        all                 1976"), "{out}");
    for f in ["train_log.jsonl", "metrics.json", "dense_stats.json"] {
        assert!(run.join(f).is_file(), "{f}");
    }
    // Eval loads the verified checkpoint and scores the test split in f32 and bf16.
    let json = d.path().join("eval.json");
    let (ok, out, err) = mixrank(&[
        "eval",
        run.to_str().unwrap(),
        "--split",
        "test",
        "--precision",
        "bf16",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("click        all                 5000") && out.contains("ΔAUC"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["split"], "test");
    assert_eq!(v["f32"][0]["task"], "click");
    assert_eq!(v["bf16"][0]["overall"]["type"], "binary");
    // Compare: a run against itself has zero lift and nothing significant.
    let (ok, out, err) =
        mixrank(&["compare", run.to_str().unwrap(), run.to_str().unwrap(), "--split", "test", "--resamples", "50"]);
    assert!(ok, "{err}");
    assert!(out.contains("click       all           auc") && out.contains("0.000% [  0.000%,   0.000%]"), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("click") && l.trim_end().ends_with('*')), "{out}");
    // A model file with a mistake names the file and the key.
    std::fs::write(&model, "[model]\narchitecture = \"mmoe\"\nexperts = []\n").unwrap();
    let (ok, _, err) =
        mixrank(&["train", cfg.to_str().unwrap(), "--model", model.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("m.toml") && err.contains("model.experts"), "{err}");
}

#[test]
fn experiment_retention_quick_writes_its_report() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("ret");
    let (ok, stdout, err) =
        mixrank(&["experiment", "retention", "--out", out.to_str().unwrap(), "--quick", "--threads", "2"]);
    assert!(ok, "{err}");
    assert!(stdout.contains("# Data-retention experiment") && stdout.contains("report:"), "{stdout}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("(b) + pointwise distillation") && md.contains("Distillation on vs off"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert!(json["incremental"]["on_vs_off"]["lifts"].as_array().is_some_and(|l| !l.is_empty()), "{json}");
}

#[test]
fn a_missing_config_file_is_named_once_with_its_cause() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope.toml");
    let (ok, _, err) = mixrank(&["data", "stats", missing.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("nope.toml") && err.contains("cannot read"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// `mixrank ARGS` as a snapshot transcript: the command line, then stdout when it
/// succeeds or the exit status and stderr when it fails (`fails` says which is
/// expected), with `tmp` written as `<TMP>`.
fn transcript(tmp: &Path, args: &[&str], fails: bool) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mixrank")).args(args).output().expect("run mixrank");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(!out.status.success(), fails, "mixrank {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let text = if fails {
        format!("$ mixrank {}\n(exit status {})\n{stderr}", args.join(" "), out.status.code().unwrap_or(-1))
    } else {
        format!("$ mixrank {}\n{stdout}", args.join(" "))
    };
    snapshot::normalize_paths(&text, tmp)
}

/// The subcommands a `--help` text lists under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|&c| c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_help_text_matches_its_snapshot() {
    // Walk the command tree from the top-level help, so a new subcommand gets checked
    // (and, until its snapshot is committed, fails).
    let tmp = Path::new("/nonexistent");
    let mut todo = vec![Vec::<String>::new()];
    let mut results = Vec::new();
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let text = transcript(tmp, &args, false);
        assert!(text.contains("Usage: mixrank"), "{text}");
        todo.extend(subcommands(&text).into_iter().map(|c| [path.clone(), vec![c]].concat()));
        let name =
            std::iter::once("help".to_string()).chain(path.iter().map(|p| p.replace('-', "_"))).collect::<Vec<_>>();
        results.push(snapshot::check(&name.join("_"), &text));
    }
    assert!(results.len() >= 15, "{} help texts: the walk missed subcommands", results.len());
    snapshot::assert_all(results);
}

const SNAPSHOT_MMOE: &str = "[model]\narchitecture = \"mmoe\"\nexpert_dim = 8\ntower = { hidden = [4] }\n\
[[model.experts]]\nkind = \"mlp\"\nhidden = [8]\n\
[[model.experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nhidden = [8]\n[train]\nepochs = 2\n";

const SNAPSHOT_SHARED_BOTTOM: &str =
    "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 8\ntower = { hidden = [4] }\n\
[[model.experts]]\nkind = \"mlp\"\nhidden = [8]\n[train]\nepochs = 2\n";

/// simulate → data stats → train (shared-bottom and MMoE) → eval → compare → report on
/// 3 days × 100 requests: exact text where it depends only on the data, metric digits
/// masked where it depends on trained weights.
#[test]
fn the_main_workflow_matches_its_snapshots() {
    let d = tempfile::tempdir().unwrap();
    let tmp = d.path();
    let p = |name: &str| tmp.join(name).to_str().unwrap().to_string();
    let (sim, cfg, base, mmoe) = (p("sim"), p("sim/mixrank.toml"), p("base"), p("mmoe"));
    let (mmoe_model, base_model) = (p("mmoe.toml"), p("shared_bottom.toml"));
    std::fs::write(&mmoe_model, SNAPSHOT_MMOE).unwrap();
    std::fs::write(&base_model, SNAPSHOT_SHARED_BOTTOM).unwrap();
    let exact = |args: &[&str]| transcript(tmp, args, false);
    let masked = |args: &[&str]| snapshot::mask_metrics(&snapshot::mask_timings(&exact(args)));
    let mut results = Vec::new();
    let sim_args = [
        "simulate",
        "--out",
        &sim,
        "--days",
        "3",
        "--requests-per-day",
        "100",
        "--users",
        "200",
        "--initial-ads",
        "100",
    ];
    results.push(snapshot::check("simulate", &snapshot::mask_timings(&exact(&sim_args))));
    results.push(snapshot::check("data_stats", &exact(&["data", "stats", &cfg, "--split", "train"])));
    exact(&["train", &cfg, "--model", &base_model, "--out", &base]);
    results.push(snapshot::check("train_mmoe", &masked(&["train", &cfg, "--model", &mmoe_model, "--out", &mmoe])));
    results.push(snapshot::check("eval_mmoe", &masked(&["eval", &mmoe, "--split", "test"])));
    // The simulator's [eval] section in the JSON: truth metrics for click and save, and a
    // one-slot auction with one winner per request whose sums agree.
    let json = p("eval.json");
    let (ok, _, err) = mixrank(&["eval", &mmoe, "--split", "test", "--json", &json]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let truth: Vec<&str> = v["truth"].as_array().unwrap().iter().map(|t| t["task"].as_str().unwrap()).collect();
    assert_eq!(truth, ["click", "save"]);
    assert_eq!(v["truth"][0]["overall"]["ndcg_requests"], 100);
    let a = &v["auction"]["overall"];
    assert_eq!((a["requests"].as_u64(), a["winners"].as_u64()), (Some(100), Some(100)));
    let f = |k: &str| a[k].as_f64().unwrap();
    assert!((f("cpc") * f("clicks") - f("revenue")).abs() < 1e-9 * f("revenue"), "{a}");
    assert!((f("ecpm") - 1000.0 * f("revenue") / 100.0).abs() < 1e-9 * f("ecpm"), "{a}");
    assert!((f("calibration_error") - (f("mean_pctr") - f("ctr"))).abs() < 1e-12, "{a}");
    // The legend's constants stay exact; the significance marker depends on the values,
    // so it is masked with them.
    let compare = exact(&["compare", &base, &mmoe, "--split", "test", "--resamples", "50"]);
    let compare: String = snapshot::mask_metrics_except(&compare, |l| l.starts_with("lift:"))
        .lines()
        .map(|l| format!("{}\n", l.trim_end().trim_end_matches('*')))
        .collect();
    results.push(snapshot::check("compare", &compare));
    results.push(snapshot::check("report", &exact(&["report", &mmoe])));
    snapshot::assert_all(results);
}

#[test]
fn error_messages_match_their_snapshots() {
    let d = tempfile::tempdir().unwrap();
    let tmp = d.path();
    let p = |name: &str| tmp.join(name).to_str().unwrap().to_string();
    let failing = |args: &[&str]| transcript(tmp, args, true);
    std::fs::write(p("typo.toml"), "[data]\nformat = \"parquet\"\nbatch_sise = 4\n").unwrap();
    std::fs::write(p("data.csv"), "user,click\na,0\nb,7\n").unwrap();
    std::fs::write(
        p("bad_row.toml"),
        "[data]\nformat = \"csv\"\n[data.splits.train]\npaths = [\"data.csv\"]\n[[features.categorical]]\nname = \"user\"\n\
         buckets = 8\ndim = 2\n[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"click\"\n",
    )
    .unwrap();
    snapshot::assert_all([
        snapshot::check("error_unknown_config_key", &failing(&["data", "stats", &p("typo.toml")])),
        snapshot::check("error_bad_data_row", &failing(&["data", "stats", &p("bad_row.toml")])),
        snapshot::check("error_missing_config", &failing(&["data", "stats", &p("nope.toml")])),
        snapshot::check("error_missing_run_dir", &failing(&["eval", &p("no_run")])),
    ]);
}

#[test]
fn simulated_config_trains_as_is_with_one_seed_and_one_writer_per_run_dir() {
    let d = tempfile::tempdir().unwrap();
    let sim = d.path().join("sim");
    let (ok, _, err) = simulate_small(&sim, 300);
    assert!(ok, "{err}");
    let cfg = sim.join("mixrank.toml");
    let run = d.path().join("run");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", cfg.to_str().unwrap(), "--out", run.to_str().unwrap()];
        args.extend_from_slice(extra);
        mixrank(&args)
    };
    // The simulator's config has a model: it trains as is; --seed sets both seeds.
    let (ok, out, err) = train(&["--seed", "9", "--max-steps", "2"]);
    assert!(ok, "{err}");
    assert!(out.contains("stopped: max_steps = 2 reached"), "{out}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("checkpoint/manifest.json")).unwrap()).unwrap();
    // The config as trained, with `seed = 9` in [data] and in [train] and no other seed.
    let config = manifest["config_toml"].as_str().unwrap();
    let seeds: Vec<&str> = config.lines().filter(|l| l.starts_with("seed = ")).collect();
    assert_eq!(seeds, ["seed = 9", "seed = 9"], "{config}");
    // The same --out again: refused, naming the way out.
    let (ok, _, err) = train(&["--max-steps", "2"]);
    assert!(!ok && err.contains("already holds a run") && err.contains("--overwrite"), "{err}");
    // A second writer while the first runs fails at once naming the first's pid.
    let slow = std::process::Command::new(env!("CARGO_BIN_EXE_mixrank"))
        .args(["train", cfg.to_str().unwrap(), "--out", run.to_str().unwrap(), "--overwrite"])
        .args(["--debug-step-delay-ms", "200", "--max-steps", "1000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = run.join(".mixrank.lock");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&lock).map_or(true, |t| t.trim() != slow.id().to_string()) {
        assert!(t0.elapsed().as_secs() < 60, "the first writer never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (ok, _, err) = train(&["--overwrite", "--max-steps", "2"]);
    assert!(!ok && err.contains(&format!("pid {}", slow.id())), "{err}");
    // Killed (-9): its lock stays behind, is found stale and taken over.
    let mut slow = slow;
    slow.kill().unwrap();
    slow.wait().unwrap();
    assert!(lock.is_file());
    let (ok, _, err) = train(&["--overwrite", "--max-steps", "2"]);
    assert!(ok, "{err}");
    assert!(err.contains("took over the lock") && err.contains(&format!("pid {}", slow.id())), "{err}");
    assert!(!lock.exists(), "released at the end");
}

#[test]
fn train_with_ranks_in_process_reports_the_replicas_and_mpirun_needs_mpi_built_in() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("m.toml");
    std::fs::write(
        &model,
        "[model]\narchitecture = \"single_task\"\nexpert_dim = 8\n[[model.experts]]\nkind = \"mlp\"\nhidden = [8]\n",
    )
    .unwrap();
    let cfg = frappe_shaped(d.path());
    let run = d.path().join("run");
    let args = ["train", cfg.to_str().unwrap(), "--model", model.to_str().unwrap(), "--max-steps", "2"];
    let mut two = args.to_vec();
    two.extend(["--ranks-in-process", "2", "--out", run.to_str().unwrap()]);
    let (ok, out, err) = mixrank(&two);
    assert!(ok, "{err}");
    // One report (rank 0's): the global batches' rows.
    assert_eq!(out.matches("trained 2 steps, 8192 examples").count(), 1, "{out}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["replicas"]["ranks"], 2);
    assert_eq!(m["replicas"]["transport"], "in-process");
    // Started by mpirun (its environment) without MPI built in: refused, not N copies.
    if !cfg!(feature = "mpi") {
        let out = d.path().join("mpi");
        let mut one = args.to_vec();
        one.extend(["--out", out.to_str().unwrap()]);
        let o =
            Command::new(env!("CARGO_BIN_EXE_mixrank")).args(&one).env("OMPI_COMM_WORLD_SIZE", "2").output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("built without MPI"), "{err}");
    }
}
