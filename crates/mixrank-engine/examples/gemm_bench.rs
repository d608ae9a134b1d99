//! GFLOP/s of the f32 GEMM (`gemm` crate via `CpuOps`) and the bf16 inference kernel at
//! the bench model's shapes. Median of repeated runs after a warm-up.
//!
//! `cargo run --release -p mixrank-engine --example gemm_bench`
//! (threads: one per CPU; set `RAYON_NUM_THREADS` to change). Runs inside a rayon pool,
//! as a trainer or server would (see `CpuOps`), so timings exclude the hand-off from a
//! foreign thread.

use mixrank_engine::bf16::{Bf16Kernel, Bf16Matrix, PackedBf16};
use mixrank_engine::{Backend, CpuOps, GemmSpec};
use std::time::Instant;

/// `(m, k, n)`: `[m, k] · [k, n]`. The bench model's expert layers at batch 512 and
/// 2048, plus its tower layer (128 → 64), where threading stops paying off.
const SHAPES: [(usize, usize, usize); 6] =
    [(512, 429, 256), (2048, 429, 256), (2048, 256, 128), (512, 256, 128), (2048, 128, 64), (512, 128, 64)];
const WARMUP: usize = 10;
const RUNS: usize = 61;

/// Median seconds of `f` over `RUNS` runs.
fn median_secs(mut f: impl FnMut()) -> f64 {
    for _ in 0..WARMUP {
        f();
    }
    let mut t: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[RUNS / 2]
}

/// Deterministic values in [-1, 1) without a rand dependency.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn main() {
    let pool = rayon::ThreadPoolBuilder::new().build().expect("thread pool");
    pool.install(bench);
}

fn bench() {
    let threads = rayon::current_num_threads();
    let best = Bf16Kernel::detect();
    println!("threads: {threads}, best bf16 kernel: {}", best.name());
    println!(
        "{:>14} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "m x k x n", "f32 auto", "f32 1thr", "f32 par", "amx", "amx+conv", "avx512", "portable", "w-avx512", "w-avx2"
    );
    for (m, k, n) in SHAPES {
        let flop = 2.0 * (m * k * n) as f64;
        let gflops = |secs: f64| flop / secs / 1e9;
        let a = values(m * k, 1);
        let w = values(k * n, 2);
        let mut c = vec![0.0f32; m * n];
        let spec = GemmSpec::nn(m, n, k);

        let mut f32_with = |par_min: usize| {
            let ops = CpuOps { gemm_par_min: par_min, ..CpuOps::new() };
            gflops(median_secs(|| ops.gemm(&spec, &a, &w, &mut c).unwrap()))
        };
        let f32_auto = f32_with(CpuOps::DEFAULT_GEMM_PAR_MIN);
        let f32_single = f32_with(usize::MAX);
        let f32_par = f32_with(0);

        let packed = PackedBf16::pack(k, n, &w).unwrap();
        let mut a16 = Bf16Matrix::from_f32(m, k, &a).unwrap();
        let mut bf16_with = |kernel: Result<Bf16Kernel, _>, convert: bool| match kernel {
            Ok(kernel) => gflops(median_secs(|| {
                if convert {
                    // The f32 → bf16 conversion a layer fed f32 activations pays.
                    a16.copy_from_f32(kernel, m, &a).unwrap();
                }
                kernel.gemm(m, &a16, &packed, &mut c).unwrap();
            })),
            Err(_) => f64::NAN,
        };
        let amx = bf16_with(Bf16Kernel::amx(), false);
        let amx_conv = bf16_with(Bf16Kernel::amx(), true);
        let avx = bf16_with(Bf16Kernel::avx512bf16(), false);
        let port = bf16_with(Ok(Bf16Kernel::portable()), false);
        // The widening kernels read the f32 activations (no conversion to pay).
        let mut widen_with = |kernel: Result<Bf16Kernel, _>| match kernel {
            Ok(kernel) => gflops(median_secs(|| kernel.gemm_f32(m, &a, &packed, &mut c).unwrap())),
            Err(_) => f64::NAN,
        };
        let w512 = widen_with(Bf16Kernel::widen_avx512());
        let w256 = widen_with(Bf16Kernel::widen_avx2());
        println!(
            "{:>14} {:>9.1} {:>9.1} {:>9.1} | {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            format!("{m}x{k}x{n}"),
            f32_auto,
            f32_single,
            f32_par,
            amx,
            amx_conv,
            avx,
            port,
            w512,
            w256
        );
    }
    println!("(GFLOP/s = 2·m·k·n / median time of {RUNS} runs after {WARMUP} warm-up runs)");
    training_shapes();
}

/// A Linear layer's three training GEMMs (f32, `CpuOps`) at the bench model's shapes:
/// forward `Y = X·W`, input gradient `dX = dY·Wᵀ`, weight gradient `dW += Xᵀ·dY`.
fn training_shapes() {
    use mixrank_engine::Transpose::{No, Yes};
    println!("\nLinear layer training GEMMs, f32 GFLOP/s (batch x in -> out):");
    println!("{:>16} {:>9} {:>9} {:>9}", "batch x in->out", "Y=X·W", "dX=dY·Wt", "dW+=Xt·dY");
    let ops = CpuOps::new();
    for (batch, d_in, d_out) in [(2048, 429, 256), (2048, 256, 128), (2048, 128, 64), (2048, 429, 4)] {
        let flop = 2.0 * (batch * d_in * d_out) as f64;
        let x = values(batch * d_in, 1);
        let w = values(d_in * d_out, 2);
        let dy = values(batch * d_out, 3);
        let (mut y, mut dx, mut dw) = (vec![0f32; batch * d_out], vec![0f32; batch * d_in], vec![0f32; d_in * d_out]);
        let fwd = GemmSpec::nn(batch, d_out, d_in);
        let dxs = GemmSpec::new(No, Yes, batch, d_in, d_out);
        let mut dws = GemmSpec::new(Yes, No, d_in, d_out, batch);
        dws.beta = 1.0;
        let g = |secs: f64| flop / secs / 1e9;
        let f = g(median_secs(|| ops.gemm(&fwd, &x, &w, &mut y).unwrap()));
        let b1 = g(median_secs(|| ops.gemm(&dxs, &dy, &w, &mut dx).unwrap()));
        let b2 = g(median_secs(|| ops.gemm(&dws, &x, &dy, &mut dw).unwrap()));
        println!("{:>16} {f:>9.1} {b1:>9.1} {b2:>9.1}", format!("{batch}x{d_in}->{d_out}"));
    }
}
