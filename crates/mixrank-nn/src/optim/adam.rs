//! Dense Adam / AdamW with global-norm gradient clipping.

use rayon::prelude::*;

use crate::error::{NnError, Result};
use crate::optim::HostBackend;
use crate::param::{Param, ParamVisitor, Parameters};

const OPT: &str = "Adam";

/// How weight decay is applied (only to parameters with [`Param::decay`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightDecay {
    None,
    /// Classic L2: `g += λ·w` before the moment updates (Adam).
    L2(f32),
    /// Decoupled: `w -= lr·λ·w` next to the Adam update (AdamW, Loshchilov & Hutter).
    Decoupled(f32),
}

/// Configuration of [`Adam`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: WeightDecay,
    /// Scale all gradients by `min(1, max_norm / ‖g‖₂)` (norm over every parameter)
    /// before the update. Default none.
    pub clip_norm: Option<f32>,
}

impl Default for AdamConfig {
    /// PyTorch's defaults: `β = (0.9, 0.999)`, `eps = 1e-8`, no decay, no clipping.
    fn default() -> Self {
        AdamConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: WeightDecay::None, clip_norm: None }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// Factor the gradients were scaled by (1 when not clipped).
    pub clip_scale: f64,
}

/// Adam over every parameter of a module, state kept per parameter in visit order.
///
/// Step `t` (1-based), per element, with `g` the (clipped) gradient:
/// `m = β₁m + (1-β₁)g`, `v = β₂v + (1-β₂)g²`, `m̂ = m/(1-β₁ᵗ)`, `v̂ = v/(1-β₂ᵗ)`,
/// `w -= lr · m̂ / (sqrt(v̂) + eps)` (PyTorch's formula, eps after bias correction).
/// Arithmetic per element is f32 like the parameters; the global norm is summed in f64.
///
/// Both passes run in parallel over fixed chunks of [`CHUNK`] elements (on rayon's current
/// pool). The update is elementwise and the norm's per-chunk partial sums are added in a
/// fixed order, so results do not depend on the number of threads.
pub struct Adam {
    config: AdamConfig,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    t: u64,
    /// Per-chunk squared-norm partial sums, allocated once.
    partials: Vec<f64>,
}

/// Elements per parallel work item: large enough that scheduling costs little next to
/// ~16K element updates, small enough to split a 429×256 weight across threads.
pub const CHUNK: usize = 16 * 1024;

impl Adam {
    /// Zeroed state for every parameter of `module`.
    pub fn new<B: HostBackend, M: Parameters<B> + ?Sized>(config: AdamConfig, module: &mut M) -> Self {
        let (mut m, mut v) = (Vec::new(), Vec::new());
        module.params(&mut |_, p| {
            m.push(vec![0.0; p.len()]);
            v.push(vec![0.0; p.len()]);
        });
        let chunks = m.iter().map(|s: &Vec<f32>| s.len().div_ceil(CHUNK)).sum();
        Adam { config, m, v, t: 0, partials: vec![0.0; chunks] }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// First and second moments of the `i`-th parameter (visit order), for checkpoints.
    pub fn moments(&self, i: usize) -> (&[f32], &[f32]) {
        (&self.m[i], &self.v[i])
    }

    /// Restores state saved from [`Adam::moments`] and [`Adam::steps`].
    pub fn set_state(&mut self, t: u64, m: Vec<Vec<f32>>, v: Vec<Vec<f32>>) -> Result<()> {
        if m.len() != self.m.len() || v.len() != self.v.len() {
            return Err(NnError::DimMismatch {
                layer: OPT,
                lhs: "restored parameters",
                lhs_dim: m.len(),
                rhs: "module parameters",
                rhs_dim: self.m.len(),
            });
        }
        self.partials = vec![0.0; m.iter().map(|s| s.len().div_ceil(CHUNK)).sum()];
        self.t = t;
        self.m = m;
        self.v = v;
        Ok(())
    }

    /// One update of every parameter with learning rate `lr`, using the gradients as
    /// they are (zero them before the next backward).
    pub fn step<B: HostBackend, M: Parameters<B> + ?Sized>(&mut self, module: &mut M, lr: f32) -> Result<StepStats> {
        let Adam { config, m, v, t, partials } = self;
        // Pass 1: global gradient norm and shape check.
        let mut sq = 0.0f64;
        let mut index = 0;
        let mut next_chunk = 0;
        let mut mismatch = None;
        module.visit_params(&mut ParamVisitor::unnamed(&mut |_, p: &mut Param<B>| {
            let n = p.len();
            if m.get(index).map(|s| s.len()) != Some(n) && mismatch.is_none() {
                mismatch = Some((index, n));
            }
            let chunks = n.div_ceil(CHUNK);
            if mismatch.is_none() && next_chunk + chunks <= partials.len() {
                let out = &mut partials[next_chunk..next_chunk + chunks];
                p.grad[..n]
                    .par_chunks(CHUNK)
                    .zip(out.par_iter_mut())
                    .for_each(|(g, s)| *s = g.iter().map(|&x| x as f64 * x as f64).sum());
            }
            next_chunk += chunks;
            index += 1;
        }));
        // Fixed-order sum of the partials: the norm does not depend on the thread count.
        sq += partials[..next_chunk.min(partials.len())].iter().sum::<f64>();
        if let Some((i, n)) = mismatch {
            return Err(NnError::DimMismatch {
                layer: OPT,
                lhs: "parameter length",
                lhs_dim: n,
                rhs: "optimizer state length",
                rhs_dim: m.get(i).map_or(0, |s| s.len()),
            });
        }
        if index != m.len() {
            return Err(NnError::DimMismatch {
                layer: OPT,
                lhs: "module parameters",
                lhs_dim: index,
                rhs: "optimizer states",
                rhs_dim: m.len(),
            });
        }
        let grad_norm = sq.sqrt();
        let clip_scale = match config.clip_norm {
            Some(max) if grad_norm > max as f64 => max as f64 / grad_norm,
            _ => 1.0,
        };
        *t += 1;
        let (b1, b2) = (config.beta1, config.beta2);
        let bc1 = 1.0 - (b1 as f64).powi(*t as i32);
        let bc2 = 1.0 - (b2 as f64).powi(*t as i32);
        let (step_size, bc2_sqrt) = ((lr as f64 / bc1) as f32, bc2.sqrt() as f32);
        let cs = clip_scale as f32;
        let mut index = 0;
        module.visit_params(&mut ParamVisitor::unnamed(&mut |_, p: &mut Param<B>| {
            let n = p.len();
            let (mi, vi) = (&mut m[index], &mut v[index]);
            let (l2, decoupled) = match (config.weight_decay, p.decay) {
                (WeightDecay::L2(l), true) => (l, 0.0),
                (WeightDecay::Decoupled(l), true) => (0.0, l),
                _ => (0.0, 0.0),
            };
            p.value[..n]
                .par_chunks_mut(CHUNK)
                .zip(p.grad[..n].par_chunks(CHUNK))
                .zip(mi.par_chunks_mut(CHUNK))
                .zip(vi.par_chunks_mut(CHUNK))
                .for_each(|(((w, g), m), v)| {
                    for j in 0..w.len() {
                        let wj = w[j];
                        let gj = g[j] * cs + l2 * wj;
                        m[j] = b1 * m[j] + (1.0 - b1) * gj;
                        v[j] = b2 * v[j] + (1.0 - b2) * gj * gj;
                        let denom = v[j].sqrt() / bc2_sqrt + config.eps;
                        w[j] = wj - step_size * m[j] / denom - lr * decoupled * wj;
                    }
                });
            index += 1;
        }));
        Ok(StepStats { grad_norm, clip_scale })
    }
}
