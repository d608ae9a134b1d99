//! The bf16 inference GEMM against f32, and its AVX512 kernel against the portable one.

use crate::common::*;
use half::bf16;
use mixrank_engine::bf16::{Bf16Kernel, Bf16Matrix, PackedBf16};
use mixrank_engine::reference;
use mixrank_engine::GemmSpec;
use proptest::prelude::*;

/// The portable kernel and every SIMD kernel this CPU runs.
fn kernels() -> Vec<Bf16Kernel> {
    let mut k = vec![Bf16Kernel::portable()];
    k.extend(simd_kernels());
    k
}

fn simd_kernels() -> Vec<Bf16Kernel> {
    let mut k = vec![];
    for kernel in [Bf16Kernel::avx512bf16(), Bf16Kernel::amx()] {
        match kernel {
            Ok(kernel) => k.push(kernel),
            Err(e) => eprintln!("skipping a SIMD kernel: {e}"),
        }
    }
    k
}

/// Every widening kernel (bf16 weights, f32 activations) this CPU runs.
fn widening_kernels() -> Vec<Bf16Kernel> {
    let mut k = vec![];
    for kernel in [Bf16Kernel::widen_avx512(), Bf16Kernel::widen_avx2()] {
        match kernel {
            Ok(kernel) => k.push(kernel),
            Err(e) => eprintln!("skipping a widening kernel: {e}"),
        }
    }
    k
}

struct Case {
    m: usize,
    n: usize,
    k: usize,
    a: Vec<f32>,
    w: Vec<f32>,
}

fn case(seed: u64, m: usize, n: usize, k: usize) -> Case {
    let mut g = rng(seed);
    Case { m, n, k, a: uniform(&mut g, m * k, -1.0, 1.0), w: uniform(&mut g, k * n, -1.0, 1.0) }
}

/// f64 `A·W` and `|A|·|W|` for the given inputs.
fn exact(m: usize, n: usize, k: usize, a: &[f32], w: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let spec = GemmSpec::nn(m, n, k);
    let (mut c, mut mag) = (vec![0.0; m * n], vec![0.0; m * n]);
    reference::gemm(&spec, &to_f64(a), &to_f64(w), &mut c).unwrap();
    let abs = |v: &[f32]| v.iter().map(|x| x.abs() as f64).collect::<Vec<_>>();
    reference::gemm(&spec, &abs(a), &abs(w), &mut mag).unwrap();
    (c, mag)
}

fn gamma(k: usize) -> f64 {
    k as f64 * U32 / (1.0 - k as f64 * U32)
}

/// bf16 result vs exact f32-input result.
///
/// Tolerance: rounding a and w to bf16 (8-bit significand, unit roundoff u = 2⁻⁸) perturbs each product by at most
/// (2u + u²)|a||w|; the exact bf16 products are then summed in f32, adding at most
/// γ_k (1+u)² Σ|a||w|. Hence |C_bf16 − C| <= (2u + u² + γ_k (1+u)²) Σ|a||w| — a worst-case
/// bound, so it holds for every element while a wrong pairing or panel offset breaks it.
fn check_vs_f32(kernel: Bf16Kernel, c: &Case) {
    let a = Bf16Matrix::from_f32(c.m, c.k, &c.a).unwrap();
    let w = PackedBf16::pack(c.k, c.n, &c.w).unwrap();
    let mut out = vec![f32::NAN; c.m * c.n + 3];
    kernel.gemm(c.m, &a, &w, &mut out).unwrap();
    assert!(out[c.m * c.n..].iter().all(|v| v.is_nan()), "wrote past C");
    let (exact, mag) = exact(c.m, c.n, c.k, &c.a, &c.w);
    let u = 1.0 / 256.0;
    let factor = 2.0 * u + u * u + gamma(c.k) * (1.0 + u) * (1.0 + u);
    let what = format!("{} {}x{}x{}", kernel.name(), c.m, c.n, c.k);
    assert_within(&what, &to_f64(&out[..c.m * c.n]), &exact, |i| factor * mag[i]);
}

/// A widening kernel's result vs the exact f32-input result.
///
/// Tolerance: only `w` is rounded to bf16 (|w̃ − w| <= u|w|, u = 2⁻⁸); the products of the
/// f32 activations and the widened (exact) weights are then accumulated by k FMAs in f32,
/// within γ_k Σ|a||w̃| <= γ_k (1+u) Σ|a||w| of their exact sum. Hence
/// |C − A·W| <= (u + γ_k (1+u)) Σ|a||w| — tighter than the bf16 bound (the activations are
/// not rounded), and still broken by a wrong pairing, panel offset or odd-k tail.
fn check_widen_vs_f32(kernel: Bf16Kernel, c: &Case) {
    let w = PackedBf16::pack(c.k, c.n, &c.w).unwrap();
    let mut out = vec![f32::NAN; c.m * c.n + 3];
    kernel.gemm_f32(c.m, &c.a, &w, &mut out).unwrap();
    assert!(out[c.m * c.n..].iter().all(|v| v.is_nan()), "wrote past C");
    let (exact, mag) = exact(c.m, c.n, c.k, &c.a, &c.w);
    let u = 1.0 / 256.0;
    let factor = u + gamma(c.k) * (1.0 + u);
    let what = format!("{} {}x{}x{}", kernel.name(), c.m, c.n, c.k);
    assert_within(&what, &to_f64(&out[..c.m * c.n]), &exact, |i| factor * mag[i]);
}

/// A SIMD kernel vs portable on the same bf16 inputs: both sum exact products in f32,
/// each within γ_k Σ|ã||w̃| of the exact sum, so they differ by at most twice that.
fn check_simd_vs_portable(simd: Bf16Kernel, c: &Case) {
    let a = Bf16Matrix::from_f32(c.m, c.k, &c.a).unwrap();
    let w = PackedBf16::pack(c.k, c.n, &c.w).unwrap();
    let (mut x, mut y) = (vec![0.0; c.m * c.n], vec![0.0; c.m * c.n]);
    simd.gemm(c.m, &a, &w, &mut x).unwrap();
    Bf16Kernel::portable().gemm(c.m, &a, &w, &mut y).unwrap();
    let a_r = a.to_f32();
    let w_r: Vec<f32> = c.w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    let (_, mag) = exact(c.m, c.n, c.k, &a_r, &w_r);
    assert_within(&format!("{} vs portable", simd.name()), &to_f64(&x), &to_f64(&y), |i| 2.0 * gamma(c.k) * mag[i]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn bf16_gemm_matches_f32_within_bf16_bound(
        seed: u64,
        m in prop_oneof![dim(), 30usize..70],
        n in prop_oneof![dim(), 30usize..70],
        k in prop_oneof![dim(), 30usize..70],
    ) {
        let c = case(seed, m, n, k);
        for kernel in kernels() {
            check_vs_f32(kernel, &c);
        }
        for simd in simd_kernels() {
            check_simd_vs_portable(simd, &c);
        }
        for kernel in widening_kernels() {
            check_widen_vs_f32(kernel, &c);
        }
    }
}

/// The benchmark shapes (multithreaded path) plus ragged edges.
#[test]
fn bf16_gemm_large_shapes() {
    for (i, &(m, k, n)) in
        [(512, 429, 256), (77, 429, 129), (13, 256, 33), (64, 32, 64), (96, 1, 96)].iter().enumerate()
    {
        let c = case(i as u64, m, n, k);
        for kernel in kernels() {
            check_vs_f32(kernel, &c);
        }
        for simd in simd_kernels() {
            check_simd_vs_portable(simd, &c);
        }
        for kernel in widening_kernels() {
            check_widen_vs_f32(kernel, &c);
        }
    }
}

/// The two widening kernels do the same f32 FMAs in the same order per output, so they
/// agree bit for bit (where both run).
#[test]
fn widening_kernels_agree_exactly() {
    let kernels = widening_kernels();
    if kernels.len() < 2 {
        eprintln!("skipping: this CPU runs {} widening kernel(s)", kernels.len());
        return;
    }
    for (i, &(m, k, n)) in [(37, 429, 129), (512, 257, 64), (5, 1, 33)].iter().enumerate() {
        let c = case(100 + i as u64, m, n, k);
        let w = PackedBf16::pack(c.k, c.n, &c.w).unwrap();
        let outs: Vec<Vec<f32>> = kernels
            .iter()
            .map(|kernel| {
                let mut out = vec![0.0f32; c.m * c.n];
                kernel.gemm_f32(c.m, &c.a, &w, &mut out).unwrap();
                out
            })
            .collect();
        assert_same("avx512-widen vs avx2-widen", &outs[0], &outs[1]);
    }
}

#[test]
fn widening_kernels_take_f32_activations_only() {
    let a = Bf16Matrix::zeros(4, 5);
    let w = PackedBf16::pack(5, 3, &[0.0; 15]).unwrap();
    let mut c = vec![0.0; 12];
    for kernel in widening_kernels() {
        assert!(kernel.takes_f32_activations());
        let err = kernel.gemm(4, &a, &w, &mut c).unwrap_err();
        assert!(err.to_string().contains("this kernel takes f32"), "{err}");
        assert!(kernel.gemm_f32(4, &[0.0; 19], &w, &mut c).is_err(), "short a");
        assert!(kernel.gemm_f32(4, &[0.0; 20], &w, &mut c[..11]).is_err(), "short c");
    }
    for kernel in kernels() {
        assert!(!kernel.takes_f32_activations());
        assert!(kernel.gemm_f32(4, &[0.0; 20], &w, &mut c).is_err(), "{} takes bf16", kernel.name());
    }
}

#[test]
fn bf16_gemm_does_not_depend_on_thread_count() {
    let c = case(7, 300, 256, 429);
    let a = Bf16Matrix::from_f32(c.m, c.k, &c.a).unwrap();
    let w = PackedBf16::pack(c.k, c.n, &c.w).unwrap();
    for kernel in kernels() {
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut out = vec![0.0f32; c.m * c.n];
            pool.install(|| kernel.gemm(c.m, &a, &w, &mut out).unwrap());
            out
        };
        assert_same(kernel.name(), &run(1), &run(3));
    }
    for kernel in widening_kernels() {
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut out = vec![0.0f32; c.m * c.n];
            pool.install(|| kernel.gemm_f32(c.m, &c.a, &w, &mut out).unwrap());
            out
        };
        assert_same(kernel.name(), &run(1), &run(3));
    }
}

#[test]
fn avx512_conversion_matches_portable_rounding() {
    let Ok(avx) = Bf16Kernel::avx512bf16() else {
        eprintln!("skipping: no avx512bf16");
        return;
    };
    let mut g = rng(11);
    let mut src: Vec<f32> = uniform(&mut g, 1000, -100.0, 100.0);
    // Exact ties (round to even) and specials.
    src[..6].copy_from_slice(&[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -0.0, f32::INFINITY, 3.0e38, -1.5e-30]);
    let (mut x, mut y) = (vec![bf16::ZERO; src.len()], vec![bf16::ZERO; src.len()]);
    avx.convert(&src, &mut x);
    Bf16Kernel::portable().convert(&src, &mut y);
    assert_eq!(x, y);
    assert_eq!(x[0].to_f32(), 1.0);
    assert_eq!(x[1].to_f32(), 1.0 + 4.0 / 256.0);

    // Documented difference: the AVX512 path flushes subnormal inputs to signed zero.
    let tiny = [1e-39f32, -1e-39];
    let (mut x, mut y) = ([bf16::ONE; 2], [bf16::ZERO; 2]);
    avx.convert(&tiny, &mut x);
    Bf16Kernel::portable().convert(&tiny, &mut y);
    assert_eq!(x.map(|v| v.to_bits()), [0x0000, 0x8000]);
    assert!(y[0].to_f32() > 0.0 && y[1].to_f32() < 0.0, "portable keeps subnormals");
}

#[test]
fn bf16_gemm_rejects_mismatched_shapes() {
    let a = Bf16Matrix::zeros(4, 5);
    let w = PackedBf16::pack(6, 3, &[0.0; 18]).unwrap();
    let mut c = vec![0.0; 12];
    let err = Bf16Kernel::portable().gemm(4, &a, &w, &mut c).unwrap_err();
    assert_eq!(err.to_string(), "gemm_bf16: a [4, 5] does not match w [6, 3]");
    let w = PackedBf16::pack(5, 3, &[0.0; 15]).unwrap();
    assert!(Bf16Kernel::portable().gemm(5, &a, &w, &mut c).is_err(), "m > rows of a");
    assert!(Bf16Kernel::portable().gemm(4, &a, &w, &mut c[..11]).is_err(), "short c");
}

#[test]
fn kernels_are_found_by_their_names() {
    for kernel in kernels().into_iter().chain(widening_kernels()) {
        assert_eq!(Bf16Kernel::by_name(kernel.name()).unwrap(), kernel);
    }
    let err = Bf16Kernel::by_name("avx9000").unwrap_err().to_string();
    assert!(err.contains("MIXRANK_BF16_KERNEL must be one of"), "{err}");
    if Bf16Kernel::amx().is_err() {
        assert!(Bf16Kernel::by_name("amx").unwrap_err().to_string().contains("does not support amx-bf16"));
    }
}

/// Where the CPU has no bf16 arithmetic but AVX2 or AVX-512, `detect` picks a widening
/// kernel, never the (3-4× slower) portable loop.
#[test]
fn detect_never_picks_the_portable_loop_on_x86_with_avx2() {
    let k = Bf16Kernel::detect();
    // Without AMX a widening kernel wins, AVX512-BF16 or not (measured slower than f32).
    if Bf16Kernel::amx().is_err() && Bf16Kernel::widen().is_ok() {
        assert!(k.takes_f32_activations(), "picked {}", k.name());
    }
    assert!(!(k == Bf16Kernel::portable() && Bf16Kernel::widen().is_ok()), "picked portable");
}

/// `Backend::pack_reduced`: the CPU backend packs for the kernel it is given and computes
/// what that kernel computes on the same weight, bit for bit (dense and bilinear-head
/// layouts); `Counting` forwards it with its own opaque buffers and the same bits; the
/// reference backend has no reduced precision and says so.
#[test]
fn backends_pack_reduced_gemms_behind_the_trait() {
    use mixrank_engine::counting::Counting;
    use mixrank_engine::reduced::{dense_weight, w_prime_index, HostBf16, ReducedGemm, WeightLayout};
    use mixrank_engine::{Backend, CpuOps, EngineError, RefOps};
    let (m, k, n) = (7, 12, 5);
    let c = case(41, m, n, k);
    // A bilinear tensor of 2 heads with hx·hy = k: head 1's W' is another [k, n] matrix.
    let (heads, hx, hy) = (2, 3, 4);
    let bil: Vec<f32> = (0..heads * hx * n * hy).map(|i| ((i * 37) % 101) as f32 / 101.0 - 0.5).collect();
    for kernel in kernels().into_iter().chain(widening_kernels()) {
        let ops = CpuOps::new().with_bf16_kernel(kernel);
        for (weight, layout) in [(&c.w, WeightLayout::Dense), (&bil, WeightLayout::BilinearHead { head: 1, hx, hy })] {
            let dense = dense_weight(weight, k, n, layout).unwrap();
            if let WeightLayout::BilinearHead { head, .. } = layout {
                // Spot check of the layout: W'[i·hy + j, o] = W[head·hx + i, o·hy + j].
                let (i, j, o) = (2, 3, 4);
                let (old, _) = w_prime_index(head * hx + i, o, j, hy, n);
                assert_eq!(dense[(i * hy + j) * n + o], weight[old]);
            }
            let mut want = vec![0f32; m * n];
            let mut direct = HostBf16::new(kernel, k, n, &dense, m).unwrap();
            ReducedGemm::<CpuOps>::gemm(&mut direct, m, &c.a, &mut want).unwrap();

            let mut packed = ops.pack_reduced(k, n, weight, layout, m).unwrap();
            assert_eq!(packed.name(), kernel.name());
            let mut got = vec![0f32; m * n];
            packed.gemm(m, &c.a, &mut got).unwrap();
            assert_eq!(got, want, "{} {layout:?}", kernel.name());

            let counting = Counting::new(ops);
            let (a, w) = (counting.upload(&c.a).unwrap(), counting.upload(weight).unwrap());
            let mut out = counting.alloc(m * n).unwrap();
            counting.pack_reduced(k, n, &w, layout, m).unwrap().gemm(m, &a, &mut out).unwrap();
            let mut host = vec![0f32; m * n];
            counting.read(&out, &mut host).unwrap();
            assert_eq!(host, want, "Counting, {} {layout:?}", kernel.name());
        }
    }
    let refused = RefOps.pack_reduced(k, n, &c.w, WeightLayout::Dense, m).err();
    assert!(matches!(refused, Some(EngineError::Unsupported { op: "pack_reduced", .. })), "{refused:?}");
    // A weight shorter than the site says is refused, not read past its end.
    let short = CpuOps::new().pack_reduced(k, n, &c.w[..k * n - 1].to_vec(), WeightLayout::Dense, m).err();
    assert!(matches!(short, Some(EngineError::BufferTooSmall { .. })), "{short:?}");
}

#[test]
fn packed_weights_unpack_to_their_bf16_values() {
    for (k, n) in [(1, 1), (7, 33), (64, 32), (429, 256), (13, 65)] {
        let c = case(5 + k as u64, 1, n, k);
        let w = PackedBf16::pack(k, n, &c.w).unwrap();
        let mut out = vec![f32::NAN; k * n];
        w.unpack_f32(&mut out).unwrap();
        let want: Vec<f32> = c.w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        assert_eq!(out, want, "{k}x{n}");
        assert!(w.unpack_f32(&mut out[..k * n - 1]).is_err(), "a short output is refused");
    }
}

/// At `WIDEN_ONCE_ROWS` rows and more a widening kernel's site widens its weight once
/// and runs the f32 GEMM: the same bound as the widening kernel (only `w` rounded), and
/// the rows below keep the kernel's own result.
#[test]
fn widening_sites_widen_once_for_large_batches() {
    use mixrank_engine::reduced::{HostBf16, ReducedGemm, WIDEN_ONCE_ROWS};
    use mixrank_engine::CpuOps;
    let (k, n) = (129, 70);
    for m in [WIDEN_ONCE_ROWS - 1, WIDEN_ONCE_ROWS, WIDEN_ONCE_ROWS + 37] {
        let c = case(77 + m as u64, m, n, k);
        for kernel in widening_kernels() {
            let mut site = HostBf16::new(kernel, k, n, &c.w, m).unwrap();
            let mut out = vec![f32::NAN; m * n + 3];
            ReducedGemm::<CpuOps>::gemm(&mut site, m, &c.a, &mut out).unwrap();
            assert!(out[m * n..].iter().all(|v| v.is_nan()), "wrote past C");
            let (exact, mag) = exact(m, n, k, &c.a, &c.w);
            let u = 1.0 / 256.0;
            let factor = u + gamma(k) * (1.0 + u);
            let what = format!("{} site, {m}x{n}x{k}", kernel.name());
            assert_within(&what, &to_f64(&out[..m * n]), &exact, |i| factor * mag[i]);
            if m < WIDEN_ONCE_ROWS {
                let mut direct = vec![0f32; m * n];
                kernel.gemm_f32(m, &c.a, &PackedBf16::pack(k, n, &c.w).unwrap(), &mut direct).unwrap();
                assert_eq!(&out[..m * n], &direct[..], "{what}: below the threshold the kernel runs");
            }
        }
    }
}
