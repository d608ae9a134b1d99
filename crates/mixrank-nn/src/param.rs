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
    /// What indexes each axis, declared by the layer that builds the parameter (one per
    /// axis of `shape`). With the roles its containers declare in
    /// [`Parameters::visit_params`] ([`ParamVisitor::within`]), this tells which axes are
    /// indexed by a model input's columns ([`Parameters::params_with_roles`]): what a
    /// warm start remaps when those columns change.
    pub axes: Vec<Axis>,
}

/// The role of one axis of a [`Param`], relative to the layer that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Indexed by the layer's input (a weight's `d_in` rows; a cross layer's `d` axes).
    In,
    /// Indexed by the layer's output (a weight's `d_out` columns, a bias).
    Out,
    /// Indexed by the layer's own units (a low-rank factor's rank, a per-task scalar):
    /// never by a model input.
    Own,
}

/// One part of a sub-module's input or output, as its container declares it in
/// [`ParamVisitor::within`], in the container's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The container's whole input.
    In,
    /// Part `i` of the container's input, as the container's own container declared it
    /// (a layer with two inputs, such as a MaskBlock's embedding and hidden input, reads
    /// them as parts 0 and 1; a part not declared is [`Part::Own`]).
    InPart(usize),
    /// The container's output.
    Out,
    /// Positions of the container's own (hidden units, a concatenation's block of them):
    /// no model input indexes them.
    Own,
    /// Computed from the container's input but not column for column (a column slice, a
    /// mixture of differently indexed experts): when that input is a model input's, no
    /// per-column map exists, and a warm start that changes those columns refuses.
    Mixed,
    /// The columns of the model input of this name (`head`, `gates`, `position_tower`,
    /// `user`, `item`): what a model declares for the modules reading it.
    Input(&'static str),
}

/// What indexes a run of positions along one axis, resolved to the model: one
/// [`Parameters::params_with_roles`] reports per axis, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg {
    /// All the columns of the named model input, in its layout order.
    Input(&'static str),
    /// Positions no model input indexes (their number is the axis length minus the
    /// other segments').
    Own,
    /// Positions derived from model inputs without a per-column map ([`Part::Mixed`]).
    Mixed,
}

/// Substitutes a sub-module's `parts` (in its own terms: its `In`, `InPart`, `Out`)
/// with what its container declared for them (`input`, `output`, in the container's
/// terms): e.g. an expert's output parts as the mixture reading them sees them.
pub fn substitute_parts(parts: &[Part], input: &[Part], output: &[Part]) -> Vec<Part> {
    let mut out = Vec::new();
    for &p in parts {
        match p {
            Part::In => out.extend_from_slice(input),
            Part::InPart(i) => out.push(input.get(i).copied().unwrap_or(Part::Own)),
            Part::Out => out.extend_from_slice(output),
            other => out.push(other),
        }
    }
    out
}

impl<B: Backend> Param<B> {
    /// A parameter holding `values` with a zeroed gradient; `axes` gives each axis of
    /// `shape` its [`Axis`] role.
    pub fn new(
        ops: &B,
        values: &[f32],
        shape: &[usize],
        axes: &[Axis],
        decay: bool,
        layer: &'static str,
    ) -> Result<Self> {
        debug_assert_eq!(values.len(), shape.iter().product::<usize>());
        assert_eq!(axes.len(), shape.len(), "{layer}: one axis role per axis of {shape:?}");
        Ok(Param {
            value: ops.upload(values).ctx(layer)?,
            grad: ops.alloc(values.len()).ctx(layer)?,
            shape: shape.to_vec(),
            decay,
            axes: axes.to_vec(),
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
///
/// A walk started by [`Parameters::params_with_roles`] also tracks what indexes each
/// module's input and output ([`ParamVisitor::within`]) and reports, for every
/// parameter, the segments of each axis ([`Seg`]); other walks skip that bookkeeping.
pub struct ParamVisitor<'a, B: Backend> {
    path: Option<&'a mut String>,
    f: Visit<'a, B>,
}

/// The callback of a walk with roles: `f(name, param, axes)`, `axes[a]` holding the
/// segments of axis `a` ([`Parameters::params_with_roles`]).
pub type RolesFn<'a, B> = dyn FnMut(&str, &mut Param<B>, &[Vec<Seg>]) + 'a;

/// The callback of a walk, and the roles state of a walk with roles.
enum Visit<'a, B: Backend> {
    Plain(&'a mut dyn FnMut(&str, &mut Param<B>)),
    Roles { f: &'a mut RolesFn<'a, B>, input: Vec<Vec<Seg>>, output: Vec<Vec<Seg>> },
}

/// Appends `segs` to `out`, merging runs of the same [`Seg::Own`] / [`Seg::Mixed`].
fn push_segs(out: &mut Vec<Seg>, segs: &[Seg]) {
    for &s in segs {
        match (out.last(), s) {
            (Some(Seg::Own), Seg::Own) | (Some(Seg::Mixed), Seg::Mixed) => {}
            _ => out.push(s),
        }
    }
}

fn concat(pieces: &[Vec<Seg>]) -> Vec<Seg> {
    let mut out = Vec::new();
    for p in pieces {
        push_segs(&mut out, p);
    }
    if out.is_empty() {
        out.push(Seg::Own);
    }
    out
}

/// One declared part, resolved against the container's input and output pieces.
fn resolve(p: Part, input: &[Vec<Seg>], output: &[Vec<Seg>]) -> Vec<Seg> {
    match p {
        Part::In => concat(input),
        Part::InPart(i) => input.get(i).cloned().unwrap_or_else(|| vec![Seg::Own]),
        Part::Out => concat(output),
        Part::Own => vec![Seg::Own],
        Part::Input(name) => vec![Seg::Input(name)],
        Part::Mixed => {
            if concat(input).iter().any(|s| *s != Seg::Own) {
                vec![Seg::Mixed]
            } else {
                vec![Seg::Own]
            }
        }
    }
}

impl<'a, B: Backend> ParamVisitor<'a, B> {
    /// A visitor calling `f(name, param)`; `path` is scratch (cleared first).
    pub fn new(path: &'a mut String, f: &'a mut dyn FnMut(&str, &mut Param<B>)) -> Self {
        path.clear();
        ParamVisitor { path: Some(path), f: Visit::Plain(f) }
    }

    /// A visitor calling `f("", param)`: same order, no names, no allocation.
    pub fn unnamed(f: &'a mut dyn FnMut(&str, &mut Param<B>)) -> Self {
        ParamVisitor { path: None, f: Visit::Plain(f) }
    }

    /// A visitor calling `f(name, param, axes)`, `axes` holding each axis's segments
    /// (see [`Parameters::params_with_roles`]); `path` is scratch (cleared first). The
    /// walk's outermost input and output are [`Seg::Own`] until a module declares them.
    pub fn with_roles(path: &'a mut String, f: &'a mut RolesFn<'a, B>) -> Self {
        path.clear();
        ParamVisitor {
            path: Some(path),
            f: Visit::Roles { f, input: vec![vec![Seg::Own]], output: vec![vec![Seg::Own]] },
        }
    }

    /// Visits `param` under `<path>.<name>`.
    pub fn param(&mut self, name: &str, param: &mut Param<B>) {
        let len = self.push(name);
        let path = self.path.as_deref().map_or("", String::as_str);
        match &mut self.f {
            Visit::Plain(f) => f(path, param),
            Visit::Roles { f, input, output } => {
                let axes: Vec<Vec<Seg>> = param
                    .axes
                    .iter()
                    .map(|a| match a {
                        Axis::In => concat(input),
                        Axis::Out => concat(output),
                        Axis::Own => vec![Seg::Own],
                    })
                    .collect();
                f(path, param, &axes)
            }
        }
        self.truncate(len);
    }

    /// Runs `body` (a sub-module's visit) with the sub-module's input made of `input`'s
    /// parts and its output of `output`'s, each in this module's terms (its [`Part::In`],
    /// [`Part::Out`], …; a model names its inputs with [`Part::Input`]). A module that
    /// visits a sub-module without `within` passes its own input and output on. Costs
    /// nothing outside a walk with roles.
    pub fn within(&mut self, input: &[Part], output: &[Part], body: impl FnOnce(&mut Self)) {
        let saved = match &mut self.f {
            Visit::Plain(_) => None,
            Visit::Roles { input: cur_in, output: cur_out, .. } => {
                let new_in: Vec<Vec<Seg>> = input.iter().map(|&p| resolve(p, cur_in, cur_out)).collect();
                let new_out = vec![concat(&output.iter().map(|&p| resolve(p, cur_in, cur_out)).collect::<Vec<_>>())];
                Some((std::mem::replace(cur_in, new_in), std::mem::replace(cur_out, new_out)))
            }
        };
        body(self);
        if let (Some((i, o)), Visit::Roles { input, output, .. }) = (saved, &mut self.f) {
            *input = i;
            *output = o;
        }
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

    /// Calls `f(name, param, axes)` for every parameter, `axes[a]` holding what indexes
    /// axis `a` (in order; see [`ParamVisitor::within`]): the runs of positions that
    /// are a model input's columns, and the others.
    fn params_with_roles(&mut self, f: &mut RolesFn<'_, B>) {
        let mut path = String::new();
        self.visit_params(&mut ParamVisitor::with_roles(&mut path, f));
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

    /// Each parameter's axes, resolved, with the module's input declared as model input
    /// `x` and its output as its container's own units.
    fn roles<M: Parameters<mixrank_engine::RefOps>>(m: &mut M) -> Vec<(String, Vec<Vec<Seg>>)> {
        let mut out = Vec::new();
        let mut path = String::new();
        let mut f = |name: &str, _: &mut Param<mixrank_engine::RefOps>, axes: &[Vec<Seg>]| {
            out.push((name.to_string(), axes.to_vec()))
        };
        let mut v = ParamVisitor::with_roles(&mut path, &mut f);
        v.within(&[Part::Input("x")], &[Part::Own], |v| m.visit_params(v));
        out
    }

    #[test]
    fn roles_follow_the_declared_inputs_not_the_widths() {
        use crate::cross::{CrossConfig, CrossNetV2Config, CrossRank, DcnConfig, DcnStructure};
        use crate::mask::{MaskNetConfig, MaskNetStructure};
        use crate::{Layer, MlpConfig};
        use Seg::{Input, Own};
        let (ops, mut rng) = (mixrank_engine::RefOps, StdRng::seed_from_u64(1));
        let x = || vec![Input("x")];
        // Hidden layers as wide as the input: only the first layer's rows are `x`'s.
        let mut mlp = MlpConfig::new(4, &[4, 4]).with_layer_norm(true).init(&ops, 2, &mut rng).unwrap();
        let got = roles(&mut mlp);
        let want: Vec<(String, Vec<Vec<Seg>>)> = vec![
            ("blocks.0.linear.weight".into(), vec![x(), vec![Own]]),
            ("blocks.0.norm.gamma".into(), vec![vec![Own]]),
            ("blocks.0.norm.beta".into(), vec![vec![Own]]),
            ("blocks.1.linear.weight".into(), vec![vec![Own], vec![Own]]),
            ("blocks.1.norm.gamma".into(), vec![vec![Own]]),
            ("blocks.1.norm.beta".into(), vec![vec![Own]]),
        ];
        assert_eq!(got, want);
        // A parallel DCN: the cross weights map `x` to itself, its output is `[x | deep]`.
        let dcn = DcnConfig {
            cross: CrossConfig::V2(CrossNetV2Config::new(4, 1).with_rank(CrossRank::LowRank { rank: 2 })),
            deep: MlpConfig::new(4, &[3]),
            structure: DcnStructure::Parallel,
        };
        let mut dcn = dcn.init(&ops, 2, &mut rng).unwrap();
        assert_eq!(dcn.output_parts(), [Part::In, Part::Own]);
        let got = roles(&mut dcn);
        assert!(got.contains(&("cross.layers.0.u".into(), vec![x(), vec![Own]])), "{got:?}");
        assert!(got.contains(&("cross.layers.0.b".into(), vec![x()])), "{got:?}");
        assert!(got.contains(&("deep.blocks.0.linear.weight".into(), vec![x(), vec![Own]])), "{got:?}");
        // A projection reading it: its rows are `[x | own]`.
        let mut proj = crate::LinearConfig::new(7, 2).init(&ops, 2, &mut rng).unwrap();
        let mut path = String::new();
        let mut got = Vec::new();
        let mut f = |name: &str, _: &mut Param<mixrank_engine::RefOps>, axes: &[Vec<Seg>]| {
            got.push((name.to_string(), axes.to_vec()))
        };
        let mut v = ParamVisitor::with_roles(&mut path, &mut f);
        let parts = substitute_parts(&dcn.output_parts(), &[Part::Input("x")], &[Part::Own]);
        v.within(&parts, &[Part::Own], |v| proj.visit_params(v));
        assert_eq!(got[0], ("weight".into(), vec![vec![Input("x"), Own], vec![Own]]));
        // A serial MaskNet: the second block masks the first block's output, not `x`.
        let c = MaskNetConfig::new(4, 2, 4, 8, MaskNetStructure::Serial);
        let mut mask = c.init(&ops, 2, &mut rng).unwrap();
        let got = roles(&mut mask);
        assert!(got.contains(&("blocks.0.hidden.weight".into(), vec![x(), vec![Own]])), "{got:?}");
        assert!(got.contains(&("blocks.1.mask_agg.weight".into(), vec![x(), vec![Own]])), "{got:?}");
        assert!(got.contains(&("blocks.1.hidden.weight".into(), vec![vec![Own], vec![Own]])), "{got:?}");
        // Plain walks see the same parameters in the same order.
        let mut names = Vec::new();
        mask.params(&mut |n, _| names.push(n.to_string()));
        assert_eq!(names, got.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
    }

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
