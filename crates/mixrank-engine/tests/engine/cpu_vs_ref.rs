//! `CpuOps` against `RefOps` on random shapes (proptest) and on shapes large enough to
//! take the parallel paths.
//!
//! Except GEMM and the softmax normalisation, both backends run the same f32 arithmetic
//! in the same order (parallelism only splits rows or columns, never a reduction), so
//! they must agree bit for bit; any difference is a bug, not rounding.

use crate::common::*;
use mixrank_engine::reference;
use mixrank_engine::*;
use proptest::prelude::*;

fn transpose() -> impl Strategy<Value = Transpose> {
    prop_oneof![Just(Transpose::No), Just(Transpose::Yes)]
}

const SENTINEL: f32 = 12345.0;

/// Runs one GEMM on both backends and checks the forward error bound.
///
/// Tolerance: each backend's `C` is within `γ_{k+2} · (|α| Σ_p |a_ip b_pj| + |β c_ij|)` of
/// the exact result (the standard bound for a length-k dot product plus the α scale and β
/// add, `γ_n = n·u / (1 - n·u)`, `u = 2⁻²⁴`; it holds for any summation order or FMA use),
/// so the two differ by at most twice that.
#[allow(clippy::too_many_arguments)]
fn check_gemm(
    seed: u64,
    ta: Transpose,
    tb: Transpose,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
    pad: [usize; 6],
) {
    let mut r = rng(seed);
    let base = GemmSpec::new(ta, tb, m, n, k).alpha(alpha).beta(beta);
    let [ar, ac] = base.stored_a();
    let [br, bc] = base.stored_b();
    let spec = base.a_layout(pad[0], ac + pad[1]).b_layout(pad[2], bc + pad[3]).c_layout(pad[4], n + pad[5]);
    let a: Vec<f32> = uniform(&mut r, spec.a.offset + ar * spec.a.ld, -1.0, 1.0);
    let b: Vec<f32> = uniform(&mut r, spec.b.offset + br * spec.b.ld, -1.0, 1.0);
    let c_vals: Vec<f32> = uniform(&mut r, m * n, -1.0, 1.0);
    let mut c0 = vec![SENTINEL; spec.c.offset + m * spec.c.ld];
    for i in 0..m {
        for j in 0..n {
            // beta = 0 must not read C: poison it.
            c0[spec.c.offset + i * spec.c.ld + j] = if beta == 0.0 { f32::NAN } else { c_vals[i * n + j] };
        }
    }
    let (mut c_cpu, mut c_ref) = (c0.clone(), c0.clone());
    CpuOps::new().gemm(&spec, &a, &b, &mut c_cpu).unwrap();
    RefOps.gemm(&spec, &a, &b, &mut c_ref).unwrap();

    // Σ_p |a_ip b_pj| via the f64 reference on absolute values.
    let abs = |v: &[f32]| v.iter().map(|x| x.abs() as f64).collect::<Vec<f64>>();
    let mut mag = vec![0.0f64; c0.len()];
    reference::gemm(&spec.alpha(1.0).beta(0.0), &abs(&a), &abs(&b), &mut mag).unwrap();
    let g = (k + 2) as f64 * U32 / (1.0 - (k + 2) as f64 * U32);
    for idx in 0..c0.len() {
        let in_block = idx >= spec.c.offset && (idx - spec.c.offset) % spec.c.ld < n;
        if !in_block {
            assert_eq!(c_cpu[idx], SENTINEL, "gemm wrote outside C at {idx}");
            assert_eq!(c_ref[idx], SENTINEL, "reference gemm wrote outside C at {idx}");
            continue;
        }
        assert!(c_cpu[idx].is_finite() && c_ref[idx].is_finite(), "non-finite C at {idx}");
        let (i, j) = ((idx - spec.c.offset) / spec.c.ld, (idx - spec.c.offset) % spec.c.ld);
        let c_in = if beta == 0.0 { 0.0 } else { c_vals[i * n + j].abs() as f64 };
        let tol = 2.0 * g * (alpha.abs() as f64 * mag[idx] + beta.abs() as f64 * c_in);
        let d = (c_cpu[idx] as f64 - c_ref[idx] as f64).abs();
        assert!(d <= tol, "C[{i},{j}]: cpu {} ref {} (tol {tol:e})", c_cpu[idx], c_ref[idx]);
    }
}

proptest! {
    #[test]
    fn gemm_matches_reference(
        seed: u64,
        ta in transpose(),
        tb in transpose(),
        m in dim(),
        n in dim(),
        k in prop_oneof![Just(0usize), dim()],
        alpha in prop_oneof![Just(1.0f32), Just(-0.5), Just(2.0)],
        beta in prop_oneof![Just(0.0f32), Just(1.0), Just(0.7)],
        pad in proptest::array::uniform6(0usize..3),
    ) {
        check_gemm(seed, ta, tb, m, n, k, alpha, beta, pad);
    }

    #[test]
    fn bias_act_matches_reference(seed: u64, act_i in 0usize..6, rows in dim(), cols in dim(), with_bias: bool) {
        let act = ACTIVATIONS[act_i];
        check_bias_act(seed, act, Shape::new(rows, cols), with_bias);
    }

    #[test]
    fn elementwise_matches_reference(seed: u64, n in dim(), extra in 0usize..3) {
        check_elementwise(seed, n, extra);
    }

    #[test]
    fn copy_cols_matches_reference(seed: u64, rows in dim(), cols in dim(), pads in proptest::array::uniform4(0usize..4), accumulate: bool) {
        let spec = ColCopy {
            rows,
            cols,
            src_col: pads[0],
            src_ld: pads[0] + cols + pads[1],
            dst_col: pads[2],
            dst_ld: pads[2] + cols + pads[3],
            accumulate,
        };
        check_copy_cols(seed, &spec);
    }

    #[test]
    fn softmax_matches_reference(seed: u64, rows in dim(), cols in dim()) {
        check_softmax(seed, Shape::new(rows, cols));
    }

    #[test]
    fn normalize_rows_matches_reference(seed: u64, rows in dim(), cols in dim()) {
        check_normalize(seed, Shape::new(rows, cols));
    }

    #[test]
    fn layer_norm_matches_reference(seed: u64, rows in dim(), cols in dim()) {
        check_layer_norm(seed, rows, cols);
    }

    #[test]
    fn gather_scatter_match_reference(
        seed: u64,
        batch in dim(),
        dim_ in dim(),
        table_rows in prop_oneof![Just(1usize), Just(5), 1usize..200],
        pre in 0usize..5,
        post in 0usize..5,
        mean: bool,
    ) {
        let spec = GatherSpec { batch, dim: dim_, table_rows, out_cols: pre + dim_ + post, col_offset: pre };
        let pooling = if mean { Pooling::Mean } else { Pooling::Sum };
        check_gather_scatter(seed, &spec, pooling, 4);
    }

    #[test]
    fn reductions_match_reference(seed: u64, rows in dim(), cols in dim()) {
        check_reductions(seed, Shape::new(rows, cols));
    }
}

/// Inputs shared by both backends in one check (buffers, not backends, differ).
struct BiasActIn<'a> {
    act: Activation,
    shape: Shape,
    bias: Option<&'a Vec<f32>>,
    z0: &'a [f32],
    dy: &'a Vec<f32>,
    db0: &'a [f32],
}

/// `[z, y, dz, dbias, inplace]` after forward, backward and the in-place forward.
fn bias_act_outputs<B: Backend<Buf = Vec<f32>>>(ops: &B, i: &BiasActIn<'_>) -> [Vec<f32>; 5] {
    let n = i.shape.len();
    let (mut z, mut y, mut dz, mut db) = (i.z0.to_vec(), vec![0.0; n], vec![0.0; n], i.db0.to_vec());
    let mut x = i.z0.to_vec();
    ops.bias_act_forward(i.act, i.shape, i.bias, &mut z, &mut y).unwrap();
    ops.bias_act_backward(i.act, i.shape, &z, i.dy, &mut dz, Some(&mut db)).unwrap();
    ops.bias_act_inplace(i.act, i.shape, i.bias, &mut x).unwrap();
    [z, y, dz, db, x]
}

fn check_bias_act(seed: u64, act: Activation, shape: Shape, with_bias: bool) {
    let mut r = rng(seed);
    let n = shape.len();
    let z0: Vec<f32> = uniform(&mut r, n, -4.0, 4.0);
    let bias: Vec<f32> = uniform(&mut r, shape.cols, -1.0, 1.0);
    let dy: Vec<f32> = uniform(&mut r, n, -1.0, 1.0);
    let db0: Vec<f32> = uniform(&mut r, shape.cols, -1.0, 1.0);
    let input = BiasActIn { act, shape, bias: with_bias.then_some(&bias), z0: &z0, dy: &dy, db0: &db0 };
    let cpu = bias_act_outputs(&CpuOps::new(), &input);
    let rf = bias_act_outputs(&RefOps, &input);
    for (i, name) in ["z", "y", "dz", "dbias", "inplace"].iter().enumerate() {
        assert_same(name, &cpu[i], &rf[i]);
    }
    // In place must equal the two-buffer forward.
    assert_same("inplace vs y", &cpu[4], &cpu[1]);
}

/// Runs every elementwise op on `ops`, each starting from `o0`; returns the outputs.
fn elementwise_outputs<B: Backend<Buf = Vec<f32>>>(
    ops: &B,
    n: usize,
    a: &Vec<f32>,
    b: &Vec<f32>,
    g: &Vec<f32>,
    o0: &[f32],
) -> Vec<Vec<f32>> {
    let mut outs = vec![o0.to_vec(); 7];
    let [add, mul, mul_acc, da, db, scale, axpy] = outs.as_mut_slice() else { unreachable!() };
    ops.add(n, a, b, add).unwrap();
    ops.mul(n, a, b, mul).unwrap();
    ops.mul_acc(n, a, b, mul_acc).unwrap();
    ops.mul_backward(n, a, b, g, da, db).unwrap();
    ops.scale(n, -0.37, scale).unwrap();
    ops.axpy(n, 1.7, a, axpy).unwrap();
    outs
}

fn check_elementwise(seed: u64, n: usize, extra: usize) {
    let mut r = rng(seed);
    // Buffers longer than n: the tail must be left alone.
    let len = n + extra;
    let a: Vec<f32> = uniform(&mut r, len, -2.0, 2.0);
    let b: Vec<f32> = uniform(&mut r, len, -2.0, 2.0);
    let g: Vec<f32> = uniform(&mut r, len, -2.0, 2.0);
    let o0: Vec<f32> = uniform(&mut r, len, -2.0, 2.0);
    let cpu = elementwise_outputs(&CpuOps::new(), n, &a, &b, &g, &o0);
    let rf = elementwise_outputs(&RefOps, n, &a, &b, &g, &o0);
    for (c, r) in cpu.iter().zip(&rf) {
        assert_same("elementwise", c, r);
        assert_same("tail", &c[n..], &o0[n..]);
    }
    assert!(cpu[0][..n].iter().zip(&a).zip(&b).all(|((s, x), y)| *s == x + y));
    assert!(cpu[3][..n].iter().zip(&g).zip(&b).all(|((d, x), y)| *d == x * y));
}

fn check_copy_cols(seed: u64, spec: &ColCopy) {
    let mut r = rng(seed);
    let src: Vec<f32> = uniform(&mut r, spec.rows * spec.src_ld, -1.0, 1.0);
    let dst0: Vec<f32> = uniform(&mut r, spec.rows * spec.dst_ld, -1.0, 1.0);
    let (mut d1, mut d2) = (dst0.clone(), dst0.clone());
    CpuOps::new().copy_cols(spec, &src, &mut d1).unwrap();
    RefOps.copy_cols(spec, &src, &mut d2).unwrap();
    assert_same("dst", &d1, &d2);
    let changed = d1.iter().zip(&dst0).filter(|(a, b)| a != b).count();
    assert!(changed <= spec.rows * spec.cols);
}

fn check_softmax(seed: u64, shape: Shape) {
    let mut r = rng(seed);
    let x: Vec<f32> = uniform(&mut r, shape.len(), -10.0, 10.0);
    let dy: Vec<f32> = uniform(&mut r, shape.len(), -1.0, 1.0);
    let (mut y1, mut y2) = (vec![0.0; shape.len()], vec![0.0; shape.len()]);
    CpuOps::new().softmax_rows(shape, &x, &mut y1).unwrap();
    RefOps.softmax_rows(shape, &x, &mut y2).unwrap();
    // CpuOps multiplies by 1/Σ where the reference divides by Σ: two roundings instead
    // of one, so |Δ| <= 2u·y (u = 2⁻²⁴), plus one u for the rounding of y itself.
    assert_within("softmax", &to_f64(&y1), &to_f64(&y2), |i| 3.0 * U32 * y2[i].abs() as f64);
    let (mut dx1, mut dx2) = (vec![0.0; shape.len()], vec![0.0; shape.len()]);
    CpuOps::new().softmax_rows_backward(shape, &y2, &dy, &mut dx1).unwrap();
    RefOps.softmax_rows_backward(shape, &y2, &dy, &mut dx2).unwrap();
    assert_same("softmax dx", &dx1, &dx2);
}

/// Row normalisation runs the same per-row f32 arithmetic on both backends: bit-identical
/// `y`, `rnorm` and `dx`. One row in eight is zero (the `eps` path).
fn check_normalize(seed: u64, shape: Shape) {
    let mut r = rng(seed);
    let mut x: Vec<f32> = uniform(&mut r, shape.len(), -3.0, 3.0);
    for row in (0..shape.rows).step_by(8) {
        x[row * shape.cols..(row + 1) * shape.cols].iter_mut().for_each(|v| *v = 0.0);
    }
    let dy: Vec<f32> = uniform(&mut r, shape.len(), -1.0, 1.0);
    let n = shape.len();
    let (mut y1, mut y2) = (vec![SENTINEL; n], vec![SENTINEL; n]);
    let (mut s1, mut s2) = (vec![SENTINEL; shape.rows], vec![SENTINEL; shape.rows]);
    CpuOps::new().normalize_rows(shape, 1e-12, &x, &mut y1, &mut s1).unwrap();
    RefOps.normalize_rows(shape, 1e-12, &x, &mut y2, &mut s2).unwrap();
    assert_same("normalize y", &y1, &y2);
    assert_same("normalize rnorm", &s1, &s2);
    assert!(y1.iter().chain(&s1).all(|v| v.is_finite()));
    let (mut dx1, mut dx2) = (vec![SENTINEL; n], vec![SENTINEL; n]);
    CpuOps::new().normalize_rows_backward(shape, &y2, &s2, &dy, &mut dx1).unwrap();
    RefOps.normalize_rows_backward(shape, &y2, &s2, &dy, &mut dx2).unwrap();
    assert_same("normalize dx", &dx1, &dx2);
    assert!(dx1.iter().all(|v| *v != SENTINEL));
}

struct LayerNormIn {
    spec: LayerNormSpec,
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    dy: Vec<f32>,
    dg0: Vec<f32>,
    db0: Vec<f32>,
}

/// `[y, mean, rstd, dx, dgamma, dbeta]` after forward and backward.
fn layer_norm_outputs<B: Backend<Buf = Vec<f32>>>(ops: &B, i: &LayerNormIn) -> [Vec<f32>; 6] {
    let (rows, n) = (i.spec.rows, i.spec.rows * i.spec.cols);
    let (mut y, mut dx) = (vec![0.0; n], vec![0.0; n]);
    let (mut dg, mut db) = (i.dg0.clone(), i.db0.clone());
    let mut stats = NormStats { mean: vec![0.0; rows], rstd: vec![0.0; rows] };
    ops.layer_norm_forward(&i.spec, &i.x, &i.gamma, &i.beta, &mut y, &mut stats).unwrap();
    ops.layer_norm_backward(&i.spec, &i.x, &i.gamma, &stats, &i.dy, &mut dx, &mut dg, &mut db).unwrap();
    [y, stats.mean, stats.rstd, dx, dg, db]
}

fn check_layer_norm(seed: u64, rows: usize, cols: usize) {
    let mut r = rng(seed);
    let n = rows * cols;
    let input = LayerNormIn {
        spec: LayerNormSpec { rows, cols, eps: 1e-5 },
        x: uniform(&mut r, n, -3.0, 5.0),
        gamma: uniform(&mut r, cols, 0.5, 1.5),
        beta: uniform(&mut r, cols, -1.0, 1.0),
        dy: uniform(&mut r, n, -1.0, 1.0),
        dg0: uniform(&mut r, cols, -1.0, 1.0),
        db0: uniform(&mut r, cols, -1.0, 1.0),
    };
    let cpu = layer_norm_outputs(&CpuOps::new(), &input);
    let rf = layer_norm_outputs(&RefOps, &input);
    for (i, name) in ["y", "mean", "rstd", "dx", "dgamma", "dbeta"].iter().enumerate() {
        assert_same(name, &cpu[i], &rf[i]);
    }
}

fn check_gather_scatter(seed: u64, spec: &GatherSpec, pooling: Pooling, max_bag: usize) {
    let mut r = rng(seed);
    let table: Vec<f32> = uniform(&mut r, spec.table_rows * spec.dim, -1.0, 1.0);
    let out0: Vec<f32> = uniform(&mut r, spec.batch * spec.out_cols, -1.0, 1.0);
    let dout: Vec<f32> = uniform(&mut r, spec.batch * spec.out_cols, -1.0, 1.0);
    let single = ids(&mut r, spec.batch, spec.table_rows);
    let offsets = offsets(&mut r, spec.batch, max_bag);
    let bag_ids = ids(&mut r, *offsets.last().unwrap() as usize, spec.table_rows);
    let cpu = CpuOps::new();

    let (mut o1, mut o2) = (out0.clone(), out0.clone());
    cpu.gather_rows(spec, &single, &table, &mut o1).unwrap();
    RefOps.gather_rows(spec, &single, &table, &mut o2).unwrap();
    assert_same("gather_rows", &o1, &o2);
    for b in 0..spec.batch {
        for j in 0..spec.out_cols {
            let i = b * spec.out_cols + j;
            if j < spec.col_offset || j >= spec.col_offset + spec.dim {
                assert_eq!(o1[i], out0[i], "gather wrote outside its block");
            }
        }
    }
    let (mut o1, mut o2) = (out0.clone(), out0.clone());
    cpu.gather_pooled(spec, pooling, &offsets, &bag_ids, &table, &mut o1).unwrap();
    RefOps.gather_pooled(spec, pooling, &offsets, &bag_ids, &table, &mut o2).unwrap();
    assert_same("gather_pooled", &o1, &o2);

    // Start from a too-small gradient so the grow path runs too.
    let mut g1 = SparseGrad::new(&cpu, spec.dim, 1).unwrap();
    let mut g2 = SparseGrad::new(&RefOps, spec.dim, 1).unwrap();
    let compare = |g1: &SparseGrad<CpuOps>, g2: &SparseGrad<RefOps>, ids: &[u32]| {
        assert_eq!(g1.len, g2.len);
        assert_eq!(&g1.ids[..g1.len], &g2.ids[..g2.len]);
        assert_same("sparse rows", &g1.rows[..g1.len * spec.dim], &g2.rows[..g2.len * spec.dim]);
        let mut distinct = ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(&g1.ids[..g1.len], distinct.as_slice());
    };
    cpu.scatter_rows_grad(spec, &single, &dout, &mut g1).unwrap();
    RefOps.scatter_rows_grad(spec, &single, &dout, &mut g2).unwrap();
    compare(&g1, &g2, &single);
    cpu.scatter_pooled_grad(spec, pooling, &offsets, &bag_ids, &dout, &mut g1).unwrap();
    RefOps.scatter_pooled_grad(spec, pooling, &offsets, &bag_ids, &dout, &mut g2).unwrap();
    compare(&g1, &g2, &bag_ids);
}

fn check_reductions(seed: u64, shape: Shape) {
    let mut r = rng(seed);
    let x: Vec<f32> = uniform(&mut r, shape.len(), -1.0, 1.0);
    let (mut a, mut b) = (vec![0.0; shape.rows], vec![0.0; shape.rows]);
    CpuOps::new().sum_rows(shape, &x, &mut a).unwrap();
    RefOps.sum_rows(shape, &x, &mut b).unwrap();
    assert_same("sum_rows", &a, &b);
    let (mut a, mut b) = (vec![0.0; shape.cols], vec![0.0; shape.cols]);
    CpuOps::new().sum_cols(shape, &x, &mut a).unwrap();
    RefOps.sum_cols(shape, &x, &mut b).unwrap();
    assert_same("sum_cols", &a, &b);
    let n = shape.len();
    assert_eq!(CpuOps::new().sum(n, &x).unwrap(), RefOps.sum(n, &x).unwrap());
}

/// Shapes past the parallel thresholds (≥ 2^15 elements; GEMMs with m·n·k ≥ 2^20), where CpuOps splits rows or
/// columns across threads, run under a 1-thread and a 3-thread pool: both must match
/// the reference bit for bit (GEMM within its bound), i.e. results do not depend on the
/// thread count.
#[test]
fn large_shapes_take_parallel_paths_and_match_reference() {
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            check_gemm(1, Transpose::No, Transpose::Yes, 300, 200, 160, 1.0, 1.0, [1, 2, 0, 3, 5, 1]);
            check_gemm(2, Transpose::Yes, Transpose::No, 129, 257, 300, 0.5, 0.0, [0; 6]);
            for act in ACTIVATIONS {
                check_bias_act(3, act, Shape::new(700, 67), true);
            }
            check_elementwise(4, 100_003, 2);
            let spec =
                ColCopy { rows: 1000, cols: 40, src_ld: 50, src_col: 7, dst_ld: 64, dst_col: 3, accumulate: true };
            check_copy_cols(5, &spec);
            check_softmax(6, Shape::new(2000, 33));
            check_layer_norm(7, 1500, 65);
            check_normalize(11, Shape::new(1500, 33));
            let spec = GatherSpec { batch: 4099, dim: 16, table_rows: 1000, out_cols: 40, col_offset: 9 };
            check_gather_scatter(8, &spec, Pooling::Mean, 6);
            check_gather_scatter(9, &spec, Pooling::Sum, 3);
            // Every width the CPU lookup copies as a fixed-size row (and one beside them).
            for (i, dim) in [8, 16, 32, 64, 24].into_iter().enumerate() {
                let spec = GatherSpec { batch: 3000, dim, table_rows: 700, out_cols: dim + 13, col_offset: 5 };
                check_gather_scatter(20 + i as u64, &spec, Pooling::Sum, 2);
            }
            check_reductions(10, Shape::new(1024, 100));
        });
    }
}

#[test]
fn both_backends_reject_the_same_bad_calls() {
    let spec = GatherSpec { batch: 2, dim: 2, table_rows: 3, out_cols: 2, col_offset: 0 };
    let table = vec![0.0f32; 6];
    let ids = vec![0u32, 3];
    let (mut o1, mut o2) = (vec![0.0f32; 4], vec![0.0f32; 4]);
    let e1 = CpuOps::new().gather_rows(&spec, &ids, &table, &mut o1).unwrap_err();
    let e2 = RefOps.gather_rows(&spec, &ids, &table, &mut o2).unwrap_err();
    assert_eq!(e1, e2);
    assert_eq!(e1, EngineError::IdOutOfRange { op: "gather_rows", id: 3, position: 1, rows: 3 });

    let x = vec![0.0f32; 5];
    let mut y = vec![0.0f32; 6];
    let e = CpuOps::new().softmax_rows(Shape::new(2, 3), &x, &mut y).unwrap_err();
    assert_eq!(e.to_string(), "softmax_rows: x holds 5 elements but shape [2, 3] needs 6");
    assert_eq!(e, RefOps.softmax_rows(Shape::new(2, 3), &x, &mut y).unwrap_err());

    let mut rn = vec![0.0f32; 1];
    let e = CpuOps::new().normalize_rows(Shape::new(2, 3), 0.0, &y, &mut y.clone(), &mut rn).unwrap_err();
    assert_eq!(e.to_string(), "normalize_rows: rnorm holds 1 elements but shape [2] needs 2");
    assert_eq!(e, RefOps.normalize_rows(Shape::new(2, 3), 0.0, &y, &mut y.clone(), &mut rn).unwrap_err());
    let mut rn = vec![0.0f32; 2];
    let e = CpuOps::new().normalize_rows(Shape::new(2, 3), f32::NAN, &y, &mut y.clone(), &mut rn).unwrap_err();
    assert_eq!(e.to_string(), "normalize_rows: eps must be a non-negative number");
    assert_eq!(e, RefOps.normalize_rows(Shape::new(2, 3), f32::NAN, &y, &mut y.clone(), &mut rn).unwrap_err());
    let e = CpuOps::new().normalize_rows_backward(Shape::new(2, 3), &y, &rn, &x, &mut y.clone()).unwrap_err();
    assert_eq!(e.to_string(), "normalize_rows_backward: dy holds 5 elements but shape [2, 3] needs 6");
    assert_eq!(e, RefOps.normalize_rows_backward(Shape::new(2, 3), &y, &rn, &x, &mut y.clone()).unwrap_err());
}
