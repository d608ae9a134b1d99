//! The CUDA backend against the reference backend (`RefOps`), op by op, at tiny shapes
//! (1, 3, 17, 40: the awkward sizes) and at a production shape (4096 × 1024).
//!
//! Every test needs an NVIDIA GPU and is ignored otherwise; `bench/gpu_check.sh` runs
//! them with `--include-ignored`. Bounds: ops whose kernels run the reference's
//! arithmetic in the reference's order with correctly rounded operations only
//! (elementwise, copies, gathers, sparse-gradient rows and their merge, block products,
//! column sums, layer norm's parameter gradients, masks, lazy Adam) must match bit for bit
//! (the kernels are compiled with `--fmad=false`); ops that reduce with a tree, or call
//! CUDA's `expf`/`tanhf`/`log1pf` (within 2 ulp, glibc's within 1), get a bound derived
//! from the length of the sum (`k·u·Σ|terms|`, u = 2⁻²⁴) or from the transcendental's
//! ulps carried through the formula.

use cudarc::driver::CudaSlice;
use mixrank_cuda::{CudaOps, GemmPath};
use mixrank_engine::mask::MASKED;
use mixrank_engine::{
    round_bf16, Activation, AdamSpec, Backend, BlockShape, ColCopy, CpuOps, EngineError, GatherSpec, GemmOperands,
    GemmSpec, GradWrite, GroupSpec, LayerNormSpec, LazyAdamSpec, LossInput, NormStats, PairSpec, Pooling, RefOps,
    RowAdagradSpec, Shape, SparseGrad, SparseRows, TableShape, Transpose, NORM_ACC_LEN,
};

/// Unit roundoff of f32.
const U: f64 = 1.0 / (1u64 << 24) as f64;
const ACTIVATIONS: [Activation; 6] = [
    Activation::Identity,
    Activation::Relu,
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::GeluTanh,
    Activation::Silu,
];
/// Tiny shapes, then the production shape.
const SHAPES: [(usize, usize); 6] = [(1, 1), (3, 17), (17, 3), (5, 40), (40, 1), (4096, 1024)];

/// Whether the suite runs on `emu/run.sh`'s host emulation (slow: production shapes are
/// left out).
fn emulated() -> bool {
    std::env::var_os("MIXRANK_CUDA_EMULATED").is_some()
}

/// Whether a case of `work` elements runs: every case on a GPU, small ones emulated.
fn keep(work: usize) -> bool {
    !emulated() || work <= 300_000
}

fn gpu() -> CudaOps {
    CudaOps::new(0).unwrap_or_else(|e| panic!("{e}"))
}

/// SplitMix64: deterministic inputs without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mixrank_engine::mask::mix(self.0)
    }
    fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32(lo, hi)).collect()
    }
    fn below(&mut self, n: usize) -> u32 {
        (self.next() % n as u64) as u32
    }
    fn ids(&mut self, n: usize, rows: usize) -> Vec<u32> {
        (0..n).map(|_| self.below(rows)).collect()
    }
    /// CSR offsets of `batch` bags of 0..=max_bag ids.
    fn offsets(&mut self, batch: usize, max_bag: usize) -> Vec<u32> {
        let mut o = vec![0u32];
        for _ in 0..batch {
            let len = self.below(max_bag + 1);
            o.push(o.last().unwrap() + len);
        }
        o
    }
}

fn up(g: &CudaOps, x: &[f32]) -> CudaSlice<f32> {
    g.upload(x).unwrap()
}

fn up_ids(g: &CudaOps, x: &[u32]) -> CudaSlice<u32> {
    g.upload_ids(x).unwrap()
}

fn down(g: &CudaOps, b: &CudaSlice<f32>) -> Vec<f32> {
    let mut h = vec![0f32; g.len(b)];
    g.read(b, &mut h).unwrap();
    h
}

fn down_ids(g: &CudaOps, b: &CudaSlice<u32>, n: usize) -> Vec<u32> {
    let mut h = vec![0u32; n];
    g.read_ids(b, &mut h).unwrap();
    h
}

/// Bit-for-bit equality (NaN equal to NaN, +0 equal to −0).
fn assert_same(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (x, y)) in got.iter().zip(want).enumerate() {
        assert!(x == y || (x.is_nan() && y.is_nan()), "{what}[{i}]: cuda {x} vs reference {y}");
    }
}

/// `|got − want| <= tol(i)` elementwise.
fn assert_within(what: &str, got: &[f32], want: &[f32], tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0.0f64, 0usize);
    for (i, (x, y)) in got.iter().zip(want).enumerate() {
        let (d, t) = ((*x as f64 - *y as f64).abs(), tol(i));
        assert!(d <= t || (x.is_nan() && y.is_nan()), "{what}[{i}]: cuda {x} vs reference {y} (|d| {d:e} > tol {t:e})");
        if t > 0.0 && d / t > worst.0 {
            worst = (d / t, i);
        }
    }
    eprintln!("{what}: {} elements, worst |d|/tol {:.3} at {}", got.len(), worst.0, worst.1);
}

/// `k` ulps of the reference value plus `abs`.
fn ulps(want: &[f32], k: f64, abs: f64) -> impl Fn(usize) -> f64 + '_ {
    move |i| k * U * (want[i] as f64).abs() + abs
}

/// Per-row bound of a row reduction: `(cols + extra)·u·(|want[i]| + scale[row])`.
fn row_bound<'a>(want: &'a [f32], cols: usize, extra: f64, scale: &'a [f64]) -> impl Fn(usize) -> f64 + 'a {
    move |i| (cols as f64 + extra) * U * ((want[i] as f64).abs() + scale[i / cols.max(1)])
}

/// Max |x| of each row.
fn row_max_abs(x: &[f32], cols: usize) -> Vec<f64> {
    x.chunks(cols.max(1)).map(|r| r.iter().fold(0f64, |m, v| m.max(v.abs() as f64))).collect()
}

// ---- memory ---------------------------------------------------------------------------

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn memory_round_trips_and_prefix_semantics() {
    let g = gpu();
    eprintln!("device: {}", g.describe());
    let x: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 3.0).collect();
    let mut b = up(&g, &x);
    assert_eq!(g.len(&b), 1000);
    assert_same("upload/read", &down(&g, &b), &x);
    g.write(&[7.0, 8.0], &mut b).unwrap();
    let mut want = x.clone();
    want[..2].copy_from_slice(&[7.0, 8.0]);
    assert_same("write prefix", &down(&g, &b), &want);
    g.fill(10, -1.5, &mut b).unwrap();
    want[..10].fill(-1.5);
    assert_same("fill prefix", &down(&g, &b), &want);
    let mut head = [0f32; 3];
    g.read(&b, &mut head).unwrap();
    assert_same("read prefix", &head, &want[..3]);
    assert!(down(&g, &g.alloc(77).unwrap()).iter().all(|&v| v == 0.0));
    assert_eq!(g.len(&g.alloc(0).unwrap()), 0);
    let ids: Vec<u32> = (0..500).map(|i| i * 7).collect();
    let mut ib = up_ids(&g, &ids);
    assert_eq!(down_ids(&g, &ib, 500), ids);
    g.write_ids(&[9, 9], &mut ib).unwrap();
    assert_eq!(down_ids(&g, &ib, 3), vec![9, 9, 14]);
    assert_eq!(g.ids_len(&ib), 500);
    // Too short: an error, as on every backend, never a panic.
    let mut small = g.alloc(2).unwrap();
    let e = g.write(&[1.0, 2.0, 3.0], &mut small).unwrap_err();
    assert_eq!(e, RefOps.write(&[1.0, 2.0, 3.0], &mut vec![0.0; 2]).unwrap_err());
    let e = g.fill(3, 0.0, &mut small).unwrap_err();
    assert!(matches!(e, EngineError::BufferTooSmall { .. }), "{e}");
}

// ---- GEMM -----------------------------------------------------------------------------

fn check_gemm(g: &CudaOps, rng: &mut Rng, spec: GemmSpec) {
    let exact = g.gemm_path() == GemmPath::Kernel;
    const SENTINEL: f32 = 12345.0;
    let [ar, ac] = spec.stored_a();
    let [br, bc] = spec.stored_b();
    let need = |rows: usize, cols: usize, l: mixrank_engine::MatLayout| {
        if rows == 0 || cols == 0 {
            l.offset
        } else {
            l.offset + (rows - 1) * l.ld.max(cols) + cols
        }
    };
    let a = rng.vec(need(ar, ac, spec.a) + 2, -1.0, 1.0);
    let b = rng.vec(need(br, bc, spec.b) + 2, -1.0, 1.0);
    let mut c0 = vec![SENTINEL; need(spec.m, spec.n, spec.c) + 2];
    for i in 0..spec.m {
        for j in 0..spec.n {
            c0[spec.c.offset + i * spec.c.ld + j] = rng.f32(-1.0, 1.0);
        }
    }
    // bf16 operands (mixed-precision training): the reference is the f32 GEMM of the
    // operands rounded to bf16 (`mixrank_engine::round_bf16`, ties to even).
    let bf16 = g.operands() == GemmOperands::Bf16;
    let round = |v: &[f32]| v.iter().map(|&x| if bf16 { round_bf16(x) } else { x }).collect::<Vec<f32>>();
    let (ra, rb) = (round(&a), round(&b));
    let mut want = c0.clone();
    RefOps.gemm(&spec, &ra, &rb, &mut want).unwrap();
    let mut cg = up(g, &c0);
    g.gemm(&spec, &up(g, &a), &up(g, &b), &mut cg).unwrap();
    let got = down(g, &cg);
    // |error| <= 2k·u·(|alpha|·Σ|a||b| + |beta|·|c|): each side's error is at most
    // k·u·Σ|terms| (plus the scaling), so their difference at most twice that.
    let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
    let mut scale = abs(&c0);
    let abs_spec = spec.alpha(spec.alpha.abs()).beta(spec.beta.abs());
    CpuOps::new().gemm(&abs_spec, &abs(&ra), &abs(&rb), &mut scale).unwrap();
    let k = spec.k as f64;
    let what = format!(
        "gemm {:?} {:?} {:?}{:?} m{} n{} k{}",
        g.gemm_path(),
        g.operands(),
        spec.trans_a,
        spec.trans_b,
        spec.m,
        spec.n,
        spec.k
    );
    if exact {
        // The tiled kernel is the reference's sequential dot product.
        assert_same(&what, &got, &want);
        return;
    }
    assert_within(&what, &got, &want, |i| {
        if c0[i] == SENTINEL && want[i] == SENTINEL {
            0.0
        } else {
            2.0 * (k + 2.0) * U * scale[i] as f64 + 1e-30
        }
    });
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gemm_matches_reference_in_every_transpose_with_offsets_and_strides() {
    check_gemms(gpu());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn the_tiled_gemm_kernel_matches_reference_bit_for_bit() {
    check_gemms(gpu().with_gemm_path(GemmPath::Kernel).unwrap());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn bf16_operand_gemms_are_the_gemms_of_the_rounded_operands() {
    // cuBLAS within the summation bound; the tiled kernel bit for bit.
    check_gemms(gpu().with_gemm_operands(GemmOperands::Bf16));
    check_gemms(gpu().with_gemm_path(GemmPath::Kernel).unwrap().with_gemm_operands(GemmOperands::Bf16));
}

fn check_gemms(g: CudaOps) {
    eprintln!("{}", g.describe());
    let mut rng = Rng(1);
    for ta in [Transpose::No, Transpose::Yes] {
        for tb in [Transpose::No, Transpose::Yes] {
            for (m, n, k) in [(1, 1, 1), (3, 17, 5), (17, 3, 40), (1, 40, 3), (40, 1, 17), (5, 7, 0)] {
                check_gemm(&g, &mut rng, GemmSpec::new(ta, tb, m, n, k));
                // Offsets, padded strides, alpha and beta.
                let mut s = GemmSpec::new(ta, tb, m, n, k).alpha(-0.75).beta(0.5);
                let [_, ac] = s.stored_a();
                let [_, bc] = s.stored_b();
                s = s.a_layout(3, ac + 2).b_layout(1, bc + 5).c_layout(2, n + 3);
                check_gemm(&g, &mut rng, s);
            }
        }
    }
    // beta = 0: C is not read, so NaN in it does not propagate.
    let spec = GemmSpec::nn(2, 2, 2);
    let mut c = up(&g, &[f32::NAN; 4]);
    g.gemm(&spec, &up(&g, &[1.0, 2.0, 3.0, 4.0]), &up(&g, &[1.0, 0.0, 0.0, 1.0]), &mut c).unwrap();
    assert_same("beta = 0 ignores C", &down(&g, &c), &[1.0, 2.0, 3.0, 4.0]);
    // Production shapes: a Linear layer's forward and both backward products.
    if emulated() {
        return;
    }
    let (batch, d_in, d_out) = (4096, 1024, 256);
    check_gemm(&g, &mut rng, GemmSpec::nn(batch, d_out, d_in));
    check_gemm(&g, &mut rng, GemmSpec::new(Transpose::No, Transpose::Yes, batch, d_in, d_out));
    check_gemm(&g, &mut rng, GemmSpec::new(Transpose::Yes, Transpose::No, d_in, d_out, batch).beta(1.0));
}

// ---- bias + activation, elementwise ---------------------------------------------------

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn bias_act_matches_reference() {
    let g = gpu();
    let mut rng = Rng(2);
    for (rows, cols) in SHAPES.into_iter().filter(|&(r, c)| keep(r * c)) {
        let shape = Shape::new(rows, cols);
        for act in ACTIVATIONS {
            for with_bias in [false, true] {
                let z0 = rng.vec(shape.len(), -4.0, 4.0);
                let bias = rng.vec(cols, -1.0, 1.0);
                let dy = rng.vec(shape.len(), -1.0, 1.0);
                let db0 = rng.vec(cols, -1.0, 1.0);
                let rb = with_bias.then_some(&bias);
                let (mut rz, mut ry) = (z0.clone(), vec![0.0; shape.len()]);
                RefOps.bias_act_forward(act, shape, rb, &mut rz, &mut ry).unwrap();
                let mut rx = z0.clone();
                RefOps.bias_act_inplace(act, shape, rb, &mut rx).unwrap();
                let (mut rdz, mut rdb) = (vec![0.0; shape.len()], db0.clone());
                RefOps.bias_act_backward(act, shape, &rz, &dy, &mut rdz, Some(&mut rdb)).unwrap();

                let gb = up(&g, &bias);
                let gbias = with_bias.then_some(&gb);
                let (mut gz, mut gy) = (up(&g, &z0), g.alloc(shape.len()).unwrap());
                g.bias_act_forward(act, shape, gbias, &mut gz, &mut gy).unwrap();
                let mut gx = up(&g, &z0);
                g.bias_act_inplace(act, shape, gbias, &mut gx).unwrap();
                let (mut gdz, mut gdb) = (g.alloc(shape.len()).unwrap(), up(&g, &db0));
                // The backward takes the reference's z so it tests the backward alone.
                g.bias_act_backward(act, shape, &up(&g, &rz), &up(&g, &dy), &mut gdz, Some(&mut gdb)).unwrap();

                let what = format!("{act:?} bias={with_bias} [{rows}, {cols}]");
                assert_same(&format!("{what} z"), &down(&g, &gz), &rz);
                // expf / tanhf: CUDA's are within 2 ulp, glibc's within 1. An ulp of tanh
                // moves GELU's `z/2·(1 + t)` by |z|/2 ulps of 1, so the bound is absolute in z
                // (and `1 − t²`, GELU's and SiLU's derivatives likewise, with |z|·3 for GELU's
                // inner derivative).
                let (y, x, dz) = (down(&g, &gy), down(&g, &gx), down(&g, &gdz));
                assert_within(&format!("{what} y"), &y, &ry, |i| 16.0 * U * (ry[i].abs() + rz[i].abs()) as f64);
                assert_within(&format!("{what} inplace"), &x, &rx, |i| 16.0 * U * (rx[i].abs() + rz[i].abs()) as f64);
                let dzb: Vec<f32> = (0..dy.len()).map(|i| 16.0 * dy[i].abs() * (2.0 + 3.0 * rz[i].abs())).collect();
                assert_within(&format!("{what} dz"), &dz, &rdz, |i| U * dzb[i] as f64 + 1e-37);
                // dbias sums the device's dz in the reference's order: bounded by dz's error.
                let db = down(&g, &gdb);
                let col_err: Vec<f64> =
                    (0..cols).map(|c| (0..rows).map(|r| U * dzb[r * cols + c] as f64).sum::<f64>()).collect();
                let sum_abs: Vec<f64> =
                    (0..cols).map(|c| (0..rows).map(|r| rdz[r * cols + c].abs() as f64).sum::<f64>()).collect();
                assert_within(&format!("{what} dbias"), &db, &rdb, |c| {
                    col_err[c] + (rows as f64 + 1.0) * U * (sum_abs[c] + db0[c].abs() as f64)
                });
            }
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn elementwise_ops_match_reference_bit_for_bit() {
    let g = gpu();
    let mut rng = Rng(3);
    for n in [1usize, 3, 17, 40, 4096 * 1024].into_iter().filter(|&n| keep(n)) {
        let (a, b, d, o) = (
            rng.vec(n + 2, -2.0, 2.0),
            rng.vec(n + 2, -2.0, 2.0),
            rng.vec(n + 2, -1.0, 1.0),
            rng.vec(n + 2, -1.0, 1.0),
        );
        let (ga, gb, gd) = (up(&g, &a), up(&g, &b), up(&g, &d));
        let check = |what: &str, gout: &CudaSlice<f32>, want: &[f32]| {
            assert_same(&format!("{what} n={n}"), &down(&g, gout), want)
        };
        let (mut r, mut go) = (o.clone(), up(&g, &o));
        RefOps.add(n, &a, &b, &mut r).unwrap();
        g.add(n, &ga, &gb, &mut go).unwrap();
        check("add", &go, &r);
        let (mut r, mut go) = (o.clone(), up(&g, &o));
        RefOps.mul(n, &a, &b, &mut r).unwrap();
        g.mul(n, &ga, &gb, &mut go).unwrap();
        check("mul", &go, &r);
        let (mut r, mut go) = (o.clone(), up(&g, &o));
        RefOps.mul_acc(n, &a, &b, &mut r).unwrap();
        g.mul_acc(n, &ga, &gb, &mut go).unwrap();
        check("mul_acc", &go, &r);
        let (mut ra, mut rb) = (o.clone(), o.clone());
        let (mut gda, mut gdb) = (up(&g, &o), up(&g, &o));
        RefOps.mul_backward(n, &a, &b, &d, &mut ra, &mut rb).unwrap();
        g.mul_backward(n, &ga, &gb, &gd, &mut gda, &mut gdb).unwrap();
        check("mul_backward da", &gda, &ra);
        check("mul_backward db", &gdb, &rb);
        let (mut r, mut go) = (o.clone(), up(&g, &o));
        RefOps.scale(n, -0.3, &mut r).unwrap();
        g.scale(n, -0.3, &mut go).unwrap();
        check("scale", &go, &r);
        let (mut r, mut go) = (o.clone(), up(&g, &o));
        RefOps.axpy(n, 0.7, &a, &mut r).unwrap();
        g.axpy(n, 0.7, &ga, &mut go).unwrap();
        check("axpy", &go, &r);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn copy_cols_matches_reference_bit_for_bit() {
    let g = gpu();
    let mut rng = Rng(4);
    for (rows, cols) in SHAPES.into_iter().filter(|&(r, c)| keep(r * c)) {
        for accumulate in [false, true] {
            let spec = ColCopy { rows, cols, src_ld: cols + 3, src_col: 2, dst_ld: cols + 5, dst_col: 1, accumulate };
            let src = rng.vec(rows * spec.src_ld, -1.0, 1.0);
            let dst0 = rng.vec(rows * spec.dst_ld, -1.0, 1.0);
            let mut want = dst0.clone();
            RefOps.copy_cols(&spec, &src, &mut want).unwrap();
            let mut gd = up(&g, &dst0);
            g.copy_cols(&spec, &up(&g, &src), &mut gd).unwrap();
            assert_same(&format!("copy_cols [{rows}, {cols}] acc={accumulate}"), &down(&g, &gd), &want);
        }
    }
}

// ---- softmax, normalisation, layer norm -----------------------------------------------

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn softmax_and_normalize_match_reference() {
    let g = gpu();
    let mut rng = Rng(5);
    for (rows, cols) in SHAPES.into_iter().filter(|&(r, c)| keep(r * c)) {
        let shape = Shape::new(rows, cols);
        let x = rng.vec(shape.len(), -5.0, 5.0);
        let dy = rng.vec(shape.len(), -1.0, 1.0);
        let mut ry = vec![0.0; shape.len()];
        RefOps.softmax_rows(shape, &x, &mut ry).unwrap();
        let mut gy = g.alloc(shape.len()).unwrap();
        g.softmax_rows(shape, &up(&g, &x), &mut gy).unwrap();
        let none = vec![0.0; rows];
        assert_within(&format!("softmax [{rows}, {cols}]"), &down(&g, &gy), &ry, row_bound(&ry, cols, 8.0, &none));
        let mut rdx = vec![0.0; shape.len()];
        RefOps.softmax_rows_backward(shape, &ry, &dy, &mut rdx).unwrap();
        let mut gdx = g.alloc(shape.len()).unwrap();
        g.softmax_rows_backward(shape, &up(&g, &ry), &up(&g, &dy), &mut gdx).unwrap();
        // dx = y·(dy − ⟨dy, y⟩): the dot's error times y.
        let dots: Vec<f64> = (0..rows)
            .map(|r| (0..cols).map(|c| (dy[r * cols + c] * ry[r * cols + c]).abs() as f64).sum::<f64>() + 1.0)
            .collect();
        let ymax = row_max_abs(&ry, cols);
        let scale: Vec<f64> = dots.iter().zip(&ymax).map(|(d, y)| d * y).collect();
        assert_within(
            &format!("softmax dx [{rows}, {cols}]"),
            &down(&g, &gdx),
            &rdx,
            row_bound(&rdx, cols, 8.0, &scale),
        );

        let (mut ry, mut rs) = (vec![0.0; shape.len()], vec![0.0; rows]);
        RefOps.normalize_rows(shape, 1e-12, &x, &mut ry, &mut rs).unwrap();
        let (mut gy, mut gs) = (g.alloc(shape.len()).unwrap(), g.alloc(rows).unwrap());
        g.normalize_rows(shape, 1e-12, &up(&g, &x), &mut gy, &mut gs).unwrap();
        assert_within(&format!("normalize rnorm [{rows}, {cols}]"), &down(&g, &gs), &rs, |i| {
            (cols as f64 + 8.0) * U * rs[i].abs() as f64
        });
        assert_within(&format!("normalize y [{rows}, {cols}]"), &down(&g, &gy), &ry, row_bound(&ry, cols, 8.0, &none));
        let mut rdx = vec![0.0; shape.len()];
        RefOps.normalize_rows_backward(shape, &ry, &rs, &dy, &mut rdx).unwrap();
        let mut gdx = g.alloc(shape.len()).unwrap();
        g.normalize_rows_backward(shape, &up(&g, &ry), &up(&g, &rs), &up(&g, &dy), &mut gdx).unwrap();
        let scale: Vec<f64> = (0..rows).map(|r| rs[r].abs() as f64 * (cols as f64 + 1.0)).collect();
        assert_within(
            &format!("normalize dx [{rows}, {cols}]"),
            &down(&g, &gdx),
            &rdx,
            row_bound(&rdx, cols, 8.0, &scale),
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn layer_norm_matches_reference() {
    let g = gpu();
    let mut rng = Rng(6);
    for (rows, cols) in SHAPES.into_iter().filter(|&(r, c)| keep(r * c)) {
        let spec = LayerNormSpec { rows, cols, eps: 1e-5 };
        let n = rows * cols;
        let (x, gamma, beta) = (rng.vec(n, -3.0, 3.0), rng.vec(cols, 0.5, 1.5), rng.vec(cols, -0.5, 0.5));
        let (dy, dg0, db0) = (rng.vec(n, -1.0, 1.0), rng.vec(cols, -1.0, 1.0), rng.vec(cols, -1.0, 1.0));
        let mut ry = vec![0.0; n];
        let mut rstats = NormStats::new(&RefOps, rows).unwrap();
        RefOps.layer_norm_forward(&spec, &x, &gamma, &beta, &mut ry, &mut rstats).unwrap();
        let (mut rdx, mut rdg, mut rdb) = (vec![0.0; n], dg0.clone(), db0.clone());
        RefOps.layer_norm_backward(&spec, &x, &gamma, &rstats, &dy, &mut rdx, &mut rdg, &mut rdb).unwrap();

        let (gx, gg, gbeta) = (up(&g, &x), up(&g, &gamma), up(&g, &beta));
        let mut gy = g.alloc(n).unwrap();
        let mut gstats = NormStats::new(&g, rows).unwrap();
        g.layer_norm_forward(&spec, &gx, &gg, &gbeta, &mut gy, &mut gstats).unwrap();
        let what = format!("layer norm [{rows}, {cols}]");
        let xmax = row_max_abs(&x, cols);
        let rstd = rstats.rstd.clone();
        assert_within(&format!("{what} mean"), &down(&g, &gstats.mean), &rstats.mean, |r| {
            (cols as f64 + 4.0) * U * xmax[r]
        });
        assert_within(&format!("{what} rstd"), &down(&g, &gstats.rstd), &rstd, |r| {
            (2.0 * cols as f64 + 8.0) * U * rstd[r] as f64
        });
        // y = x̂·γ + β with x̂ = (x − mean)·rstd: mean's and rstd's errors carried through.
        let scale: Vec<f64> = (0..rows).map(|r| 3.0 * (xmax[r] * rstd[r] as f64 * 1.5 + 0.5)).collect();
        assert_within(&format!("{what} y"), &down(&g, &gy), &ry, row_bound(&ry, cols, 8.0, &scale));
        // The backward from the reference's statistics: dx by rows (tree sums), dgamma and
        // dbeta by columns in the reference's order.
        let mut bstats = NormStats::new(&g, rows).unwrap();
        g.write(&rstats.mean, &mut bstats.mean).unwrap();
        g.write(&rstats.rstd, &mut bstats.rstd).unwrap();
        let (mut gdx, mut gdg, mut gdb) = (g.alloc(n).unwrap(), up(&g, &dg0), up(&g, &db0));
        g.layer_norm_backward(&spec, &gx, &gg, &bstats, &up(&g, &dy), &mut gdx, &mut gdg, &mut gdb).unwrap();
        let scale: Vec<f64> =
            (0..rows).map(|r| 3.0 * rstd[r] as f64 * 1.5 * (1.0 + xmax[r] * rstd[r] as f64)).collect();
        assert_within(&format!("{what} dx"), &down(&g, &gdx), &rdx, row_bound(&rdx, cols, 8.0, &scale));
        assert_same(&format!("{what} dbeta"), &down(&g, &gdb), &rdb);
        // x̂ is computed by the same expression in both: dgamma matches exactly.
        assert_same(&format!("{what} dgamma"), &down(&g, &gdg), &rdg);
    }
}

// ---- embeddings -----------------------------------------------------------------------

fn read_sparse(g: &CudaOps, s: &SparseGrad<CudaOps>) -> (Vec<u32>, Vec<f32>) {
    let ids = down_ids(g, &s.ids, s.len);
    let mut rows = vec![0f32; s.len * s.dim];
    g.read(&s.rows, &mut rows).unwrap();
    (ids, rows)
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gathers_and_sparse_gradients_match_reference_bit_for_bit() {
    let g = gpu();
    let mut rng = Rng(7);
    for (batch, dim, table_rows, max_bag) in
        [(1, 1, 1, 1), (3, 17, 5, 3), (17, 3, 40, 6), (40, 8, 3, 4), (4096, 64, 100_000, 8), (4096, 1024, 50, 2)]
            .into_iter()
            .filter(|&(b, d, t, _)| keep(b * d + t * d))
    {
        let (out_cols, col_offset) = (dim + 3, 2);
        let spec = GatherSpec { batch, dim, table_rows, out_cols, col_offset };
        let table = rng.vec(table_rows * dim, -1.0, 1.0);
        let out0 = rng.vec(batch * out_cols, -1.0, 1.0);
        let dout = rng.vec(batch * out_cols, -1.0, 1.0);
        let ids = rng.ids(batch, table_rows);
        let (gt, gdout) = (up(&g, &table), up(&g, &dout));
        let what = format!("batch {batch} dim {dim} rows {table_rows}");

        let mut want = out0.clone();
        RefOps.gather_rows(&spec, &ids, &table, &mut want).unwrap();
        let mut go = up(&g, &out0);
        g.gather_rows(&spec, &up_ids(&g, &ids), &gt, &mut go).unwrap();
        assert_same(&format!("gather_rows {what}"), &down(&g, &go), &want);

        let mut rgrad = SparseGrad::new(&RefOps, dim, 1).unwrap();
        RefOps.scatter_rows_grad(&spec, &ids, &dout, &mut rgrad).unwrap();
        let mut ggrad = SparseGrad::new(&g, dim, 1).unwrap();
        g.scatter_rows_grad(&spec, &up_ids(&g, &ids), &gdout, &mut ggrad).unwrap();
        let (gi, gr) = read_sparse(&g, &ggrad);
        assert_eq!(gi, rgrad.ids[..rgrad.len], "scatter_rows_grad ids {what}");
        assert_same(&format!("scatter_rows_grad {what}"), &gr, &rgrad.rows[..rgrad.len * dim]);

        for pooling in [Pooling::Sum, Pooling::Mean] {
            let offsets = rng.offsets(batch, max_bag);
            let bag_ids = rng.ids(*offsets.last().unwrap() as usize, table_rows);
            let (goff, gids) = (up_ids(&g, &offsets), up_ids(&g, &bag_ids));
            let mut want = out0.clone();
            RefOps.gather_pooled(&spec, pooling, &offsets, &bag_ids, &table, &mut want).unwrap();
            let mut go = up(&g, &out0);
            g.gather_pooled(&spec, pooling, &goff, &gids, &gt, &mut go).unwrap();
            assert_same(&format!("gather_pooled {pooling:?} {what}"), &down(&g, &go), &want);

            let mut rgrad = SparseGrad::new(&RefOps, dim, 1).unwrap();
            RefOps.scatter_pooled_grad(&spec, pooling, &offsets, &bag_ids, &dout, &mut rgrad).unwrap();
            let mut ggrad = SparseGrad::new(&g, dim, 1).unwrap();
            g.scatter_pooled_grad(&spec, pooling, &goff, &gids, &gdout, &mut ggrad).unwrap();
            let (gi, gr) = read_sparse(&g, &ggrad);
            assert_eq!(gi, rgrad.ids[..rgrad.len], "scatter_pooled_grad ids {pooling:?} {what}");
            assert_same(&format!("scatter_pooled_grad {pooling:?} {what}"), &gr, &rgrad.rows[..rgrad.len * dim]);
        }
    }
    // A bad id is rejected by the scatter (which reads the ids back) as by the reference.
    let spec = GatherSpec { batch: 2, dim: 1, table_rows: 3, out_cols: 1, col_offset: 0 };
    let mut grad = SparseGrad::new(&g, 1, 2).unwrap();
    let e = g.scatter_rows_grad(&spec, &up_ids(&g, &[0, 3]), &up(&g, &[1.0, 1.0]), &mut grad).unwrap_err();
    assert_eq!(e, EngineError::IdOutOfRange { op: "scatter_rows_grad", id: 3, position: 1, rows: 3 });
}

// ---- block products and reductions ------------------------------------------------------

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn block_products_and_reductions_match_reference() {
    let g = gpu();
    let mut rng = Rng(8);
    for (rows, blocks, width) in
        [(1, 1, 1), (3, 4, 17), (17, 3, 5), (4096, 16, 64)].into_iter().filter(|&(r, b, w)| keep(r * b * w))
    {
        let s = BlockShape { rows, blocks, width };
        let t = rng.vec(rows * blocks * width, -1.0, 1.0);
        let y = rng.vec(rows * width, -1.0, 1.0);
        let d = rng.vec(rows * blocks, -1.0, 1.0);
        let what = format!("[{rows}, {blocks}, {width}]");
        for accumulate in [false, true] {
            let mut want = d.clone();
            RefOps.block_dot(s, &t, &y, &mut want, accumulate).unwrap();
            let mut go = up(&g, &d);
            g.block_dot(s, &up(&g, &t), &up(&g, &y), &mut go, accumulate).unwrap();
            assert_same(&format!("block_dot {what} acc={accumulate}"), &down(&g, &go), &want);
        }
        let mut want = vec![0.0; rows * blocks * width];
        RefOps.block_outer(s, &d, &y, &mut want).unwrap();
        let mut go = g.alloc(want.len()).unwrap();
        g.block_outer(s, &up(&g, &d), &up(&g, &y), &mut go).unwrap();
        assert_same(&format!("block_outer {what}"), &down(&g, &go), &want);
        let mut want = vec![0.0; rows * width];
        RefOps.block_dot_t(s, &d, &t, &mut want).unwrap();
        let mut go = g.alloc(want.len()).unwrap();
        g.block_dot_t(s, &up(&g, &d), &up(&g, &t), &mut go).unwrap();
        assert_same(&format!("block_dot_t {what}"), &down(&g, &go), &want);
    }
    for (rows, cols) in SHAPES.into_iter().filter(|&(r, c)| keep(r * c)) {
        let shape = Shape::new(rows, cols);
        let x = rng.vec(shape.len(), -1.0, 1.0);
        let gx = up(&g, &x);
        let mut want = vec![0.0; cols];
        RefOps.sum_cols(shape, &x, &mut want).unwrap();
        let mut go = g.alloc(cols).unwrap();
        g.sum_cols(shape, &gx, &mut go).unwrap();
        assert_same(&format!("sum_cols [{rows}, {cols}]"), &down(&g, &go), &want);
        let mut want = vec![0.0; rows];
        RefOps.sum_rows(shape, &x, &mut want).unwrap();
        let mut go = g.alloc(rows).unwrap();
        g.sum_rows(shape, &gx, &mut go).unwrap();
        // Σ in another order: at most (cols + 2)·u·Σ|x| apart.
        let abs_sum: Vec<f64> = x.chunks(cols).map(|r| r.iter().map(|v| v.abs() as f64).sum()).collect();
        assert_within(&format!("sum_rows [{rows}, {cols}]"), &down(&g, &go), &want, |r| {
            (cols as f64 + 2.0) * U * abs_sum[r]
        });
        let n = shape.len();
        let (a, b) = (g.sum(n, &gx).unwrap(), RefOps.sum(n, &x).unwrap());
        assert!(((a - b) as f64).abs() <= 2.0 * U * b.abs() as f64 + 1e-12 * n as f64, "sum: {a} vs {b}");
    }
}

// ---- masks ----------------------------------------------------------------------------

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn masks_match_reference_bit_for_bit() {
    let g = gpu();
    let mut rng = Rng(9);
    for n in [1usize, 17, 4096 * 1024].into_iter().filter(|&n| keep(n)) {
        for (p, seed, step, first) in
            [(0.1f32, 1u64, 0u64, 0u64), (0.5, 7, 3, 1000), (0.0, 9, 9, 5), (0.9, u64::MAX, 1 << 40, 17)]
        {
            let mut want = vec![0.0; n];
            RefOps.dropout_mask(n, p, seed, step, first, &mut want).unwrap();
            let mut gm = g.alloc(n).unwrap();
            g.dropout_mask(n, p, seed, step, first, &mut gm).unwrap();
            assert_same(&format!("dropout n={n} p={p} seed={seed} step={step}"), &down(&g, &gm), &want);
        }
    }
    for (rows, cols) in [(1, 1), (3, 4), (17, 8), (4096, 16)].into_iter().filter(|&(r, c)| keep(r * c * 8)) {
        let shape = Shape::new(rows, cols);
        // Ties: values from a small set.
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.below(5) as f32 * 0.5).collect();
        for k in [0, 1, 2, cols, cols + 1] {
            let mut want = vec![0.0; shape.len()];
            RefOps.top_k_mask(shape, k, &x, &mut want).unwrap();
            let mut gm = g.alloc(shape.len()).unwrap();
            g.top_k_mask(shape, k, &up(&g, &x), &mut gm).unwrap();
            assert_same(&format!("top_k [{rows}, {cols}] k={k}"), &down(&g, &gm), &want);
        }
        let m0: Vec<f32> = (0..rows * cols).map(|_| if rng.below(4) == 0 { MASKED } else { 0.0 }).collect();
        for (p, first_row) in [(0.3f32, 0u64), (0.9, 12)] {
            let mut want = m0.clone();
            RefOps.gate_dropout_mask(shape, p, 11, 5, first_row, &mut want).unwrap();
            let mut gm = up(&g, &m0);
            g.gate_dropout_mask(shape, p, 11, 5, first_row, &mut gm).unwrap();
            assert_same(&format!("gate dropout [{rows}, {cols}] p={p}"), &down(&g, &gm), &want);
        }
        let slots = cols.div_ceil(2);
        let slot_of: Vec<u32> = (0..cols as u32).map(|c| c / 2).chain([slots as u32 + 1]).collect();
        let mut want = vec![0.0; rows * slot_of.len()];
        RefOps.feature_dropout_mask(rows, &slot_of, slots, 0.4, 3, 8, 7, &mut want).unwrap();
        let mut gm = g.alloc(want.len()).unwrap();
        g.feature_dropout_mask(rows, &up_ids(&g, &slot_of), slots, 0.4, 3, 8, 7, &mut gm).unwrap();
        assert_same(&format!("feature dropout [{rows}, {cols}]"), &down(&g, &gm), &want);
    }
}

// ---- optimizers -----------------------------------------------------------------------

fn adam_spec(clip_norm: Option<f32>, step: i32) -> AdamSpec {
    let (lr, beta1, beta2) = (1e-3f32, 0.9f32, 0.999f32);
    AdamSpec {
        lr,
        beta1,
        beta2,
        eps: 1e-8,
        step_size: (lr as f64 / (1.0 - (beta1 as f64).powi(step))) as f32,
        bc2_sqrt: (1.0 - (beta2 as f64).powi(step)).sqrt() as f32,
        l2: 1e-4,
        decoupled: 1e-2,
        clip_norm,
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn dense_adam_matches_reference() {
    let g = gpu();
    let mut rng = Rng(10);
    for n in [1usize, 17, 40, 4096 * 1024].into_iter().filter(|&n| keep(n)) {
        for clip in [None, Some(0.5f32), Some(1e9)] {
            let (w, gr) = (rng.vec(n, -1.0, 1.0), rng.vec(n, -1.0, 1.0));
            let (m, v) = (rng.vec(n, -0.1, 0.1), rng.vec(n, 0.0, 0.01));
            let spec = adam_spec(clip, 3);
            let mut racc = vec![0.0; NORM_ACC_LEN];
            RefOps.sq_norm_acc(n, &gr, &mut racc).unwrap();
            RefOps.sq_norm_acc(n, &w, &mut racc).unwrap();
            let (mut rw, mut rm, mut rv) = (w.clone(), m.clone(), v.clone());
            RefOps.adam_update(n, &spec, &racc, &mut rw, &gr, &mut rm, &mut rv).unwrap();

            let mut gacc = g.alloc(NORM_ACC_LEN).unwrap();
            g.sq_norm_acc(n, &up(&g, &gr), &mut gacc).unwrap();
            g.sq_norm_acc(n, &up(&g, &w), &mut gacc).unwrap();
            let (sq_g, sq_r) = (g.sq_norm_read(&gacc).unwrap(), RefOps.sq_norm_read(&racc).unwrap());
            // Two f64 sums of 2n squares in different orders.
            let bound = (2.0 * n as f64 + 2.0) * f64::EPSILON * sq_r;
            assert!((sq_g - sq_r).abs() <= bound, "sq norm {sq_g} vs {sq_r}");
            let (mut gw, mut gm, mut gv) = (up(&g, &w), up(&g, &m), up(&g, &v));
            g.adam_update(n, &spec, &gacc, &mut gw, &up(&g, &gr), &mut gm, &mut gv).unwrap();
            let what = format!("adam n={n} clip={clip:?}");
            // The clip factor may differ in its last bit (the f64 norm is summed in another
            // order): a few ulps of each moment and weight.
            assert_within(&format!("{what} m"), &down(&g, &gm), &rm, ulps(&rm, 4.0, 1e-8));
            assert_within(&format!("{what} v"), &down(&g, &gv), &rv, ulps(&rv, 4.0, 1e-9));
            assert_within(&format!("{what} w"), &down(&g, &gw), &rw, ulps(&rw, 4.0, 1e-9));
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn sparse_optimizers_and_merge_match_reference() {
    let g = gpu();
    let mut rng = Rng(11);
    for (table_rows, dim, touched) in [(1, 1, 1), (5, 3, 2), (40, 17, 40), (100_000, 64, 4096), (4096, 1024, 512)]
        .into_iter()
        .filter(|&(t, d, _)| keep(t * d))
    {
        let table = rng.vec(table_rows * dim, -1.0, 1.0);
        // Two sparse gradients with ascending distinct ids.
        let mut sparse = |k: usize| {
            let mut ids: Vec<u32> = rng.ids(k, table_rows);
            ids.sort_unstable();
            ids.dedup();
            let rows = rng.vec(ids.len() * dim, -1.0, 1.0);
            (ids, rows)
        };
        let (ia, ra) = sparse(touched);
        let (ib, rb) = sparse(touched / 2 + 1);
        let mut rout = SparseGrad::new(&RefOps, dim, 1).unwrap();
        RefOps.merge_sparse_grads(dim, (ia.len(), &ia, &ra), (ib.len(), &ib, &rb), &mut rout).unwrap();
        let (gia, gra, gib, grb) = (up_ids(&g, &ia), up(&g, &ra), up_ids(&g, &ib), up(&g, &rb));
        let mut gout = SparseGrad::new(&g, dim, 1).unwrap();
        g.merge_sparse_grads(dim, (ia.len(), &gia, &gra), (ib.len(), &gib, &grb), &mut gout).unwrap();
        let (gi, gr) = read_sparse(&g, &gout);
        let what = format!("table [{table_rows}, {dim}] touched {touched}");
        assert_eq!(gi, rout.ids[..rout.len], "merge ids {what}");
        assert_same(&format!("merge rows {what}"), &gr, &rout.rows[..rout.len * dim]);
        let (ids, rows) = (rout.ids[..rout.len].to_vec(), rout.rows[..rout.len * dim].to_vec());
        let len = ids.len();
        let shape = TableShape { rows: table_rows, dim };
        let (gids, grows) = (up_ids(&g, &ids), up(&g, &rows));

        for which in [SparseRows::Touched, SparseRows::All] {
            for weight_decay in [0.0f32, 1e-3] {
                let spec = RowAdagradSpec { lr: 0.05, eps: 1e-8, weight_decay, rows: which };
                let acc0 = rng.vec(table_rows, 0.0, 1.0);
                let (mut rt, mut racc) = (table.clone(), acc0.clone());
                RefOps.rowwise_adagrad_update(&spec, shape, len, &ids, &rows, &mut rt, &mut racc).unwrap();
                let (mut gt, mut gacc) = (up(&g, &table), up(&g, &acc0));
                g.rowwise_adagrad_update(&spec, shape, len, &gids, &grows, &mut gt, &mut gacc).unwrap();
                let w = format!("rowwise adagrad {which:?} wd={weight_decay} {what}");
                // The f64 mean of squares is summed in another order: the f32 accumulator
                // may differ by an ulp, and the step with it.
                assert_within(&format!("{w} acc"), &down(&g, &gacc), &racc, ulps(&racc, 2.0, 1e-30));
                assert_within(&format!("{w} table"), &down(&g, &gt), &rt, |i| {
                    8.0 * U * (rt[i].abs() as f64 + table[i].abs() as f64 + 1.0)
                });

                for global_step in [None, Some(7u64)] {
                    let spec = LazyAdamSpec {
                        lr: 1e-2,
                        beta1: 0.9,
                        beta2: 0.999,
                        eps: 1e-8,
                        weight_decay,
                        global_step,
                        rows: which,
                    };
                    let n = table_rows * dim;
                    let (m0, v0) = (rng.vec(n, -0.1, 0.1), rng.vec(n, 0.0, 0.01));
                    let steps0: Vec<u32> = (0..table_rows).map(|_| rng.below(5)).collect();
                    let (mut rt, mut rm, mut rv, mut rs) = (table.clone(), m0.clone(), v0.clone(), steps0.clone());
                    RefOps
                        .lazy_adam_update(&spec, shape, len, &ids, &rows, &mut rt, &mut rm, &mut rv, &mut rs)
                        .unwrap();
                    let (mut gt, mut gm, mut gv, mut gs) =
                        (up(&g, &table), up(&g, &m0), up(&g, &v0), up_ids(&g, &steps0));
                    g.lazy_adam_update(&spec, shape, len, &gids, &grows, &mut gt, &mut gm, &mut gv, &mut gs).unwrap();
                    let w = format!("lazy adam {which:?} wd={weight_decay} step={global_step:?} {what}");
                    assert_eq!(down_ids(&g, &gs, table_rows), rs, "{w} steps");
                    assert_same(&format!("{w} m"), &down(&g, &gm), &rm);
                    assert_same(&format!("{w} v"), &down(&g, &gv), &rv);
                    assert_same(&format!("{w} table"), &down(&g, &gt), &rt);
                }
            }
        }
    }
}

// ---- losses ---------------------------------------------------------------------------

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn pointwise_losses_match_reference() {
    let g = gpu();
    let mut rng = Rng(12);
    for n in [1usize, 3, 17, 40, 4096, 16384] {
        let pred = rng.vec(n, -6.0, 6.0);
        let target: Vec<f32> = (0..n).map(|_| rng.f32(0.0, 1.0)).collect();
        let weight = rng.vec(n, 0.0, 2.0);
        let mask: Vec<f32> = (0..n).map(|_| (rng.below(5) != 0) as u8 as f32).collect();
        let grad0 = rng.vec(n, -1.0, 1.0);
        let (gp, gt, gw, gm) = (up(&g, &pred), up(&g, &target), up(&g, &weight), up(&g, &mask));
        for (with_w, with_m) in [(false, false), (true, false), (false, true), (true, true)] {
            for write in [GradWrite::default(), GradWrite { scale: 0.3, accumulate: true }] {
                // The op's own weight sum, and one given by the caller.
                for (kind, weight_sum) in (0..3).flat_map(|k| [(k, None), (k, Some(n as f64))]) {
                    let rin = LossInput {
                        pred: &pred,
                        target: &target,
                        weight: with_w.then_some(&weight),
                        mask: with_m.then_some(&mask),
                        weight_sum,
                    };
                    let gin = LossInput {
                        pred: &gp,
                        target: &gt,
                        weight: with_w.then_some(&gw),
                        mask: with_m.then_some(&gm),
                        weight_sum,
                    };
                    let (mut rg, mut gg) = (grad0.clone(), up(&g, &grad0));
                    let (rl, gl) = match kind {
                        0 => (
                            RefOps.bce_with_logits(n, rin, &mut rg, write).unwrap(),
                            g.bce_with_logits(n, gin, &mut gg, write).unwrap(),
                        ),
                        1 => (RefOps.mse(n, rin, &mut rg, write).unwrap(), g.mse(n, gin, &mut gg, write).unwrap()),
                        _ => (
                            RefOps.huber(n, 0.5, rin, &mut rg, write).unwrap(),
                            g.huber(n, 0.5, gin, &mut gg, write).unwrap(),
                        ),
                    };
                    let what = format!("loss {kind} n={n} w={with_w} m={with_m} W={weight_sum:?} {write:?}");
                    assert!(((gl - rl) as f64).abs() <= 8.0 * U * rl.abs() as f64 + 1e-7, "{what}: {gl} vs {rl}");
                    // Per element: expf/log1pf within a few ulps; the scale from an f64 sum.
                    let scale = write.scale.abs() as f64 * 2.0 * 2.0 / n as f64;
                    assert_within(&what, &down(&g, &gg), &rg, |i| 8.0 * U * (rg[i].abs() as f64 + scale * 6.0));
                }
            }
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn softmax_xent_and_ranking_losses_match_reference() {
    let g = gpu();
    let mut rng = Rng(13);
    for n in [1usize, 3, 17, 512, 2048].into_iter().filter(|&n| keep(n * n)) {
        let scores = rng.vec(n * n, -5.0, 5.0);
        let weight: Vec<f32> = (0..n).map(|i| if i % 3 == 1 { 0.0 } else { rng.f32(0.5, 1.5) }).collect();
        for write in [GradWrite::default(), GradWrite { scale: 0.5, accumulate: true }] {
            let grad0 = rng.vec(n * n, -1.0, 1.0);
            let mut rg = grad0.clone();
            let rl = RefOps.softmax_xent_diag(n, &scores, &weight, &mut rg, write).unwrap();
            let mut gg = up(&g, &grad0);
            let gl = g.softmax_xent_diag(n, &up(&g, &scores), &up(&g, &weight), &mut gg, write).unwrap();
            let what = format!("softmax_xent_diag n={n} {write:?}");
            assert!(
                ((gl - rl) as f64).abs() <= (n as f64 + 8.0) * U * (rl.abs() as f64 + 10.0),
                "{what}: {gl} vs {rl}"
            );
            assert_within(&what, &down(&g, &gg), &rg, |i| (n as f64 + 8.0) * U * (rg[i].abs() as f64 + 8.0 / n as f64));
        }
    }
    // The ranking losses run serially in the reference's order; only expf/logf/log1pf
    // (CUDA's vs glibc's, an ulp or two) separate them.
    for rows in [2usize, 17, 512] {
        let s = rng.vec(rows, -3.0, 3.0);
        let t = rng.vec(rows, -3.0, 3.0);
        let weight = rng.vec(rows, 0.0, 2.0);
        let mask: Vec<f32> = (0..rows).map(|_| (rng.below(6) != 0) as u8 as f32).collect();
        let npairs = rows * 3;
        let pairs = rng.ids(2 * npairs, rows);
        let (gs, gt, gw, gm) = (up(&g, &s), up(&g, &t), up(&g, &weight), up(&g, &mask));
        let groups = rows / 4 + 1;
        let mut offsets = vec![0u32];
        for _ in 0..groups {
            offsets.push(offsets.last().unwrap() + 1 + rng.below(6));
        }
        let members = rng.ids(*offsets.last().unwrap() as usize, rows);
        for write in [GradWrite::default(), GradWrite { scale: 0.7, accumulate: true }] {
            for temperature in [1.0f32, 2.5] {
                let grad0 = rng.vec(rows, -1.0, 1.0);
                let rin =
                    LossInput { pred: &s, target: &t, weight: Some(&weight), mask: Some(&mask), weight_sum: None };
                let gin = LossInput { pred: &gs, target: &gt, weight: Some(&gw), mask: Some(&gm), weight_sum: None };
                let spec = PairSpec { rows, pairs: npairs, temperature };
                let mut rg = grad0.clone();
                let rl = RefOps.pairwise_ranknet(&spec, &pairs, rin, &mut rg, write).unwrap();
                let mut gg = up(&g, &grad0);
                let gl = g.pairwise_ranknet(&spec, &up_ids(&g, &pairs), gin, &mut gg, write).unwrap();
                let what = format!("ranknet rows={rows} T={temperature} {write:?}");
                assert!(((gl - rl) as f64).abs() <= 64.0 * U * (rl.abs() as f64 + 1.0), "{what}: {gl} vs {rl}");
                assert_within(&what, &down(&g, &gg), &rg, |i| 64.0 * U * (rg[i].abs() as f64 + 1.0));

                let rin =
                    LossInput { pred: &s, target: &t, weight: Some(&weight), mask: Some(&mask), weight_sum: None };
                let gin = LossInput { pred: &gs, target: &gt, weight: Some(&gw), mask: Some(&gm), weight_sum: None };
                let spec = GroupSpec { rows, groups, temperature };
                let mut rg = grad0.clone();
                let rl = RefOps.listwise_softmax(&spec, &offsets, &members, rin, &mut rg, write).unwrap();
                let mut gg = up(&g, &grad0);
                let gl = g
                    .listwise_softmax(&spec, &up_ids(&g, &offsets), &up_ids(&g, &members), gin, &mut gg, write)
                    .unwrap();
                let what = format!("listwise rows={rows} T={temperature} {write:?}");
                // expf/logf differ from glibc's by an ulp or two.
                assert!(((gl - rl) as f64).abs() <= 64.0 * U * (rl.abs() as f64 + 1.0), "{what}: {gl} vs {rl}");
                assert_within(&what, &down(&g, &gg), &rg, |i| 64.0 * U * (rg[i].abs() as f64 + 1.0));
            }
        }
    }
}

// ---- argument errors --------------------------------------------------------------------

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn bad_calls_are_rejected_as_on_the_reference() {
    let g = gpu();
    let (x, mut y) = (vec![0f32; 5], vec![0f32; 6]);
    let (gx, mut gy) = (up(&g, &x), up(&g, &y));
    let shape = Shape::new(2, 3);
    assert_eq!(g.softmax_rows(shape, &gx, &mut gy).unwrap_err(), RefOps.softmax_rows(shape, &x, &mut y).unwrap_err());
    let spec = GemmSpec::nn(2, 2, 3);
    let (a, b, mut c) = (vec![0f32; 5], vec![0f32; 6], vec![0f32; 4]);
    assert_eq!(
        g.gemm(&spec, &up(&g, &a), &up(&g, &b), &mut up(&g, &c)).unwrap_err(),
        RefOps.gemm(&spec, &a, &b, &mut c).unwrap_err()
    );
    let spec = GatherSpec { batch: 2, dim: 3, table_rows: 2, out_cols: 4, col_offset: 2 };
    let (ids, table, mut out) = (vec![0u32; 2], vec![0f32; 6], vec![0f32; 8]);
    assert_eq!(
        g.gather_rows(&spec, &up_ids(&g, &ids), &up(&g, &table), &mut up(&g, &out)).unwrap_err(),
        RefOps.gather_rows(&spec, &ids, &table, &mut out).unwrap_err()
    );
    let input = LossInput { pred: &x, target: &x, weight: None, mask: None, weight_sum: None };
    let gin = LossInput { pred: &gx, target: &gx, weight: None, mask: None, weight_sum: None };
    assert_eq!(
        g.huber(5, 0.0, gin, &mut gy, GradWrite::default()).unwrap_err(),
        RefOps.huber(5, 0.0, input, &mut y, GradWrite::default()).unwrap_err()
    );
    let offsets = vec![0u32, 2, 1];
    let mut grad = SparseGrad::new(&g, 1, 2).unwrap();
    let spec = GatherSpec { batch: 2, dim: 1, table_rows: 3, out_cols: 1, col_offset: 0 };
    let mut rgrad = SparseGrad::new(&RefOps, 1, 2).unwrap();
    assert_eq!(
        g.scatter_pooled_grad(
            &spec,
            Pooling::Sum,
            &up_ids(&g, &offsets),
            &up_ids(&g, &[0, 1]),
            &up(&g, &[1.0, 1.0]),
            &mut grad
        )
        .unwrap_err(),
        RefOps
            .scatter_pooled_grad(&spec, Pooling::Sum, &offsets, &vec![0, 1], &vec![1.0, 1.0], &mut rgrad)
            .unwrap_err()
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn the_gpu_name_is_reported() {
    let g = gpu();
    eprintln!("CUDA backend on {}", g.describe());
    g.synchronize().unwrap();
}
