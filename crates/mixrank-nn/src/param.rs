//! Trainable parameters, their initialisation, and the visitor optimizers and
//! checkpointing use to walk them by name.

use std::fmt::Write as _;

use mixrank_engine::Backend;
use rand::Rng;

use crate::error::{Ctx, Result};

/// A trainable tensor and its gradient, both in the backend's memory.
///
/// `grad` is **accumulated** by every backward (the engine's convention): zero it once
/// per step, e.g. with [`zero_grads`].
pub struct Param<B: Backend> {
    pub value: B::Buf,
    pub grad: B::Buf,
    /// Logical shape, row-major (`[d_in, d_out]` for a weight, `[d]` for a vector).
    pub shape: Vec<usize>,
    /// Whether weight decay applies. `false` for biases and normalisation scales/shifts,
    /// which decoupled weight decay conventionally leaves alone.
    pub decay: bool,
}

impl<B: Backend> Param<B> {
    /// A parameter holding `values` with a zeroed gradient.
    pub fn new(ops: &B, values: &[f32], shape: &[usize], decay: bool, layer: &'static str) -> Result<Self> {
        debug_assert_eq!(values.len(), shape.iter().product::<usize>());
        Ok(Param {
            value: ops.upload(values).ctx(layer)?,
            grad: ops.alloc(values.len()).ctx(layer)?,
            shape: shape.to_vec(),
            decay,
        })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A host copy of the value (a readback on a device backend).
    pub fn read_value(&self, ops: &B) -> Result<Vec<f32>> {
        let mut host = vec![0f32; self.len()];
        ops.read(&self.value, &mut host).ctx("Param::read_value")?;
        Ok(host)
    }

    /// A host copy of the gradient (a readback on a device backend).
    pub fn read_grad(&self, ops: &B) -> Result<Vec<f32>> {
        let mut host = vec![0f32; self.len()];
        ops.read(&self.grad, &mut host).ctx("Param::read_grad")?;
        Ok(host)
    }
}

/// How a weight matrix `[fan_in, fan_out]` is initialised. Biases start at zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Glorot/Xavier uniform: `U(-a, a)`, `a = sqrt(6 / (fan_in + fan_out))`. The default
    /// of the reference CTR implementations (FuxiCTR, DeepCTR).
    XavierUniform,
    /// Glorot/Xavier normal: `N(0, std²)`, `std = sqrt(2 / (fan_in + fan_out))`.
    XavierNormal,
    /// He/Kaiming uniform for ReLU: `a = sqrt(6 / fan_in)`.
    HeUniform,
    /// He/Kaiming normal for ReLU: `std = sqrt(2 / fan_in)`.
    HeNormal,
    /// `U(-bound, bound)`.
    Uniform { bound: f32 },
    /// `N(0, std²)`.
    Normal { std: f32 },
}

impl Init {
    /// `fan_in · fan_out` values, row-major.
    pub fn sample<R: Rng + ?Sized>(self, fan_in: usize, fan_out: usize, rng: &mut R) -> Vec<f32> {
        let n = fan_in * fan_out;
        let uniform = |bound: f64, rng: &mut R| -> Vec<f32> {
            (0..n).map(|_| if bound > 0.0 { rng.random_range(-bound..bound) as f32 } else { 0.0 }).collect()
        };
        let normal =
            |std: f64, rng: &mut R| -> Vec<f32> { (0..n).map(|_| (std * standard_normal(rng)) as f32).collect() };
        match self {
            Init::XavierUniform => uniform((6.0 / (fan_in + fan_out).max(1) as f64).sqrt(), rng),
            Init::HeUniform => uniform((6.0 / fan_in.max(1) as f64).sqrt(), rng),
            Init::Uniform { bound } => uniform(bound as f64, rng),
            Init::Normal { std } => normal(std as f64, rng),
            Init::XavierNormal => normal((2.0 / (fan_in + fan_out).max(1) as f64).sqrt(), rng),
            Init::HeNormal => normal((2.0 / fan_in.max(1) as f64).sqrt(), rng),
        }
    }
}

/// One `N(0, 1)` draw (Box–Muller; init-time only, so speed does not matter).
fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1], keeps ln finite
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Walks named parameters. Names are dotted paths (`layers.0.weight`); the path lives in
/// one reused `String`, so a walk allocates nothing once that string has grown. An
/// [`ParamVisitor::unnamed`] walk (optimizer steps, zeroing) builds no names at all.
pub struct ParamVisitor<'a, B: Backend> {
    path: Option<&'a mut String>,
    f: &'a mut dyn FnMut(&str, &mut Param<B>),
}

impl<'a, B: Backend> ParamVisitor<'a, B> {
    /// A visitor calling `f(name, param)`; `path` is scratch (cleared first).
    pub fn new(path: &'a mut String, f: &'a mut dyn FnMut(&str, &mut Param<B>)) -> Self {
        path.clear();
        ParamVisitor { path: Some(path), f }
    }

    /// A visitor calling `f("", param)`: same order, no names, no allocation.
    pub fn unnamed(f: &'a mut dyn FnMut(&str, &mut Param<B>)) -> Self {
        ParamVisitor { path: None, f }
    }

    /// Visits `param` under `<path>.<name>`.
    pub fn param(&mut self, name: &str, param: &mut Param<B>) {
        let len = self.push(name);
        (self.f)(self.path.as_deref().map_or("", String::as_str), param);
        self.truncate(len);
    }

    /// Runs `body` with `name` appended to the path (a sub-module).
    pub fn scope(&mut self, name: &str, body: impl FnOnce(&mut Self)) {
        let len = self.push(name);
        body(self);
        self.truncate(len);
    }

    /// Runs `body` with `<name>.<index>` appended (one element of a list of sub-modules).
    pub fn scope_indexed(&mut self, name: &str, index: usize, body: impl FnOnce(&mut Self)) {
        let len = self.push(name);
        if let Some(path) = self.path.as_deref_mut() {
            // Writing an integer into a String cannot fail.
            let _ = write!(path, ".{index}");
        }
        body(self);
        self.truncate(len);
    }

    fn push(&mut self, name: &str) -> usize {
        let Some(path) = self.path.as_deref_mut() else { return 0 };
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(name);
        len
    }

    fn truncate(&mut self, len: usize) {
        if let Some(path) = self.path.as_deref_mut() {
            path.truncate(len);
        }
    }
}

/// A module owning named parameters.
pub trait Parameters<B: Backend> {
    /// Visits every parameter, always in the same order (optimizers may key their state
    /// on that order).
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>);

    /// Calls `f(name, param)` for every parameter.
    fn params(&mut self, f: &mut dyn FnMut(&str, &mut Param<B>)) {
        let mut path = String::new();
        self.visit_params(&mut ParamVisitor::new(&mut path, f));
    }

    /// Total number of scalar parameters.
    fn num_params(&mut self) -> usize {
        let mut n = 0;
        self.params(&mut |_, p| n += p.len());
        n
    }
}

/// Zeroes every parameter gradient of `module` (call once per step before backward).
pub fn zero_grads<B: Backend, M: Parameters<B> + ?Sized>(ops: &B, module: &mut M) -> Result<()> {
    let mut result = Ok(());
    module.visit_params(&mut ParamVisitor::unnamed(&mut |_, p| {
        if result.is_ok() {
            let n = p.len();
            result = ops.fill(n, 0.0, &mut p.grad).ctx("zero_grads");
        }
    }));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn init_bounds_and_moments() {
        let mut rng = StdRng::seed_from_u64(1);
        let w = Init::XavierUniform.sample(30, 70, &mut rng);
        let a = (6.0f32 / 100.0).sqrt();
        assert_eq!(w.len(), 2100);
        assert!(w.iter().all(|v| v.abs() <= a));
        assert!(w.iter().any(|v| v.abs() > 0.9 * a), "samples should fill the range");
        let w = Init::Normal { std: 0.5 }.sample(100, 100, &mut rng);
        let mean = w.iter().map(|&v| v as f64).sum::<f64>() / 1e4;
        let var = w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 1e4;
        // Standard errors: mean 0.005, variance ~0.0035.
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((var - 0.25).abs() < 0.015, "{var}");
    }
}
