//! The bench model of DESIGN.md on mixrank's engine, for the comparison with
//! `bench/torch_bench_model.py` (same model, same optimizers, same batch sizes):
//! 26 categorical fields, each its own 100,000 × 16 table, + 13 dense floats → 429;
//! 4 experts, each MLP 429→256→128 (ReLU); 2 tasks, each a gate Linear(429→4)+softmax
//! and a tower 128→64→1; loss = sum of the two BCE-with-logits means; Adam lr 1e-3 for
//! dense parameters, lazy (sparse) Adam lr 1e-3 for the tables; uniform random ids.
//!
//! cargo run --release -p mixrank-model --example bench_model -- [THREADS] [STEPS]

use mixrank_data::config::model::ModelSection;
use mixrank_engine::{Backend, ColCopy, CpuOps, GradWrite, LossInput};
use mixrank_model::{build_head, Head};
use mixrank_nn::{
    Adam, AdamConfig, EmbeddingCollection, EmbeddingCollectionConfig, FeatureConfig, FeatureInput, LazyAdam,
    LazyAdamConfig, TableConfig,
};
use rand::{Rng, SeedableRng};
use std::time::Instant;

const FIELDS: usize = 26;
const ROWS: usize = 100_000;
const DIM: usize = 16;
const DENSE: usize = 13;
const D_IN: usize = FIELDS * DIM + DENSE;
const TASKS: usize = 2;

const MODEL: &str = r#"
architecture = "mmoe"
expert_dim = 128
tower = { hidden = [64] }
[[experts]]
kind = "mlp"
count = 4
hidden = [256, 128]
"#;

struct Data {
    ids: Vec<Vec<u32>>,
    dense: Vec<f32>,
    labels: Vec<Vec<f32>>,
}

fn data(batch: usize, rng: &mut rand::rngs::StdRng) -> Data {
    Data {
        ids: (0..FIELDS).map(|_| (0..batch).map(|_| rng.random_range(0..ROWS as u32)).collect()).collect(),
        dense: (0..batch * DENSE).map(|_| rng.random_range(-1.0..1.0)).collect(),
        labels: (0..TASKS).map(|_| (0..batch).map(|_| (rng.random::<f32>() < 0.2) as u8 as f32).collect()).collect(),
    }
}

struct BenchModel {
    emb: EmbeddingCollection<CpuOps>,
    head: Box<dyn Head<CpuOps>>,
    x: Vec<f32>,
    d_emb: Vec<f32>,
    d_logits: Vec<Vec<f32>>,
}

impl BenchModel {
    fn new(ops: &CpuOps, max_batch: usize) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let cfg = EmbeddingCollectionConfig {
            tables: (0..FIELDS).map(|_| TableConfig::new(ROWS, DIM)).collect(),
            features: (0..FIELDS).map(FeatureConfig::single).collect(),
        };
        let emb = cfg.init(ops, max_batch, &mut rng).unwrap();
        let m: ModelSection = toml::from_str(MODEL).unwrap();
        let head = build_head(&m, D_IN, TASKS, ops, max_batch, &mut rng).unwrap();
        BenchModel {
            emb,
            head,
            x: vec![0.0; max_batch * D_IN],
            d_emb: vec![0.0; max_batch * FIELDS * DIM],
            d_logits: vec![vec![0.0; max_batch]; TASKS],
        }
    }

    /// Embeddings + dense → x `[batch, 429]` → logits.
    fn forward(&mut self, ops: &CpuOps, d: &Data, batch: usize) {
        let inputs: Vec<FeatureInput<'_, CpuOps>> = d.ids.iter().map(FeatureInput::Single).collect();
        let e = self.emb.forward(ops, &inputs, batch).unwrap();
        let w = FIELDS * DIM;
        let copy = |rows, cols, src_ld, dst_col| ColCopy {
            rows,
            cols,
            src_ld,
            src_col: 0,
            dst_ld: D_IN,
            dst_col,
            accumulate: false,
        };
        ops.copy_cols(&copy(batch, w, w, 0), e, &mut self.x).unwrap();
        ops.copy_cols(&copy(batch, DENSE, DENSE, w), &d.dense, &mut self.x).unwrap();
        self.head.forward(ops, &self.x, batch).unwrap();
    }

    fn train_step(
        &mut self,
        ops: &CpuOps,
        d: &Data,
        batch: usize,
        adam: &mut Adam<CpuOps>,
        sparse: &mut LazyAdam<CpuOps>,
    ) -> f32 {
        self.forward(ops, d, batch);
        let mut loss = 0.0;
        for t in 0..TASKS {
            let input = LossInput {
                pred: self.head.logits(t),
                target: &d.labels[t],
                weight: None,
                mask: None,
                weight_sum: None,
            };
            loss += ops.bce_with_logits(batch, input, &mut self.d_logits[t], GradWrite::default()).unwrap();
        }
        mixrank_nn::zero_grads(ops, &mut *self.head).unwrap();
        let refs: Vec<&Vec<f32>> = self.d_logits.iter().collect();
        let dx = self.head.backward(ops, &self.x, &refs).unwrap();
        let w = FIELDS * DIM;
        let spec = ColCopy { rows: batch, cols: w, src_ld: D_IN, src_col: 0, dst_ld: w, dst_col: 0, accumulate: false };
        ops.copy_cols(&spec, dx, &mut self.d_emb).unwrap();
        let inputs: Vec<FeatureInput<'_, CpuOps>> = d.ids.iter().map(FeatureInput::Single).collect();
        self.emb.backward(ops, &inputs, &self.d_emb).unwrap();
        adam.step(ops, &mut *self.head, 1e-3).unwrap();
        sparse.step(ops, &mut self.emb).unwrap();
        loss
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median and p99 forward latency in seconds (10 warm-up calls, then 200 timed for
/// small batches, 50 for large).
fn latency(model: &mut BenchModel, ops: &CpuOps, d: &Data) -> (f64, f64) {
    let b = d.labels[0].len();
    let reps = if b <= 64 { 200 } else { 50 };
    let mut lat = Vec::new();
    for r in 0..reps + 10 {
        let t = Instant::now();
        model.forward(ops, d, b);
        if r >= 10 {
            lat.push(t.elapsed().as_secs_f64());
        }
    }
    lat.sort_by(f64::total_cmp);
    let p99 = lat[((lat.len() - 1) as f64 * 0.99) as usize];
    (median(lat), p99)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let ops = CpuOps::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let bs = 2048;
        let mut model = BenchModel::new(&ops, bs);
        let mut adam = Adam::new(AdamConfig::default(), &ops, &mut *model.head).unwrap();
        let mut sparse = LazyAdam::new(LazyAdamConfig::new(1e-3), &ops, &model.emb).unwrap();
        let batches: Vec<Data> = (0..8).map(|_| data(bs, &mut rng)).collect();
        let mut times = Vec::new();
        let mut first_loss = 0.0;
        let mut last_loss = 0.0;
        for s in 0..steps + 5 {
            let t = Instant::now();
            let l = model.train_step(&ops, &batches[s % batches.len()], bs, &mut adam, &mut sparse);
            if s >= 5 {
                times.push(t.elapsed().as_secs_f64());
            }
            if s == 0 {
                first_loss = l;
            }
            last_loss = l;
        }
        let med = median(times);
        println!(
            "train batch {bs}: {:.0} ex/s (median step {:.1} ms; loss {first_loss:.4} -> {last_loss:.4}; threads {threads})",
            bs as f64 / med,
            1e3 * med
        );
        for b in [1usize, 64, 512, 2048] {
            let (med, p99) = latency(&mut model, &ops, &data(b, &mut rng));
            println!("infer f32@{b:<5} median {:.3} ms  p99 {:.3} ms", 1e3 * med, 1e3 * p99);
        }
        // The same weights in bf16 (f32 accumulation): latency and logit differences.
        let probe = data(512, &mut rng);
        model.forward(&ops, &probe, 512);
        let f32_logits: Vec<Vec<f32>> = (0..TASKS).map(|t| model.head.logits(t)[..512].to_vec()).collect();
        let kernel = mixrank_engine::bf16::Bf16Kernel::detect();
        let converted = model.head.use_bf16(&ops.with_bf16_kernel(kernel)).unwrap();
        model.forward(&ops, &probe, 512);
        let mut max_diff = 0f32;
        for (t, f) in f32_logits.iter().enumerate() {
            for (a, b) in f.iter().zip(&model.head.logits(t)[..512]) {
                max_diff = max_diff.max((a - b).abs());
            }
        }
        println!("bf16 kernel {}: {converted} GEMMs converted; max |logit(bf16) - logit(f32)| over 512 rows = {max_diff:.5}", kernel.name());
        for b in [1usize, 64, 512, 2048] {
            let (med, p99) = latency(&mut model, &ops, &data(b, &mut rng));
            println!("infer bf16@{b:<4} median {:.3} ms  p99 {:.3} ms", 1e3 * med, 1e3 * p99);
        }
    });
}
