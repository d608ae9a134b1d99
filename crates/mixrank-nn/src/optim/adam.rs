//! Dense Adam / AdamW with global-norm gradient clipping, on the backend: moments and
//! the norm accumulator are backend buffers, and each step is one
//! [`Backend::sq_norm_acc`] and one [`Backend::adam_update`] per parameter, with no
//! readback.

use mixrank_engine::{AdamSpec, Backend, NORM_ACC_LEN};

use crate::error::{Ctx, NnError, Result};
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

/// What the last step did (read back on request: [`Adam::stats`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// Factor the gradients were scaled by (1 when not clipped).
    pub clip_scale: f64,
}

/// Adam over every parameter of a module, state kept per parameter in visit order, in
/// the backend's memory.
///
/// Step `t` (1-based), per element, with `g` the (clipped) gradient:
/// `m = β₁m + (1-β₁)g`, `v = β₂v + (1-β₂)g²`, `m̂ = m/(1-β₁ᵗ)`, `v̂ = v/(1-β₂ᵗ)`,
/// `w -= lr · m̂ / (sqrt(v̂) + eps)` (PyTorch's formula, eps after bias correction).
/// Arithmetic per element is in the buffers' precision; the global norm is summed in f64
/// over fixed chunks in order ([`mixrank_engine::optim`]), so results do not depend on the
/// number of threads.
pub struct Adam<B: Backend> {
    config: AdamConfig,
    m: Vec<B::Buf>,
    v: Vec<B::Buf>,
    lens: Vec<usize>,
    /// The global norm accumulator of the current step.
    acc: B::Buf,
    t: u64,
}

impl<B: Backend> Adam<B> {
    /// Zeroed state for every parameter of `module`.
    pub fn new<M: Parameters<B> + ?Sized>(config: AdamConfig, ops: &B, module: &mut M) -> Result<Self> {
        let mut lens = Vec::new();
        module.params(&mut |_, p| lens.push(p.len()));
        let alloc = |n: &usize| ops.alloc(*n).ctx(OPT);
        let m = lens.iter().map(alloc).collect::<Result<Vec<_>>>()?;
        let v = lens.iter().map(alloc).collect::<Result<Vec<_>>>()?;
        let acc = ops.alloc(NORM_ACC_LEN).ctx(OPT)?;
        Ok(Adam { config, m, v, lens, acc, t: 0 })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// First and second moments of the `i`-th parameter (visit order), read to the host
    /// for checkpoints.
    pub fn moments(&self, ops: &B, i: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = self.lens[i];
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        ops.read(&self.m[i], &mut m).ctx(OPT)?;
        ops.read(&self.v[i], &mut v).ctx(OPT)?;
        Ok((m, v))
    }

    /// Restores state saved from [`Adam::moments`] and [`Adam::steps`].
    pub fn set_state(&mut self, ops: &B, t: u64, m: Vec<Vec<f32>>, v: Vec<Vec<f32>>) -> Result<()> {
        if m.len() != self.m.len() || v.len() != self.v.len() {
            return Err(NnError::DimMismatch {
                layer: OPT,
                lhs: "restored parameters",
                lhs_dim: m.len(),
                rhs: "module parameters",
                rhs_dim: self.m.len(),
            });
        }
        for (i, (mi, vi)) in m.iter().zip(&v).enumerate() {
            for (name, len) in [("restored m", mi.len()), ("restored v", vi.len())] {
                if len != self.lens[i] {
                    return Err(NnError::DimMismatch {
                        layer: OPT,
                        lhs: name,
                        lhs_dim: len,
                        rhs: "parameter length",
                        rhs_dim: self.lens[i],
                    });
                }
            }
            ops.write(mi, &mut self.m[i]).ctx(OPT)?;
            ops.write(vi, &mut self.v[i]).ctx(OPT)?;
        }
        self.t = t;
        Ok(())
    }

    /// The last step's gradient norm and clip factor (a host sync: call it for logs or
    /// tests, not every step).
    pub fn stats(&self, ops: &B) -> Result<StepStats> {
        let sq = ops.sq_norm_read(&self.acc).ctx(OPT)?;
        Ok(StepStats { grad_norm: sq.sqrt(), clip_scale: mixrank_engine::optim::clip_scale(sq, self.config.clip_norm) })
    }

    /// One update of every parameter with learning rate `lr`, using the gradients as
    /// they are (zero them before the next backward).
    pub fn step<M: Parameters<B> + ?Sized>(&mut self, ops: &B, module: &mut M, lr: f32) -> Result<()> {
        // Pass 1: shapes, and the global gradient norm into the accumulator.
        let mut index = 0;
        let mut failure: Option<NnError> = None;
        let lens = &self.lens;
        ops.fill(NORM_ACC_LEN, 0.0, &mut self.acc).ctx(OPT)?;
        let acc = &mut self.acc;
        module.visit_params(&mut ParamVisitor::unnamed(&mut |_, p: &mut Param<B>| {
            if failure.is_some() {
                return;
            }
            let n = p.len();
            if lens.get(index) != Some(&n) {
                failure = Some(NnError::DimMismatch {
                    layer: OPT,
                    lhs: "parameter length",
                    lhs_dim: n,
                    rhs: "optimizer state length",
                    rhs_dim: lens.get(index).copied().unwrap_or(0),
                });
            } else if let Err(e) = ops.sq_norm_acc(n, &p.grad, acc).ctx(OPT) {
                failure = Some(e);
            }
            index += 1;
        }));
        if let Some(e) = failure {
            return Err(e);
        }
        if index != self.m.len() {
            return Err(NnError::DimMismatch {
                layer: OPT,
                lhs: "module parameters",
                lhs_dim: index,
                rhs: "optimizer states",
                rhs_dim: self.m.len(),
            });
        }
        self.t += 1;
        let c = self.config;
        let bc1 = 1.0 - (c.beta1 as f64).powi(self.t as i32);
        let bc2 = 1.0 - (c.beta2 as f64).powi(self.t as i32);
        let base = AdamSpec {
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            step_size: (lr as f64 / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            l2: 0.0,
            decoupled: 0.0,
            clip_norm: c.clip_norm,
        };
        let (m, v, acc) = (&mut self.m, &mut self.v, &self.acc);
        let mut index = 0;
        module.visit_params(&mut ParamVisitor::unnamed(&mut |_, p: &mut Param<B>| {
            if failure.is_some() {
                return;
            }
            let spec = match (c.weight_decay, p.decay) {
                (WeightDecay::L2(l), true) => AdamSpec { l2: l, ..base },
                (WeightDecay::Decoupled(l), true) => AdamSpec { decoupled: l, ..base },
                _ => base,
            };
            let r = ops.adam_update(p.len(), &spec, acc, &mut p.value, &p.grad, &mut m[index], &mut v[index]);
            if let Err(e) = r.ctx(OPT) {
                failure = Some(e);
            }
            index += 1;
        }));
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
