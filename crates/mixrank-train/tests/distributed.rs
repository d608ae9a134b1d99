//! Data-parallel training end to end through `train` with in-process ranks (threads):
//! 2 and 3 ranks train the same run as one process, over an epoch whose batches split
//! unevenly and whose last batch is short; every rank ends with the same weights (the
//! trainer checks it at every checkpoint and at the end), only rank 0 writes the run
//! directory, and refused options are refused; a job whose rank dies resumes with another
//! number of ranks and ends where an uninterrupted one-process run does, every row seen
//! once; early stopping decides the same on every rank. The one-step gradient equality
//! with its derived bound is `mixrank-train`'s unit test `data_parallel_tests`.

use mixrank_data::ExperimentConfig;
use mixrank_dist::{Collective, InProcess};
use mixrank_engine::CpuOps;
use mixrank_train::{train, TrainError, TrainOptions, TrainSummary};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Simulated engagement data with a small MMoE without dropout; `batch_size` rows per
/// global batch.
fn config(dir: &Path, batch_size: usize, extra_train: &str) -> Arc<ExperimentConfig> {
    config_with(dir, batch_size, "", "", extra_train)
}

/// [`config`] with `expert_extra` added to the expert's keys and `model_extra` sections
/// before `[train]`.
fn config_with(
    dir: &Path,
    batch_size: usize,
    expert_extra: &str,
    model_extra: &str,
    extra_train: &str,
) -> Arc<ExperimentConfig> {
    let p = mixrank_data::simulate::EngagementParams { requests_per_day: 30, days: 3, ..Default::default() };
    let sim = mixrank_data::simulate::simulate_engagement(&p, &dir.join("data")).unwrap();
    let model = dir.join("model.toml");
    std::fs::write(
        &model,
        format!(
            "[model]\narchitecture = \"mmoe\"\nexpert_dim = 8\ntower = {{ hidden = [4] }}\n\
             [[model.experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [16]\n{expert_extra}{model_extra}\
             [train]\nthreads = 1\ncheckpoint_every_steps = 4\n{extra_train}"
        ),
    )
    .unwrap();
    let mut cfg = ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap();
    cfg.data.batch_size = batch_size;
    Arc::new(cfg)
}

/// Trains `cfg` into `out` with `n` in-process ranks; every rank's result.
fn run(cfg: &Arc<ExperimentConfig>, out: &Path, n: usize) -> Vec<Result<TrainSummary, TrainError>> {
    run_with(cfg, out, n, |_, _| {}).into_iter().map(|r| r.expect("no rank panics")).collect()
}

/// [`run`] with each rank's options adjusted by `adjust(rank, options)`; a rank that
/// panicked gives `Err` with its message.
fn run_with(
    cfg: &Arc<ExperimentConfig>,
    out: &Path,
    n: usize,
    adjust: impl Fn(usize, &mut TrainOptions) + Sync,
) -> Vec<Result<Result<TrainSummary, TrainError>, String>> {
    std::thread::scope(|s| {
        let hs: Vec<_> = InProcess::group(n)
            .into_iter()
            .map(|c| {
                let mut o = TrainOptions::new(out);
                o.log_every = 1;
                adjust(c.rank(), &mut o);
                o.collective = Some(Arc::new(c) as Arc<dyn Collective>);
                let cfg = cfg.clone();
                s.spawn(move || train(cfg, &o, &CpuOps::new()))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join().map_err(|p| {
                    p.downcast_ref::<&str>()
                        .map(|m| m.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default()
                })
            })
            .collect()
    })
}

/// The dense weights and tables of a checkpoint, by name.
fn weights(ckpt: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(ckpt.join("weights.safetensors")).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    t.tensors()
        .into_iter()
        .map(|(name, v)| {
            let data = v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            (name, data)
        })
        .collect()
}

/// The validation of a data-parallel run (`lead`, rank 0's summary, whose last
/// validation scored the final model): each rank scored its rows of every batch and rank
/// 0 put them back in order. Row by row it must be what one process scores with the
/// run's checkpoint: the rows' data (labels, masks, weights, segments, request ids, kept
/// columns) bit for bit, in the same order; the predictions within 1e-6 (relative, or
/// absolute below 1), as the CPU GEMM's blocking depends on the batch's row count (a
/// rank forwards 7 to 12 rows of a batch, the checkpoint scorer 4096): measured, a few
/// rows differ in the last bit or two; a row out of place would differ by far more; the
/// gate means (sums over the ranks' rows, `f64`) within 1e-12.
fn same_as_one_process_scoring(lead: &TrainSummary, out: &Path, what: &str) {
    let ops = CpuOps::new();
    let mut scorer = mixrank_train::CheckpointScorer::open(out, &ops, None).unwrap();
    let one = scorer.score(&ops, "validation").unwrap();
    let ranks = lead.predictions.as_ref().expect("rank 0 has the validation's predictions");
    assert!(one.weights.len() > 40, "{what}: a validation split to compare ({} rows)", one.weights.len());
    assert_eq!(ranks.preds.len(), one.preds.len());
    let (mut differ, mut worst) = (0, 0f32);
    for (t, (a, b)) in ranks.preds.iter().zip(&one.preds).enumerate() {
        assert_eq!(a.len(), b.len(), "{what}: task {t}'s rows");
        for (row, (x, y)) in a.iter().zip(b).enumerate() {
            let d = (x - y).abs() / y.abs().max(1.0);
            assert!(d <= 1e-6, "{what}: task {t}, row {row}: {x} vs {y}");
            differ += usize::from(x != y);
            worst = worst.max(d);
        }
    }
    let total: usize = one.preds.iter().map(Vec::len).sum();
    eprintln!("{what}: across the ranks, {differ} of {total} predictions differ from one process's, by <= {worst:e}");
    assert_eq!(ranks.labels, one.labels, "{what}: labels");
    assert_eq!(ranks.masks, one.masks, "{what}: masks");
    assert_eq!(ranks.weights, one.weights, "{what}: weights");
    assert_eq!(ranks.segments, one.segments, "{what}: segments");
    assert_eq!(ranks.requests, one.requests, "{what}: request ids");
    assert_eq!(ranks.kept.len(), one.kept.len(), "{what}: kept columns");
    for (a, b) in ranks.kept.iter().zip(&one.kept) {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()) && a.len() == b.len(), "{what}: kept");
    }
    assert!(!one.gates.is_empty(), "{what}: the MMoE's gates");
    assert_eq!(ranks.gates.len(), one.gates.len());
    for (a, b) in ranks.gates.iter().zip(&one.gates) {
        assert_eq!((&a.name, &a.experts, &a.rows), (&b.name, &b.experts, &b.rows), "{what}");
        let pairs = a.means.iter().flatten().zip(b.means.iter().flatten()).chain(a.entropy.iter().zip(&b.entropy));
        for (x, y) in pairs {
            assert!((x - y).abs() <= 1e-12 * y.abs().max(1.0), "{what}, gate {}: {x} vs {y}", a.name);
        }
    }
}

fn log_events(run: &Path, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == event)
        .collect()
}

#[test]
fn n_ranks_train_like_one_process_with_identical_replicas() {
    let d = tempfile::tempdir().unwrap();
    // 23 rows per global batch: 11 + 12 over 2 ranks, 7 + 8 + 8 over 3; the epoch's
    // last batch has 1 row, so some ranks have none.
    let cfg = config(d.path(), 23, "epochs = 1\nlr = 0.001\n");
    let one_dir = d.path().join("one");
    let one = train(cfg.clone(), &TrainOptions::new(&one_dir), &CpuOps::new()).unwrap();
    assert_eq!(one.examples % 23, 1, "the epoch ends on a 1-row batch ({} rows)", one.examples);
    let w1 = weights(&one_dir.join("checkpoint"));
    for n in [2, 3] {
        let out = d.path().join(format!("ranks{n}"));
        let res = run(&cfg, &out, n);
        let sums: Vec<TrainSummary> = res.into_iter().map(|r| r.unwrap()).collect();
        let lead = &sums[0];
        assert_eq!((lead.steps, lead.examples), (one.steps, one.examples), "{n} ranks: same steps and rows");
        let rep = lead.replicas.expect("a data-parallel summary names its replicas");
        assert_eq!((rep.ranks, rep.transport), (n, "in-process"));
        for (r, s) in sums.iter().enumerate() {
            assert_eq!(s.replicas.map(|x| x.checksum), Some(rep.checksum), "{n} ranks: rank {r}'s weights");
            // The ranks score the validation split together; rank 0 reports it.
            assert_eq!(s.validation.is_empty(), r != 0, "{n} ranks, rank {r}");
        }
        same_as_one_process_scoring(lead, &out, &format!("{n} ranks"));
        // Rank 0 wrote the run: one log with a replica check per checkpoint (every 4
        // steps) and at the end, the final checkpoint, metrics.json with the replicas.
        let checks = log_events(&out, "replicas");
        assert_eq!(checks.len() as u64, lead.steps / 4 + 1, "{n} ranks: replica checks");
        assert_eq!(log_events(&out, "train").len() as u64, lead.steps, "{n} ranks: one train line per step");
        let metrics: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
        assert_eq!(metrics["replicas"]["ranks"], n);
        assert_eq!(metrics["replicas"]["checksum"], format!("{:016x}", rep.checksum));
        // The weights: the same run up to summation order (see the module docs of
        // `data_parallel`); over a whole epoch of Adam steps the rounding differences of
        // each step are carried on, so this compares with a fixed relative tolerance.
        let wn = weights(&out.join("checkpoint"));
        assert_eq!(wn.keys().collect::<Vec<_>>(), w1.keys().collect::<Vec<_>>());
        let mut worst = 0f32;
        let mut differ = 0;
        for (name, a) in &wn {
            for (x, y) in a.iter().zip(&w1[name]) {
                let rel = (x - y).abs() / y.abs().max(1e-3);
                worst = worst.max(rel);
                differ += usize::from(x != y);
                assert!(rel <= 1e-3, "{n} ranks, {name}: {x} vs {y}");
            }
        }
        eprintln!("{n} ranks: {differ} weights differ from one process's, largest relative difference {worst:e}");
        // The head's all-reduce overlapped with the embeddings' backward: the same bits
        // (ranks without rows in the last batch take the synchronous path).
        let overlapped =
            config(&d.path().join(format!("ov{n}")), 23, "epochs = 1\nlr = 0.001\noverlap_all_reduce = true\n");
        let out_ov = d.path().join(format!("overlapped{n}"));
        let sums: Vec<TrainSummary> = run(&overlapped, &out_ov, n).into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(sums[0].replicas.map(|r| r.checksum), Some(rep.checksum), "{n} ranks overlapped");
        assert!(weights(&out_ov.join("checkpoint")) == wn, "{n} ranks: overlapped all-reduce, other weights");
    }
}

/// Rank 1 of the failing job below dies right after its 7th update (the checkpoint of
/// step 4 is written; step 8's is not).
fn die_after_step_7(step: u64) {
    if step == 7 {
        panic!("rank 1 dies after step 7");
    }
}

#[test]
fn a_failing_rank_stops_the_others() {
    let d = tempfile::tempdir().unwrap();
    // Rank 1 panics mid-run; rank 0 must stop with an error, not hang.
    let cfg = config(d.path(), 25, "epochs = 1\nlr = 0.001\n");
    let res = run_with(&cfg, &d.path().join("gone"), 2, |r, o| {
        if r == 1 {
            o.after_step = Some(die_after_step_7);
        }
    });
    assert!(res[1].as_ref().unwrap_err().contains("dies after step 7"), "{:?}", res[1].as_ref().err());
    let e = res[0].as_ref().unwrap().as_ref().unwrap_err().to_string();
    assert!(e.contains("rank 1 left the group"), "{e}");
}

/// One trace line: (step, epoch, rows as (request id, position)).
type Step = (u64, u64, Vec<(u64, u64)>);

fn read_trace(path: &Path) -> Vec<Step> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let rows = v["rows"].as_array().unwrap().iter().map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()));
            (v["step"].as_u64().unwrap(), v["epoch"].as_u64().unwrap(), rows.collect())
        })
        .collect()
}

/// Largest relative difference between two checkpoints' weights (same names).
fn largest_relative_difference(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let mut worst = 0f32;
    for (name, x) in a {
        for (x, y) in x.iter().zip(&b[name]) {
            worst = worst.max((x - y).abs() / y.abs().max(1e-3));
        }
    }
    worst
}

#[test]
fn a_job_whose_rank_died_resumes_on_another_number_of_ranks_with_every_row_once() {
    let d = tempfile::tempdir().unwrap();
    // 2 epochs of 14 batches of 23 rows (the last of each epoch has 1 row).
    let cfg = config(d.path(), 23, "epochs = 2\nlr = 0.001\n");
    let one_dir = d.path().join("one");
    let trace_one = d.path().join("one.jsonl");
    let mut o = TrainOptions::new(&one_dir);
    o.trace_rows = Some(trace_one.clone());
    let one = train(cfg.clone(), &o, &CpuOps::new()).unwrap();
    let steps_one = read_trace(&trace_one);
    assert_eq!(steps_one.len() as u64, one.steps);

    // 2 ranks; rank 1 dies after step 7, so the job stops with the checkpoint of step 4.
    let out = d.path().join("job");
    let trace = d.path().join("job.jsonl");
    let res = run_with(&cfg, &out, 2, |r, o| {
        o.trace_rows = Some(trace.clone());
        if r == 1 {
            o.after_step = Some(die_after_step_7);
        }
    });
    assert!(res[0].as_ref().unwrap().is_err() && res[1].is_err(), "the job stopped");
    assert!(!out.join("checkpoint").exists(), "no final checkpoint from the failed job");
    // Resumed on 3 ranks.
    let res = run_with(&cfg, &out, 3, |_, o| {
        o.resume = true;
        o.trace_rows = Some(trace.clone());
    });
    let sums: Vec<TrainSummary> = res.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert_eq!((sums[0].steps, sums[0].examples), (one.steps, one.examples));
    let checksum = sums[0].replicas.unwrap().checksum;
    assert!(sums.iter().all(|s| s.replicas.map(|r| (r.ranks, r.checksum)) == Some((3, checksum))));
    let resumed = log_events(&out, "resume");
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0]["step"], 4, "resumed from the checkpoint of step 4");

    // The trace: the failed job's steps 1..=7 (rank 0 traces the global batches), then the
    // resumed job's from step 5; steps 1..=4 and the resumed ones are exactly the
    // one-process run's steps, so every row is trained on once per epoch.
    let lines = read_trace(&trace);
    let split = lines.windows(2).position(|w| w[1].0 != w[0].0 + 1).expect("a resumed part") + 1;
    assert_eq!(lines[..split].iter().map(|l| l.0).collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>());
    let used: Vec<&Step> = lines[..4].iter().chain(&lines[split..]).collect();
    assert_eq!(used.len(), steps_one.len());
    for (i, (a, b)) in used.iter().zip(&steps_one).enumerate() {
        assert_eq!(*a, b, "step {}: the resumed job trained on other rows than one process", i + 1);
    }

    let worst = largest_relative_difference(&weights(&out.join("checkpoint")), &weights(&one_dir.join("checkpoint")));
    eprintln!("2 ranks, died at step 7, resumed on 3 ranks: largest relative difference from one process {worst:e}");
    assert!(worst <= 1e-3, "{worst}");
}

#[test]
fn early_stopping_and_reduce_on_plateau_decide_the_same_on_every_rank() {
    let d = tempfile::tempdir().unwrap();
    // Validation every 2 steps; a patience of 2 with the learning rate halved on each
    // validation without improvement.
    let cfg = config(
        d.path(),
        23,
        "epochs = 3\neval_every_steps = 2\nearly_stopping_patience = 2\nlr_plateau_factor = 0.5\nlr = 0.05\n",
    );
    let one_dir = d.path().join("one");
    let one = train(cfg.clone(), &TrainOptions::new(&one_dir), &CpuOps::new()).unwrap();
    let out = d.path().join("ranks2");
    let sums: Vec<TrainSummary> = run(&cfg, &out, 2).into_iter().map(|r| r.unwrap()).collect();
    // Every rank stopped at the step one process stopped at, for the same reason.
    for (r, s) in sums.iter().enumerate() {
        assert_eq!((s.steps, s.stop), (one.steps, one.stop), "rank {r}");
    }
    assert!(
        matches!(one.stop, mixrank_train::StopReason::EarlyStopping { .. }),
        "the config must stop early to test anything: {:?}",
        one.stop
    );
    let verdicts = log_events(&out, "early_stopping");
    let one_verdicts = log_events(&one_dir, "early_stopping");
    assert_eq!(verdicts.len(), one_verdicts.len());
    assert!(verdicts.iter().any(|v| v["verdict"]["lr_scale"].as_f64().unwrap() < 1.0), "a plateau reduced the rate");
    for (a, b) in verdicts.iter().zip(&one_verdicts) {
        for k in ["best_step", "improved", "stop", "lr_scale", "without_improvement"] {
            assert_eq!(a["verdict"][k], b["verdict"][k], "step {}: {k}", a["step"]);
        }
    }
    // The run's model is the best validation's, on both.
    let worst = largest_relative_difference(&weights(&out.join("checkpoint")), &weights(&one_dir.join("checkpoint")));
    assert!(worst <= 1e-3, "{worst}");
}

/// [`config`] with sharded reading and the training day written in row groups of 40
/// rows: 8 units (7 of 40 rows, 1 of 20) that the ranks share unevenly.
fn sharded_config(dir: &Path, batch_size: usize, extra_train: &str) -> Arc<ExperimentConfig> {
    let p = mixrank_data::simulate::EngagementParams {
        requests_per_day: 30,
        days: 3,
        row_group_rows: 40,
        ..Default::default()
    };
    let sim = mixrank_data::simulate::simulate_engagement(&p, &dir.join("data")).unwrap();
    let text = std::fs::read_to_string(&sim.config).unwrap();
    assert!(text.contains("batch_size = 2048"), "the simulator's config names its batch size");
    let text =
        text.replace("batch_size = 2048", &format!("batch_size = {batch_size}\ndistributed_reading = \"sharded\""));
    std::fs::write(&sim.config, text).unwrap();
    let model = dir.join("model.toml");
    std::fs::write(
        &model,
        format!(
            "[model]\narchitecture = \"mmoe\"\nexpert_dim = 8\ntower = {{ hidden = [4] }}\n\
             [[model.experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [16]\n\
             [train]\nthreads = 1\ncheckpoint_every_steps = 4\nlr = 0.001\n{extra_train}"
        ),
    )
    .unwrap();
    Arc::new(ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap())
}

#[test]
fn sharded_reading_trains_every_row_once_per_epoch_and_resumes_mid_epoch_exactly() {
    let d = tempfile::tempdir().unwrap();
    let cfg = sharded_config(d.path(), 23, "epochs = 2\n");
    // One process reads everything (one shard): the training rows.
    let one_trace = d.path().join("one.jsonl");
    let mut o = TrainOptions::new(d.path().join("one"));
    o.trace_rows = Some(one_trace.clone());
    train(cfg.clone(), &o, &CpuOps::new()).unwrap();
    let rows_of = |steps: &[Step], epoch: u64| -> Vec<(u64, u64)> {
        steps.iter().filter(|s| s.1 == epoch).flat_map(|s| s.2.clone()).collect()
    };
    let mut all_rows = rows_of(&read_trace(&one_trace), 0);
    all_rows.sort();
    assert_eq!(all_rows.len(), 300);

    for n in [2, 3] {
        let out = d.path().join(format!("sharded{n}"));
        let trace = d.path().join(format!("sharded{n}.jsonl"));
        let res = run_with(&cfg, &out, n, |_, o| o.trace_rows = Some(trace.clone()));
        let sums: Vec<TrainSummary> = res.into_iter().map(|r| r.unwrap().unwrap()).collect();
        let steps = read_trace(&trace);
        assert_eq!(steps.len() as u64, sums[0].steps);
        assert_eq!(sums[0].examples, 600, "{n} ranks: 2 epochs of 300 rows");
        for epoch in 0..2 {
            let mut rows = rows_of(&steps, epoch);
            rows.sort();
            assert_eq!(rows, all_rows, "{n} ranks, epoch {epoch}: every training row once");
        }
        // Each rank forms its part of every global batch (11 + 12 or 7 + 8 + 8 rows)
        // until its shard runs out; uneven shards make more, smaller steps at the end.
        assert!(steps.iter().all(|s| s.2.len() <= 23));
        let per_epoch = steps.iter().filter(|s| s.1 == 0).count();
        assert!(per_epoch >= 14, "{n} ranks: {per_epoch} steps per epoch");
        eprintln!("sharded reading, {n} ranks: {per_epoch} steps per epoch (one process: 14)");
        let checksum = sums[0].replicas.unwrap().checksum;
        assert!(sums.iter().all(|s| s.replicas.map(|r| r.checksum) == Some(checksum)), "{n} ranks: replicas");
    }

    // A 2-rank job whose rank 1 dies after step 7 (checkpoint at step 4, mid-epoch).
    let out = d.path().join("resumed");
    let trace = d.path().join("resumed.jsonl");
    let res = run_with(&cfg, &out, 2, |r, o| {
        o.trace_rows = Some(trace.clone());
        if r == 1 {
            o.after_step = Some(die_after_step_7);
        }
    });
    assert!(res[1].is_err());
    // Mid-epoch, each rank's stream depends on the number of shards: 3 ranks are refused.
    for r in run_with(&cfg, &out, 3, |_, o| o.resume = true) {
        let e = r.unwrap().unwrap_err().to_string();
        assert!(e.contains("in 2 shards") && e.contains("in 3 shards") && e.contains("epoch boundary"), "{e}");
    }
    // 2 ranks resume it exactly: the same rows and, summing in the same order, the same
    // weights bit for bit as the uninterrupted 2-rank job.
    let res = run_with(&cfg, &out, 2, |_, o| {
        o.resume = true;
        o.trace_rows = Some(trace.clone());
    });
    assert!(res.iter().all(|r| matches!(r, Ok(Ok(_)))));
    let lines = read_trace(&trace);
    let split = lines.windows(2).position(|w| w[1].0 != w[0].0 + 1).expect("a resumed part") + 1;
    let used: Vec<Step> = lines[..4].iter().chain(&lines[split..]).cloned().collect();
    assert_eq!(used, read_trace(&d.path().join("sharded2.jsonl")));
    assert!(
        weights(&out.join("checkpoint")) == weights(&d.path().join("sharded2").join("checkpoint")),
        "the resumed sharded job differs from the uninterrupted one"
    );

    // Every rank reads its own part of each batch, so a batch needs a row per rank.
    let small = sharded_config(&d.path().join("small"), 2, "epochs = 1\n");
    for r in run(&small, &d.path().join("small_run"), 3) {
        let e = r.unwrap_err().to_string();
        assert!(e.contains("batch_size (2) of at least the 3 ranks"), "{e}");
    }
}

#[test]
fn with_dropout_the_ranks_draw_the_global_batchs_masks_and_train_like_one_process() {
    let d = tempfile::tempdir().unwrap();
    // Dropout in the experts and gate dropout: masks are drawn per global row, so N ranks
    // drop exactly what one process drops.
    let cfg = config_with(d.path(), 23, "dropout = 0.3\n", "[model.gate]\ndropout = 0.3\n", "epochs = 1\nlr = 0.001\n");
    let one_dir = d.path().join("one");
    train(cfg.clone(), &TrainOptions::new(&one_dir), &CpuOps::new()).unwrap();
    let w1 = weights(&one_dir.join("checkpoint"));
    for n in [2, 3] {
        let out = d.path().join(format!("ranks{n}"));
        for r in run(&cfg, &out, n) {
            r.unwrap();
        }
        let worst = largest_relative_difference(&weights(&out.join("checkpoint")), &w1);
        eprintln!("dropout, {n} ranks: largest relative difference from one process {worst:e}");
        // Without masks keyed by the global row every rank would drop other elements than
        // one process, and the weights would differ by far more than rounding.
        assert!(worst <= 1e-3, "{n} ranks: {worst}");
    }
}

/// The bytes of every file of a checkpoint but its manifest (which records the config).
fn checkpoint_tensors(ckpt: &Path) -> (Vec<u8>, Vec<u8>) {
    let read = |f: &str| std::fs::read(ckpt.join(f)).unwrap();
    (read("weights.safetensors"), read("optimizer.safetensors"))
}

#[test]
fn sharded_tables_train_bit_for_bit_like_replicated_ones() {
    // Row-wise sharded tables take, row by row, the update replicated tables take (the
    // same merge in the same rank order; module docs of `sharded_tables`), so the
    // checkpoints — periodic ones included, written from the shards gathered on rank 0 —
    // are the same bytes. The data's `category` table is shared by three features, one
    // of them a pooled bag; batches of 23 split unevenly and the epoch ends on 1 row.
    let d = tempfile::tempdir().unwrap();
    for (i, sparse) in ["sparse_optimizer = \"rowwise_adagrad\"", "sparse_optimizer = \"lazy_adam\""].iter().enumerate()
    {
        let train = format!("epochs = 1\nlr = 0.001\n{sparse}\n");
        let replicated = config(&d.path().join(format!("r{i}")), 23, &train);
        // Every table sharded; and a mixed placement: the shared `category` table and the
        // small vocabularies (surfaces, devices) whole on every rank, the ids sharded.
        let placements = [
            ("rows", "embedding_sharding = \"rows\"\n"),
            (
                "mixed",
                "embedding_sharding = \"rows\"\nreplicated_tables = [\"category\"]\nreplicate_tables_under_rows = 20\n",
            ),
        ];
        for (n, (placement, keys)) in [2, 3].into_iter().flat_map(|n| placements.iter().map(move |p| (n, p))) {
            let sparse = &format!("{sparse} ({placement})");
            let sharded = config(&d.path().join(format!("s{i}-{placement}-{n}")), 23, &format!("{train}{keys}"));
            let out_r = d.path().join(format!("replicated{i}-{placement}-{n}"));
            let out_s = d.path().join(format!("sharded{i}-{placement}-{n}"));
            let sum_r: Vec<TrainSummary> = run(&replicated, &out_r, n).into_iter().map(|r| r.unwrap()).collect();
            let sum_s: Vec<TrainSummary> = run(&sharded, &out_s, n).into_iter().map(|r| r.unwrap()).collect();
            assert_eq!((sum_s[0].steps, sum_s[0].examples), (sum_r[0].steps, sum_r[0].examples));
            // The final checkpoint: written whole by rank 0 from the gathered shards.
            let (w, o) = (checkpoint_tensors(&out_r.join("checkpoint")), checkpoint_tensors(&out_s.join("checkpoint")));
            assert!(w.0 == o.0, "{sparse}, {n} ranks: the final weights differ");
            assert!(w.1 == o.1, "{sparse}, {n} ranks: the final optimizer state differs");
            // The periodic ones (kept: the last 3): one file of rows per rank beside the
            // dense files, put back together on reading into the replicated job's bytes.
            let kept = mixrank_train::periodic::list(&out_s);
            assert_eq!(kept.len(), 3, "{sparse}, {n} ranks");
            for (step, dir) in kept {
                let v = mixrank_train::checkpoint::read_verified(&dir).unwrap();
                assert_eq!(v.manifest.table_shards, Some(n));
                for r in 0..n {
                    assert!(
                        dir.join(mixrank_train::checkpoint::shard_file(r, n)).is_file(),
                        "step {step}: rank {r}'s file"
                    );
                }
                let dense = weights(&dir);
                assert!(dense.keys().all(|k| k.starts_with("head.")), "step {step}: tables outside the shard files");
                let whole = checkpoint_tensors(&out_r.join(format!("checkpoints/step-{step}")));
                assert!(v.weights == whole.0, "{sparse}, {n} ranks, step {step}: the weights differ");
                assert!(v.optimizer == whole.1, "{sparse}, {n} ranks, step {step}: the optimizer state differs");
            }
            // The dense weights are compared across the ranks; the tables are not replicas.
            let rep = sum_s[0].replicas.unwrap();
            assert!(sum_s.iter().all(|s| s.replicas.map(|r| r.checksum) == Some(rep.checksum)));
            assert_eq!(sum_s[0].validation, sum_r[0].validation, "{sparse}, {n} ranks: validation");
            // Scored with the shards' rows looked up by their owners, not gathered.
            same_as_one_process_scoring(&sum_s[0], &out_s, &format!("{sparse}, {n} ranks"));
            let sparse_r = sum_r[0].replicas.unwrap().sparse_bytes_per_step;
            eprintln!(
                "{sparse}, {n} ranks: sparse bytes per step and rank: replicated {sparse_r:.0}, sharded {:.0}",
                rep.sparse_bytes_per_step
            );
            assert!(rep.sparse_bytes_per_step > 0.0);
        }
    }
}

#[test]
fn a_sharded_job_whose_rank_died_resumes_on_another_number_of_ranks() {
    // Sharded and replicated jobs die at the same step (after the checkpoint of step 4)
    // and resume on 3 ranks; the sharded one resumes from a checkpoint of 2 shard files,
    // put together and cut into 3 shards. Both end with the same bytes.
    let d = tempfile::tempdir().unwrap();
    let train = "epochs = 2\nlr = 0.001\nsparse_optimizer = \"lazy_adam\"\n";
    let mut ends = Vec::new();
    for (name, extra) in [("replicated", ""), ("sharded", "embedding_sharding = \"rows\"\n")] {
        let cfg = config(&d.path().join(name), 23, &format!("{train}{extra}"));
        let out = d.path().join(format!("{name}-job"));
        let res = run_with(&cfg, &out, 2, |r, o| {
            if r == 1 {
                o.after_step = Some(die_after_step_7);
            }
        });
        assert!(res[0].as_ref().unwrap().is_err() && res[1].is_err(), "{name}: the job stopped");
        let res = run_with(&cfg, &out, 3, |_, o| o.resume = true);
        assert!(res.iter().all(|r| matches!(r, Ok(Ok(_)))), "{name}: resumed on 3 ranks");
        assert_eq!(log_events(&out, "resume")[0]["step"], 4, "{name}");
        ends.push(checkpoint_tensors(&out.join("checkpoint")));
    }
    assert!(ends[0].0 == ends[1].0, "the weights differ");
    assert!(ends[0].1 == ends[1].1, "the optimizer state differs");

    // A damaged shard file fails its checksum, naming the file; so does a missing one.
    let (_, newest) = mixrank_train::periodic::list(&d.path().join("sharded-job")).remove(0);
    let v = mixrank_train::checkpoint::read_verified(&newest);
    assert_eq!(v.map(|v| v.manifest.table_shards).ok(), Some(Some(3)), "written by the 3 resumed ranks");
    let f = newest.join(mixrank_train::checkpoint::shard_file(1, 3));
    let mut bytes = std::fs::read(&f).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&f, &bytes).unwrap();
    let e = mixrank_train::checkpoint::read_verified(&newest).err().unwrap().to_string();
    assert!(e.contains("tables.shard-1-of-3.safetensors") && e.contains("corrupt"), "{e}");
    std::fs::remove_file(&f).unwrap();
    let e = mixrank_train::checkpoint::read_verified(&newest).err().unwrap().to_string();
    assert!(e.contains("tables.shard-1-of-3.safetensors"), "{e}");
}

/// `base` with a `[distill]` section (TOML of the section's keys), as a config file
/// beside `base`'s.
fn with_distill(base: &ExperimentConfig, name: &str, distill: &str) -> Arc<ExperimentConfig> {
    let mut w = base.wire.clone();
    w.distill = Some(toml::from_str(distill).unwrap());
    let path = base.path.with_file_name(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(&w).unwrap()).unwrap();
    Arc::new(ExperimentConfig::load(&path).unwrap())
}

/// Every train line's distillation loss per task.
fn distill_log(run: &Path) -> Vec<Vec<(String, f64)>> {
    log_events(run, "train")
        .iter()
        .map(|l| {
            let d = l["distill_loss"].as_array().expect("train lines carry distill_loss");
            d.iter().map(|x| (x[0].as_str().unwrap().to_string(), x[1].as_f64().unwrap())).collect()
        })
        .collect()
}

/// Distillation from a checkpoint teacher with every loss kind (pairwise within
/// requests and in the batch, listwise, logit MSE, soft-label BCE) on 2 and 3 ranks
/// trains the one-process run: the pairwise and listwise losses run on the global batch
/// each rank gathers (`distill::ranks`), the pointwise ones on each rank's rows with the
/// global weight sums, and the teacher scores each rank's shard. Same tolerance as the
/// runs without distillation; the logged distillation losses are the global batch's.
/// Sharded reading and row-sharded tables train with distillation too.
#[test]
fn distillation_with_ranks_trains_like_one_process() {
    let d = tempfile::tempdir().unwrap();
    let base = config(d.path(), 23, "epochs = 1\nlr = 0.003\n");
    let teacher = d.path().join("teacher");
    train(base.clone(), &TrainOptions::new(&teacher), &CpuOps::new()).unwrap();
    let specs = [
        "[[tasks]]\ntask = \"click\"\nloss = \"pairwise\"\npairs = \"request\"\npairs_per_row = 3\n\
         [[tasks]]\ntask = \"save\"\nloss = \"listwise\"\ntemperature = 2.0\n\
         [[tasks]]\ntask = \"dwell\"\nloss = \"logit_mse\"\nweight = 0.5\n\
         [[tasks]]\ntask = \"conversion\"\nloss = \"pointwise_bce\"\n",
        "[[tasks]]\ntask = \"click\"\nloss = \"pairwise\"\npairs = \"batch\"\npairs_per_row = 2\n\
         [[tasks]]\ntask = \"save\"\nloss = \"pointwise_bce\"\ntemperature = 2.0\n",
    ];
    for (i, spec) in specs.iter().enumerate() {
        let distill = format!("source = \"checkpoint\"\ncheckpoint = {:?}\n{spec}", teacher.to_string_lossy());
        let cfg = with_distill(&base, &format!("student{i}"), &distill);
        let one_dir = d.path().join(format!("one{i}"));
        let mut opts = TrainOptions::new(&one_dir);
        opts.log_every = 1;
        let one = train(cfg.clone(), &opts, &CpuOps::new()).unwrap();
        let (w1, log1) = (weights(&one_dir.join("checkpoint")), distill_log(&one_dir));
        assert!(log1.iter().flatten().all(|(_, l)| l.is_finite()) && log1[0].iter().any(|(_, l)| *l > 0.0));
        for n in [2, 3] {
            let out = d.path().join(format!("ranks{i}_{n}"));
            let sums: Vec<TrainSummary> = run(&cfg, &out, n).into_iter().map(|r| r.unwrap()).collect();
            assert_eq!((sums[0].steps, sums[0].examples), (one.steps, one.examples), "spec {i}, {n} ranks");
            let worst = largest_relative_difference(&weights(&out.join("checkpoint")), &w1);
            eprintln!("distillation spec {i}, {n} ranks: largest relative weight difference {worst:e}");
            assert!(worst <= 1e-3, "spec {i}, {n} ranks: {worst}");
            // The logged losses are the global batch's: the first step's (identical
            // weights) to rounding, the later ones within the weights' drift.
            let logn = distill_log(&out);
            assert_eq!(logn.len(), log1.len());
            for (step, (a, b)) in logn.iter().zip(&log1).enumerate() {
                for ((ta, la), (tb, lb)) in a.iter().zip(b) {
                    assert_eq!(ta, tb);
                    let tol = if step == 0 { 1e-5 } else { 1e-3 };
                    assert!(
                        (la - lb).abs() <= tol * lb.abs().max(1e-3),
                        "spec {i}, {n} ranks, step {step}, {ta}: {la} vs {lb}"
                    );
                }
            }
        }
    }
    // Sharded reading (the teacher reads each rank's shard with the rank's options) and
    // row-sharded tables: the replicas agree, the losses are finite and learn.
    let distill = format!("source = \"checkpoint\"\ncheckpoint = {:?}\n{}", teacher.to_string_lossy(), specs[0]);
    let sharded = sharded_config(&d.path().join("sharded"), 23, "epochs = 2\nembedding_sharding = \"rows\"\n");
    let cfg = with_distill(&sharded, "student_sharded", &distill);
    let out = d.path().join("sharded_run");
    let res = run(&cfg, &out, 2);
    let errors: Vec<String> = res.iter().filter_map(|r| r.as_ref().err().map(|e| e.to_string())).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let sums: Vec<TrainSummary> = res.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(sums[0].replicas.map(|r| r.checksum), sums[1].replicas.map(|r| r.checksum));
    let log = distill_log(&out);
    assert!(log.iter().flatten().all(|(_, l)| l.is_finite()), "{log:?}");
}

/// The NCCL transport (`mixrank_dist::Nccl`, ranks as threads bootstrapped over the
/// in-process group, the CPU backend computing): the same training as the in-process
/// transport, with replicated and with row-sharded tables (whose lookups and gradients
/// go through NCCL's grouped sends and receives). On the host emulation
/// (`crates/mixrank-cuda/emu/run.sh`, `MIXRANK_NCCL_EMULATED=1`: 2 and 3 ranks on one
/// device, sums in rank order) the checkpoints are the same bytes; on GPUs (one rank per
/// GPU, NCCL's own summation order) the weights within 1e-3 relative, as in the tests
/// above.
#[test]
#[ignore = "needs NCCL and a GPU, or the host emulation (crates/mixrank-cuda/emu/run.sh)"]
fn nccl_transport_trains_like_the_in_process_one() {
    use mixrank_dist::Nccl;
    let emulated = std::env::var_os("MIXRANK_NCCL_EMULATED").is_some();
    let ranks: Vec<usize> = if emulated {
        vec![2, 3]
    } else {
        // One rank per GPU: `bench/gpu_check.sh` says how many (one by default).
        (1..=std::env::var("MIXRANK_NCCL_GPUS").ok().and_then(|v| v.parse().ok()).unwrap_or(1)).collect()
    };
    assert!(!ranks.is_empty(), "no GPU and no emulation: nothing to run");
    let d = tempfile::tempdir().unwrap();
    for (k, tables) in ["", "embedding_sharding = \"rows\"\n"].iter().enumerate() {
        let cfg = config(&d.path().join(format!("c{k}")), 23, &format!("epochs = 1\nlr = 0.001\n{tables}"));
        for &n in &ranks {
            let out_p = d.path().join(format!("inproc{k}-{n}"));
            let sum_p: Vec<TrainSummary> = run(&cfg, &out_p, n).into_iter().map(|r| r.unwrap()).collect();
            let out_n = d.path().join(format!("nccl{k}-{n}"));
            let sums: Vec<TrainSummary> = std::thread::scope(|s| {
                let hs: Vec<_> = InProcess::group(n)
                    .into_iter()
                    .map(|boot| {
                        let (cfg, out_n) = (cfg.clone(), out_n.clone());
                        s.spawn(move || {
                            let gpu = if emulated { 0 } else { boot.rank() };
                            let nccl = Nccl::over(Arc::new(boot), gpu).expect("NCCL starts");
                            let mut o = TrainOptions::new(&out_n);
                            o.collective = Some(Arc::new(nccl) as Arc<dyn Collective>);
                            train(cfg, &o, &CpuOps::new()).unwrap()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().expect("rank thread")).collect()
            });
            let rep = sums[0].replicas.expect("replicas");
            assert_eq!((rep.ranks, rep.transport), (n, "nccl"));
            assert!(sums.iter().all(|s| s.replicas.map(|r| r.checksum) == Some(rep.checksum)), "{n} ranks: replicas");
            assert_eq!((sums[0].steps, sums[0].examples), (sum_p[0].steps, sum_p[0].examples));
            let (a, b) = (checkpoint_tensors(&out_n.join("checkpoint")), checkpoint_tensors(&out_p.join("checkpoint")));
            if emulated {
                assert!(a == b, "{n} ranks ({tables}): NCCL's checkpoint differs from the in-process transport's");
                assert_eq!(sums[0].validation, sum_p[0].validation, "{n} ranks: the validation across the ranks");
            } else {
                let worst = largest_relative_difference(
                    &weights(&out_n.join("checkpoint")),
                    &weights(&out_p.join("checkpoint")),
                );
                assert!(worst <= 1e-3, "{n} ranks ({tables}): {worst}");
            }
            eprintln!(
                "NCCL transport, {n} ranks{}: trains like the in-process transport",
                if k == 1 { ", sharded tables" } else { "" }
            );
        }
    }
}

#[test]
fn the_two_tower_in_batch_softmax_with_ranks_trains_like_one_process() {
    // The loss's negatives are every row of the global batch: each rank gathers the
    // ranks' score embeddings and row weights, computes the global batch's loss as one
    // process does and keeps its rows' gradients (`mixrank-model/src/in_batch.rs`).
    // Batches of 23 rows split unevenly; the epoch's last batch has 1 row, so some ranks
    // have none and take part in the gather without rows.
    let d = tempfile::tempdir().unwrap();
    let p = mixrank_data::simulate::EngagementParams { requests_per_day: 30, days: 3, ..Default::default() };
    let sim = mixrank_data::simulate::simulate_engagement(&p, &d.path().join("tt")).unwrap();
    let model = d.path().join("tt").join("two_tower.toml");
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/models/two_tower.toml")).unwrap();
    assert!(text.contains("[train]\nepochs = 1\nlr = 0.001\n"), "the config trains one epoch at 0.001");
    std::fs::write(
        &model,
        text.replace("[train]\n", "[train]\nthreads = 1\ncheckpoint_every_steps = 4\n")
            + "\n[model.two_tower.in_batch]\ntask = \"click\"\ntemperature = 0.5\n",
    )
    .unwrap();
    let mut cfg = ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap();
    cfg.data.batch_size = 23;
    let cfg = Arc::new(cfg);
    let one_dir = d.path().join("one");
    let mut o = TrainOptions::new(&one_dir);
    o.log_every = 1;
    let one = train(cfg.clone(), &o, &CpuOps::new()).unwrap();
    assert_eq!(one.examples % 23, 1, "the epoch ends on a 1-row batch");
    let loss_of = |run: &Path| -> Vec<f64> {
        log_events(run, "train")
            .iter()
            .map(|l| l["aux_loss"][0][1].as_f64().unwrap_or_else(|| panic!("the in-batch loss: {l}")))
            .collect()
    };
    let (l1, w1) = (loss_of(&one_dir), weights(&one_dir.join("checkpoint")));
    assert!(l1.iter().filter(|&&l| l > 0.0).count() >= l1.len() - 1, "steps with positives: {l1:?}");
    for n in [2, 3] {
        let out = d.path().join(format!("ranks{n}"));
        let sums: Vec<TrainSummary> = run(&cfg, &out, n).into_iter().map(|r| r.unwrap()).collect();
        assert_eq!((sums[0].steps, sums[0].examples), (one.steps, one.examples));
        let rep = sums[0].replicas.unwrap();
        assert!(sums.iter().all(|s| s.replicas.map(|r| r.checksum) == Some(rep.checksum)), "{n} ranks: replicas");
        // Every step's in-batch loss is the global batch's: one process's up to the
        // rounding of the towers' forward on fewer rows.
        let ln = loss_of(&out);
        assert_eq!(ln.len(), l1.len(), "{n} ranks: one loss per step");
        assert!((ln[0] - l1[0]).abs() <= 1e-6 * l1[0].abs(), "{n} ranks, step 1: {} vs {}", ln[0], l1[0]);
        for (s, (a, b)) in ln.iter().zip(&l1).enumerate() {
            assert!((a - b).abs() <= 1e-3 * b.abs(), "{n} ranks, step {}: {a} vs {b}", s + 1);
        }
        let worst = largest_relative_difference(&weights(&out.join("checkpoint")), &w1);
        eprintln!("in-batch softmax, {n} ranks: largest relative weight difference from one process {worst:e}");
        assert!(worst <= 1e-3, "{n} ranks: {worst}");
    }
}

#[test]
fn clock_checkpoints_follow_rank_0s_clock_on_every_rank() {
    // `checkpoint_every_minutes`: a checkpoint is collective, so every rank must find it
    // due at the same step; the ranks' clocks differ (here rank 1's period never restarts,
    // as only rank 0 writes), and rank 0's answer travels with the step's losses. 60 ms
    // with 20 ms steps: a checkpoint every few steps, none of them a multiple of
    // `checkpoint_every_steps` (off). Replicated and sharded tables (whose periodic
    // checkpoint every rank writes).
    let d = tempfile::tempdir().unwrap();
    for (k, tables) in ["", "embedding_sharding = \"rows\"\n"].iter().enumerate() {
        // `config` writes checkpoints every 4 steps: off here.
        let steps_off = |c: Arc<ExperimentConfig>| {
            let mut c = (*c).clone();
            c.train.checkpoint_every_steps = 0;
            Arc::new(c)
        };
        let keys = format!("epochs = 1\nlr = 0.001\ncheckpoint_every_minutes = 0.001\n{tables}");
        let cfg = steps_off(config(&d.path().join(format!("c{k}")), 25, &keys));
        let plain =
            steps_off(config(&d.path().join(format!("p{k}")), 25, &format!("epochs = 1\nlr = 0.001\n{tables}")));
        let out = d.path().join(format!("clock{k}"));
        let res = run_with(&cfg, &out, 2, |_, o| o.step_delay = Some(std::time::Duration::from_millis(20)));
        let sums: Vec<TrainSummary> = res.into_iter().map(|r| r.unwrap().unwrap()).collect();
        let written = log_events(&out, "replicas").len() - 1;
        assert!(written >= 1 && (written as u64) < sums[0].steps, "{written} checkpoints in {} steps", sums[0].steps);
        assert!(!mixrank_train::periodic::list(&out).is_empty());
        // Checkpoints change nothing in the training.
        let out_p = d.path().join(format!("plain{k}"));
        run(&plain, &out_p, 2).into_iter().for_each(|r| drop(r.unwrap()));
        assert!(checkpoint_tensors(&out.join("checkpoint")) == checkpoint_tensors(&out_p.join("checkpoint")));
        eprintln!(
            "clock checkpoints{}: {written} in {} steps",
            if k == 1 { ", sharded tables" } else { "" },
            sums[0].steps
        );
    }
}
