//! bf16 inference reaches the Linear layers inside MaskNet and FinalMLP experts and
//! DCNv2's full-rank cross layers and deep part, and tracks the f32 logits.

use mixrank_data::config::model::ModelSection;
use mixrank_engine::bf16::Bf16Kernel;
use mixrank_engine::CpuOps;
use mixrank_model::{build_head, Head};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TASKS: usize = 2;

fn head(text: &str, d_in: usize, batch: usize) -> Box<dyn Head<CpuOps>> {
    let m: ModelSection = toml::from_str(text).expect("valid [model] section");
    build_head(&m, d_in, TASKS, &CpuOps::new(), batch, &mut StdRng::seed_from_u64(3)).unwrap()
}

/// (Linear layers converted, max |Δlogit| between f32 and bf16).
fn convert_and_compare(text: &str) -> (usize, f32) {
    let ops = CpuOps::new();
    let (d_in, batch) = (24, 32);
    let mut rng = StdRng::seed_from_u64(4);
    let x: Vec<f32> = (0..batch * d_in).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut f = head(text, d_in, batch);
    f.forward(&ops, &x, batch).unwrap();
    let mut b = head(text, d_in, batch);
    let n = b.use_bf16(&ops.with_bf16_kernel(Bf16Kernel::detect())).unwrap();
    b.forward(&ops, &x, batch).unwrap();
    let mut max = 0f32;
    for t in 0..TASKS {
        for (p, q) in f.logits(t)[..batch].iter().zip(&b.logits(t)[..batch]) {
            max = max.max((p - q).abs());
        }
    }
    (n, max)
}

const TOWERS_AND_GATES: usize = 2 * 2 + 2; // 2 towers x (hidden + out) + 2 gates

#[test]
fn masknet_blocks_run_in_bf16() {
    // 2 blocks x (mask_agg, mask_proj, hidden) + the projection to expert_dim.
    let (n, max) = convert_and_compare(
        "architecture = \"mmoe\"\nexpert_dim = 16\ntower = { hidden = [8] }\n\
         [[experts]]\nkind = \"masknet\"\nblocks = 2\nblock_dim = 12\nstructure = \"stacked\"\n",
    );
    assert_eq!(n, 2 * 3 + 1 + TOWERS_AND_GATES);
    assert!(max > 0.0 && max < 0.05, "max |Δlogit| {max}");
}

#[test]
fn finalmlp_streams_gates_and_fusion_terms_run_in_bf16() {
    // 2 gate MLPs (hidden + out) + 2 streams (1 hidden Linear each) + fusion w_x, w_y.
    let (n, max) = convert_and_compare(
        "architecture = \"mmoe\"\nexpert_dim = 16\ntower = { hidden = [8] }\n\
         [[experts]]\nkind = \"finalmlp\"\nhidden = [16]\nstream2 = [16]\nheads = 2\n",
    );
    assert!(n > TOWERS_AND_GATES + 4, "{n} Linear layers converted");
    assert!(max > 0.0 && max < 0.05, "max |Δlogit| {max}");
}

#[test]
fn dcnv2_full_rank_cross_layers_run_in_bf16_and_low_rank_stays_f32() {
    let full = "architecture = \"mmoe\"\nexpert_dim = 16\ntower = { hidden = [8] }\n\
                [[experts]]\nkind = \"dcnv2\"\ncross_layers = 3\nhidden = [16]\n";
    // Stacked (the default): 3 cross layers + 1 deep Linear, whose 16 outputs are
    // expert_dim already (no projection).
    let (n, max) = convert_and_compare(full);
    assert_eq!(n, 3 + 1 + TOWERS_AND_GATES);
    assert!(max > 0.0 && max < 0.05, "max |Δlogit| {max}");
    // Low-rank cross layers keep their f32 GEMMs: only the deep Linear.
    let (n, max) = convert_and_compare(&full.replace("hidden = [16]\n", "hidden = [16]\nlow_rank = 4\n"));
    assert_eq!(n, 1 + TOWERS_AND_GATES);
    assert!(max > 0.0 && max < 0.05, "max |Δlogit| {max}");
}
