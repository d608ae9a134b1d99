//! The position-bias shallow tower on simulated data, where the truth is known: the
//! simulator draws a click as "examined at this position (and device)" × "clicked with
//! probability `p_click_true`", and keeps `p_click_true`. A model that learns position
//! as a plain feature scores "clicked at the logged position"; with the tower, the
//! evaluation-mode score (tower off) should track the position-free probability.
//!
//! Three models, trained alike on the same simulated days, scored on the test day:
//! - `plain`: `position_id` as a head feature (the simulator's default config), scored
//!   at the logged position (what `mixrank eval` does) and at position 1;
//! - `no_position`: the `position_id` feature removed;
//! - `tower`: `position_id` and `device_id` in a `bias` group read by the tower
//!   (position leaves the head, device stays through a `context` group).
//!
//! Measured against the truth: the Pearson correlation of the click logit with
//! `logit(p_click_true)`, and the expected AUC against labels drawn from
//! `p_click_true` (each row a positive with weight p and a negative with weight 1 − p);
//! beside them the usual AUC against the observed clicks. `cargo test --workspace
//! --locked --test position_bias -- --nocapture` prints the table (docs/BENCHMARKS.md).

use mixrank_data::pipeline::{read_all, StreamOptions};
use mixrank_data::simulate::{simulate_engagement, EngagementParams};
use mixrank_data::{Batch, DenseMode, Encoder, ExperimentConfig};
use mixrank_engine::{Backend, CpuOps};
use mixrank_metrics::auc;
use mixrank_train::{train, TrainOptions};
use std::path::Path;
use std::sync::Arc;

const MODEL: &str = "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 16\ntower = { hidden = [16] }\n\
                     [[model.experts]]\nkind = \"mlp\"\nhidden = [32]\n";
const TRAIN: &str = "[train]\nepochs = 3\nlr = 0.005\nthreads = 2\nseed = 1\n";
const POSITION_FEATURE: &str =
    "[[features.categorical]]\nname = \"position_id\"\ncolumn = \"position\"\nbuckets = 64\ndim = 4\n";
const GROUPS: &str = "\n[feature_groups]\nbias = [\"position_id\", \"device_id\"]\ncontext = [\"device_id\"]\n";

/// Scores of one model on the test day.
#[derive(Debug)]
struct Scores {
    /// Correlation of the click logit with logit(p_click_true).
    corr: f64,
    /// Expected AUC against labels drawn from p_click_true.
    true_auc: f64,
    /// AUC against the observed clicks.
    observed_auc: f64,
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// Trains `cfg_text` (+ the model) in `dir` and scores its test split in evaluation
/// mode; with `at_first`, every row's `position_id` is set to position 1's id.
fn run(dir: &Path, cfg_text: &str, tower: &str, at_first: &[bool]) -> Vec<Scores> {
    std::fs::create_dir_all(dir).unwrap();
    let cfg_path = dir.join("mixrank.toml");
    std::fs::write(&cfg_path, cfg_text).unwrap();
    let model = dir.join("model.toml");
    std::fs::write(&model, format!("{MODEL}{tower}{TRAIN}")).unwrap();
    let cfg = ExperimentConfig::load(&cfg_path).unwrap().with_model_file(&model).unwrap();
    let out = dir.join("run");
    train(Arc::new(cfg), &TrainOptions::new(&out), &CpuOps::new()).unwrap();
    let ops = CpuOps::new();
    let mut loaded = mixrank_train::checkpoint::load(&out.join("checkpoint"), &ops, 4096).unwrap();
    let cfg = loaded.config.clone();
    let enc =
        Arc::new(Encoder::new(cfg.clone(), DenseMode::Fitted(Arc::new(loaded.manifest.dense_stats.clone()))).unwrap());
    let (batches, _) = read_all(enc, cfg.split("test").unwrap(), StreamOptions::from_config(&cfg, false)).unwrap();
    let truth = cfg.columns.keep.iter().position(|k| k == "p_click_true").unwrap();
    let pos = cfg.categorical.iter().position(|f| f.name == "position_id");
    let first_id = |b: &Batch| {
        let p = pos.expect("a position feature");
        b.cat[p].ids[b.position.iter().position(|&x| x == 1).unwrap()]
    };
    let m = &mut loaded.model;
    m.set_training(false);
    let mut host = vec![0f32; 4096];
    at_first
        .iter()
        .map(|&first| {
            let (mut logits, mut true_logits, mut p_true, mut clicks) = (vec![], vec![], vec![], vec![]);
            for b in &batches {
                let mut b = b.clone();
                if first {
                    let id = first_id(&b);
                    b.cat[pos.unwrap()].ids.iter_mut().for_each(|i| *i = id);
                }
                m.forward(&ops, &b).unwrap();
                ops.read(m.logits(0), &mut host[..b.rows]).unwrap();
                logits.extend_from_slice(&host[..b.rows]);
                for &p in b.kept(truth) {
                    // Stored as f32: keep the logit finite.
                    let q = (p as f64).clamp(1e-6, 1.0 - 1e-6);
                    true_logits.push((q / (1.0 - q)).ln());
                    p_true.push(p);
                }
                clicks.extend_from_slice(b.label(0));
            }
            let n = logits.len();
            let doubled: Vec<f32> = logits.iter().chain(&logits).copied().collect();
            let labels: Vec<f32> = (0..2 * n).map(|i| (i < n) as u8 as f32).collect();
            let weights: Vec<f32> = p_true.iter().copied().chain(p_true.iter().map(|p| 1.0 - p)).collect();
            let l64: Vec<f64> = logits.iter().map(|&z| z as f64).collect();
            Scores {
                corr: pearson(&l64, &true_logits),
                true_auc: auc(&doubled, &labels, Some(&weights)).unwrap(),
                observed_auc: auc(&logits, &clicks, None).unwrap(),
            }
        })
        .collect()
}

#[test]
fn with_the_tower_evaluation_scores_track_the_position_free_click_probability() {
    let d = tempfile::tempdir().unwrap();
    let p = EngagementParams {
        days: 4,
        requests_per_day: 5000,
        users: 2000,
        initial_ads: 500,
        new_ads_per_day: 50,
        ..Default::default()
    };
    let sim = simulate_engagement(&p, &d.path().join("data")).unwrap();
    let base = std::fs::read_to_string(&sim.config).unwrap();
    // The simulator's config, with the data paths made absolute.
    let data = d.path().join("data");
    let base = base
        .replace("paths = [\"day=", &format!("paths = [\"{}/day=", data.display()))
        .replace("batch_size = 2048", "batch_size = 512");
    assert!(base.contains(POSITION_FEATURE));
    let plain = run(&d.path().join("plain"), &base, "", &[false, true]);
    let none = run(&d.path().join("none"), &base.replace(POSITION_FEATURE, ""), "", &[false]);
    let tower = run(&d.path().join("tower"), &format!("{base}{GROUPS}"), "[model.position_tower]\n", &[false]);
    let rows = [
        ("position as a feature, logged position", &plain[0]),
        ("position as a feature, scored at position 1", &plain[1]),
        ("no position feature", &none[0]),
        ("shallow position tower (off at evaluation)", &tower[0]),
    ];
    println!("| model | corr(logit, logit p_click_true) | AUC vs p_click_true | AUC vs clicks |");
    println!("|---|---|---|---|");
    for (name, s) in rows {
        println!("| {name} | {:.4} | {:.4} | {:.4} |", s.corr, s.true_auc, s.observed_auc);
    }
    let t = &tower[0];
    // The tower's evaluation scores follow the true probability better than the plain
    // model's scores at the logged position, which mix in the examination effect.
    assert!(t.corr > plain[0].corr + 0.05, "tower {t:?} vs plain {:?}", plain[0]);
    assert!(t.true_auc > plain[0].true_auc, "tower {t:?} vs plain {:?}", plain[0]);
}
