//! Distillation end to end: teachers from a score column and from a checkpoint with its
//! own feature config, a misaligned teacher refused, and the retention experiment in its
//! quick form (with a stand-in warm start so the incremental part runs too).

use mixrank_data::config::distill::{DistillLoss, PairSampling, TeacherPrecision};
use mixrank_data::config::wire::ConfigFile;
use mixrank_data::ExperimentConfig;
use mixrank_engine::CpuOps;
use mixrank_metrics::TaskMetrics;
use mixrank_train::experiment::{run_retention, RetentionPlan, WarmStart};
use mixrank_train::{train, Result, TrainOptions, TrainSummary};
use std::path::Path;
use std::sync::Arc;

const TINY_MODEL: &str = "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 16\ntower = { hidden = [8] }\n\
    [[model.experts]]\nkind = \"mlp\"\nhidden = [32]\n[train]\nepochs = 4\nlr = 0.003\nthreads = 2\n";

/// Simulated engagement data (4 days: train 2, validation 1, test 1) and its config with
/// the tiny model and 512-row batches, as a wire file to adjust.
fn sim(dir: &Path) -> (ConfigFile, std::path::PathBuf) {
    let p = mixrank_data::simulate::EngagementParams {
        seed: 3,
        days: 4,
        requests_per_day: 600,
        users: 500,
        initial_ads: 200,
        new_ads_per_day: 20,
        ..Default::default()
    };
    let s = mixrank_data::simulate::simulate_engagement(&p, dir).unwrap();
    let model = dir.join("model.toml");
    std::fs::write(&model, TINY_MODEL).unwrap();
    let mut w = ExperimentConfig::load(&s.config).unwrap().with_model_file(&model).unwrap().wire;
    // 6000 rows a day (one unit) cut into whole batches: see `pairs` on request groups.
    w.data.batch_size = 250;
    (w, s.config)
}

fn load(w: &ConfigFile, path: &Path) -> ExperimentConfig {
    std::fs::write(path, toml::to_string(w).unwrap()).unwrap();
    ExperimentConfig::load(path).unwrap()
}

fn click_auc(s: &TrainSummary) -> f64 {
    let TaskMetrics::Binary(m) = &s.validation.iter().find(|r| r.task == "click").unwrap().overall else {
        panic!("binary")
    };
    m.auc.unwrap()
}

/// Pearson correlation of the logits of two probability vectors.
fn logit_corr(a: &[f32], b: &[f32]) -> f64 {
    let logit = |p: f32| {
        let p = (p as f64).clamp(1e-6, 1.0 - 1e-6);
        (p / (1.0 - p)).ln()
    };
    let (x, y): (Vec<f64>, Vec<f64>) = a.iter().zip(b).map(|(&p, &q)| (logit(p), logit(q))).unzip();
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(&y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

fn click_preds(s: &TrainSummary) -> &[f32] {
    &s.predictions.as_ref().unwrap().preds[0]
}

/// Rows and request groups over the shuffled training batches of `cfg`.
fn request_groups(cfg: &ExperimentConfig) -> (usize, usize) {
    use mixrank_data::pipeline::{read_all, StreamOptions};
    let n = cfg.dense.len();
    let stats = mixrank_data::stats::DenseStats { mean: vec![0.0; n], std: vec![1.0; n], rows: 0 };
    let enc = mixrank_data::Encoder::new(Arc::new(cfg.clone()), mixrank_data::DenseMode::Fitted(Arc::new(stats)));
    let split = cfg.split("train").unwrap();
    let (batches, _) = read_all(Arc::new(enc.unwrap()), split, StreamOptions::from_config(cfg, true)).unwrap();
    let groups =
        batches.iter().map(|b| mixrank_train::distill::pairs::Groups::by_request(&b.request_id, |_| true).len()).sum();
    (batches.iter().map(|b| b.rows).sum(), groups)
}

/// Mean distillation loss of `task` in the first and the last train-log line.
fn distill_losses(run: &Path, task: &str) -> (f64, f64) {
    let log = std::fs::read_to_string(run.join("train_log.jsonl")).unwrap();
    let v: Vec<f64> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["event"] == "train")
        .map(|l| {
            let d = l["distill_loss"].as_array().expect("train lines carry distill_loss");
            d.iter().find(|x| x[0] == task).unwrap()[1].as_f64().unwrap()
        })
        .collect();
    (v[0], *v.last().unwrap())
}

#[test]
fn column_teacher_alone_teaches_click() {
    // A logged "production" probability t = σ(3a − 1 + b) and click labels that are pure
    // noise (weight 0): only the teacher column can teach the click tower. A second task
    // with weight 0 carries t as its label so the validation rows' t can be read back.
    let d = tempfile::tempdir().unwrap();
    let mut csv = String::from("a,b,y,t\n");
    for i in 0..4000u64 {
        let a = (i * 7919 % 1000) as f64 / 500.0 - 1.0;
        let b = (i * 104_729 % 997) as f64 / 997.0;
        let t = 1.0 / (1.0 + (-(3.0 * a - 1.0 + b)).exp());
        csv.push_str(&format!("{a},{b},{},{t}\n", ((i * 2_654_435_761) >> 7) % 2));
    }
    std::fs::write(d.path().join("rows.csv"), csv).unwrap();
    let cfg = |distill: &str| {
        format!(
            "[data]\nformat = \"csv\"\nbatch_size = 128\n\
             [data.splits.train]\npaths = [\"rows.csv\"]\nrows = {{ from = 0.0, to = 0.8 }}\n\
             [data.splits.validation]\npaths = [\"rows.csv\"]\nrows = {{ from = 0.8, to = 1.0 }}\n\
             [[features.dense]]\nname = \"a\"\n[[features.dense]]\nname = \"b\"\n\
             [[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"y\"\nweight = 0.0\n\
             teacher = {{ column = \"t\", kind = \"probability\" }}\n\
             [[tasks]]\nname = \"truth\"\nkind = \"regression\"\nlabel = \"t\"\nweight = 0.0\n{TINY_MODEL}{distill}"
        )
    };
    let run = |name: &str, distill: &str| {
        let path = d.path().join(format!("{name}.toml"));
        std::fs::write(&path, cfg(distill).replace("epochs = 4", "epochs = 8")).unwrap();
        let mut opts = TrainOptions::new(d.path().join(name));
        opts.log_every = 5;
        train(Arc::new(ExperimentConfig::load(&path).unwrap()), &opts, &CpuOps::new()).unwrap()
    };
    let s = run(
        "distilled",
        "[distill]\nsource = \"columns\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"pointwise_bce\"\n",
    );
    let p = s.predictions.as_ref().unwrap();
    let (preds, truth) = (&p.preds[0], &p.labels[1]);
    let taught = logit_corr(preds, truth);
    let mae_of = |p: &[f32]| p.iter().zip(truth).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / p.len() as f64;
    let mae = mae_of(preds);
    assert!(taught > 0.95 && mae < 0.05, "click vs the teacher column: logit correlation {taught}, MAE {mae}");
    let (first, last) = distill_losses(&d.path().join("distilled"), "click");
    assert!(last < first, "distillation loss {first} -> {last}");
    // Control: the same run without distillation learns nothing about t.
    let c = run("control", "");
    let untaught = mae_of(&c.predictions.as_ref().unwrap().preds[0]);
    assert!(untaught > 0.1 && untaught > 3.0 * mae, "MAE {mae} distilled vs {untaught} control");
}

#[test]
fn checkpoint_teacher_with_other_features_drives_every_loss() {
    let d = tempfile::tempdir().unwrap();
    let (w, cfg_path) = sim(d.path());
    let teacher = d.path().join("teacher");
    let t = train(
        Arc::new(load(&w, &cfg_path.with_file_name("teacher.toml"))),
        &TrainOptions::new(&teacher),
        &CpuOps::new(),
    )
    .unwrap();

    // The student sees fewer features than the teacher (no device, activity, bid) and
    // no click labels; a different loss per task, request pairs on unshuffled batches.
    let mut s = w.clone();
    s.features.categorical.retain(|c| c.name != "device_id");
    s.features.dense.retain(|x| x.name != "bid" && x.name != "user_activity");
    s.data.shuffle_buffer = 0;
    s.data.chunk_rows = s.data.batch_size;
    s.tasks.iter_mut().find(|t| t.name == "click").unwrap().weight = 0.0;
    s.distill = Some(
        toml::from_str(&format!(
            "source = \"checkpoint\"\ncheckpoint = {:?}\n\
             [[tasks]]\ntask = \"click\"\nloss = \"pairwise\"\npairs = \"request\"\npairs_per_row = 3\n\
             [[tasks]]\ntask = \"save\"\nloss = \"listwise\"\ntemperature = 2.0\n\
             [[tasks]]\ntask = \"dwell\"\nloss = \"logit_mse\"\nweight = 0.5\n\
             [[tasks]]\ntask = \"conversion\"\nloss = \"pointwise_bce\"\n",
            teacher.to_string_lossy()
        ))
        .unwrap(),
    );
    let cfg = load(&s, &cfg_path.with_file_name("student.toml"));
    // With that layout a shuffled training batch holds whole requests (10 candidates).
    let (rows, groups) = request_groups(&cfg);
    assert!(rows as f64 / groups as f64 > 9.5, "{rows} rows in {groups} request groups");
    let run = d.path().join("student");
    let mut opts = TrainOptions::new(&run);
    opts.log_every = 5;
    let r = train(Arc::new(cfg), &opts, &CpuOps::new()).unwrap();
    let agree = logit_corr(click_preds(&r), click_preds(&t));
    eprintln!("checkpoint teacher: corr {agree}; auc student {} teacher {}", click_auc(&r), click_auc(&t));
    assert!(agree > 0.7, "student and teacher click logits correlate {agree}");
    for task in ["click", "save", "dwell", "conversion"] {
        let (first, last) = distill_losses(&run, task);
        assert!(first.is_finite() && first > 0.0 && last.is_finite(), "{task}: {first} -> {last}");
    }
    let (first, last) = distill_losses(&run, "click");
    assert!(last < first, "click pairwise distillation loss {first} -> {last}");

    // The same with the teacher in bf16: the student still follows it.
    s.distill.as_mut().unwrap().teacher_precision = Some(TeacherPrecision::Bf16);
    let cfg = load(&s, &cfg_path.with_file_name("student_bf16.toml"));
    let r16 = train(Arc::new(cfg), &TrainOptions::new(d.path().join("student_bf16")), &CpuOps::new()).unwrap();
    let agree16 = logit_corr(click_preds(&r16), click_preds(&t));
    assert!(agree16 > 0.7, "bf16 teacher: student and teacher click logits correlate {agree16}");

    // A teacher directory without a checkpoint is refused with the key's value.
    s.distill.as_mut().unwrap().checkpoint = Some(d.path().join("nowhere").to_string_lossy().into_owned());
    let cfg = load(&s, &cfg_path.with_file_name("missing.toml"));
    let e = train(Arc::new(cfg), &TrainOptions::new(d.path().join("x")), &CpuOps::new()).err().unwrap().to_string();
    assert!(e.contains("distill.checkpoint") && e.contains("nowhere"), "{e}");
}

#[test]
fn teacher_reading_other_rows_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut clean = String::from("a,b,y\n");
    let mut bad = String::from("a,b,y\n");
    for i in 0..64 {
        let (a, b, y) = (i as f64 / 64.0, (i % 7) as f64, (i % 2) as f64);
        clean.push_str(&format!("{a},{b},{y}\n"));
        // Row 5's `b` (a feature only the teacher reads) does not parse.
        let b = if i == 5 { "oops".to_string() } else { b.to_string() };
        bad.push_str(&format!("{a},{b},{y}\n"));
    }
    std::fs::write(d.path().join("clean.csv"), clean).unwrap();
    std::fs::write(d.path().join("bad.csv"), bad).unwrap();
    let head = |file: &str, feats: &str| {
        format!(
            "[data]\nformat = \"csv\"\nbatch_size = 16\nmax_bad_rows = 1\n[data.splits.train]\npaths = [\"{file}\"]\n\
             {feats}[[tasks]]\nname = \"y\"\nkind = \"binary\"\nlabel = \"y\"\n{TINY_MODEL}"
        )
    };
    let teacher_cfg = d.path().join("teacher.toml");
    std::fs::write(
        &teacher_cfg,
        head("clean.csv", "[[features.dense]]\nname = \"a\"\n[[features.dense]]\nname = \"b\"\n"),
    )
    .unwrap();
    let teacher = d.path().join("teacher");
    train(Arc::new(ExperimentConfig::load(&teacher_cfg).unwrap()), &TrainOptions::new(&teacher), &CpuOps::new())
        .unwrap();
    let student_cfg = d.path().join("student.toml");
    std::fs::write(
        &student_cfg,
        format!(
            "{}[distill]\nsource = \"checkpoint\"\ncheckpoint = \"teacher\"\n[[distill.tasks]]\ntask = \"y\"\nloss = \"logit_mse\"\n",
            head("bad.csv", "[[features.dense]]\nname = \"a\"\n")
        ),
    )
    .unwrap();
    let e = train(
        Arc::new(ExperimentConfig::load(&student_cfg).unwrap()),
        &TrainOptions::new(d.path().join("s")),
        &CpuOps::new(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("batch 0 does not hold the student's rows"), "{e}");

    // Rows the student skips at the very end (its `c` does not parse in the last 16
    // rows) leave the teacher a whole extra batch: caught when the next epoch starts.
    let mut tail = String::from("a,b,c,y\n");
    for i in 0..64 {
        let c = if i >= 48 { "bad".to_string() } else { i.to_string() };
        tail.push_str(&format!("{},{},{c},{}\n", i as f64 / 64.0, i % 7, i % 2));
    }
    std::fs::write(d.path().join("tail.csv"), tail).unwrap();
    let text = format!(
        "{}[distill]\nsource = \"checkpoint\"\ncheckpoint = \"teacher\"\n[[distill.tasks]]\ntask = \"y\"\nloss = \"logit_mse\"\n",
        head("tail.csv", "[[features.dense]]\nname = \"a\"\n[[features.dense]]\nname = \"c\"\n")
    )
    .replace("max_bad_rows = 1", "max_bad_rows = 16\nshuffle_buffer = 0\nchunk_rows = 16");
    std::fs::write(&student_cfg, text).unwrap();
    let e = train(
        Arc::new(ExperimentConfig::load(&student_cfg).unwrap()),
        &TrainOptions::new(d.path().join("s2")),
        &CpuOps::new(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("batch 3 does not hold") && e.contains("rows after the student's epoch ended"), "{e}");
}

/// The trainer's warm start, checking that each increment's parent is a finished run.
struct Checked;

impl WarmStart for Checked {
    fn train_incremental(
        &self,
        cfg: Arc<ExperimentConfig>,
        parent: &Path,
        opts: &TrainOptions,
    ) -> Result<TrainSummary> {
        assert!(parent.join("checkpoint/manifest.json").is_file(), "parent {} has a checkpoint", parent.display());
        mixrank_train::experiment::StageWarmStart(CpuOps::new()).train_incremental(cfg, parent, opts)
    }
}

#[test]
fn retention_experiment_quick_runs_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let mut plan = RetentionPlan::quick();
    plan.threads = 2;
    let r = run_retention(&plan, d.path(), Some(&Checked), None, &CpuOps::new()).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["verdicts"], r.json["verdicts"]);
    // Teacher and four students, 4 tasks each.
    assert_eq!(json["metrics"].as_array().unwrap().len(), 5 * 4);
    assert_eq!(json["comparisons"].as_array().unwrap().len(), 6);
    let runs: Vec<&str> = json["runs"].as_array().unwrap().iter().map(|r| r["run"].as_str().unwrap()).collect();
    assert_eq!(runs, ["teacher", "a_labels", "b_pointwise", "c_pairwise", "c_request_pairs"]);
    assert!(json["incremental"]["on_vs_off"]["lifts"].as_array().is_some_and(|l| !l.is_empty()));
    for i in 0..plan.incremental_days {
        for tag in ["off", "on"] {
            assert!(d.path().join(format!("runs/inc_{tag}_{i}/checkpoint/manifest.json")).is_file());
        }
    }
    let md = std::fs::read_to_string(d.path().join("report.md")).unwrap();
    for needle in ["(a) labels only", "(c) + pairwise distillation", "95% CI", "Distillation on vs off"] {
        assert!(md.contains(needle), "report.md lacks `{needle}`");
    }
    // The students' configs distill from the teacher's checkpoint; (a) does not.
    let c = ExperimentConfig::load(&d.path().join("configs/c_pairwise.toml")).unwrap();
    assert!(
        c.distill.is_some()
            && ExperimentConfig::load(&d.path().join("configs/a_labels.toml")).unwrap().distill.is_none()
    );
    let r = ExperimentConfig::load(&d.path().join("configs/c_request_pairs.toml")).unwrap();
    assert_eq!((r.data.shuffle_buffer, r.data.chunk_rows), (0, r.data.batch_size));
    let loss = r.distill.unwrap().tasks[0].loss;
    assert!(matches!(loss, DistillLoss::Pairwise { sampling: PairSampling::Request, .. }), "{loss:?}");
}
