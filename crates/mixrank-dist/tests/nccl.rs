//! The NCCL collective (`Nccl`, feature `nccl`): its operations against their meaning,
//! with ranks as threads bootstrapped over the in-process group.
//!
//! The ignored test needs NCCL: on a GPU machine (`bench/gpu_check.sh`: as many ranks as
//! GPUs, NCCL refusing two ranks on one GPU) or on the host emulation
//! (`crates/mixrank-cuda/emu/run.sh`: a fake libcuda and a fake libnccl whose ranks are
//! threads; `MIXRANK_NCCL_EMULATED=1` runs 1, 2 and 3 ranks on its one device).
#![cfg(feature = "nccl")]

use mixrank_dist::{all_gather_u32, all_to_all_f32, Collective, InProcess, Nccl};
use std::sync::Arc;

/// Runs `f` on `n` NCCL ranks (threads; rank `r` on GPU `gpu(r)`); results by rank.
fn on_nccl_ranks<T: Send>(n: usize, gpu: impl Fn(usize) -> usize + Sync, f: impl Fn(&Nccl) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let (f, gpu) = (&f, &gpu);
        let hs: Vec<_> = InProcess::group(n)
            .into_iter()
            .map(|boot| {
                s.spawn(move || {
                    let r = boot.rank();
                    let c = Nccl::over(Arc::new(boot), gpu(r)).expect("NCCL starts");
                    f(&c)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("rank thread")).collect()
    })
}

/// The rank counts and GPUs to test: 1–3 ranks on the emulation's one device, else one
/// rank per GPU.
fn layouts() -> Vec<(usize, bool)> {
    if std::env::var_os("MIXRANK_NCCL_EMULATED").is_some() {
        return vec![(1, true), (2, true), (3, true)];
    }
    // cudarc panics when libcuda cannot be loaded: no GPU then.
    let count = std::panic::catch_unwind(cudarc::driver::CudaContext::device_count);
    let gpus = count.ok().and_then(|c| c.ok()).unwrap_or(0).max(0) as usize;
    (1..=gpus).map(|n| (n, false)).collect()
}

#[test]
fn without_nccl_asking_for_it_is_a_clear_error() {
    if Nccl::available() {
        eprintln!("libnccl.so and libcuda.so load here: the ignored test below runs the collective");
        return;
    }
    let e = Nccl::over(Arc::new(InProcess::group(1).remove(0)), 0).unwrap_err().to_string();
    assert!(e.contains("libnccl.so") && e.contains("LD_LIBRARY_PATH"), "{e}");
}

#[test]
#[ignore = "needs NCCL and a GPU, or the host emulation (crates/mixrank-cuda/emu/run.sh)"]
fn nccl_collectives_mean_what_the_interface_says() {
    let layouts = layouts();
    assert!(!layouts.is_empty(), "no GPU and no emulation: nothing to run");
    for (n, shared_gpu) in layouts {
        let gpu = move |r: usize| if shared_gpu { 0 } else { r };
        let out = on_nccl_ranks(n, gpu, |c| {
            assert_eq!((c.size(), c.transport()), (n, "nccl"));
            let r = c.rank();
            let vals = |r: usize| [1.0 + r as f32, 1e-8 * (r as f32 + 1.0), -3.0 * r as f32];
            let mut a = vals(r).to_vec();
            c.all_reduce_sum_f32(&mut a).unwrap();
            let mut b = vec![0.1 * (r as f64 + 1.0), r as f64];
            c.all_reduce_sum_f64(&mut b).unwrap();
            // A large buffer (4 MiB), as dense gradients are.
            let mut big: Vec<f32> = (0..1 << 20).map(|i| ((i % 97) as f32) * (r as f32 + 1.0)).collect();
            c.all_reduce_sum_f32(&mut big).unwrap();
            // Empty buffers are operations too (a rank without rows sends nothing).
            c.all_reduce_sum_f32(&mut []).unwrap();
            // Rank r sends r + 1 values; rank 0's empty bytes in a second gather.
            let g = all_gather_u32(c, &vec![r as u32; r + 1]).unwrap();
            let g0 = c.all_gather_bytes(if r == 0 { b"" } else { b"xy" }).unwrap();
            // Rank r sends d + r values of (10 r + d) to rank d (nothing from 0 to 0).
            let send: Vec<Vec<f32>> = (0..n).map(|d| vec![(10 * r + d) as f32; d + r]).collect();
            let t = all_to_all_f32(c, &send).unwrap();
            let root = n - 1;
            let mut bc = if r == root { b"from the root".to_vec() } else { vec![9; 40] };
            c.broadcast_bytes(&mut bc, root).unwrap();
            let mut empty = if r == root { Vec::new() } else { vec![1, 2, 3] };
            c.broadcast_bytes(&mut empty, root).unwrap();
            c.barrier().unwrap();
            (a, b, big[..97].to_vec(), g, g0, t, bc, empty)
        });
        let first = &out[0];
        for (me, (a, b, big, g, g0, t, bc, empty)) in out.iter().enumerate() {
            // Every rank the same bits (NCCL reduces each element once).
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                first.0.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!(
                b.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                first.1.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            // The sum, in any order: within 2·n·u of Σ|x| of the exact sum.
            for (i, &x) in a.iter().enumerate() {
                let exact: f64 = (0..n).map(|r| [1.0 + r as f64, 1e-8 * (r as f64 + 1.0), -3.0 * r as f64][i]).sum();
                let mag: f64 =
                    (0..n).map(|r| ([1.0 + r as f64, 1e-8 * (r as f64 + 1.0), -3.0 * r as f64][i]).abs()).sum();
                assert!(
                    (x as f64 - exact).abs() <= 2.0 * n as f64 * f32::EPSILON as f64 * mag + 1e-12,
                    "{n} ranks: {x} vs {exact}"
                );
            }
            assert!((b[0] - (1..=n).map(|k| 0.1 * k as f64).sum::<f64>()).abs() < 1e-12);
            assert_eq!(b[1], (0..n).map(|k| k as f64).sum::<f64>());
            let scale: f32 = (1..=n).map(|k| k as f32).sum();
            assert!(big.iter().enumerate().all(|(i, &x)| x == i as f32 * scale), "{n} ranks: the large sum");
            assert_eq!(g, &(0..n).map(|r| vec![r as u32; r + 1]).collect::<Vec<_>>());
            let want0: Vec<Vec<u8>> = (0..n).map(|r| if r == 0 { Vec::new() } else { b"xy".to_vec() }).collect();
            assert_eq!(g0, &want0);
            let want: Vec<Vec<f32>> = (0..n).map(|from| vec![(10 * from + me) as f32; me + from]).collect();
            assert_eq!(t, &want, "{n} ranks, rank {me}: all-to-all");
            assert_eq!(bc, b"from the root");
            assert!(empty.is_empty());
        }
        eprintln!("NCCL collectives: {n} rank(s) {}", if shared_gpu { "on the emulation" } else { "one per GPU" });
    }
}

#[test]
#[ignore = "the host emulation's fake libnccl (crates/mixrank-cuda/emu/run.sh); real NCCL would wait"]
fn on_the_nccl_emulation_a_rank_that_leaves_fails_the_others_instead_of_hanging() {
    if std::env::var_os("MIXRANK_NCCL_EMULATED").is_none() {
        eprintln!("not the emulation (real NCCL waits for a rank that left): nothing to check");
        return;
    }
    // Rank 1 drops its communicator (cudarc aborts it); rank 0's next collective fails,
    // so a failing test rank fails the test rather than hanging CI.
    let out = on_nccl_ranks(2, |_| 0, |c| if c.rank() == 1 { Ok(()) } else { c.barrier() });
    assert!(out[1].is_ok());
    let e = out[0].as_ref().unwrap_err().to_string();
    assert!(e.contains("barrier"), "{e}");
}
