//! One code path, any backend: the whole life of a model — training with periodic
//! checkpoints, a stop and `--resume`, evaluation, and a serving session scoring a
//! request — runs on the engine's reference backend (`RefOps`, naive loops) through
//! exactly the code the CPU backend (`CpuOps`) runs, and the two backends' scores of
//! the same checkpoint agree within the rounding-error bound derived for that model
//! and request (`BoundOps`: f64 values with a rigorous bound on any f32 execution).
//! The serving session also runs on `Counting<CpuOps>`, whose buffers are opaque to
//! generic code, at f32 and bf16, giving the CPU backend's bits.
//!
//! The model is a small heterogeneous MMoE — DCNv2, MaskNet, FinalMLP and MLP experts
//! with dropout, top-2 gates — on simulated engagement logs.

use mixrank_data::config::TaskKind;
use mixrank_data::simulate::{simulate_engagement, EngagementParams};
use mixrank_data::ExperimentConfig;
use mixrank_engine::{CpuOps, RefOps};
use mixrank_model::Model;
use mixrank_nn::testing::BoundOps;
use mixrank_serve::replay::{requests_from_parquet, split_files, Grouping};
use mixrank_serve::{InferenceSession, Precision};
use mixrank_train::checkpoint::load;
use mixrank_train::{train, CheckpointScorer, TrainOptions};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

const MODEL: &str = r#"
[model]
architecture = "mmoe"
expert_dim = 8
shared = { hidden = [16], dropout = 0.2 }

[[model.experts]]
kind = "dcnv2"
cross_layers = 2
low_rank = 4
hidden = [16]
dropout = 0.1

[[model.experts]]
kind = "masknet"
blocks = 2
block_dim = 8
structure = "parallel"
hidden = [8]
dropout = 0.1

[[model.experts]]
kind = "finalmlp"
hidden = [16]
stream2 = [8]
heads = 2

[[model.experts]]
kind = "mlp"
hidden = [16]
dropout = 0.1

[model.gate]
top_k = 2

[model.tower]
hidden = [8]

[train]
epochs = 1
lr = 0.01
sparse_optimizer = "rowwise_adagrad"
sparse_lr = 0.05
checkpoint_every_steps = 2
"#;

/// f32 unit roundoff.
const U: f64 = 1.0 / (1u64 << 24) as f64;

fn config(dir: &Path) -> Arc<ExperimentConfig> {
    let p = EngagementParams {
        days: 3,
        requests_per_day: 60,
        users: 100,
        initial_ads: 80,
        new_ads_per_day: 10,
        ..Default::default()
    };
    let sim = simulate_engagement(&p, &dir.join("data")).unwrap();
    let model = dir.join("model.toml");
    std::fs::write(&model, MODEL).unwrap();
    let mut cfg = ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap();
    cfg.data.batch_size = 32;
    Arc::new(cfg)
}

/// Every dense and embedding value of a checkpoint, by name.
fn weights(run: &Path) -> Vec<(String, Vec<f32>)> {
    let ops = RefOps::new();
    let mut m = load(&run.join("checkpoint"), &ops, 1).unwrap().model;
    let mut out = Vec::new();
    m.params(&mut |n, p| out.push((n.to_string(), p.value.clone())));
    if let Some(e) = m.embeddings_mut() {
        e.visit_tables(&mut |n, t| out.push((n.to_string(), t.value.clone())));
    }
    out
}

#[test]
fn the_whole_path_runs_on_the_reference_backend_and_agrees_with_the_cpu_backend() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let ref_ops = RefOps::new();

    // Training on the reference backend, uninterrupted: 6 steps.
    let whole = d.path().join("whole");
    let mut o = TrainOptions::new(&whole);
    o.max_steps = Some(6);
    let s = train(cfg.clone(), &o, &ref_ops).unwrap();
    assert_eq!(s.steps, 6);
    assert_eq!(s.validation.len(), cfg.tasks.len(), "validation reported for every task");

    // The same run stopped after 3 steps (periodic checkpoint at step 2), its final
    // checkpoint lost, then resumed from the periodic one to step 6.
    let split = d.path().join("split");
    let mut o = TrainOptions::new(&split);
    o.max_steps = Some(3);
    train(cfg.clone(), &o, &ref_ops).unwrap();
    assert!(split.join("checkpoints/step-2").is_dir(), "periodic checkpoint written");
    std::fs::remove_dir_all(split.join("checkpoint")).unwrap();
    o.max_steps = Some(6);
    o.resume = true;
    let r = train(cfg.clone(), &o, &ref_ops).unwrap();
    assert_eq!(r.steps, 6);
    let log = std::fs::read_to_string(split.join("train_log.jsonl")).unwrap();
    assert!(log.contains("\"event\":\"resume\"") && log.contains("step-2"), "resumed from step 2:\n{log}");
    // The reference backend is deterministic, dropout masks follow (seed, step) and the
    // data cursor is exact: the resumed run ends bit for bit where the whole one did.
    let (a, b) = (weights(&whole), weights(&split));
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(va == vb, "{na} differs between the resumed and the uninterrupted run");
    }

    // Evaluation of the reference-trained checkpoint on both backends.
    let cpu_ops = CpuOps::new();
    let p_ref = CheckpointScorer::open(&whole, &ref_ops, None).unwrap().score(&ref_ops, "validation").unwrap();
    let p_cpu = CheckpointScorer::open(&whole, &cpu_ops, None).unwrap().score(&cpu_ops, "validation").unwrap();
    assert_eq!(p_ref.requests, p_cpu.requests, "same rows");
    assert!(p_ref.preds[0].len() > 100, "{} validation rows", p_ref.preds[0].len());

    // Serving: one request through a session on each backend.
    let files = split_files(&cfg, "test").unwrap();
    let req = requests_from_parquet(&files[0], &cfg, Grouping::RequestId, 64).unwrap().remove(0);
    let s_ref = InferenceSession::open(&whole, Precision::F32, 64, Arc::new(ref_ops)).unwrap();
    let s_cpu = InferenceSession::open(&whole, Precision::F32, 64, Arc::new(cpu_ops)).unwrap();
    let batch = s_ref.encode(&req, &BTreeSet::new()).unwrap();
    assert!(batch.rows > 1, "a request of several candidates");
    let (serve_ref, serve_cpu) = (s_ref.predict(&batch).unwrap(), s_cpu.predict(&batch).unwrap());

    // The same session on `Counting`'s opaque buffers (what a device backend looks like
    // to the serving code: no host `Vec` to read behind the backend's back), at f32 and
    // at bf16 (the packing asked of the backend, `Backend::pack_reduced`): the CPU
    // backend's bits, since `Counting` forwards every op to it.
    let kernel = mixrank_engine::bf16::Bf16Kernel::detect();
    let counting = |ops: CpuOps| Arc::new(mixrank_engine::counting::Counting::new(ops));
    let on = |ops| InferenceSession::open(&whole, Precision::F32, 64, ops).unwrap().predict(&batch).unwrap();
    assert_eq!(on(counting(CpuOps::new())), serve_cpu, "Counting vs CPU at f32");
    let cpu_bf16 = bf16_scores(&whole, &batch, Arc::new(CpuOps::new().with_bf16_kernel(kernel)));
    let counting_bf16 = bf16_scores(&whole, &batch, counting(CpuOps::new().with_bf16_kernel(kernel)));
    assert_eq!(counting_bf16, cpu_bf16, "Counting vs CPU at bf16 ({})", kernel.name());
    assert_ne!(cpu_bf16, serve_cpu, "the bf16 session packed its GEMMs");

    // The bound: the same checkpoint on BoundOps, forward in evaluation mode on the
    // request's batch and on the first validation batch.
    let bops = BoundOps;
    let mut bm = load(&whole.join("checkpoint"), &bops, 4096).unwrap().model;
    bm.set_training(false);
    let bound_logits = |m: &mut Box<dyn Model<BoundOps>>, b: &mixrank_data::Batch| {
        m.forward(&bops, b).unwrap();
        (0..cfg.tasks.len()).map(|t| m.logits(t)[..b.rows].to_vec()).collect::<Vec<_>>()
    };
    // Binary tasks: each backend's sigmoid(z) is within 0.25·e of sigmoid(v) (sigmoid is
    // 1/4-Lipschitz) plus its own f32 evaluation of the sigmoid (exp, add, divide: ≤ 4u
    // relative, p ≤ 1). Regression tasks: the output z itself, within e of v.
    let check =
        |what: &str, bounds: &[Vec<mixrank_nn::testing::Bounded>], a: &[Vec<f32>], b: &[Vec<f32>], rows: usize| {
            let mut worst = 0f64;
            for t in 0..bounds.len() {
                for r in 0..rows {
                    let z = bounds[t][r];
                    let (exact, tol) = match cfg.tasks[t].kind {
                        TaskKind::Binary => (1.0 / (1.0 + (-z.v).exp()), 0.25 * z.e + 4.0 * U),
                        // Regression tasks serve the model's output itself.
                        TaskKind::Regression => (z.v, z.e),
                    };
                    for (name, p) in [("reference", a[t][r] as f64), ("cpu", b[t][r] as f64)] {
                        assert!(
                            (p - exact).abs() <= tol,
                            "{what}: task {t} row {r}: {name} backend {p} vs exact {exact}, bound {tol:e}"
                        );
                    }
                    worst = worst.max((a[t][r] as f64 - b[t][r] as f64).abs() / (2.0 * tol));
                }
            }
            eprintln!("{what}: largest backend difference = {worst:.2e} of the derived bound");
        };
    let bounds = bound_logits(&mut bm, &batch);
    check("serving request", &bounds, &serve_ref, &serve_cpu, batch.rows);

    let enc = Arc::new(
        mixrank_data::Encoder::new(
            cfg.clone(),
            mixrank_data::DenseMode::Fitted(Arc::new(
                mixrank_train::checkpoint::read_verified(&whole.join("checkpoint")).unwrap().manifest.dense_stats,
            )),
        )
        .unwrap(),
    );
    // The first batch (file order, as evaluation reads): the first rows of the predictions.
    let so = mixrank_data::pipeline::StreamOptions::from_config(&cfg, false);
    let first = mixrank_data::pipeline::BatchStream::start(enc, cfg.split("validation").unwrap(), so)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let bounds = bound_logits(&mut bm, &first);
    let n = first.rows;
    let head = |p: &[Vec<f32>]| p.iter().map(|t| t[..n].to_vec()).collect::<Vec<_>>();
    check("validation", &bounds, &head(&p_ref.preds), &head(&p_cpu.preds), n);
}

/// One request's scores through a bf16 session on `ops`.
fn bf16_scores<B: mixrank_engine::Backend + 'static>(
    run: &Path,
    batch: &mixrank_data::Batch,
    ops: Arc<B>,
) -> Vec<Vec<f32>> {
    InferenceSession::open(run, Precision::Bf16, 64, ops).unwrap().predict(batch).unwrap()
}
