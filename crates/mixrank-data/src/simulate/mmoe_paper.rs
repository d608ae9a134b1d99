//! The MMoE paper's synthetic data (Ma et al., KDD 2018, §3.2), as specified in
//! DESIGN.md: d = 100; orthogonal unit vectors u1, u2; w1 = c·u1,
//! w2 = c·(p·u1 + sqrt(1 − p²)·u2); x ~ N(0, I_d);
//! y_k = w_kᵀx + Σ_{i=1..m} sin(α_i·w_kᵀx + β_i) + ε_k, ε_k ~ N(0, σ²).
//! c = 0.3, m = 5, α_i, β_i ~ N(0, 1) drawn once per data set, σ = 0.1.

use super::write::{write_parquet_atomic, write_text_atomic};
use super::SimSummary;
use crate::error::Result;
use arrow::array::{ArrayRef, Float32Array, Float64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use std::path::Path;
use std::sync::Arc;

/// Parameters; the defaults are the paper's.
#[derive(Debug, Clone)]
pub struct MmoePaperParams {
    pub seed: u64,
    /// Task correlation p in [-1, 1].
    pub correlation: f64,
    pub dim: usize,
    pub scale: f64,
    pub sin_terms: usize,
    pub noise_std: f64,
    pub train_rows: usize,
    pub validation_rows: usize,
    pub test_rows: usize,
}

impl Default for MmoePaperParams {
    fn default() -> Self {
        MmoePaperParams {
            seed: 1,
            correlation: 0.5,
            dim: 100,
            scale: 0.3,
            sin_terms: 5,
            noise_std: 0.1,
            train_rows: 10_000,
            validation_rows: 1_000,
            test_rows: 1_000,
        }
    }
}

/// The two task weight vectors and the sin parameters, derived from the seed.
pub struct MmoePaperTruth {
    pub w1: Vec<f64>,
    pub w2: Vec<f64>,
    pub alpha: Vec<f64>,
    pub beta: Vec<f64>,
}

impl MmoePaperTruth {
    pub fn new(p: &MmoePaperParams, rng: &mut impl Rng) -> Self {
        let d = p.dim;
        let gauss = |rng: &mut dyn rand::RngCore| -> Vec<f64> { (0..d).map(|_| StandardNormal.sample(rng)).collect() };
        // Gram-Schmidt: u1 and u2 orthonormal.
        let mut u1 = gauss(rng);
        normalize(&mut u1);
        let mut u2 = gauss(rng);
        let proj: f64 = u1.iter().zip(&u2).map(|(a, b)| a * b).sum();
        for (b, a) in u2.iter_mut().zip(&u1) {
            *b -= proj * a;
        }
        normalize(&mut u2);
        let rho = p.correlation;
        let w1 = u1.iter().map(|a| p.scale * a).collect();
        let w2 = u1.iter().zip(&u2).map(|(a, b)| p.scale * (rho * a + (1.0 - rho * rho).sqrt() * b)).collect();
        let alpha = (0..p.sin_terms).map(|_| StandardNormal.sample(rng)).collect();
        let beta = (0..p.sin_terms).map(|_| StandardNormal.sample(rng)).collect();
        MmoePaperTruth { w1, w2, alpha, beta }
    }

    /// Noise-free targets for one input.
    pub fn targets(&self, x: &[f64]) -> (f64, f64) {
        let f = |w: &[f64]| {
            let z: f64 = w.iter().zip(x).map(|(a, b)| a * b).sum();
            z + self.alpha.iter().zip(&self.beta).map(|(a, b)| (a * z + b).sin()).sum::<f64>()
        };
        (f(&self.w1), f(&self.w2))
    }
}

fn normalize(v: &mut [f64]) {
    let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
    v.iter_mut().for_each(|a| *a /= n);
}

/// Writes train/validation/test Parquet files and `mixrank.toml` into `out`.
pub fn simulate_mmoe_paper(p: &MmoePaperParams, out: &Path) -> Result<SimSummary> {
    if !(-1.0..=1.0).contains(&p.correlation) {
        return Err(crate::DataError::Other(format!("correlation must be in [-1, 1], found {}", p.correlation)));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed);
    let truth = MmoePaperTruth::new(p, &mut rng);
    let mut fields: Vec<Field> = (0..p.dim).map(|i| Field::new(format!("x{i}"), DataType::Float32, false)).collect();
    fields.push(Field::new("y1", DataType::Float64, false));
    fields.push(Field::new("y2", DataType::Float64, false));
    let schema = Arc::new(Schema::new(fields));
    let mut files = Vec::new();
    let mut rows = 0;
    for (name, n) in [("train", p.train_rows), ("validation", p.validation_rows), ("test", p.test_rows)] {
        let mut xs = vec![Vec::with_capacity(n); p.dim];
        let (mut y1, mut y2) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut x = vec![0f64; p.dim];
        for _ in 0..n {
            for (j, xj) in x.iter_mut().enumerate() {
                // The file stores f32; compute targets from the stored values.
                let v: f64 = StandardNormal.sample(&mut rng);
                *xj = v as f32 as f64;
                xs[j].push(v as f32);
            }
            let (a, b) = truth.targets(&x);
            let e1: f64 = StandardNormal.sample(&mut rng);
            let e2: f64 = StandardNormal.sample(&mut rng);
            y1.push(a + p.noise_std * e1);
            y2.push(b + p.noise_std * e2);
        }
        let mut cols: Vec<ArrayRef> = xs.into_iter().map(|c| Arc::new(Float32Array::from(c)) as ArrayRef).collect();
        cols.push(Arc::new(Float64Array::from(y1)));
        cols.push(Arc::new(Float64Array::from(y2)));
        let rb = RecordBatch::try_new(schema.clone(), cols).map_err(|e| crate::DataError::Other(e.to_string()))?;
        let path = out.join(format!("{name}.parquet"));
        write_parquet_atomic(&path, &[rb], 65_536)?;
        files.push(path);
        rows += n as u64;
    }
    let config = out.join("mixrank.toml");
    write_text_atomic(&config, &mmoe_paper_config(p))?;
    Ok(SimSummary { rows, files, config })
}

fn mmoe_paper_config(p: &MmoePaperParams) -> String {
    let mut s = format!(
        "# Written by `mixrank simulate --kind mmoe-paper` (seed {}, correlation {}).\n\
         # The MMoE paper's synthetic two-task regression data; see DESIGN.md.\n\n\
         [data]\nformat = \"parquet\"\nbatch_size = 128\nshuffle_buffer = 10000\nseed = {}\n\n\
         [data.splits.train]\npaths = [\"train.parquet\"]\n\n\
         [data.splits.validation]\npaths = [\"validation.parquet\"]\n\n\
         [data.splits.test]\npaths = [\"test.parquet\"]\n\n",
        p.seed, p.correlation, p.seed
    );
    for i in 0..p.dim {
        s.push_str(&format!("[[features.dense]]\nname = \"x{i}\"\n\n"));
    }
    s.push_str("[[tasks]]\nname = \"y1\"\nkind = \"regression\"\nlabel = \"y1\"\n\n");
    s.push_str("[[tasks]]\nname = \"y2\"\nkind = \"regression\"\nlabel = \"y2\"\n");
    // The paper's MMoE (8 experts of 16 units, towers of 8), so the written config
    // trains as is; `mixrank train --model FILE` replaces it.
    s.push_str(
        "\n# The paper's MMoE: 8 experts x 16 units, towers of 8 (--model FILE replaces it).\n\
         [model]\narchitecture = \"mmoe\"\nexpert_dim = 16\ntower = { hidden = [8] }\n\n\
         [[model.experts]]\nkind = \"mlp\"\ncount = 8\nhidden = [16]\n\n\
         [train]\nepochs = 40\nlr = 0.002\n",
    );
    s
}
