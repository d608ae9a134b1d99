//! `mixrank bench train`: training throughput of a model on random in-memory batches —
//! examples/s, the matrix-product FLOPs of one step (counted from the shapes by the
//! `Counting` backend), the GFLOP/s that achieves, the fraction of this machine's f32 and
//! bf16 GEMM peak (measured by the same command), and where a step's time goes.
//!
//! What a step is: the trainer's update without data loading or distillation — the
//! model's forward (embedding lookup included), the task losses, backward, and the dense
//! and sparse optimizer steps, each timed on its own (CPU ops are synchronous, so the wall
//! time of a phase is its cost).

use crate::backend::Device;
use anyhow::{bail, Result};
use mixrank_data::{Batch, ExperimentConfig};
use mixrank_engine::bf16::{Bf16Kernel, Bf16Matrix, PackedBf16};
use mixrank_engine::counting::Counting;
use mixrank_engine::{Backend, GemmSpec};
use mixrank_model::{build_model, Model};
use mixrank_train::losses::TaskLosses;
use mixrank_train::optimizers::Optimizers;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct TrainBenchArgs {
    /// Experiment config (features, tasks, [model], [train]); without it, the DESIGN.md
    /// bench model (26 fields of 100,000 × 16, 13 dense, 4 MLP experts 429→256→128, 2
    /// tasks; Adam and lazy Adam, lr 1e-3). Only its features, tasks, model and
    /// optimizer settings are used: batches are random (uniform ids, dense in [-1, 1],
    /// labels 0/1 with probability ½).
    pub config: Option<PathBuf>,
    /// A TOML file with [model] (and optionally [train]) replacing the config's, as for
    /// `mixrank train --model`.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Rows per step (default: the config's batch_size).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Timed steps, after the warm-up ones.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Untimed steps first (allocation, caches).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Compute threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Also write the figures as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where to train: `cpu` or `cuda[:N]` (on CUDA the phases overlap, as launches are
    /// asynchronous: the step total is exact, each step ending on the losses' readback
    /// of the next; the bf16 inference peak is CPU-only).
    #[arg(long, default_value = "cpu")]
    pub device: crate::backend::Device,
}

/// The phases of a step, in order.
const PHASES: [&str; 4] = ["forward (embedding lookup, layers)", "losses", "backward", "optimizer steps"];

pub fn run(a: &TrainBenchArgs) -> Result<()> {
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.threads).build()?;
    pool.install(|| run_in_pool(a))
}

fn load_config(a: &TrainBenchArgs) -> Result<ExperimentConfig> {
    let mut cfg = match &a.config {
        Some(p) => ExperimentConfig::load(p)?,
        None => crate::bench_cmd::bench_config()?,
    };
    if let Some(m) = &a.model {
        cfg = cfg.with_model_file(m)?;
    }
    if let Some(b) = a.batch {
        if b == 0 {
            bail!("--batch must be at least 1");
        }
        cfg.data.batch_size = b;
    }
    if cfg.model.is_none() {
        bail!("{} has no [model] section: give --model FILE", cfg.path.display());
    }
    Ok(cfg)
}

/// One model with its losses and optimizers on backend `B`.
struct Trainee<B: Backend> {
    model: Box<dyn Model<B>>,
    losses: TaskLosses<B>,
    optim: Optimizers<B>,
}

impl<B: Backend + 'static> Trainee<B> {
    fn new(cfg: &ExperimentConfig, ops: &B) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.train.seed);
        let mut model = build_model(cfg, ops, cfg.data.batch_size, &mut rng)?;
        model.set_training(true);
        let losses = TaskLosses::new(cfg, ops)?;
        let optim = Optimizers::new(&cfg.train, ops, &mut *model)?;
        Ok(Trainee { model, losses, optim })
    }

    /// One update, as the trainer's step; the seconds of each of [`PHASES`].
    fn step(&mut self, cfg: &ExperimentConfig, ops: &B, b: &Batch, step: u64) -> Result<[f64; 4]> {
        // Many short ops follow: the pool's workers poll for them instead of sleeping.
        let _awake = ops.keep_awake();
        let mut t = Instant::now();
        let mut lap = || {
            let s = t.elapsed().as_secs_f64();
            t = Instant::now();
            s
        };
        self.model.forward(ops, b)?;
        let forward = lap();
        self.losses.compute(cfg, ops, &*self.model, b, step)?;
        let losses = lap();
        mixrank_nn::zero_grads(ops, &mut *self.model)?;
        let refs: Vec<&B::Buf> = self.losses.grads.iter().collect();
        self.model.backward(ops, b, &refs)?;
        self.losses.write_weighting_grads(ops, &mut *self.model)?;
        let backward = lap();
        self.optim.step(ops, &mut *self.model, cfg.train.lr as f32, cfg.train.sparse_lr as f32)?;
        let optimizer = lap();
        Ok([forward, losses, backward, optimizer])
    }
}

/// Random batches for `cfg` (see [`TrainBenchArgs::config`]).
fn batches(cfg: &ExperimentConfig, rows: usize, n: usize) -> Vec<Batch> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    (0..n)
        .map(|_| {
            let mut b = crate::bench_cmd::random_batch(cfg, rows, &mut rng);
            b.labels.iter_mut().for_each(|y| *y = if rng.random_bool(0.5) { 1.0 } else { 0.0 });
            b
        })
        .collect()
}

/// Median GFLOP/s of `f` doing `flop` operations, over `reps` runs after 3 warm-ups.
fn gflops(flop: f64, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    flop / t[t.len() / 2] / 1e9
}

/// The f32 GEMM peak of the backend `ops` on a 2048 × 512 × 512 product (large enough
/// for every thread, small enough to stay in cache), GFLOP/s; each timed product ends
/// with a one-element readback, so a device backend's launch is waited for.
fn f32_gemm_peak<B: Backend>(ops: &B) -> Result<f64> {
    let (m, k, n) = (2048, 512, 512);
    let flop = 2.0 * (m * k * n) as f64;
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let w: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
    let (a, w, mut c) = (ops.upload(&a)?, ops.upload(&w)?, ops.alloc(m * n)?);
    let spec = GemmSpec::nn(m, n, k);
    let mut one = [0f32; 1];
    Ok(gflops(flop, 15, || {
        ops.gemm(&spec, &a, &w, &mut c).expect("f32 gemm");
        ops.read(&c, &mut one).expect("readback");
    }))
}

/// This CPU's bf16 GEMM peak with the kernel `detect` picks (the inference kernels), on
/// the same product, GFLOP/s.
fn bf16_gemm_peak() -> Result<(f64, &'static str)> {
    let (m, k, n) = (2048, 512, 512);
    let flop = 2.0 * (m * k * n) as f64;
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let w: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
    let mut c = vec![0f32; m * n];
    let kernel = Bf16Kernel::select()?;
    let packed = PackedBf16::pack(k, n, &w)?;
    let bf16_peak = if kernel.takes_f32_activations() {
        gflops(flop, 15, || kernel.gemm_f32(m, &a, &packed, &mut c).expect("bf16 gemm"))
    } else {
        let a16 = Bf16Matrix::from_f32(m, k, &a)?;
        gflops(flop, 15, || kernel.gemm(m, &a16, &packed, &mut c).expect("bf16 gemm"))
    };
    Ok((bf16_peak, kernel.name()))
}

/// `a.warmup` untimed then `a.steps` timed training steps on `ops`; each timed step's
/// phase seconds.
fn timed_steps<B: Backend + 'static>(
    a: &TrainBenchArgs,
    cfg: &ExperimentConfig,
    ops: &B,
    data: &[Batch],
) -> Result<Vec<[f64; 4]>> {
    let mut t = Trainee::new(cfg, ops)?;
    for i in 0..a.warmup {
        t.step(cfg, ops, &data[i % data.len()], i as u64)?;
    }
    let mut phases: Vec<[f64; 4]> = Vec::with_capacity(a.steps);
    for i in 0..a.steps {
        let s = a.warmup + i;
        phases.push(t.step(cfg, ops, &data[s % data.len()], s as u64)?);
    }
    Ok(phases)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run_in_pool(a: &TrainBenchArgs) -> Result<()> {
    let cfg = load_config(a)?;
    let rows = cfg.data.batch_size;
    let data = batches(&cfg, rows, 4);

    // FLOPs of one step, counted from the shapes on a separate model.
    let counting = Counting::new(crate::backend::ops());
    let mut counted = Trainee::new(&cfg, &counting)?;
    let before = counting.flops();
    counted.step(&cfg, &counting, &data[0], 0)?;
    let step_flop = (counting.flops() - before) as f64;
    drop(counted);

    // `[train] precision`: bf16 GEMM operands when the model file asks for them.
    let (phases, f32_peak, bf16) = match a.device {
        Device::Cpu => {
            let ops = crate::backend::train_ops(&cfg.train);
            let phases = timed_steps(a, &cfg, &ops, &data)?;
            (phases, f32_gemm_peak(&ops)?, Some(bf16_gemm_peak()?))
        }
        Device::Cuda(n) => {
            let ops = crate::backend::train_cuda(n, &cfg.train)?;
            crate::say!("device cuda:{n}: {}", ops.describe());
            let phases = timed_steps(a, &cfg, &ops, &data)?;
            (phases, f32_gemm_peak(&ops)?, None)
        }
    };
    let mut step_s: Vec<f64> = phases.iter().map(|p| p.iter().sum()).collect();
    let step_med = median(&mut step_s);
    let ex_per_s = rows as f64 / step_med;
    let achieved = step_flop / step_med / 1e9;
    let (bf16_peak, kernel) = match bf16 {
        Some((p, k)) => (Some(p), k),
        None => (None, "-"),
    };

    let arch = cfg.model.as_ref().map(|m| format!("{:?}", m.architecture).to_lowercase()).unwrap_or_default();
    crate::say!(
        "{} ({arch}), batch {rows}, {} threads, {} timed steps after {} warm-up",
        cfg.path.display(),
        a.threads,
        a.steps,
        a.warmup
    );
    crate::say!("training: {ex_per_s:.0} examples/s (median step {:.2} ms)", step_med * 1e3);
    crate::say!(
        "matrix-product FLOPs: {:.2} M per example ({:.2} GFLOP per step); achieved {achieved:.1} GFLOP/s",
        step_flop / rows as f64 / 1e6,
        step_flop / 1e9
    );
    let bf16_text =
        bf16_peak.map_or("bf16 not measured on this device".to_string(), |p| format!("bf16 ({kernel}) {p:.0} GFLOP/s"));
    crate::say!(
        "GEMM peak measured now (2048×512×512): f32 {f32_peak:.0} GFLOP/s, {bf16_text}; \
         this step reaches {:.0}% of the f32 peak",
        100.0 * achieved / f32_peak
    );
    crate::say!("where a step's time goes (median ms per step):");
    let mut rows_out = Vec::new();
    let mut order: Vec<(usize, f64)> = (0..PHASES.len())
        .map(|i| {
            let mut v: Vec<f64> = phases.iter().map(|p| p[i]).collect();
            (i, median(&mut v))
        })
        .collect();
    order.sort_by(|x, y| y.1.total_cmp(&x.1));
    let total: f64 = order.iter().map(|o| o.1).sum();
    for (i, ms) in &order {
        crate::say!("  {:<36} {:>9.2} ms  {:>5.1}%", PHASES[*i], ms * 1e3, 100.0 * ms / total);
        rows_out.push(serde_json::json!({ "phase": PHASES[*i], "median_ms": ms * 1e3 }));
    }
    if let Some(p) = &a.json {
        let out = serde_json::json!({
            "config": cfg.path, "architecture": arch, "batch": rows, "threads": a.threads, "device": a.device.to_string(),
            "steps": a.steps, "warmup": a.warmup,
            "examples_per_s": ex_per_s, "median_step_ms": step_med * 1e3,
            "flops_per_example": step_flop / rows as f64, "achieved_gflops": achieved,
            "f32_gemm_peak_gflops": f32_peak, "bf16_gemm_peak_gflops": bf16_peak, "bf16_kernel": kernel,
            "phases": rows_out,
        });
        crate::stats_cmd::write_atomic(p, &serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
