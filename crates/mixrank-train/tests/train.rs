//! Training end to end on real data (Frappe, from ../shared/data) and on the MMoE
//! paper's synthetic data.

use mixrank_data::ExperimentConfig;
use mixrank_engine::CpuOps;
use mixrank_metrics::TaskMetrics;
use mixrank_train::{train, TrainOptions};
use std::path::Path;
use std::sync::Arc;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Simulates 3 days of engagement data (`requests_per_day` each) under `dir/data` and
/// returns its config with the `[model]`/`[train]` file `model` (written to
/// `dir/model.toml`).
fn engagement_config(dir: &Path, requests_per_day: usize, model: &str) -> ExperimentConfig {
    let p = mixrank_data::simulate::EngagementParams { requests_per_day, days: 3, ..Default::default() };
    let sim = mixrank_data::simulate::simulate_engagement(&p, &dir.join("data")).unwrap();
    let path = dir.join("model.toml");
    std::fs::write(&path, model).unwrap();
    ExperimentConfig::load(&sim.config).unwrap().with_model_file(&path).unwrap()
}

/// The run's `train_log.jsonl`, one JSON value per line.
fn train_log(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("train_log.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
#[ignore = "real-data suite: needs ../shared/data beside the repository (cargo test --workspace -- --ignored)"]
fn frappe_dcnv2_learns() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model.toml");
    std::fs::write(
        &model,
        "[model]\narchitecture = \"single_task\"\nexpert_dim = 32\n[[model.experts]]\nkind = \"dcnv2\"\ncross_layers = 2\nhidden = [64]\n\
         [train]\nepochs = 3\nsparse_optimizer = \"lazy_adam\"\nsparse_lr = 0.01\nseed = 3\n",
    )
    .unwrap();
    let cfg = ExperimentConfig::load(&repo().join("configs/frappe.toml")).unwrap().with_model_file(&model).unwrap();
    let out = d.path().join("run");
    let mut opts = TrainOptions::new(&out);
    opts.log_every = 5;
    let s = train(Arc::new(cfg), &opts, &CpuOps::new()).unwrap();
    assert_eq!(s.steps, 3 * 51_958u64.div_ceil(4096));
    let TaskMetrics::Binary(m) = &s.validation[0].overall else { panic!("binary task") };
    assert_eq!(m.rows, 5764);
    let auc = m.auc.unwrap();
    assert!(auc > 0.85, "validation AUC {auc}");
    // The log has train lines and one validation line per epoch; the files parse.
    let lines = train_log(&out);
    assert_eq!(lines.iter().filter(|l| l["event"] == "validation").count(), 3);
    let first = lines.iter().find(|l| l["event"] == "train").unwrap()["loss"].as_f64().unwrap();
    let last = lines.iter().rev().find(|l| l["event"] == "train").unwrap()["loss"].as_f64().unwrap();
    assert!(last < first, "training loss {first} -> {last}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["steps"], s.steps);
}

#[test]
fn mmoe_on_the_papers_data_beats_the_mean() {
    let d = tempfile::tempdir().unwrap();
    // Seed 7's sin terms give the labels a std of about 1.1 (with seed 1 they nearly
    // cancel: std 0.17, close to the noise, which 4,000 rows cannot separate).
    let p =
        mixrank_data::simulate::MmoePaperParams { seed: 7, correlation: 0.9, train_rows: 4000, ..Default::default() };
    let sim = mixrank_data::simulate::simulate_mmoe_paper(&p, d.path()).unwrap();
    let model = d.path().join("model.toml");
    std::fs::write(
        &model,
        "[model]\narchitecture = \"mmoe\"\nexpert_dim = 16\ntower = { hidden = [8] }\n[[model.experts]]\nkind = \"mlp\"\ncount = 4\nhidden = [16]\n\
         [train]\nepochs = 20\nlr = 0.003\n",
    )
    .unwrap();
    let cfg = ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap();
    let s = train(Arc::new(cfg), &TrainOptions::new(d.path().join("run")), &CpuOps::new()).unwrap();
    for r in &s.validation {
        let TaskMetrics::Regression(m) = &r.overall else { panic!("regression task") };
        // Predicting the label mean scores RMSE = std(label); the model must do better.
        assert!(m.rmse < 0.5 * label_std(d.path(), &r.task), "{}: RMSE {}", r.task, m.rmse);
    }
}

fn label_std(dir: &Path, task: &str) -> f64 {
    let cfg = Arc::new(ExperimentConfig::load(&dir.join("mixrank.toml")).unwrap());
    let st = mixrank_data::stats::split_stats(cfg.clone(), cfg.split("validation").unwrap(), None).unwrap();
    st.tasks.iter().find(|t| t.name == task).unwrap().std
}

/// Per-surface towers (`[model.tower] per_surface`) through training, the checkpoint and
/// evaluation: the checkpoint holds `towers.<t>.surface.<s>.*` for every task and
/// surface, and the reloaded model, fed the validation batches (each row's surface from
/// the segment column), reproduces the trained model's validation predictions bit for bit.
#[test]
fn per_surface_towers_round_trip_through_the_checkpoint() {
    use mixrank_data::pipeline::{read_all, StreamOptions};
    use mixrank_data::{DenseMode, Encoder};
    use mixrank_engine::Backend;
    let d = tempfile::tempdir().unwrap();
    let cfg = engagement_config(
        d.path(),
        300,
        "[model]\narchitecture = \"mmoe\"\nexpert_dim = 8\ntower = { hidden = [4], per_surface = true }\n\
         [[model.experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [8]\n[train]\nthreads = 2\nlr = 0.01\n",
    );
    let surfaces = cfg.segment_names().len();
    assert_eq!(surfaces, 3);
    let n_tasks = cfg.tasks.len();
    let out = d.path().join("run");
    let mut opts = TrainOptions::new(&out);
    opts.max_steps = Some(3);
    let s = train(Arc::new(cfg), &opts, &CpuOps::new()).unwrap();
    let ops = CpuOps::new();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        let mut loaded = mixrank_train::checkpoint::load(&out.join("checkpoint"), &ops, 4096).unwrap();
        let mut towers = std::collections::BTreeSet::new();
        loaded.model.params(&mut |name, _| {
            if let ["towers", t, "surface", s, ..] = name.split('.').collect::<Vec<_>>()[..] {
                towers.insert((t.parse::<usize>().unwrap(), s.parse::<usize>().unwrap()));
            }
        });
        assert_eq!(towers.len(), n_tasks * surfaces, "{towers:?}");
        let stats = Arc::new(loaded.manifest.dense_stats.clone());
        let enc = Arc::new(Encoder::new(loaded.config.clone(), DenseMode::Fitted(stats)).unwrap());
        let (batches, _) = read_all(
            enc,
            loaded.config.split("validation").unwrap(),
            StreamOptions::from_config(&loaded.config, false),
        )
        .unwrap();
        let seen: std::collections::BTreeSet<u32> = batches.iter().flat_map(|b| b.segment.clone()).collect();
        assert_eq!(seen.len(), surfaces, "validation rows on every surface");
        let trained = &s.predictions.as_ref().unwrap().preds;
        let mut host = vec![0f32; 4096];
        for (t, trained) in trained.iter().enumerate() {
            let mut probs = Vec::new();
            for b in &batches {
                loaded.model.forward(&ops, b).unwrap();
                ops.read(loaded.model.logits(t), &mut host[..b.rows]).unwrap();
                probs.extend(host[..b.rows].iter().copied());
            }
            assert_eq!(probs.len(), trained.len());
            // Binary tasks: the probability evaluation reads out, σ(logit).
            if loaded.config.tasks[t].kind == mixrank_data::config::TaskKind::Binary {
                let p: Vec<f32> = probs.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect();
                assert!(
                    p.iter().zip(trained).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "task {t}: predictions differ after reload"
                );
            }
        }
    });
}

#[test]
fn checkpoint_round_trip_is_bit_identical_and_corruption_is_refused() {
    use mixrank_data::pipeline::{read_all, StreamOptions};
    use mixrank_data::{DenseMode, Encoder};
    use mixrank_engine::{Backend, CpuOps};
    let d = tempfile::tempdir().unwrap();
    // Simulated engagement data (generated here: the test needs nothing beside the clone).
    let cfg = engagement_config(
        d.path(),
        1000,
        "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 16\n[[model.experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nhidden = [16]\n[train]\nthreads = 2\n",
    );
    let out = d.path().join("run");
    let mut opts = TrainOptions::new(&out);
    opts.max_steps = Some(3);
    let s = train(Arc::new(cfg), &opts, &CpuOps::new()).unwrap();
    let ops = CpuOps::new();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        let mut loaded = mixrank_train::checkpoint::load(&out.join("checkpoint"), &ops, 4096).unwrap();
        assert_eq!(loaded.manifest.step, 3);
        assert_eq!(loaded.manifest.lineage.stage, mixrank_train::Stage::Batch);
        let stats = Arc::new(loaded.manifest.dense_stats.clone());
        let enc = Arc::new(Encoder::new(loaded.config.clone(), DenseMode::Fitted(stats)).unwrap());
        let (batches, _) = read_all(
            enc,
            loaded.config.split("validation").unwrap(),
            StreamOptions::from_config(&loaded.config, false),
        )
        .unwrap();
        let mut probs = Vec::new();
        let mut host = vec![0f32; 4096];
        for b in &batches {
            loaded.model.forward(&ops, b).unwrap();
            ops.read(loaded.model.logits(0), &mut host[..b.rows]).unwrap();
            probs.extend(host[..b.rows].iter().map(|&z| 1.0 / (1.0 + (-z).exp())));
        }
        // The reloaded model reproduces the trained model's validation predictions bit for bit.
        let trained = &s.predictions.as_ref().unwrap().preds[0];
        assert_eq!(probs.len(), trained.len());
        assert!(probs.iter().zip(trained).all(|(a, b)| a.to_bits() == b.to_bits()), "predictions differ after reload");
    });
    // Flip one byte of the weights: the checksum refuses the checkpoint.
    let w = out.join("checkpoint/weights.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let i = bytes.len() - 3;
    bytes[i] ^= 0x40;
    std::fs::write(&w, &bytes).unwrap();
    let e = mixrank_train::checkpoint::load(&out.join("checkpoint"), &ops, 16).err().unwrap().to_string();
    assert!(e.contains("weights.safetensors is corrupt or partial") && e.contains("checksum"), "{e}");
    std::fs::write(&w, &bytes[..]).unwrap();
    bytes[i] ^= 0x40;
    std::fs::write(&w, &bytes).unwrap();
    let ck = out.join("checkpoint");
    assert!(mixrank_train::checkpoint::load(&ck, &ops, 16).is_ok(), "restored");
    let refused = |what: &str| {
        let e = mixrank_train::checkpoint::load(&ck, &ops, 16).err().expect(what).to_string();
        assert!(e.contains(&ck.display().to_string()), "{what}: names the checkpoint: {e}");
        e
    };
    // A truncated optimizer file.
    let o = ck.join("optimizer.safetensors");
    let good = std::fs::read(&o).unwrap();
    std::fs::write(&o, &good[..good.len() / 2]).unwrap();
    let e = refused("truncated");
    assert!(e.contains("optimizer.safetensors is corrupt or partial"), "{e}");
    std::fs::write(&o, &good).unwrap();
    // An edited manifest fails its own checksum; a missing checksum file is partial.
    let m = ck.join("manifest.json");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replace("\"step\": 3", "\"step\": 4")).unwrap();
    let e = refused("edited manifest");
    assert!(e.contains("manifest.json is corrupt or partial"), "{e}");
    std::fs::write(&m, &text).unwrap();
    let sum = std::fs::read(ck.join("manifest.xxh3")).unwrap();
    std::fs::remove_file(ck.join("manifest.xxh3")).unwrap();
    let e = refused("missing manifest.xxh3");
    assert!(e.contains("cannot read manifest.xxh3"), "{e}");
    // A format-1 manifest (weights only) is refused with the reason.
    let v1 = text.replace("\"format_version\": 2", "\"format_version\": 1");
    std::fs::write(&m, &v1).unwrap();
    std::fs::write(ck.join("manifest.xxh3"), format!("{:016x}", xxhash_rust::xxh3::xxh3_64(v1.as_bytes()))).unwrap();
    let e = refused("format 1");
    assert!(e.contains("format 1 holds weights only"), "{e}");
    std::fs::write(&m, &text).unwrap();
    std::fs::write(ck.join("manifest.xxh3"), sum).unwrap();
    assert!(mixrank_train::checkpoint::load(&ck, &ops, 16).is_ok(), "restored");
}

#[test]
fn time_based_periodic_checkpoints_keep_the_newest_and_resume_finds_them() {
    let d = tempfile::tempdir().unwrap();
    let p = mixrank_data::simulate::MmoePaperParams { seed: 2, train_rows: 600, ..Default::default() };
    let sim = mixrank_data::simulate::simulate_mmoe_paper(&p, d.path()).unwrap();
    let model = d.path().join("model.toml");
    // A period far below one step's time: a checkpoint after every step.
    std::fs::write(
        &model,
        "[model]\narchitecture = \"mmoe\"\nexpert_dim = 4\n[[model.experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [8]\n\
         [train]\ncheckpoint_every_minutes = 1e-12\nkeep_checkpoints = 2\nthreads = 1\n",
    )
    .unwrap();
    let cfg = Arc::new(ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap());
    let run = d.path().join("run");
    // What a save killed half-way leaves behind is cleaned up by the next run.
    let leftover = run.join("checkpoints/.step-9.tmp-12345");
    std::fs::create_dir_all(&leftover).unwrap();
    let mut opts = TrainOptions::new(&run);
    opts.max_steps = Some(4);
    train(cfg.clone(), &opts, &CpuOps::new()).unwrap();
    assert!(!leftover.exists());
    let steps: Vec<u64> = mixrank_train::periodic::list(&run).into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, [4, 3], "the newest two of steps 1..=4");
    assert_eq!(std::fs::read_to_string(run.join("checkpoints/LATEST")).unwrap().trim(), "step-4");
    // Without embeddings there is no sparse state; the checkpoint still round-trips.
    let found = mixrank_train::periodic::newest_good(&run).unwrap();
    assert!(found.refused.is_empty());
    assert_eq!(found.checkpoint.manifest.step, 4);
    assert_eq!(found.checkpoint.manifest.optimizer.sparse, None);
    // Resuming a finished run trains nothing more and keeps the step count.
    opts.resume = true;
    let s = train(cfg.clone(), &opts, &CpuOps::new()).unwrap();
    assert_eq!(s.steps, 4);
    // Without the step limit it finishes the epoch; resumed again, nothing is left to
    // train, yet the validation is still reported.
    opts.max_steps = None;
    let full = train(cfg.clone(), &opts, &CpuOps::new()).unwrap();
    assert!(full.steps > 4);
    let again = train(cfg, &opts, &CpuOps::new()).unwrap();
    assert_eq!((again.steps, again.examples), (full.steps, full.examples));
    assert_eq!(again.validation.len(), 2, "both tasks reported");
}

#[test]
fn uncertainty_weighting_learns_one_log_variance_per_task() {
    let d = tempfile::tempdir().unwrap();
    let cfg = engagement_config(
        d.path(),
        200,
        "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 8\ntower = { hidden = [4] }\n\
         [[model.experts]]\nkind = \"mlp\"\nhidden = [8]\n[train]\nepochs = 3\nlr = 0.05\nloss_weighting = \"uncertainty\"\n",
    );
    let names: Vec<String> = cfg.tasks.iter().map(|t| t.name.clone()).collect();
    let out = d.path().join("run");
    train(Arc::new(cfg), &TrainOptions::new(&out), &CpuOps::new()).unwrap();
    // The log-variances are a checkpointed parameter: ∂L/∂s = 1 - e^{-s}·L_t pushes s
    // below 0 for the binary tasks (BCE < 1) and above 0 for dwell time (MSE ≫ 1).
    let ops = mixrank_engine::CpuOps::new();
    let loaded = mixrank_train::checkpoint::load(&out.join("checkpoint"), &ops, 16).unwrap();
    let s = loaded.model.task_log_var().expect("uncertainty weighting keeps log-variances");
    for (t, name) in names.iter().enumerate() {
        let v = s.value[t];
        if name == "dwell" {
            assert!(v > 0.0, "{name}: s = {v}");
        } else {
            assert!(v < 0.0, "{name}: s = {v}");
        }
    }
}

#[test]
fn early_stopping_validates_every_n_steps_and_keeps_the_best_model() {
    let d = tempfile::tempdir().unwrap();
    // A learning rate this large makes validation AUC wander, so patience 1 stops early.
    let cfg = engagement_config(
        d.path(),
        150,
        "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 8\ntower = { hidden = [4] }\n\
         [[model.experts]]\nkind = \"mlp\"\nhidden = [16]\n\
         [train]\nepochs = 30\nlr = 0.05\neval_every_steps = 1\nearly_stopping_patience = 1\n",
    );
    let steps_per_epoch = 1500u64.div_ceil(cfg.data.batch_size as u64);
    let out = d.path().join("run");
    let s = train(Arc::new(cfg), &TrainOptions::new(&out), &CpuOps::new()).unwrap();
    assert!(s.steps < 30 * steps_per_epoch, "stopped early: {} steps", s.steps);
    let lines = train_log(&out);
    let events = |e: &str| lines.iter().filter(|l| l["event"] == e).cloned().collect::<Vec<_>>();
    // One validation per step, each followed by a verdict.
    assert_eq!(events("validation").len() as u64, s.steps);
    let verdicts = events("early_stopping");
    assert_eq!(verdicts.len() as u64, s.steps);
    assert_eq!(events("early_stop").len(), 1);
    // The run's model is the best validation's: its step and its metrics.
    let best = verdicts.iter().rfind(|v| v["verdict"]["improved"] == true).unwrap();
    let best_step = best["step"].as_u64().unwrap();
    assert!(best_step < s.steps, "the last validation was not the best");
    assert_eq!(events("best_model")[0]["step"], best_step);
    let auc = |r: &[mixrank_metrics::TaskReport]| match &r[0].overall {
        TaskMetrics::Binary(b) => b.auc.unwrap(),
        _ => panic!("click is binary"),
    };
    assert_eq!(auc(&s.validation), best["verdict"]["monitored"].as_f64().unwrap());
    let ops = mixrank_engine::CpuOps::new();
    let loaded = mixrank_train::checkpoint::load(&out.join("checkpoint"), &ops, 16).unwrap();
    assert_eq!(loaded.manifest.step, best_step);
    assert!(!out.join("best").exists());
}

#[test]
fn reduce_on_plateau_scales_the_learning_rate_after_each_validation_without_improvement() {
    let d = tempfile::tempdir().unwrap();
    let cfg = engagement_config(
        d.path(),
        150,
        "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 8\ntower = { hidden = [4] }\n\
         [[model.experts]]\nkind = \"mlp\"\nhidden = [16]\n\
         [train]\nepochs = 30\nlr = 0.05\nsparse_lr = 0.04\neval_every_steps = 1\nearly_stopping_patience = 3\n\
         lr_plateau_factor = 0.5\n",
    );
    let out = d.path().join("run");
    let mut opts = TrainOptions::new(&out);
    opts.log_every = 1;
    let s = train(Arc::new(cfg), &opts, &CpuOps::new()).unwrap();
    let lines = train_log(&out);
    // Scale after each validation, by step; the scale halves exactly on the verdicts
    // without improvement.
    let mut scale_after = std::collections::BTreeMap::new();
    let mut expected = 1.0f64;
    for l in lines.iter().filter(|l| l["event"] == "early_stopping") {
        let v = &l["verdict"];
        if v["improved"] == false {
            expected *= 0.5;
        }
        assert_eq!(v["lr_scale"].as_f64().unwrap(), expected, "{l}");
        scale_after.insert(l["step"].as_u64().unwrap(), expected);
    }
    assert!(expected <= 0.125, "the run stopped after 3 validations without improvement: scale {expected}");
    // Every step's logged learning rate is the configured one times the scale of the
    // latest validation before it.
    let trains: Vec<_> = lines.iter().filter(|l| l["event"] == "train").collect();
    assert_eq!(trains.len() as u64, s.steps);
    for l in trains {
        let step = l["step"].as_u64().unwrap();
        let scale = scale_after.range(..step).next_back().map_or(1.0, |(_, s)| *s);
        let (lr, sparse_lr) = (l["lr"].as_f64().unwrap(), l["sparse_lr"].as_f64().unwrap());
        assert!((lr - 0.05 * scale).abs() <= 1e-6 * 0.05, "step {step}: lr {lr}, scale {scale}");
        assert!((sparse_lr - 0.04 * scale).abs() <= 1e-6 * 0.04, "step {step}: sparse_lr {sparse_lr}, scale {scale}");
    }
}

#[test]
fn a_resumed_run_with_dropout_matches_an_uninterrupted_one_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    let cfg = engagement_config(
        d.path(),
        400,
        "[model]\narchitecture = \"mmoe\"\nexpert_dim = 8\nshared = { hidden = [16], dropout = 0.3 }\n\
         tower = { hidden = [4] }\n[[model.experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [16]\ndropout = 0.5\n\
         [train]\nepochs = 1\ncheckpoint_every_steps = 3\n",
    );
    assert_resume_is_exact(d.path(), cfg);
}

#[test]
fn a_resumed_run_with_the_position_towers_feature_dropout_matches_an_uninterrupted_one() {
    let d = tempfile::tempdir().unwrap();
    let p = mixrank_data::simulate::EngagementParams { requests_per_day: 400, days: 3, ..Default::default() };
    let sim = mixrank_data::simulate::simulate_engagement(&p, &d.path().join("data")).unwrap();
    let mut text = std::fs::read_to_string(&sim.config).unwrap();
    text.push_str("\n[feature_groups]\nbias = [\"position_id\", \"device_id\"]\n");
    std::fs::write(&sim.config, text).unwrap();
    let model = d.path().join("model.toml");
    std::fs::write(
        &model,
        "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 8\nposition_tower = { hidden = [4], dropout = 0.5 }\n\
         [[model.experts]]\nkind = \"mlp\"\nhidden = [16]\n[train]\nepochs = 1\ncheckpoint_every_steps = 3\n",
    )
    .unwrap();
    assert_resume_is_exact(d.path(), ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap());
}

/// Trains `cfg` 8 steps in one go, and 4 steps (checkpoint at 3) then resumed from step
/// 3 to 8: the two final models are the same bit for bit.
fn assert_resume_is_exact(d: &Path, mut cfg: ExperimentConfig) {
    cfg.data.batch_size = 256;
    let cfg = Arc::new(cfg);
    let whole = d.join("whole");
    let mut o = TrainOptions::new(&whole);
    o.max_steps = Some(8);
    train(cfg.clone(), &o, &CpuOps::new()).unwrap();
    // Stop after 4 steps (checkpoint at 3), then resume to 8 from the step-3 checkpoint.
    let split = d.join("split");
    let mut o = TrainOptions::new(&split);
    o.max_steps = Some(4);
    train(cfg.clone(), &o, &CpuOps::new()).unwrap();
    std::fs::remove_dir_all(split.join("checkpoint")).unwrap();
    let mut o = TrainOptions::new(&split);
    o.max_steps = Some(8);
    o.resume = true;
    train(cfg.clone(), &o, &CpuOps::new()).unwrap();
    let ops = mixrank_engine::CpuOps::new();
    let mut a = mixrank_train::checkpoint::load(&whole.join("checkpoint"), &ops, 16).unwrap().model;
    let mut b = mixrank_train::checkpoint::load(&split.join("checkpoint"), &ops, 16).unwrap().model;
    let mut wa = Vec::new();
    a.params(&mut |n, p| wa.push((n.to_string(), p.value.clone())));
    let mut i = 0;
    b.params(&mut |n, p| {
        assert_eq!(wa[i].0, n);
        assert!(wa[i].1 == p.value, "{n} differs after resume");
        i += 1;
    });
    assert_eq!(i, wa.len());
}

/// The step at which [`crash_at`] panics (`u64::MAX`: never).
static CRASH_AT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

/// A progress callback that panics on the progress line of step [`CRASH_AT`]: like a
/// kill after that step's update, before its validation and checkpoint.
fn crash_at(line: &str) {
    let step = line.split(" step ").nth(1).and_then(|r| r.split(':').next()).and_then(|n| n.parse::<u64>().ok());
    if step == Some(CRASH_AT.load(std::sync::atomic::Ordering::SeqCst)) {
        panic!("simulated crash at step {}", step.unwrap());
    }
}

#[test]
fn a_resumed_run_stops_early_at_the_step_and_with_the_model_of_an_uninterrupted_one() {
    let d = tempfile::tempdir().unwrap();
    // As in the early-stopping test: a large learning rate makes validation AUC wander.
    let mut cfg = engagement_config(
        d.path(),
        150,
        "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 8\ntower = { hidden = [4] }\n\
         [[model.experts]]\nkind = \"mlp\"\nhidden = [16]\n\
         [train]\nepochs = 30\nlr = 0.05\neval_every_steps = 1\nearly_stopping_patience = 3\n\
         checkpoint_every_steps = 1\nkeep_checkpoints = 2\nthreads = 1\n",
    );
    cfg.data.batch_size = 512; // 3 steps an epoch
    let cfg = Arc::new(cfg);
    let steps_of = |lines: &[serde_json::Value], event: &str| -> Vec<u64> {
        lines.iter().filter(|l| l["event"] == event).map(|l| l["step"].as_u64().unwrap()).collect()
    };
    let manifest = |dir: &Path| -> mixrank_train::checkpoint::Manifest {
        mixrank_train::checkpoint::read_verified(dir).unwrap().manifest
    };

    let whole = d.path().join("whole");
    let s = train(cfg.clone(), &TrainOptions::new(&whole), &CpuOps::new()).unwrap();
    let stop = s.steps;
    let best = manifest(&whole.join("checkpoint")).step;
    assert_eq!(steps_of(&train_log(&whole), "early_stop"), [stop], "stopped early");
    assert_eq!(best + 3, stop, "patience 3 after the best validation");

    // Killed after the update of step stop - 1: the newest checkpoint is stop - 2's, when
    // one validation since the best had not improved.
    let split = d.path().join("split");
    CRASH_AT.store(stop - 1, std::sync::atomic::Ordering::SeqCst);
    let mut opts = TrainOptions::new(&split);
    opts.log_every = 1;
    opts.progress = Some(crash_at);
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| train(cfg.clone(), &opts, &CpuOps::new())));
    assert!(crashed.is_err(), "the run crashed");
    assert!(!split.join("checkpoint").exists());
    let newest = mixrank_train::periodic::newest_good(&split).unwrap().checkpoint.manifest;
    assert_eq!(newest.step, stop - 2);
    let state = newest.early_stopping.expect("the checkpoint records the early-stopping state");
    assert_eq!((state.best_step, state.without_improvement, state.patience), (best, 1, 3), "{state:?}");
    assert_eq!(state.last_step, Some(stop - 2));

    // Resumed, it goes on counting: it stops at the same step with the same model.
    CRASH_AT.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    opts.resume = true;
    let r = train(cfg.clone(), &opts, &CpuOps::new()).unwrap();
    assert_eq!(r.steps, stop, "the resumed run stops where the uninterrupted one did");
    let lines = train_log(&split);
    assert_eq!(steps_of(&lines, "early_stop"), [stop]);
    assert_eq!(steps_of(&lines, "best_model"), [best]);
    let (a, b) = (manifest(&whole.join("checkpoint")), manifest(&split.join("checkpoint")));
    assert_eq!((b.step, b.weights_xxh3()), (a.step, a.weights_xxh3()), "the best validation's model");
    assert_eq!(b.early_stopping, a.early_stopping);
    assert_eq!(r.validation, s.validation, "the best validation's reports");
    assert!(!split.join("best").exists());

    // Resumed once more (from the checkpoint of the stopping step), a stopped run trains
    // nothing, counts no validation twice and keeps its model.
    let again = train(cfg.clone(), &opts, &CpuOps::new()).unwrap();
    assert_eq!((again.steps, &again.validation), (stop, &s.validation));
    let c = manifest(&split.join("checkpoint"));
    assert_eq!((c.step, c.weights_xxh3(), c.early_stopping), (a.step, a.weights_xxh3(), a.early_stopping));
    let lines = train_log(&split);
    assert_eq!(steps_of(&lines, "best_model"), [best, best]);
    let last = lines.iter().rfind(|l| l["event"] == "early_stopping").unwrap();
    assert_eq!(last["verdict"]["without_improvement"], 3, "{last}");

    // A manifest written before the state was recorded still loads, without it.
    let ck = mixrank_train::periodic::newest_good(&split).unwrap().checkpoint.dir;
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("manifest.json")).unwrap()).unwrap();
    assert!(m.as_object_mut().unwrap().remove("early_stopping").is_some());
    let text = serde_json::to_string_pretty(&m).unwrap();
    std::fs::write(ck.join("manifest.json"), &text).unwrap();
    std::fs::write(ck.join("manifest.xxh3"), mixrank_train::checkpoint::xxh3(text.as_bytes())).unwrap();
    assert_eq!(manifest(&ck).early_stopping, None);
    // Resumed from it, a run starts monitoring afresh (so it trains on) and logs so.
    let afresh = train(cfg.clone(), &opts, &CpuOps::new()).unwrap();
    assert!(afresh.steps > stop, "monitoring restarted: {} steps", afresh.steps);
    let resume = train_log(&split).into_iter().rfind(|l| l["event"] == "resume").unwrap();
    assert!(resume["step"] == stop && resume["early_stopping"].is_null(), "{resume}");
}

#[test]
fn epochs_and_max_steps_stop_at_the_first_bound_and_say_which() {
    let d = tempfile::tempdir().unwrap();
    let p = mixrank_data::simulate::MmoePaperParams { seed: 4, train_rows: 600, ..Default::default() };
    let sim = mixrank_data::simulate::simulate_mmoe_paper(&p, d.path()).unwrap();
    let model = d.path().join("model.toml");
    std::fs::write(
        &model,
        "[model]\narchitecture = \"mmoe\"\nexpert_dim = 4\n[[model.experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [8]\n\
         [train]\nepochs = 2\nmax_steps = 1000\nthreads = 1\n",
    )
    .unwrap();
    let cfg = Arc::new(ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap());
    let batches_per_epoch = 600u64.div_ceil(cfg.data.batch_size as u64);
    // max_steps far above 2 epochs: the epochs stop the run, and it says so.
    let run = d.path().join("run");
    let mut opts = TrainOptions::new(&run);
    opts.log_every = 1;
    let s = train(cfg.clone(), &opts, &CpuOps::new()).unwrap();
    assert_eq!(s.steps, 2 * batches_per_epoch);
    assert_eq!(s.stop, mixrank_train::StopReason::Epochs { epochs: 2 });
    let log = train_log(&run);
    let stop: Vec<_> = log.iter().filter(|l| l["event"] == "stop").collect();
    assert_eq!(stop.len(), 1);
    assert_eq!(stop[0]["stop"]["reason"], "epochs");
    // Training-only time: one `epoch` line per epoch, and every train line's training
    // time within its wall time.
    let epochs: Vec<_> = log.iter().filter(|l| l["event"] == "epoch").collect();
    assert_eq!(epochs.len(), 2);
    assert!(epochs.iter().all(|e| e["examples"] == 600 && e["train_s"].as_f64().unwrap() > 0.0), "{epochs:?}");
    for l in log.iter().filter(|l| l["event"] == "train") {
        assert!(l["train_s"].as_f64().unwrap() <= l["elapsed_s"].as_f64().unwrap(), "{l}");
    }
    assert!(s.train_seconds <= s.seconds && s.train_seconds > 0.0);
    let scored = s.scored.as_ref().unwrap();
    assert_eq!((scored.split.as_str(), scored.step, scored.best), ("validation", s.steps, false));
    // A step budget inside the first epoch stops it there.
    let mut opts = TrainOptions::new(d.path().join("run3"));
    opts.max_steps = Some(3);
    let s = train(cfg.clone(), &opts, &CpuOps::new()).unwrap();
    assert_eq!((s.steps, s.stop), (3, mixrank_train::StopReason::MaxSteps { max_steps: 3 }));
    // The same --out again is refused, and --overwrite replaces it.
    let e = train(cfg.clone(), &opts, &CpuOps::new()).unwrap_err().to_string();
    assert!(e.contains("already holds a run") && e.contains("--overwrite"), "{e}");
    opts.overwrite = true;
    assert_eq!(train(cfg, &opts, &CpuOps::new()).unwrap().steps, 3);
}

#[test]
fn the_position_tower_is_checkpointed_and_off_at_evaluation() {
    use mixrank_data::pipeline::{read_all, StreamOptions};
    use mixrank_data::{DenseMode, Encoder};
    use mixrank_engine::{Backend, CpuOps};
    let d = tempfile::tempdir().unwrap();
    let p = mixrank_data::simulate::EngagementParams { requests_per_day: 400, days: 3, ..Default::default() };
    let sim = mixrank_data::simulate::simulate_engagement(&p, &d.path().join("data")).unwrap();
    // The tower reads position and device; device also feeds the head (`context`).
    let mut text = std::fs::read_to_string(&sim.config).unwrap();
    text.push_str("\n[feature_groups]\nbias = [\"position_id\", \"device_id\"]\ncontext = [\"device_id\"]\n");
    std::fs::write(&sim.config, text).unwrap();
    let model = d.path().join("model.toml");
    std::fs::write(
        &model,
        "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 8\nposition_tower = { hidden = [4], tasks = [\"click\", \"save\"] }\n\
         [[model.experts]]\nkind = \"mlp\"\nhidden = [8]\n[train]\nthreads = 2\nlr = 0.01\n",
    )
    .unwrap();
    let cfg = ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap();
    let out = d.path().join("run");
    let mut opts = TrainOptions::new(&out);
    opts.max_steps = Some(3);
    let s = train(Arc::new(cfg.clone()), &opts, &CpuOps::new()).unwrap();

    // The weights file carries the tower: every `logit_sources.0.*` tensor, trained.
    let ck = out.join("checkpoint");
    let v = mixrank_train::checkpoint::read_verified(&ck).unwrap();
    let weights = v.weights().unwrap();
    let names: Vec<&str> = weights.names().into_iter().filter(|n| n.starts_with("head.logit_sources.0.")).collect();
    assert_eq!(names.len(), 4, "{:?}", weights.names());
    let ops = CpuOps::new();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(cfg.train.seed);
    let mut fresh = mixrank_model::RankingModel::new(&cfg, &ops, 16, &mut rng).unwrap();
    let mut loaded = mixrank_train::checkpoint::load(&ck, &ops, 4096).unwrap();
    let tower = |m: &mut dyn mixrank_model::Model<CpuOps>| {
        let mut out = Vec::new();
        m.params(&mut |n, p| {
            if n.starts_with("logit_sources.0.") {
                out.push((n.to_string(), p.value[..p.len()].to_vec()));
            }
        });
        out
    };
    let (initial, restored) = (tower(&mut fresh), tower(&mut *loaded.model));
    assert_eq!(restored.len(), 4);
    for ((name, init), (_, value)) in initial.iter().zip(&restored) {
        let key = format!("head.{name}");
        let stored = weights.f32(&key, &weights.shape(&key).unwrap()).unwrap();
        assert_eq!(&stored, value, "{name}: loaded from the file");
        assert_ne!(init, value, "{name}: trained");
    }
    let described = loaded.model.io().inputs.clone();
    assert_eq!(described[1].0, "logit_sources.0");
    assert_eq!(described[1].1[0].features, ["position_id", "device_id"]);
    assert!(!described[0].1[0].features.contains(&"position_id".to_string()), "position does not feed the head");

    // Evaluation: the reloaded model reproduces the run's validation predictions (made
    // without the tower) bit for bit, and moving every row to another position changes
    // nothing; in training mode the tower's logit is added.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        let stats = Arc::new(loaded.manifest.dense_stats.clone());
        let enc = Arc::new(Encoder::new(loaded.config.clone(), DenseMode::Fitted(stats)).unwrap());
        let (batches, _) = read_all(
            enc,
            loaded.config.split("validation").unwrap(),
            StreamOptions::from_config(&loaded.config, false),
        )
        .unwrap();
        let pos = loaded.config.categorical.iter().position(|f| f.name == "position_id").unwrap();
        let mut host = vec![0f32; 4096];
        let mut score = |m: &mut dyn mixrank_model::Model<CpuOps>, b: &mixrank_data::Batch| {
            m.forward(&ops, b).unwrap();
            ops.read(m.logits(0), &mut host[..b.rows]).unwrap();
            host[..b.rows].to_vec()
        };
        let m = &mut *loaded.model;
        m.set_training(false);
        let mut probs = Vec::new();
        for b in &batches {
            let eval = score(m, b);
            probs.extend(eval.iter().map(|&z| 1.0 / (1.0 + (-z).exp())));
            let mut moved = b.clone();
            moved.cat[pos].ids.iter_mut().for_each(|i| *i = (*i + 3) % 64);
            moved.position.iter_mut().for_each(|p| *p = *p % 10 + 1);
            assert_eq!(score(m, &moved), eval, "evaluation does not read position");
            m.set_training(true);
            assert_ne!(score(m, b), eval, "training adds the tower");
            m.set_training(false);
        }
        let trained = &s.predictions.as_ref().unwrap().preds[0];
        assert_eq!(probs.len(), trained.len());
        assert!(probs.iter().zip(trained).all(|(a, b)| a.to_bits() == b.to_bits()), "predictions differ after reload");
    });
}

/// `[calibration]` end to end: fitted after training on the validation split (Platt per
/// surface here), stored in the checkpoint and listed in its manifest (a damaged file is
/// refused, naming it), and applied by the checkpoint scorer (`eval`, `compare`,
/// `predict`) to the model's own predictions, row by row by surface. Platt's family
/// holds the identity (a = 1, b = 0) and the fit maximises the likelihood on the rows it
/// was fitted on, so on those rows (each task's, each surface's) the calibrated logloss
/// cannot exceed the model's own (beyond the fit's rounding).
#[test]
fn calibration_is_fitted_on_validation_stored_verified_and_applied_per_surface() {
    use mixrank_train::calibration::{Calibration, CALIBRATION};
    let d = tempfile::tempdir().unwrap();
    let p = mixrank_data::simulate::EngagementParams { requests_per_day: 300, days: 3, ..Default::default() };
    let sim = mixrank_data::simulate::simulate_engagement(&p, &d.path().join("data")).unwrap();
    let mut text = std::fs::read_to_string(&sim.config).unwrap();
    text.push_str("\n[calibration]\nmethod = \"platt\"\nper = \"surface\"\n");
    std::fs::write(&sim.config, text).unwrap();
    let model = d.path().join("model.toml");
    std::fs::write(
        &model,
        "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 8\n[[model.experts]]\nkind = \"mlp\"\nhidden = [8]\n\
         [train]\nthreads = 2\nlr = 0.01\n",
    )
    .unwrap();
    let cfg = ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap();
    let out = d.path().join("run");
    let mut opts = TrainOptions::new(&out);
    opts.max_steps = Some(20);
    let s = train(Arc::new(cfg), &opts, &CpuOps::new()).unwrap();
    let fitted = s.calibration.expect("a calibration layer was fitted");
    // click, save, conversion (dwell is a regression task): `all` and three surfaces each.
    assert_eq!(fitted.file.tasks.iter().map(|t| t.task.as_str()).collect::<Vec<_>>(), ["click", "save", "conversion"]);
    assert_eq!(fitted.report.len(), 3 * 4);
    for r in &fitted.report {
        let fallback = fitted
            .file
            .tasks
            .iter()
            .any(|t| t.task == r.task && t.surfaces.iter().any(|m| m.segment == r.segment && m.fallback.is_some()));
        if r.segment != "all" && !fallback {
            assert!(r.logloss[1] <= r.logloss[0] + 1e-9, "{r:?}");
        }
    }
    let click_all = &fitted.report[0];
    assert!(click_all.logloss[1] < click_all.logloss[0], "{click_all:?}");

    // Stored, listed in the manifest and loaded with the checkpoint.
    let ck = out.join("checkpoint");
    let ops = CpuOps::new();
    let loaded = mixrank_train::checkpoint::load(&ck, &ops, 16).unwrap();
    assert!(loaded.manifest.files.contains_key(CALIBRATION));
    let cal = loaded.calibration.clone().expect("loaded with the checkpoint");
    assert_eq!(cal.file, fitted.file);

    // The scorer applies it: its predictions are the model's, mapped by surface.
    let mut scorer = mixrank_train::CheckpointScorer::open(&out, &ops, None).unwrap();
    let p = scorer.score(&ops, "validation").unwrap();
    let raw = p.uncalibrated.clone().expect("the model's own predictions are kept");
    let mut again = raw.clone();
    cal.apply_all(&p.segments, &mut again);
    assert_eq!(again, p.preds);
    assert_ne!(raw[0], p.preds[0], "calibration changed the click predictions");
    assert_eq!(raw[2], p.preds[2], "the regression task is left as it is");
    // Rows of different surfaces with the same model prediction get different maps.
    let per: Vec<_> = fitted.file.tasks[0].surfaces.iter().map(|m| m.map.clone().unwrap()).collect();
    assert!(per[0] != per[1] && per[1] != per[2], "{per:?}");
    // Reparsing the stored file gives the same layer.
    let bytes = std::fs::read(ck.join(CALIBRATION)).unwrap();
    assert_eq!(Calibration::parse(&loaded.config, &bytes).unwrap().file, cal.file);

    // A damaged calibration file is refused, naming it.
    let mut damaged = bytes.clone();
    let i = damaged.iter().position(|&b| b == b'.').unwrap();
    damaged[i + 1] = if damaged[i + 1] == b'1' { b'2' } else { b'1' };
    std::fs::write(ck.join(CALIBRATION), &damaged).unwrap();
    let e = mixrank_train::checkpoint::load(&ck, &ops, 16).err().expect("damaged").to_string();
    assert!(e.contains(CALIBRATION) && e.contains("corrupt"), "{e}");
    std::fs::remove_file(ck.join(CALIBRATION)).unwrap();
    let e = mixrank_train::checkpoint::load(&ck, &ops, 16).err().expect("missing").to_string();
    assert!(e.contains(CALIBRATION), "{e}");
}
