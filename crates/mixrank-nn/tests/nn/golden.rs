//! PyTorch golden tests: every layer, loss and optimizer step against the float64
//! PyTorch twins in `tests/golden/*.safetensors` (written by `tests/golden/gen_golden.py`;
//! see the README there). No Python is needed here.
//!
//! Each layer case loads the golden's parameters into the mixrank layer by name (through
//! [`Parameters::params`]), runs forward and backward on `CpuOps` in f32, and compares the
//! output, every input gradient and every parameter gradient with PyTorch's. The same
//! case runs on [`BoundOps`], which yields mixrank's math evaluated exactly (f64) together
//! with a rigorous bound `e` on the rounding error of any f32 execution of it (f32
//! accumulation over each reduction length, propagated through the layer; see
//! `src/testing/bound.rs`). Two checks per element, against the golden value `g`:
//!
//! - the math: `|v - g| ≤ 2⁻²⁸·e + 2⁻⁵⁰·|g|`. `v` and `g` are two float64 evaluations of
//!   the same function; each is within `e·2⁻²⁹` of the real value (the f32 bound with
//!   `u = 2⁻²⁴` replaced by `2⁻⁵³`), so any difference in the math itself (a missing
//!   term, a transposed weight, a different eps) shows, far below f32 resolution;
//! - mixrank's f32 result `c`: `|c - g| ≤ e + 2⁻²⁸·e + 2⁻⁵⁰·|g|`.
//!
//! Each compared tensor must be non-zero and its bounds meaningful (at most 2% of the
//! elements with `e` above 1% of the tensor's largest value), as in `common.rs`.
//!
//! Optimizer steps run on the host; their bounds are derived per element from the update
//! formulas ([`adam_bound`], [`adagrad_bound`]).

use std::path::PathBuf;

use crate::common::{pool, rng};
use mixrank_engine::Activation::{GeluTanh, Relu, Sigmoid, Silu, Tanh};
use mixrank_engine::{Backend, CpuOps, GradWrite, LossInput, Pooling};
use mixrank_nn::testing::{BoundOps, Bounded};
use mixrank_nn::*;
use safetensors::{Dtype, SafeTensors};

/// Unit roundoff of f32.
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// `γ_n = n·u / (1 - n·u)`.
fn gamma(n: usize) -> f64 {
    n as f64 * U / (1.0 - n as f64 * U)
}

/// Scale from an f32 rounding bound to the float64 one (`2⁻⁵³ / 2⁻²⁴ = 2⁻²⁹`), doubled
/// for the two float64 evaluations compared.
const F64_OF_F32: f64 = 1.0 / (1u64 << 28) as f64;
/// Relative slack for float64 rounding of a result itself (a few ulps).
const F64_REL: f64 = 1.0 / (1u64 << 50) as f64;

// ---- golden files ---------------------------------------------------------------------

/// One golden file, read whole (a few KB).
struct Golden {
    name: String,
    bytes: Vec<u8>,
}

impl Golden {
    fn load(name: &str) -> Golden {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let golden = Golden { name: name.to_string(), bytes };
        golden.st(); // fails here, naming the file, if it is not valid safetensors
        golden
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap_or_else(|e| panic!("{}.safetensors: {e}", self.name))
    }

    fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.st().names().into_iter().map(str::to_string).collect();
        k.sort();
        k
    }

    fn raw(&self, key: &str, dtype: Dtype) -> (Vec<u8>, Vec<usize>) {
        let st = self.st();
        let t = st.tensor(key).unwrap_or_else(|e| panic!("{}.safetensors: tensor {key}: {e}", self.name));
        assert_eq!(t.dtype(), dtype, "{}.safetensors: tensor {key} has dtype {:?}", self.name, t.dtype());
        (t.data().to_vec(), t.shape().to_vec())
    }

    fn shape(&self, key: &str) -> Vec<usize> {
        let st = self.st();
        let t = st.tensor(key).unwrap_or_else(|e| panic!("{}.safetensors: tensor {key}: {e}", self.name));
        t.shape().to_vec()
    }

    fn f32(&self, key: &str) -> Vec<f32> {
        let (b, _) = self.raw(key, Dtype::F32);
        b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
    }

    fn f64(&self, key: &str) -> Vec<f64> {
        let (b, _) = self.raw(key, Dtype::F64);
        b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
    }

    fn u32(&self, key: &str) -> Vec<u32> {
        let (b, _) = self.raw(key, Dtype::U32);
        b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
    }

    /// Rows of `input.0` (every layer case's batch).
    fn batch(&self) -> usize {
        self.shape("input.0")[0]
    }
}

/// Named results of one run, in the order produced.
type Tensors<T> = Vec<(String, Vec<T>)>;

/// The backends a case runs on: host `Vec` buffers of `T` (`f32` or [`Bounded`]).
trait HostOps<T>: Backend<Buf = Vec<T>, Ids = Vec<u32>> {}
impl<T, B: Backend<Buf = Vec<T>, Ids = Vec<u32>>> HostOps<T> for B {}

/// Writes every parameter of `m` from the golden's `param.<name>` (checking the shape),
/// and checks the golden holds no parameter the module does not visit.
fn load_params<T, B: HostOps<T>, M: Parameters<B> + ?Sized>(ops: &B, m: &mut M, g: &Golden) {
    let mut seen = Vec::new();
    m.params(&mut |name, p| {
        let key = format!("param.{name}");
        assert_eq!(g.shape(&key), p.shape, "{}: shape of {key}", g.name);
        ops.write(&g.f32(&key), &mut p.value).unwrap();
        seen.push(key);
    });
    seen.sort();
    let golden: Vec<String> = g.keys().into_iter().filter(|k| k.starts_with("param.")).collect();
    assert_eq!(seen, golden, "{}: the layer's parameters vs the golden's", g.name);
}

/// `grad.<name>` for every parameter, in visit order.
fn param_grads<T: Copy, B: HostOps<T>, M: Parameters<B> + ?Sized>(m: &mut M) -> Tensors<T> {
    let mut out = Vec::new();
    m.params(&mut |name, p| out.push((format!("grad.{name}"), p.grad[..p.len()].to_vec())));
    out
}

fn upload<T, B: HostOps<T>>(ops: &B, g: &Golden, key: &str) -> Vec<T> {
    ops.upload(&g.f32(key)).unwrap()
}

/// Forward + backward of a single-input [`Layer`] on the golden's `input.0` and
/// `d_output`, with the golden's parameters.
fn run_layer<T: Copy, B: HostOps<T>, L: Layer<B>>(ops: &B, g: &Golden, mut layer: L) -> Tensors<T> {
    load_params(ops, &mut layer, g);
    zero_grads(ops, &mut layer).unwrap();
    let batch = g.batch();
    let (x, dy) = (upload(ops, g, "input.0"), upload(ops, g, "d_output"));
    let (d_in, d_out) = (layer.d_in(), layer.d_out());
    let out = layer.forward(ops, &x, batch).unwrap()[..batch * d_out].to_vec();
    let dx = layer.backward(ops, &x, &dy).unwrap()[..batch * d_in].to_vec();
    let mut t = vec![("output".to_string(), out), ("d_input.0".to_string(), dx)];
    t.extend(param_grads(&mut layer));
    t
}

// ---- comparison -------------------------------------------------------------------------

/// Compares one tensor (see the module docs). `loose`: the bound's tightness is not
/// demanded (each use says why: a sum that cancels by construction, far below the
/// worst-case bound of its terms, or a worst-case bound grown through several layer
/// norms); both comparisons are still made against it.
fn compare(case: &str, key: &str, shape: &[usize], got: &[f32], bound: &[Bounded], golden: &[f64], loose_ok: bool) {
    assert_eq!(got.len(), golden.len(), "{case}: {key}: mixrank has {} elements, PyTorch {}", got.len(), golden.len());
    assert_eq!(bound.len(), golden.len(), "{case}: {key}: bound length");
    let scale = golden.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{case}: {key} is all zero in the golden: the comparison would be vacuous");
    let at = |i: usize| {
        let cols = if shape.len() >= 2 { shape[1..].iter().product() } else { 1 };
        if shape.len() >= 2 {
            format!("[{}, {}]", i / cols, i % cols)
        } else {
            format!("[{i}]")
        }
    };
    // (ratio of |diff| to tolerance, index) of the worst element, per check.
    let (mut math, mut f32w) = ((0.0f64, 0), (0.0f64, 0));
    let mut loose = 0;
    for i in 0..golden.len() {
        let (g, b) = (golden[i], bound[i]);
        let slack = F64_OF_F32 * b.e + F64_REL * g.abs();
        let r = (b.v - g).abs() / slack.max(f64::MIN_POSITIVE);
        if r > math.0 || r.is_nan() {
            math = (if r.is_nan() { f64::INFINITY } else { r }, i);
        }
        let r = (got[i] as f64 - g).abs() / (b.e + slack).max(f64::MIN_POSITIVE);
        if r > f32w.0 || r.is_nan() {
            f32w = (if r.is_nan() { f64::INFINITY } else { r }, i);
        }
        loose += usize::from(b.e > 1e-2 * scale);
    }
    let i = math.1;
    assert!(
        math.0 <= 1.0,
        "{case}: {key}{}: mixrank's math (f64) gives {:e}, PyTorch {:e}: |diff| {:e} is {:.3e}× the tolerance {:e}",
        at(i),
        bound[i].v,
        golden[i],
        (bound[i].v - golden[i]).abs(),
        math.0,
        F64_OF_F32 * bound[i].e + F64_REL * golden[i].abs()
    );
    let i = f32w.1;
    assert!(
        f32w.0 <= 1.0,
        "{case}: {key}{}: mixrank CpuOps (f32) gives {:e}, PyTorch {:e}: |diff| {:e} is {:.3e}× the rounding bound {:e}",
        at(i),
        got[i],
        golden[i],
        (got[i] as f64 - golden[i]).abs(),
        f32w.0,
        bound[i].e
    );
    if !loose_ok {
        assert!(
            loose * 50 <= golden.len(),
            "{case}: {key}: {loose} of {} bounds exceed 1% of the largest value {scale:e}",
            golden.len()
        );
    }
}

/// Runs a case on CpuOps and on BoundOps and compares every result the golden holds
/// (`output`, `d_input.*`, `grad.*`), which must be exactly the set the case produced.
fn check_golden(
    name: &str,
    cpu: impl Fn(&CpuOps, &Golden) -> Tensors<f32> + Sync,
    bnd: impl Fn(&BoundOps, &Golden) -> Tensors<Bounded>,
    loose: &[&str],
) {
    let g = Golden::load(name);
    let ops = CpuOps::new();
    let a = pool().install(|| cpu(&ops, &g));
    let b = bnd(&BoundOps, &g);
    let mut produced: Vec<&str> = a.iter().map(|(k, _)| k.as_str()).collect();
    produced.sort();
    let expected: Vec<String> =
        g.keys().into_iter().filter(|k| k == "output" || k.starts_with("d_input.") || k.starts_with("grad.")).collect();
    assert_eq!(produced, expected, "{name}: results mixrank produced vs the golden's");
    for ((key, got), (bkey, bound)) in a.iter().zip(&b) {
        assert_eq!(key, bkey);
        let loose_ok = loose.iter().any(|c| key.ends_with(c));
        compare(name, key, &g.shape(key), got, bound, &g.f64(key), loose_ok);
    }
}

/// `#[test] fn $test` running the generic case `$case` on both backends.
macro_rules! golden_test {
    ($test:ident, $file:literal, $case:ident $(, loose = [$($c:literal),*])?) => {
        #[test]
        fn $test() {
            check_golden($file, $case::<f32, CpuOps>, $case::<Bounded, BoundOps>, &[$($($c),*)?]);
        }
    };
}

// ---- single-input layers ----------------------------------------------------------------

/// Builds `cfg` with workspaces for the golden's batch (initial values are replaced).
fn build<T, B: HostOps<T>, C: LayerConfig>(ops: &B, g: &Golden, cfg: C) -> C::Layer<B> {
    cfg.build(ops, g.batch(), &mut rng(0)).unwrap()
}

macro_rules! layer_case {
    ($case:ident, $cfg:expr) => {
        fn $case<T: Copy, B: HostOps<T>>(ops: &B, g: &Golden) -> Tensors<T> {
            let layer = build(ops, g, $cfg);
            run_layer(ops, g, layer)
        }
    };
}

layer_case!(linear, LinearConfig::new(5, 3));
layer_case!(linear_relu, LinearConfig::new(6, 4).with_activation(Relu));
layer_case!(linear_nobias_silu, LinearConfig::new(4, 5).with_bias(false).with_activation(Silu));
layer_case!(layer_norm, LayerNormConfig::new(7));
layer_case!(layer_norm_relu, LayerNormConfig::new(6).with_activation(Relu));
layer_case!(mlp_relu, MlpConfig::new(6, &[8, 5]).with_output(3));
layer_case!(mlp_ln_gelu, MlpConfig::new(5, &[7, 6]).with_layer_norm(true).with_activation(GeluTanh));
layer_case!(mlp_silu, MlpConfig::new(4, &[6]).with_activation(Silu).with_output(2));
layer_case!(mlp_tanh, MlpConfig::new(5, &[4, 4]).with_activation(Tanh));
layer_case!(mlp_sigmoid_ln, MlpConfig::new(4, &[5]).with_activation(Sigmoid).with_layer_norm(true).with_output(2));
layer_case!(tower, TowerConfig::new(6, &[5]));
layer_case!(cross_full, CrossNetV2Config::new(6, 3));
layer_case!(cross_low_rank, CrossNetV2Config::new(6, 2).with_rank(CrossRank::LowRank { rank: 2 }));
layer_case!(cross_mix, CrossNetMixConfig::new(5, 2, 2, 3));
layer_case!(cross_mix_one_expert, CrossNetMixConfig::new(5, 2, 3, 1).with_activation(Tanh));
layer_case!(
    dcn_stacked,
    DcnConfig {
        cross: CrossNetV2Config::new(5, 2).into(),
        deep: MlpConfig::new(5, &[6, 4]),
        structure: DcnStructure::Stacked
    }
);
layer_case!(
    dcn_parallel,
    DcnConfig {
        cross: CrossNetV2Config::new(6, 2).with_rank(CrossRank::LowRank { rank: 3 }).into(),
        deep: MlpConfig::new(6, &[5]).with_output(3),
        structure: DcnStructure::Parallel
    }
);
layer_case!(gate, GateConfig::new(5, 4).with_temperature(0.8));
layer_case!(gate_top_k, GateConfig::new(6, 5).with_temperature(1.5).with_top_k(3));
layer_case!(masknet_serial, MaskNetConfig::new(8, 2, 6, 4, MaskNetStructure::Serial));
layer_case!(masknet_parallel, MaskNetConfig::new(5, 2, 3, 4, MaskNetStructure::Parallel));

fn final_mlp_cfg(context: GateContext) -> FinalMlpConfig {
    FinalMlpConfig {
        d_in: 6,
        mlp1: MlpConfig::new(6, &[4]),
        mlp2: MlpConfig::new(6, &[5, 2]),
        gate_hidden: vec![4],
        context,
        heads: 2,
        d_out: 1,
    }
}
layer_case!(final_mlp_input, final_mlp_cfg(GateContext::Input));
layer_case!(final_mlp_learned, final_mlp_cfg(GateContext::Learned { d: 3 }));
layer_case!(final_mlp_columns, final_mlp_cfg(GateContext::Columns { start: 1, len: 3 }));

golden_test!(golden_linear, "linear", linear);
golden_test!(golden_linear_relu, "linear_relu", linear_relu);
golden_test!(golden_linear_nobias_silu, "linear_nobias_silu", linear_nobias_silu);
golden_test!(golden_layer_norm, "layer_norm", layer_norm);
golden_test!(golden_layer_norm_relu, "layer_norm_relu", layer_norm_relu);
golden_test!(golden_mlp_relu, "mlp_relu", mlp_relu);
golden_test!(golden_mlp_ln_gelu, "mlp_ln_gelu", mlp_ln_gelu);
golden_test!(golden_mlp_silu, "mlp_silu", mlp_silu);
golden_test!(golden_mlp_tanh, "mlp_tanh", mlp_tanh);
golden_test!(golden_mlp_sigmoid_ln, "mlp_sigmoid_ln", mlp_sigmoid_ln);
golden_test!(golden_tower, "tower", tower);
golden_test!(golden_cross_full, "cross_full", cross_full);
golden_test!(golden_cross_low_rank, "cross_low_rank", cross_low_rank);
// Softmax gates: bias (and, with few rows, weight) gradients cancel by construction.
golden_test!(golden_cross_mix, "cross_mix", cross_mix, loose = ["gate.bias", "gate.weight"]);
golden_test!(golden_cross_mix_one_expert, "cross_mix_one_expert", cross_mix_one_expert);
golden_test!(golden_dcn_stacked, "dcn_stacked", dcn_stacked);
golden_test!(golden_dcn_parallel, "dcn_parallel", dcn_parallel);
golden_test!(golden_gate, "gate", gate, loose = ["bias"]);
golden_test!(golden_gate_top_k, "gate_top_k", gate_top_k, loose = ["bias"]);
// The input gradient (and the first mask aggregation's, upstream of the same paths) sums
// both blocks' mask paths and the first block's LN_in, behind
// three layer norms: its worst-case bound reaches ~2% of the largest value (the f32
// result is still within it, and the f64 math within 2⁻²⁸ of it).
golden_test!(
    golden_masknet_serial,
    "masknet_serial",
    masknet_serial,
    loose = ["d_input.0", "blocks.0.mask_agg.weight"]
);
golden_test!(golden_masknet_parallel, "masknet_parallel", masknet_parallel);
golden_test!(golden_final_mlp_input, "final_mlp_input", final_mlp_input);
golden_test!(golden_final_mlp_learned, "final_mlp_learned", final_mlp_learned);
golden_test!(golden_final_mlp_columns, "final_mlp_columns", final_mlp_columns);

// ---- multi-input layers -----------------------------------------------------------------

/// MoeMix: inputs 0..n are the experts, the last input the gate weights.
fn moe_mix<T: Copy, B: HostOps<T>>(ops: &B, g: &Golden) -> Tensors<T> {
    let (batch, d) = (g.batch(), g.shape("input.0")[1]);
    let n = g.shape("input.3")[1];
    let experts: Vec<Vec<T>> = (0..n).map(|e| upload(ops, g, &format!("input.{e}"))).collect();
    let gates = upload(ops, g, "input.3");
    let dy = upload(ops, g, "d_output");
    let mut mix = MoeMix::new(ops, n, d, batch).unwrap();
    let out = mix.forward(ops, &experts, &gates, batch).unwrap()[..batch * d].to_vec();
    mix.backward(ops, &experts, &gates, &dy).unwrap();
    let mut t = vec![("output".to_string(), out)];
    for e in 0..n {
        t.push((format!("d_input.{e}"), mix.d_expert(e)[..batch * d].to_vec()));
    }
    t.push((format!("d_input.{n}"), mix.d_gates()[..batch * n].to_vec()));
    t
}

/// MaskBlock: input 0 the embedding, input 1 the hidden input.
fn mask_block_with<T: Copy, B: HostOps<T>>(ops: &B, g: &Golden, norm_hidden: bool) -> Tensors<T> {
    let (batch, d_emb, d_hidden) = (g.batch(), g.shape("input.0")[1], g.shape("input.1")[1]);
    let (d_mask, d_out) = (g.shape("param.mask_agg.weight")[1], g.shape("output")[1]);
    let cfg = MaskBlockConfig { norm_hidden, ..MaskBlockConfig::new(d_emb, d_hidden, d_mask, d_out) };
    let mut block = cfg.init(ops, batch, &mut rng(0)).unwrap();
    load_params(ops, &mut block, g);
    zero_grads(ops, &mut block).unwrap();
    let (e, h, dy) = (upload(ops, g, "input.0"), upload(ops, g, "input.1"), upload(ops, g, "d_output"));
    let out = block.forward(ops, &e, &h, batch).unwrap()[..batch * d_out].to_vec();
    block.backward(ops, &e, &h, &dy).unwrap();
    let mut t = vec![
        ("output".to_string(), out),
        ("d_input.0".to_string(), block.d_emb()[..batch * d_emb].to_vec()),
        ("d_input.1".to_string(), block.d_hidden()[..batch * d_hidden].to_vec()),
    ];
    t.extend(param_grads(&mut block));
    t
}

fn mask_block<T: Copy, B: HostOps<T>>(ops: &B, g: &Golden) -> Tensors<T> {
    mask_block_with(ops, g, true)
}

fn mask_block_no_norm<T: Copy, B: HostOps<T>>(ops: &B, g: &Golden) -> Tensors<T> {
    mask_block_with(ops, g, false)
}

/// FeatureGate: input 0 the context, input 1 the gated input; gate MLP `4 → [6] → 5`.
fn feature_gate<T: Copy, B: HostOps<T>>(ops: &B, g: &Golden) -> Tensors<T> {
    let (batch, d_ctx, d) = (g.batch(), g.shape("input.0")[1], g.shape("input.1")[1]);
    let mut gate = FeatureGate::new(ops, &MlpConfig::new(d_ctx, &[6]).with_output(d), batch, &mut rng(0)).unwrap();
    load_params(ops, &mut gate, g);
    zero_grads(ops, &mut gate).unwrap();
    let (c, x, dy) = (upload(ops, g, "input.0"), upload(ops, g, "input.1"), upload(ops, g, "d_output"));
    let out = gate.forward(ops, &c, &x, batch).unwrap()[..batch * d].to_vec();
    gate.backward(ops, &c, &x, &dy).unwrap();
    let mut t = vec![
        ("output".to_string(), out),
        ("d_input.0".to_string(), gate.d_context()[..batch * d_ctx].to_vec()),
        ("d_input.1".to_string(), gate.d_x()[..batch * d].to_vec()),
    ];
    t.extend(param_grads(&mut gate));
    t
}

/// BilinearFusion `6 × 4 → 2`, 2 heads: input 0 is x, input 1 is y.
fn bilinear_fusion<T: Copy, B: HostOps<T>>(ops: &B, g: &Golden) -> Tensors<T> {
    let (batch, d_x, d_y, d_out) = (g.batch(), g.shape("input.0")[1], g.shape("input.1")[1], g.shape("output")[1]);
    let mut fusion = BilinearFusionConfig::new(d_x, d_y, 2, d_out).init(ops, batch, &mut rng(0)).unwrap();
    load_params(ops, &mut fusion, g);
    zero_grads(ops, &mut fusion).unwrap();
    let (x, y, dy) = (upload(ops, g, "input.0"), upload(ops, g, "input.1"), upload(ops, g, "d_output"));
    let out = fusion.forward(ops, &x, &y, batch).unwrap()[..batch * d_out].to_vec();
    fusion.backward(ops, &x, &y, &dy).unwrap();
    let mut t = vec![
        ("output".to_string(), out),
        ("d_input.0".to_string(), fusion.d_x()[..batch * d_x].to_vec()),
        ("d_input.1".to_string(), fusion.d_y()[..batch * d_y].to_vec()),
    ];
    t.extend(param_grads(&mut fusion));
    t
}

golden_test!(golden_moe_mix, "moe_mix", moe_mix);
golden_test!(golden_mask_block, "mask_block", mask_block);
golden_test!(golden_mask_block_no_norm, "mask_block_no_norm", mask_block_no_norm);
golden_test!(golden_feature_gate, "feature_gate", feature_gate);
golden_test!(golden_bilinear_fusion, "bilinear_fusion", bilinear_fusion);

// ---- embeddings -------------------------------------------------------------------------

/// Tables `[10, 3]`, `[7, 2]`; features: single(t0), sum-pooled(t0), mean-pooled(t1),
/// single(t1) — the generator's layout.
fn embedding_config(max_ids: usize) -> EmbeddingCollectionConfig {
    EmbeddingCollectionConfig {
        tables: vec![TableConfig::new(10, 3), TableConfig::new(7, 2)],
        features: vec![
            FeatureConfig::single(0),
            FeatureConfig::pooled(0, Pooling::Sum, max_ids),
            FeatureConfig::pooled(1, Pooling::Mean, max_ids),
            FeatureConfig::single(1),
        ],
    }
}

/// The collection with the golden's tables, after forward and backward on its ids and
/// `d_output`; returns the output.
fn embedding_run<T: Copy, B: HostOps<T>>(ops: &B, g: &Golden) -> (EmbeddingCollection<B>, Vec<T>) {
    let batch = g.shape("ids.0")[0];
    let mut emb = embedding_config(8).init(ops, batch, &mut rng(0)).unwrap();
    for t in 0..2 {
        let key = format!("table.{t}");
        let table = &mut emb.tables_mut()[t];
        assert_eq!(g.shape(&key), [table.rows, table.dim], "{key}");
        ops.write(&g.f32(&key), &mut table.value).unwrap();
    }
    let ids = |k: &str| ops.upload_ids(&g.u32(k)).unwrap();
    let (i0, o1, i1, o2, i2, i3) =
        (ids("ids.0"), ids("offsets.1"), ids("ids.1"), ids("offsets.2"), ids("ids.2"), ids("ids.3"));
    let inputs = [
        FeatureInput::Single(&i0),
        FeatureInput::Multi { offsets: &o1, ids: &i1 },
        FeatureInput::Multi { offsets: &o2, ids: &i2 },
        FeatureInput::Single(&i3),
    ];
    let width = emb.output_dim();
    let out = emb.forward(ops, &inputs, batch).unwrap()[..batch * width].to_vec();
    emb.backward(ops, &inputs, &upload(ops, g, "d_output")).unwrap();
    (emb, out)
}

/// Feature `f`'s sparse gradient as a dense `[rows, dim]` table (untouched rows zero).
fn dense_grad<T: Copy + Default, B: HostOps<T>>(emb: &EmbeddingCollection<B>, f: usize) -> Vec<T> {
    let t = &emb.tables()[emb.config().features[f].table];
    let sg = emb.grad(f);
    let mut dense = vec![T::default(); t.rows * t.dim];
    for i in 0..sg.len {
        let id = sg.ids[i] as usize;
        dense[id * t.dim..(id + 1) * t.dim].copy_from_slice(&sg.rows[i * t.dim..(i + 1) * t.dim]);
    }
    dense
}

fn embedding<T: Copy + Default, B: HostOps<T>>(ops: &B, g: &Golden) -> Tensors<T> {
    let (emb, out) = embedding_run(ops, g);
    let mut t = vec![("output".to_string(), out)];
    for f in 0..4 {
        t.push((format!("grad.feature.{f}"), dense_grad(&emb, f)));
    }
    t
}

golden_test!(golden_embedding, "embedding", embedding);

#[test]
fn golden_embedding_touches_exactly_the_looked_up_rows() {
    let g = Golden::load("embedding");
    let ops = CpuOps::new();
    let (emb, _) = pool().install(|| embedding_run(&ops, &g));
    for (f, key) in ["ids.0", "ids.1", "ids.2", "ids.3"].iter().enumerate() {
        let mut want = g.u32(key);
        want.sort_unstable();
        want.dedup();
        let sg = emb.grad(f);
        assert_eq!(&sg.ids[..sg.len], &want[..], "embedding: feature {f}'s touched rows");
    }
}

// ---- losses -----------------------------------------------------------------------------

/// Runs BCE or MSE on the golden's logits/targets/weights/mask with its gradient scale;
/// returns the gradient (as `d_input.0`) and the loss.
fn loss_run<T: Copy, B: HostOps<T>>(ops: &B, g: &Golden, bce: bool) -> (Tensors<T>, f32) {
    let n = g.shape("input.0")[0];
    let (pred, target) = (upload(ops, g, "input.0"), upload(ops, g, "target"));
    let (weight, mask) = (upload(ops, g, "weight"), upload(ops, g, "mask"));
    let mut grad = ops.alloc(n).unwrap();
    let input = LossInput { pred: &pred, target: &target, weight: Some(&weight), mask: Some(&mask), weight_sum: None };
    let write = GradWrite { scale: g.f32("scale")[0], accumulate: false };
    let loss = if bce { ops.bce_with_logits(n, input, &mut grad, write) } else { ops.mse(n, input, &mut grad, write) };
    (vec![("d_input.0".to_string(), grad)], loss.unwrap())
}

fn loss_bce<T: Copy, B: HostOps<T>>(ops: &B, g: &Golden) -> Tensors<T> {
    loss_run(ops, g, true).0
}

fn loss_mse<T: Copy, B: HostOps<T>>(ops: &B, g: &Golden) -> Tensors<T> {
    loss_run(ops, g, false).0
}

golden_test!(golden_loss_bce_gradient, "loss_bce", loss_bce);
golden_test!(golden_loss_mse_gradient, "loss_mse", loss_mse);

/// The loss value: each term is evaluated in f32 and summed in f64. A BCE term
/// `max(z,0) - z·y + ln1p(exp(-|z|))` has ~8 roundings (two library calls of a few ulps)
/// on partial results bounded by `|z| + |z·y| + 1`; an MSE term `(p - t)²` three
/// roundings relative to itself. The weighted mean is then rounded to f32 once more.
#[test]
fn golden_loss_values() {
    for (name, bce) in [("loss_bce", true), ("loss_mse", false)] {
        let g = Golden::load(name);
        let ops = CpuOps::new();
        let (_, loss) = pool().install(|| loss_run(&ops, &g, bce));
        let want = g.f64("loss")[0];
        let (p, t, w, m) = (g.f32("input.0"), g.f32("target"), g.f32("weight"), g.f32("mask"));
        let (mut mag, mut total) = (0.0, 0.0);
        for i in (0..p.len()).filter(|&i| m[i] != 0.0) {
            let (z, y, wi) = (p[i] as f64, t[i] as f64, w[i] as f64);
            mag += wi * if bce { 8.0 * U * (z.abs() + (z * y).abs() + 1.0) } else { 3.0 * U * (z - y).powi(2) };
            total += wi;
        }
        let tol = mag / total + U * want.abs();
        assert!(
            (loss as f64 - want).abs() <= tol,
            "{name}: mixrank loss {loss} vs PyTorch {want} (|diff| {:e} > bound {tol:e})",
            (loss as f64 - want).abs()
        );
    }
}

// ---- optimizers -------------------------------------------------------------------------

/// Rounding bounds of one Adam element update in f32 (mixrank's `Adam` and `LazyAdam`):
/// `m = β₁m₀ + (1-β₁)g`, `v = β₂v₀ + (1-β₂)g²`, `den = sqrt(v)/fl(sqrt(bc₂)) + eps`,
/// `w' = w - fl(lr/bc₁)·m/den - lr·λ·w`, where `g` itself carries error `e_g`.
/// First order in `u`: each rounding is relative to the partial result it produces,
/// and the partial results of `m` are bounded by `|β₁m₀| + |(1-β₁)g|` (it may cancel),
/// those of `v` by `v` itself (no cancellation). Returns `(e_w, e_m, e_v)`.
#[allow(clippy::too_many_arguments)]
fn adam_bound(w: f64, g: f64, e_g: f64, m0: f64, v0: f64, hyper: [f64; 4], t: i32, decoupled: f64) -> [f64; 3] {
    let [lr, b1, b2, eps] = hyper;
    let m = b1 * m0 + (1.0 - b1) * g;
    let v = b2 * v0 + (1.0 - b2) * g * g;
    let e_m = gamma(3) * ((b1 * m0).abs() + ((1.0 - b1) * g).abs()) + (1.0 - b1) * e_g;
    let e_v = gamma(4) * v + (1.0 - b2) * (2.0 * g.abs() * e_g + e_g * e_g);
    let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
    let den = (v / bc2).sqrt() + eps;
    // sqrt, the division by the rounded sqrt(bc₂) (two roundings), the add.
    let rel_den = e_v / (2.0 * v) + gamma(4);
    let step = lr / bc1;
    let upd = step * m / den;
    // fl(lr/bc₁), the product, the quotient.
    let e_upd = step * e_m / den + upd.abs() * (rel_den + gamma(3));
    let w1 = w - upd - lr * decoupled * w;
    // lr·λ·w (two roundings) and the two subtractions.
    let e_w = e_upd + gamma(4) * (w.abs() + upd.abs() + (lr * decoupled * w).abs() + w1.abs());
    [e_w, e_m, e_v]
}

/// `|got - want| ≤ tol` elementwise, naming the case, tensor and worst element.
fn close_all(case: &str, key: &str, got: &[f32], want: &[f64], tol: &[f64]) {
    assert_eq!(got.len(), want.len(), "{case}: {key}: lengths");
    let worst = (0..got.len())
        .map(|i| ((got[i] as f64 - want[i]).abs() / tol[i].max(f64::MIN_POSITIVE), i))
        .fold((0.0, 0), |a, b| if b.0 > a.0 || b.0.is_nan() { b } else { a });
    let i = worst.1;
    assert!(
        worst.0 <= 1.0,
        "{case}: {key}[{i}]: mixrank {:e} vs PyTorch {:e}: |diff| {:e} is {:.3e}× the bound {:e}",
        got[i],
        want[i],
        (got[i] as f64 - want[i]).abs(),
        worst.0,
        tol[i]
    );
}

/// The bound is far below the update it checks, so a wrong update can not hide in it.
fn assert_meaningful(case: &str, key: &str, before: &[f32], after: &[f64], tol: &[f64]) {
    let moved = before.iter().zip(after).map(|(&b, &a)| (a - b as f64).abs()).fold(0.0, f64::max);
    let loosest = tol.iter().cloned().fold(0.0, f64::max);
    assert!(loosest <= 1e-3 * moved, "{case}: {key}: bound {loosest:e} vs largest update {moved:e}");
}

/// Adam (L2) and AdamW (decoupled, clipped) one step from stored moments at step 3, on
/// `Mlp 4 → [3] LN → 2`, against `torch.optim.Adam`/`AdamW`.
#[test]
fn golden_adam_and_adamw_steps() {
    for (name, decoupled) in [("adam", false), ("adamw", true)] {
        let g = Golden::load(name);
        let h = g.f32("hyper");
        let (lr, decay, clip) = (h[0], h[4], h[5]);
        let hyper = [h[0] as f64, h[1] as f64, h[2] as f64, h[3] as f64];
        let ops = CpuOps::new();
        let mut mlp = MlpConfig::new(4, &[3]).with_layer_norm(true).with_output(2).init(&ops, 1, &mut rng(0)).unwrap();
        load_params(&ops, &mut mlp, &g);
        let (mut m0, mut v0, mut names) = (Vec::new(), Vec::new(), Vec::new());
        mlp.params(&mut |name, p| {
            p.grad = g.f32(&format!("grad.{name}"));
            m0.push(g.f32(&format!("m0.{name}")));
            v0.push(g.f32(&format!("v0.{name}")));
            names.push((name.to_string(), p.value.clone(), p.decay));
        });
        let config = AdamConfig {
            beta1: h[1],
            beta2: h[2],
            eps: h[3],
            weight_decay: if decoupled { WeightDecay::Decoupled(decay) } else { WeightDecay::L2(decay) },
            clip_norm: if clip > 0.0 { Some(clip) } else { None },
        };
        let mut adam = Adam::new(config, &ops, &mut mlp).unwrap();
        adam.set_state(&ops, 3, m0.clone(), v0.clone()).unwrap();
        adam.step(&ops, &mut mlp, lr).unwrap();
        let stats = adam.stats(&ops).unwrap();
        let norm = g.f64("grad_norm")[0];
        // Σg² of f32 values in f64: relative error below n·2⁻⁵³.
        assert!((stats.grad_norm - norm).abs() <= 64.0 * f64::EPSILON * norm, "{name}: grad norm {}", stats.grad_norm);
        let cs = stats.clip_scale as f32;
        if clip > 0.0 {
            assert!(cs < 1.0, "{name}: the case is meant to clip (norm {norm}, max {clip})");
        }
        let mut k = 0;
        mlp.params(&mut |pname, p| {
            let (_, w0, dec) = &names[k];
            let grad = g.f32(&format!("grad.{pname}"));
            let (l2, dw) = match (decoupled, *dec) {
                (false, true) => (decay as f64, 0.0),
                (true, true) => (0.0, decay as f64),
                _ => (0.0, 0.0),
            };
            let mut tols = [Vec::new(), Vec::new(), Vec::new()];
            for j in 0..p.len() {
                let w = w0[j] as f64;
                let gc = grad[j] as f64 * cs as f64;
                let ge = gc + l2 * w;
                // g·fl(cs) and +λw: two roundings of partial results below |g·cs| + |λw|.
                let e_g = gamma(2) * (gc.abs() + (l2 * w).abs());
                let b = adam_bound(w, ge, e_g, m0[k][j] as f64, v0[k][j] as f64, hyper, 4, dw);
                for (t, e) in tols.iter_mut().zip(b) {
                    t.push(e);
                }
            }
            let want_w = g.f64(&format!("value.{pname}"));
            close_all(name, &format!("value.{pname}"), &p.value, &want_w, &tols[0]);
            assert_meaningful(name, &format!("value.{pname}"), w0, &want_w, &tols[0]);
            let (m, v) = adam.moments(&ops, k).unwrap();
            close_all(name, &format!("m.{pname}"), &m, &g.f64(&format!("m.{pname}")), &tols[1]);
            close_all(name, &format!("v.{pname}"), &v, &g.f64(&format!("v.{pname}")), &tols[2]);
            k += 1;
        });
    }
}

/// Per table element: the merged gradient (features sharing the table summed) as exact
/// value and f32 rounding bound, from the [`BoundOps`] run of the embedding golden.
fn merged_table_grads(g: &Golden) -> Vec<Vec<Bounded>> {
    let (emb, _) = embedding_run(&BoundOps, g);
    (0..2)
        .map(|t| {
            let t_ = &emb.tables()[t];
            let mut acc = vec![Bounded::default(); t_.rows * t_.dim];
            for f in emb.features_of_table(t).collect::<Vec<_>>() {
                for (a, b) in acc.iter_mut().zip(dense_grad(&emb, f)) {
                    let v = a.v + b.v;
                    // The optimizer's merge adds one rounding per extra feature.
                    let e = a.e + b.e + if a.v != 0.0 { U * v.abs() } else { 0.0 };
                    *a = Bounded { v, e };
                }
            }
            acc
        })
        .collect()
}

/// Untouched rows bit-identical, touched rows within `tol`.
fn check_table(case: &str, t: usize, before: &[f32], after: &[f32], want: &[f64], tol: &[f64], grad: &[Bounded]) {
    let key = format!("value.{t}");
    close_all(case, &key, after, want, tol);
    for (i, (&a, &b)) in after.iter().zip(before).enumerate() {
        if grad[i].v == 0.0 && grad[i].e == 0.0 {
            assert_eq!(a.to_bits(), b.to_bits(), "{case}: {key}[{i}] is in an untouched row but changed");
        }
    }
    assert_meaningful(case, &key, before, want, tol);
}

/// Row-wise Adagrad, one step on the embedding golden's gradients from stored
/// accumulators. Per touched row: `s += mean(g²)` (f64 sum, rounded to f32, added in
/// f32), `w -= fl(lr / (sqrt(s) + eps))·g`.
#[test]
fn golden_rowwise_adagrad_step() {
    let (ge, g) = (Golden::load("embedding"), Golden::load("rowwise_adagrad"));
    let h = g.f32("hyper");
    let (lr, eps) = (h[0] as f64, h[1] as f64);
    let grads = merged_table_grads(&ge);
    let ops = CpuOps::new();
    let (mut emb, _) = pool().install(|| embedding_run(&ops, &ge));
    let before: Vec<Vec<f32>> = emb.tables().iter().map(|t| t.value.clone()).collect();
    let mut opt = RowWiseAdagrad::new(
        RowWiseAdagradConfig { lr: h[0], eps: h[1], ..RowWiseAdagradConfig::new(h[0]) },
        &ops,
        &emb,
    )
    .unwrap();
    for t in 0..2 {
        opt.set_accumulators(&ops, t, &g.f32(&format!("state0.{t}"))).unwrap();
    }
    opt.step(&ops, &mut emb).unwrap();
    for t in 0..2 {
        let (rows, dim) = (emb.tables()[t].rows, emb.tables()[t].dim);
        let s0 = g.f32(&format!("state0.{t}"));
        let (mut tol_w, mut tol_s) = (vec![0.0; rows * dim], vec![0.0; rows]);
        for r in 0..rows {
            let gr = &grads[t][r * dim..(r + 1) * dim];
            if gr.iter().all(|b| b.v == 0.0 && b.e == 0.0) {
                continue;
            }
            let mean_sq = gr.iter().map(|b| b.v * b.v).sum::<f64>() / dim as f64;
            let s = s0[r] as f64 + mean_sq;
            let e_s = gr.iter().map(|b| 2.0 * b.v.abs() * b.e + b.e * b.e).sum::<f64>() / dim as f64
                + U * mean_sq
                + U * s.abs();
            tol_s[r] = e_s;
            let step = lr / (s.sqrt() + eps);
            // sqrt, add, divide.
            let rel_step = e_s / (2.0 * s) + gamma(3);
            for j in 0..dim {
                let (gv, e_g) = (gr[j].v, gr[j].e);
                let w1 = before[t][r * dim + j] as f64 - step * gv;
                tol_w[r * dim + j] = step * e_g + (step * gv).abs() * (rel_step + U) + U * w1.abs();
            }
        }
        let case = "rowwise_adagrad";
        let want = g.f64(&format!("value.{t}"));
        check_table(case, t, &before[t], &emb.tables()[t].value, &want, &tol_w, &grads[t]);
        close_all(
            case,
            &format!("state.{t}"),
            &opt.accumulators(&ops, t).unwrap(),
            &g.f64(&format!("state.{t}")),
            &tol_s,
        );
    }
}

/// Lazy Adam, per-row and global-step bias correction, one step from stored state
/// (global step 5, per-row counts 0..4) on the embedding golden's gradients.
#[test]
fn golden_lazy_adam_steps() {
    let ge = Golden::load("embedding");
    let grads = merged_table_grads(&ge);
    for (name, correction) in
        [("lazy_adam_per_row", BiasCorrection::PerRow), ("lazy_adam_global", BiasCorrection::GlobalStep)]
    {
        let g = Golden::load(name);
        let h = g.f32("hyper");
        let hyper = [h[0] as f64, h[1] as f64, h[2] as f64, h[3] as f64];
        let ops = CpuOps::new();
        let (mut emb, _) = pool().install(|| embedding_run(&ops, &ge));
        let before: Vec<Vec<f32>> = emb.tables().iter().map(|t| t.value.clone()).collect();
        let config = LazyAdamConfig {
            lr: h[0],
            beta1: h[1],
            beta2: h[2],
            eps: h[3],
            bias_correction: correction,
            ..LazyAdamConfig::new(h[0])
        };
        let mut opt = LazyAdam::new(config, &ops, &emb).unwrap();
        for t in 0..2 {
            let (m0, v0, k0) = (g.f32(&format!("m0.{t}")), g.f32(&format!("v0.{t}")), g.u32(&format!("steps0.{t}")));
            opt.set_state(&ops, t, 5, &m0, &v0, &k0).unwrap();
        }
        opt.step(&ops, &mut emb).unwrap();
        assert_eq!(opt.steps(), 6, "{name}: global step");
        for t in 0..2 {
            let (rows, dim) = (emb.tables()[t].rows, emb.tables()[t].dim);
            let (m0, v0, k0) = (g.f32(&format!("m0.{t}")), g.f32(&format!("v0.{t}")), g.u32(&format!("steps0.{t}")));
            let mut tols = [vec![0.0; rows * dim], vec![0.0; rows * dim], vec![0.0; rows * dim]];
            for r in 0..rows {
                let gr = &grads[t][r * dim..(r + 1) * dim];
                if gr.iter().all(|b| b.v == 0.0 && b.e == 0.0) {
                    continue;
                }
                let k = match correction {
                    BiasCorrection::PerRow => k0[r] as i32 + 1,
                    BiasCorrection::GlobalStep => 6,
                };
                for (j, gj) in gr.iter().enumerate() {
                    let i = r * dim + j;
                    let w = before[t][i] as f64;
                    let b = adam_bound(w, gj.v, gj.e, m0[i] as f64, v0[i] as f64, hyper, k, 0.0);
                    for (tol, e) in tols.iter_mut().zip(b) {
                        tol[i] = e;
                    }
                }
            }
            let want = g.f64(&format!("value.{t}"));
            check_table(name, t, &before[t], &emb.tables()[t].value, &want, &tols[0], &grads[t]);
            let (m, v, steps) = opt.state(&ops, t).unwrap();
            close_all(name, &format!("m.{t}"), &m, &g.f64(&format!("m.{t}")), &tols[1]);
            close_all(name, &format!("v.{t}"), &v, &g.f64(&format!("v.{t}")), &tols[2]);
            assert_eq!(steps, g.u32(&format!("steps.{t}")), "{name}: row step counts of table {t}");
        }
    }
}
