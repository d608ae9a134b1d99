//! `[train] precision = "bf16"`: mixed-precision training through `train`. The backend
//! must compute what the config asks (refused otherwise, naming both); a bf16 run writes
//! the f32 run's checkpoint format (same tensors, names, shapes, f32), trains to weights
//! close to but not equal with the f32 run's, and a bf16 run resumed from a periodic
//! checkpoint ends bit for bit where the uninterrupted bf16 run does.

use mixrank_data::ExperimentConfig;
use mixrank_engine::{CpuOps, GemmOperands};
use mixrank_train::{train, TrainOptions};
use std::path::Path;
use std::sync::Arc;

fn config(dir: &Path, precision: &str) -> Arc<ExperimentConfig> {
    let p = mixrank_data::simulate::EngagementParams { requests_per_day: 40, days: 3, ..Default::default() };
    let sim = mixrank_data::simulate::simulate_engagement(&p, &dir.join("data")).unwrap();
    let model = dir.join("model.toml");
    std::fs::write(
        &model,
        format!(
            "[model]\narchitecture = \"mmoe\"\nexpert_dim = 8\ntower = {{ hidden = [8] }}\n\
             [[model.experts]]\nkind = \"mlp\"\nhidden = [16]\n\
             [[model.experts]]\nkind = \"dcnv2\"\ncross_layers = 2\nhidden = [16]\n\
             [train]\nthreads = 1\nepochs = 2\nlr = 0.003\ncheckpoint_every_steps = 5\n{precision}"
        ),
    )
    .unwrap();
    let mut cfg = ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap();
    cfg.data.batch_size = 64;
    Arc::new(cfg)
}

fn tensors(ckpt: &Path) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(ckpt.join("weights.safetensors")).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = t
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let data = v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            (name, v.dtype(), v.shape().to_vec(), data)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn bf16_training_keeps_the_format_trains_close_to_f32_and_resumes_exactly() {
    let d = tempfile::tempdir().unwrap();
    let f32_cfg = config(&d.path().join("f32"), "");
    let bf16_cfg = config(&d.path().join("bf16"), "precision = \"bf16\"\n");
    let bf16_ops = CpuOps::new().with_gemm_operands(GemmOperands::Bf16);

    // The backend must compute what the config asks, both ways.
    let e = train(bf16_cfg.clone(), &TrainOptions::new(d.path().join("refused")), &CpuOps::new()).unwrap_err();
    assert!(e.to_string().contains("precision asks for Bf16") && e.to_string().contains("computes F32"), "{e}");
    let e = train(f32_cfg.clone(), &TrainOptions::new(d.path().join("refused2")), &bf16_ops).unwrap_err();
    assert!(e.to_string().contains("asks for F32"), "{e}");

    let (f32_run, bf16_run) = (d.path().join("run-f32"), d.path().join("run-bf16"));
    let a = train(f32_cfg, &TrainOptions::new(&f32_run), &CpuOps::new()).unwrap();
    let b = train(bf16_cfg.clone(), &TrainOptions::new(&bf16_run), &bf16_ops).unwrap();
    assert_eq!((a.steps, a.examples), (b.steps, b.examples));
    let (ta, tb) = (tensors(&f32_run.join("checkpoint")), tensors(&bf16_run.join("checkpoint")));
    // The same format: names, f32, shapes.
    let meta = |t: &[(String, safetensors::Dtype, Vec<usize>, Vec<f32>)]| {
        t.iter().map(|(n, d, s, _)| (n.clone(), *d, s.clone())).collect::<Vec<_>>()
    };
    assert_eq!(meta(&ta), meta(&tb));
    assert!(tb.iter().all(|t| t.1 == safetensors::Dtype::F32));
    // Not equal: bf16 operands change the dense weights' every update (the tables' rows
    // no batch touched keep their initial values in both runs).
    let (mut differ, mut total) = (0usize, 0usize);
    for (x, y) in ta.iter().zip(&tb).filter(|(x, _)| x.0.starts_with("head.")) {
        total += x.3.len();
        differ += x.3.iter().zip(&y.3).filter(|(p, q)| p != q).count();
    }
    assert!(differ > total * 9 / 10, "bf16 operands changed only {differ} of {total} dense weights");
    // Close: the validation metrics of the two runs.
    let metric = |s: &mixrank_train::TrainSummary, what: &str| -> Vec<f64> {
        s.validation.iter().filter_map(|r| serde_json::to_value(&r.overall).unwrap()[what].as_f64()).collect()
    };
    let (la, lb) = (metric(&a, "logloss"), metric(&b, "logloss"));
    eprintln!("validation logloss after {} steps: f32 {la:?}, bf16 {lb:?}", a.steps);
    assert!(!la.is_empty() && la.len() == lb.len());
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 0.01 * x, "logloss f32 {x} vs bf16 {y}");
    }
    // Resume a bf16 run from its step-10 checkpoint: the uninterrupted run's bytes.
    let resumed = d.path().join("resumed");
    let mut o = TrainOptions::new(&resumed);
    o.max_steps = Some(10);
    train(bf16_cfg.clone(), &o, &bf16_ops).unwrap();
    let mut o = TrainOptions::new(&resumed);
    o.resume = true;
    let r = train(bf16_cfg, &o, &bf16_ops).unwrap();
    assert_eq!(r.steps, b.steps);
    let read = |p: &Path| std::fs::read(p.join("checkpoint/weights.safetensors")).unwrap();
    assert!(read(&resumed) == read(&bf16_run), "the resumed bf16 run's weights differ");
}
