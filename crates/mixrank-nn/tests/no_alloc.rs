//! The steady-state training step allocates nothing: workspaces are sized at init and
//! reused. A counting global allocator (per thread) checks the second step of every
//! layer, the dense optimizer, the embedding lookup/scatter and the sparse optimizers.
//!
//! Dense layers run on `RefOps` (its GEMM is a plain loop; `CpuOps::gemm` goes through
//! the `gemm` crate, which allocates packing buffers per call, a documented engine
//! exception). Embeddings run on `CpuOps`, whose scatter reuses the `SparseGrad`.
//!
//! A separate test binary from `tests/nn`, because the global allocator is per binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use mixrank_engine::{Activation, CpuOps, Pooling, RefOps};
use mixrank_nn::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

/// Runs `step` twice and returns the allocations of the second run.
fn second_step(mut step: impl FnMut()) -> usize {
    step();
    allocations(step)
}

fn dense_step<C: LayerConfig>(what: &str, cfg: &C, batch: usize) {
    let ops = RefOps;
    let mut layer = cfg.build(&ops, batch, &mut StdRng::seed_from_u64(1)).unwrap();
    let x = vec![0.5f32; batch * layer.d_in()];
    let dy = vec![0.25f32; batch * layer.d_out()];
    let mut adam = Adam::new(AdamConfig { clip_norm: Some(1.0), ..AdamConfig::default() }, &ops, &mut layer).unwrap();
    let n = second_step(|| {
        zero_grads(&ops, &mut layer).unwrap();
        layer.forward(&ops, &x, batch).unwrap();
        layer.backward(&ops, &x, &dy).unwrap();
        adam.step(&ops, &mut layer, 1e-3).unwrap();
    });
    assert_eq!(n, 0, "{what}: {n} allocations in a steady-state step");
}

#[test]
fn steady_state_steps_do_not_allocate() {
    // The counter is live (otherwise every check below would pass vacuously).
    assert!(allocations(|| drop(std::hint::black_box(vec![1u8; 10]))) >= 1);
    dense_step("Mlp", &MlpConfig::new(12, &[16, 8]).with_layer_norm(true).with_dropout(0.2).with_output(3), 8);
    dense_step("Tower", &TowerConfig::new(12, &[8]), 8);
    let dcn = DcnConfig {
        cross: CrossNetMixConfig::new(12, 2, 4, 3).into(),
        deep: MlpConfig::new(12, &[8]),
        structure: DcnStructure::Parallel,
    };
    dense_step("Dcn", &dcn, 8);
    dense_step("CrossNetMix", &CrossNetMixConfig::new(12, 2, 4, 3), 8);
    dense_step("MaskNet", &MaskNetConfig::new(12, 2, 8, 6, MaskNetStructure::Serial), 8);
    let fin = FinalMlpConfig {
        d_in: 12,
        mlp1: MlpConfig::new(12, &[8]).with_activation(Activation::GeluTanh),
        mlp2: MlpConfig::new(12, &[4]),
        gate_hidden: vec![6],
        context: GateContext::Learned { d: 5 },
        heads: 2,
        d_out: 1,
    };
    dense_step("FinalMlp", &fin, 8);
    dense_step("Gate", &GateConfig::new(12, 4).with_temperature(0.5), 8);
    dense_step("Gate top-k", &GateConfig::new(12, 4).with_top_k(2), 8);

    // MoE mixing.
    let ops = RefOps;
    let mut mix = MoeMix::new(&ops, 3, 5, 8).unwrap();
    let xs: Vec<Vec<f32>> = (0..3).map(|i| vec![i as f32; 40]).collect();
    let refs: Vec<&Vec<f32>> = xs.iter().collect();
    let (g, dy) = (vec![0.3f32; 24], vec![1.0f32; 40]);
    let n = second_step(|| {
        mix.forward(&ops, &refs, &g, 8).unwrap();
        mix.backward(&ops, &refs, &g, &dy).unwrap();
    });
    assert_eq!(n, 0, "MoeMix");

    // Embeddings with a shared table and both sparse optimizers, on CpuOps.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        let ops = CpuOps::new();
        let cfg = EmbeddingCollectionConfig {
            tables: vec![TableConfig::new(50, 4), TableConfig::new(20, 3)],
            features: vec![
                FeatureConfig::single(0),
                FeatureConfig::pooled(0, Pooling::Mean, 32),
                FeatureConfig::single(1),
            ],
        };
        let mut emb = cfg.init(&ops, 8, &mut StdRng::seed_from_u64(2)).unwrap();
        let single: Vec<u32> = (0..8).map(|i| i * 3).collect();
        let offsets: Vec<u32> = (0..=8).map(|i| i * 2).collect();
        let ids: Vec<u32> = (0..16).map(|i| (i * 7) % 50).collect();
        let single1: Vec<u32> = (0..8).map(|i| i % 20).collect();
        let dy = vec![0.1f32; 8 * cfg.output_dim()];
        let mut adagrad = RowWiseAdagrad::new(RowWiseAdagradConfig::new(0.1), &ops, &emb).unwrap();
        let mut lazy = LazyAdam::new(LazyAdamConfig::new(0.01), &ops, &emb).unwrap();
        let n = second_step(|| {
            let inputs = [
                FeatureInput::Single(&single),
                FeatureInput::Multi { offsets: &offsets, ids: &ids },
                FeatureInput::Single(&single1),
            ];
            emb.forward(&ops, &inputs, 8).unwrap();
            emb.backward(&ops, &inputs, &dy).unwrap();
            adagrad.step(&ops, &mut emb).unwrap();
            lazy.step(&ops, &mut emb).unwrap();
        });
        assert_eq!(n, 0, "embeddings + sparse optimizers");
    });
}
