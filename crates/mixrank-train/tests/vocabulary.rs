//! Learned vocabularies (`vocabulary = { from = "train", … }`) through a run on simulated
//! data: built by the statistics pass (min_count and the cap honoured), stored with the
//! run, and reused as stored by evaluation (which needs no training data), `--resume`
//! (exact, and not rebuilt when the training data changed) and the values outside the
//! vocabulary read the out-of-vocabulary row.

use mixrank_data::column::Key;
use mixrank_data::encode::table_row;
use mixrank_data::stats::fit_train_stats;
use mixrank_data::{DenseMode, Encoder, ExperimentConfig};
use mixrank_engine::CpuOps;
use mixrank_train::checkpoint::{load, read_verified};
use mixrank_train::{evaluate, train, TrainOptions};
use std::path::Path;
use std::sync::Arc;

const MODEL: &str = "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 8\n\
    [[model.experts]]\nkind = \"mlp\"\nhidden = [8]\n\
    [train]\nthreads = 2\ncheckpoint_every_steps = 3\nseed = 5\n";

/// The simulator's config with `advertiser_id` learning `advertiser` and the shared
/// `category` table (single- and multi-valued features) learning `"train"`.
fn config(dir: &Path, advertiser: &str) -> ExperimentConfig {
    let sim_config = dir.join("data/mixrank.toml");
    let text = std::fs::read_to_string(&sim_config).unwrap();
    let mut out = Vec::new();
    let mut prev = "";
    for line in text.lines() {
        let edited = match (prev, line.starts_with("buckets =")) {
            ("name = \"advertiser_id\"", true) => advertiser.to_string(),
            ("[tables.category]", true) => "vocabulary = \"train\"".to_string(),
            _ if line == "batch_size = 2048" => "batch_size = 256".to_string(),
            _ => line.to_string(),
        };
        prev = line;
        out.push(edited);
    }
    let path = dir.join("data/learned.toml");
    std::fs::write(&path, out.join("\n")).unwrap();
    std::fs::write(dir.join("model.toml"), MODEL).unwrap();
    let cfg = ExperimentConfig::load(&path).unwrap().with_model_file(&dir.join("model.toml")).unwrap();
    assert_eq!(cfg.data.batch_size, 256);
    cfg
}

const RULE: &str = "vocabulary = { from = \"train\", min_count = 3, max_size = 60 }";

fn fit(cfg: &ExperimentConfig) -> mixrank_data::stats::Vocabularies {
    let cfg = Arc::new(cfg.clone());
    fit_train_stats(cfg.clone(), cfg.split("train").unwrap(), Some(1_000_000)).unwrap().vocabularies
}

fn run(cfg: &ExperimentConfig, out: &Path, steps: u64, resume: bool) -> mixrank_train::TrainSummary {
    let mut o = TrainOptions::new(out);
    o.max_steps = Some(steps);
    o.resume = resume;
    train(Arc::new(cfg.clone()), &o, &CpuOps::new()).unwrap()
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let mut m = load(dir, &CpuOps::new(), 16).unwrap().model;
    let mut w = Vec::new();
    m.params(&mut |n, p| w.push((n.to_string(), p.value.clone())));
    m.embeddings_mut().unwrap().visit_tables(&mut |n, t| w.push((n.to_string(), t.value.clone())));
    w
}

#[test]
fn a_learned_vocabulary_is_built_stored_and_reused_as_stored() {
    let d = tempfile::tempdir().unwrap();
    let p = mixrank_data::simulate::EngagementParams { requests_per_day: 300, days: 4, ..Default::default() };
    mixrank_data::simulate::simulate_engagement(&p, &d.path().join("data")).unwrap();
    let cfg = config(d.path(), RULE);
    assert_eq!(cfg.unbuilt_vocabularies(), ["category", "advertiser_id"]);

    // The rule has an effect here: more advertisers are seen than min_count keeps, and
    // more are kept than the cap allows.
    let all = fit(&config(d.path(), "vocabulary = \"train\""));
    let frequent = fit(&config(d.path(), "vocabulary = { from = \"train\", min_count = 3 }"));
    assert!(all["advertiser_id"].len() > frequent["advertiser_id"].len(), "min_count removes rare advertisers");
    assert!(frequent["advertiser_id"].len() > 60, "the cap binds");
    let built = fit(&cfg);
    assert_eq!(built["advertiser_id"][..], frequent["advertiser_id"][..60], "the 60 most frequent");

    // A run stores exactly what the statistics pass builds.
    let a = d.path().join("a");
    let s = run(&cfg, &a, 8, false);
    let v = read_verified(&a.join("checkpoint")).unwrap();
    assert_eq!(v.manifest.vocabularies, built);
    let json: std::collections::BTreeMap<String, Vec<String>> =
        serde_json::from_str(&std::fs::read_to_string(a.join(mixrank_train::VOCABULARIES)).unwrap()).unwrap();
    assert_eq!(json, built);
    // The checkpoint's config maps values with it: stored values by position, a value
    // below min_count to the out-of-vocabulary row 60.
    let loaded = v.config().unwrap();
    let table = loaded.tables.iter().find(|t| t.name == "advertiser_id").unwrap();
    assert_eq!(table.rows(), 61);
    let id = |v: &str| table_row(&table.kind, &Key::Int(v.parse().unwrap()));
    assert_eq!(id(&built["advertiser_id"][7]), 7);
    let rare = all["advertiser_id"].iter().find(|v| !frequent["advertiser_id"].contains(v)).unwrap();
    assert_eq!(id(rare), 60, "advertiser {rare} (below min_count) reads the OOV row");
    let capped = &frequent["advertiser_id"][60];
    assert_eq!(id(capped), 60, "advertiser {capped} (cut by the cap) reads the OOV row");

    // Resume is exact: 4 steps (checkpoint at 3), resumed to 8, equals 8 in one go.
    let b = d.path().join("b");
    run(&cfg, &b, 4, false);
    std::fs::remove_dir_all(b.join("checkpoint")).unwrap();
    run(&cfg, &b, 8, true);
    assert!(weights(&a.join("checkpoint")) == weights(&b.join("checkpoint")), "resumed run differs");

    // Resume reuses the stored vocabularies: the training data changes under the run (a
    // second copy of a training file), which would build other vocabularies, and the
    // resumed run keeps the ones it started with.
    let c = d.path().join("c");
    run(&cfg, &c, 4, false);
    std::fs::remove_dir_all(c.join("checkpoint")).unwrap();
    let days: Vec<_> = {
        let mut v: Vec<_> = std::fs::read_dir(d.path().join("data")).unwrap().flatten().map(|e| e.path()).collect();
        v.retain(|p| p.is_dir());
        v.sort();
        v
    };
    let first = std::fs::read_dir(&days[0])
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    std::fs::copy(&first, days[1].join("extra.parquet")).unwrap();
    assert_ne!(fit(&cfg), built, "the changed training data builds other vocabularies");
    run(&cfg, &c, 6, true);
    assert_eq!(read_verified(&c.join("checkpoint")).unwrap().manifest.vocabularies, built);
    std::fs::remove_file(days[1].join("extra.parquet")).unwrap();

    // A warm start keeps the parent's vocabularies (same table names and rules), and says so.
    let w = d.path().join("w");
    let mut o = TrainOptions::new(&w);
    o.max_steps = Some(1);
    o.init = Some(a.clone());
    train(Arc::new(cfg.clone()), &o, &CpuOps::new()).unwrap();
    assert_eq!(read_verified(&w.join("checkpoint")).unwrap().manifest.vocabularies, built);
    let log = std::fs::read_to_string(w.join("train_log.jsonl")).unwrap();
    assert!(log.contains("table `advertiser_id`: the parent's learned vocabulary (60 values), not rebuilt"), "{log}");

    // Evaluation reads the vocabularies from the checkpoint, not the training data (the
    // training days are gone), and scores the validation split as the end of training did.
    for day in &days[..2] {
        std::fs::remove_dir_all(day).unwrap();
    }
    let ops = CpuOps::new();
    let mut l = load(&a.join("checkpoint"), &ops, 256).unwrap();
    let enc =
        Arc::new(Encoder::new(l.config.clone(), DenseMode::Fitted(Arc::new(l.manifest.dense_stats.clone()))).unwrap());
    let p = evaluate(&mut *l.model, &ops, enc, l.config.split("validation").unwrap()).unwrap();
    let trained = &s.predictions.as_ref().unwrap().preds;
    assert_eq!(p.preds.len(), trained.len());
    for (t, (e, tr)) in p.preds.iter().zip(trained).enumerate() {
        assert_eq!(e.len(), tr.len());
        assert!(e.iter().zip(tr).all(|(x, y)| x.to_bits() == y.to_bits()), "task {t}: eval differs from training's");
    }
}
