//! Times one training step of the DESIGN.md bench model built from this crate's layers
//! on `CpuOps`: 26 tables of 100,000 × 16 plus 13 dense floats (429 inputs), 4 MLP
//! experts 429→256→128, 2 tasks with a Linear(429→4)+softmax gate and a 128→64→1
//! tower, BCE per task, Adam on dense parameters and row-wise Adagrad on the tables.
//!
//! `cargo run --release -p mixrank-nn --example mmoe_step -- [batch] [steps] [threads]`

use std::time::Instant;

use mixrank_engine::{Backend, ColCopy, CpuOps, GradWrite, LossInput};
use mixrank_nn::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FIELDS: usize = 26;
const ROWS: usize = 100_000;
const DIM: usize = 16;
const DENSE: usize = 13;
const D_IN: usize = FIELDS * DIM + DENSE;
const EXPERTS: usize = 4;
const TASKS: usize = 2;

struct Dense {
    experts: Vec<Mlp<CpuOps>>,
    gates: Vec<Gate<CpuOps>>,
    towers: Vec<Tower<CpuOps>>,
}

impl Parameters<CpuOps> for Dense {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, CpuOps>) {
        for (i, e) in self.experts.iter_mut().enumerate() {
            v.scope_indexed("experts", i, |v| e.visit_params(v));
        }
        for (i, g) in self.gates.iter_mut().enumerate() {
            v.scope_indexed("gates", i, |v| g.visit_params(v));
        }
        for (i, t) in self.towers.iter_mut().enumerate() {
            v.scope_indexed("towers", i, |v| t.visit_params(v));
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numeric argument")).collect();
    let batch = args.first().copied().unwrap_or(2048);
    let steps = args.get(1).copied().unwrap_or(10);
    let threads = args.get(2).copied().unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    pool.install(|| run(batch, steps))
}

fn run(batch: usize, steps: usize) -> Result<()> {
    let ops = CpuOps::new();
    let mut rng = StdRng::seed_from_u64(0);
    let emb_cfg = EmbeddingCollectionConfig {
        tables: (0..FIELDS).map(|_| TableConfig::new(ROWS, DIM)).collect(),
        features: (0..FIELDS).map(FeatureConfig::single).collect(),
    };
    let mut emb = emb_cfg.init(&ops, batch, &mut rng)?;
    let mut model = Dense {
        experts: (0..EXPERTS)
            .map(|_| MlpConfig::new(D_IN, &[256, 128]).init(&ops, batch, &mut rng))
            .collect::<Result<_>>()?,
        gates: (0..TASKS).map(|_| GateConfig::new(D_IN, EXPERTS).init(&ops, batch, &mut rng)).collect::<Result<_>>()?,
        towers: (0..TASKS).map(|_| TowerConfig::new(128, &[64]).init(&ops, batch, &mut rng)).collect::<Result<_>>()?,
    };
    let mut mixes: Vec<MoeMix<CpuOps>> =
        (0..TASKS).map(|_| MoeMix::new(&ops, EXPERTS, 128, batch)).collect::<Result<_>>()?;
    let mut adam = Adam::new(AdamConfig::default(), &ops, &mut model)?;
    let mut adagrad = RowWiseAdagrad::new(RowWiseAdagradConfig::new(0.05), &ops, &emb)?;

    // Synthetic batch.
    let ids: Vec<Vec<u32>> =
        (0..FIELDS).map(|_| (0..batch).map(|_| rng.random_range(0..ROWS as u32)).collect()).collect();
    let dense: Vec<f32> = (0..batch * DENSE).map(|_| rng.random_range(-1.0..1.0)).collect();
    let labels: Vec<Vec<f32>> =
        (0..TASKS).map(|_| (0..batch).map(|_| rng.random_range(0..2) as f32).collect()).collect();
    let mut x = vec![0.0f32; batch * D_IN];
    let mut dx = vec![0.0f32; batch * D_IN];
    let mut d_mixed: Vec<Vec<f32>> = vec![vec![0.0; batch * 128]; EXPERTS];
    let mut d_logit = vec![0.0f32; batch];
    let copy_dense = ColCopy {
        rows: batch,
        cols: DENSE,
        src_ld: DENSE,
        src_col: 0,
        dst_ld: D_IN,
        dst_col: FIELDS * DIM,
        accumulate: false,
    };
    let copy_emb = ColCopy {
        rows: batch,
        cols: FIELDS * DIM,
        src_ld: FIELDS * DIM,
        src_col: 0,
        dst_ld: D_IN,
        dst_col: 0,
        accumulate: false,
    };
    let d_emb_cols = ColCopy {
        rows: batch,
        cols: FIELDS * DIM,
        src_ld: D_IN,
        src_col: 0,
        dst_ld: FIELDS * DIM,
        dst_col: 0,
        accumulate: false,
    };
    let mut d_emb = vec![0.0f32; batch * FIELDS * DIM];
    let n_in = batch * D_IN;

    let mut times = Vec::new();
    // Seconds per phase, summed over timed steps.
    let mut phases = [0.0f64; 6];
    const PHASES: [&str; 6] =
        ["embedding fwd", "experts fwd", "task heads fwd+bwd", "experts bwd", "embedding bwd", "optimizers"];
    for step in 0..steps + 2 {
        let t0 = Instant::now();
        let mut mark = t0;
        let mut lap = |i: usize| {
            let now = Instant::now();
            if step >= 2 {
                phases[i] += (now - mark).as_secs_f64();
            }
            mark = now;
        };
        let inputs: Vec<FeatureInput<'_, CpuOps>> = ids.iter().map(FeatureInput::Single).collect();
        // Forward: [batch, 416] embeddings | [batch, 13] dense → x [batch, 429]
        let e = emb.forward(&ops, &inputs, batch)?;
        ops.copy_cols(&copy_emb, e, &mut x).unwrap();
        ops.copy_cols(&copy_dense, &dense, &mut x).unwrap();
        lap(0);
        for ex in &mut model.experts {
            ex.forward(&ops, &x, batch)?;
        }
        lap(1);
        let mut loss = 0.0;
        zero_grads(&ops, &mut model)?;
        for m in d_mixed.iter_mut() {
            m.fill(0.0);
        }
        ops.fill(n_in, 0.0, &mut dx).unwrap();
        for t in 0..TASKS {
            let outs: Vec<&Vec<f32>> = model.experts.iter().map(|e| e.output()).collect();
            let g = model.gates[t].forward(&ops, &x, batch)?;
            let mixed = mixes[t].forward(&ops, &outs, g, batch)?;
            let logit = model.towers[t].forward(&ops, mixed, batch)?;
            let input = LossInput { pred: logit, target: &labels[t], weight: None, mask: None, weight_sum: None };
            loss += ops.bce_with_logits(batch, input, &mut d_logit, GradWrite::default()).unwrap();
            // Backward of the task head.
            let d_mix_in = model.towers[t].backward(&ops, mixes[t].output(), &d_logit)?;
            mixes[t].backward(&ops, &outs, model.gates[t].output(), d_mix_in)?;
            for (i, d) in d_mixed.iter_mut().enumerate() {
                ops.axpy(batch * 128, 1.0, mixes[t].d_expert(i), d).unwrap();
            }
            let d_gate_in = model.gates[t].backward(&ops, &x, mixes[t].d_gates())?;
            ops.axpy(n_in, 1.0, d_gate_in, &mut dx).unwrap();
        }
        lap(2);
        for (ex, d) in model.experts.iter_mut().zip(&d_mixed) {
            let g = ex.backward(&ops, &x, d)?;
            ops.axpy(n_in, 1.0, g, &mut dx).unwrap();
        }
        lap(3);
        ops.copy_cols(&d_emb_cols, &dx, &mut d_emb).unwrap();
        emb.backward(&ops, &inputs, &d_emb)?;
        lap(4);
        adam.step(&ops, &mut model, 1e-3)?;
        adagrad.step(&ops, &mut emb)?;
        lap(5);
        let dt = t0.elapsed().as_secs_f64();
        if step >= 2 {
            times.push(dt);
        }
        if step == 0 || step == steps + 1 {
            println!("step {step}: loss {:.4}", loss / TASKS as f32);
        }
    }
    for (name, t) in PHASES.iter().zip(phases) {
        println!("  {name:<20} {:6.1} ms/step", t * 1e3 / times.len() as f64);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = times[times.len() / 2];
    println!(
        "batch {batch}: median step {:.1} ms, {:.0} examples/s ({} timed steps, {} threads)",
        median * 1e3,
        batch as f64 / median,
        times.len(),
        rayon::current_num_threads()
    );
    Ok(())
}
