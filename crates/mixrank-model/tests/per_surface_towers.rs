//! Per-surface towers (`[model.tower] per_surface`, `towers.rs`): a row's logit is its
//! own surface's tower's, bit for bit, and does not move when another surface's tower
//! changes; the backward against finite differences in f64 for every head
//! architecture (with surface-aware gating too); the gradient of a surface without rows
//! is zero; the names `towers.<t>.surface.<s>.*`; bf16 inference converts every
//! surface's tower and tracks f32; bad selections are refused.

use mixrank_data::config::model::ModelSection;
use mixrank_engine::{Backend, CpuOps, RefOps};
use mixrank_model::{build_head_shaped, Head, HeadShape};
use mixrank_nn::testing::{check_grads, RefOpsF64};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

const D_IN: usize = 7;
const TASKS: usize = 2;

/// A boxed head's type (`'static` objects, as `build_head_shaped` returns).
type DynHead = dyn Head<RefOpsF64>;

fn section(text: &str) -> ModelSection {
    toml::from_str(text).expect("valid [model] section")
}

/// `text` with `per_surface = true` in its `[tower]` table (which it must hold last).
fn per_surface(text: &str) -> ModelSection {
    section(&format!("{text}per_surface = true\n"))
}

fn shape(surfaces: usize, d_gate: usize) -> HeadShape {
    HeadShape { d_in: D_IN, n_tasks: TASKS, d_out: 1, d_gate, surfaces }
}

fn build<B: Backend + 'static>(m: &ModelSection, shape: HeadShape, ops: &B, batch: usize, seed: u64) -> Box<dyn Head<B>>
where
    B::Buf: Send,
{
    build_head_shaped(m, shape, ops, batch, &mut StdRng::seed_from_u64(seed)).unwrap()
}

const SHARED_BOTTOM: &str = "architecture = \"shared_bottom\"\nexpert_dim = 4\n\
    [[experts]]\nkind = \"mlp\"\nhidden = [5]\nactivation = \"tanh\"\n\
    [tower]\nhidden = [3]\nactivation = \"tanh\"\n";
const MMOE: &str = "architecture = \"mmoe\"\nexpert_dim = 4\n\
    [[experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [5]\nactivation = \"tanh\"\n\
    [[experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nhidden = [3]\n\
    [tower]\nhidden = [3]\nactivation = \"tanh\"\n";
const PLE: &str = "architecture = \"ple\"\nexpert_dim = 4\n\
    ple = { levels = 1, shared_experts = 1, task_experts = 1 }\n\
    [[experts]]\nkind = \"mlp\"\nhidden = [5]\nactivation = \"tanh\"\n\
    [tower]\nhidden = [3]\nactivation = \"tanh\"\n";

/// `L = Σ_t Σ_b r[t][b] · logit_t[b]` against finite differences, rows on every surface.
fn check(text: &str, surfaces: usize, d_gate: usize, segment: &[u32], seed: u64) {
    let ops = RefOpsF64::new();
    let batch = segment.len();
    let m = per_surface(text);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut head = build(&m, shape(surfaces, d_gate), &ops, batch, seed);
    head.params(&mut |name, p| {
        let n = p.len();
        let (lo, hi) = if name.ends_with("gamma") { (0.5, 1.5) } else { (-0.8, 0.8) };
        for v in &mut p.value[..n] {
            *v = rng.random_range(lo..hi);
        }
    });
    let mut names = Vec::new();
    head.params(&mut |name, _| names.push(name.to_string()));
    for t in 0..TASKS {
        for s in 0..surfaces {
            let prefix = format!("towers.{t}.surface.{s}.");
            assert!(names.iter().any(|n| n.starts_with(&prefix)), "no {prefix}* in {names:?}");
        }
    }
    assert!(!names.iter().any(|n| n.starts_with("towers.") && !n.contains(".surface.")), "{names:?}");
    head.select_surfaces(&ops, segment).unwrap();
    let x: Vec<f64> = (0..batch * D_IN).map(|_| rng.random_range(-1.0..1.0)).collect();
    let forward = |h: &mut DynHead, inputs: &[Vec<f64>]| -> Vec<f64> {
        h.forward(&ops, &inputs[0], batch).unwrap();
        (0..TASKS).flat_map(|t| h.logits(t)[..batch].to_vec()).collect()
    };
    let backward = |h: &mut DynHead, inputs: &[Vec<f64>], r: &[f64]| -> Vec<Vec<f64>> {
        h.forward(&ops, &inputs[0], batch).unwrap();
        let d_logits: Vec<Vec<f64>> = r.chunks(batch).map(<[f64]>::to_vec).collect();
        let refs: Vec<&Vec<f64>> = d_logits.iter().collect();
        vec![h.backward(&ops, &inputs[0], &refs).unwrap()[..batch * D_IN].to_vec()]
    };
    check_grads(text, &mut *head, &[x], forward, backward, seed);
}

#[test]
fn shared_bottom_per_surface_gradients() {
    check(SHARED_BOTTOM, 3, 0, &[2, 0, 1, 1], 31);
}

#[test]
fn mmoe_per_surface_gradients() {
    check(MMOE, 2, 0, &[1, 0, 0], 32);
}

#[test]
fn mmoe_per_surface_with_surface_aware_gating_gradients() {
    // The last 2 input columns feed only the gates.
    check(&MMOE.replace("[tower]", "[gate]\ninputs = [\"surface\"]\n[tower]"), 3, 2, &[0, 2, 1, 2], 33);
}

#[test]
fn omoe_per_surface_gradients() {
    check(&MMOE.replace("mmoe", "omoe"), 2, 0, &[0, 1, 1], 34);
}

#[test]
fn ple_per_surface_gradients() {
    check(PLE, 2, 0, &[1, 1, 0], 35);
}

/// Every parameter's value by name.
fn values(head: &mut dyn Head<RefOps>) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    head.params(&mut |name, p| {
        out.insert(name.to_string(), p.value[..p.len()].to_vec());
    });
    out
}

/// Task logits `[t][row]` of a forward on `x`.
fn logits(ops: &RefOps, head: &mut dyn Head<RefOps>, x: &[f32], batch: usize) -> Vec<Vec<f32>> {
    head.forward(ops, &x.to_vec(), batch).unwrap();
    (0..TASKS).map(|t| head.logits(t)[..batch].to_vec()).collect()
}

/// A row's logit is what its own surface's tower alone gives: a head with shared towers
/// holding every other weight of the per-surface head and surface `s`'s towers scores
/// the rows of surface `s` bit for bit alike. Changing surface 1's towers changes the
/// rows of surface 1 only, not one bit of the others.
#[test]
fn a_rows_logit_is_its_own_surfaces_towers() {
    let ops = RefOps::new();
    let segment = [0u32, 1, 2, 1, 0, 2, 2];
    let batch = segment.len();
    let mut rng = StdRng::seed_from_u64(5);
    let x: Vec<f32> = (0..batch * D_IN).map(|_| rng.random_range(-1.0..1.0)).collect();
    for text in [SHARED_BOTTOM, MMOE, PLE] {
        let mut head = build(&per_surface(text), shape(3, 0), &ops, batch, 1);
        head.select_surfaces(&ops, &segment).unwrap();
        let got = logits(&ops, &mut *head, &x, batch);
        let per = values(&mut *head);
        let mut shared = build(&section(text), shape(1, 0), &ops, batch, 2);
        for s in 0..3u32 {
            shared.params(&mut |name, p| {
                let from = match name.strip_prefix("towers.").and_then(|r| r.split_once('.')) {
                    Some((t, rest)) => format!("towers.{t}.surface.{s}.{rest}"),
                    None => name.to_string(),
                };
                let v = per.get(&from).unwrap_or_else(|| panic!("{from} missing"));
                p.value[..v.len()].copy_from_slice(v);
            });
            // Shared towers: `select_surfaces` is a no-op.
            shared.select_surfaces(&ops, &[]).unwrap();
            let alone = logits(&ops, &mut *shared, &x, batch);
            for t in 0..TASKS {
                for (r, _) in segment.iter().enumerate().filter(|(_, &id)| id == s) {
                    assert_eq!(got[t][r].to_bits(), alone[t][r].to_bits(), "{text}: task {t} row {r} surface {s}");
                }
            }
        }
        // Only surface 1's towers change.
        head.params(&mut |name, p| {
            if name.starts_with("towers.") && name.contains(".surface.1.") {
                for v in &mut p.value[..] {
                    *v += 0.25;
                }
            }
        });
        let after = logits(&ops, &mut *head, &x, batch);
        for t in 0..TASKS {
            for (r, &id) in segment.iter().enumerate() {
                if id == 1 {
                    assert_ne!(after[t][r], got[t][r], "{text}: task {t} row {r} kept its logit");
                } else {
                    assert_eq!(after[t][r].to_bits(), got[t][r].to_bits(), "{text}: task {t} row {r} moved");
                }
            }
        }
        // The same rows with their surfaces changed: another tower, another logit.
        head.select_surfaces(&ops, &[1; 7]).unwrap();
        let all_one = logits(&ops, &mut *head, &x, batch);
        assert_eq!(all_one[0][1].to_bits(), after[0][1].to_bits());
        assert_ne!(all_one[0][0], after[0][0], "{text}");
    }
}

/// Backward gives each surface's towers the gradient of its own rows: a surface with no
/// row in the batch gets exactly zero, the others do not.
#[test]
fn a_surface_without_rows_gets_no_gradient() {
    let ops = RefOps::new();
    let segment = [0u32, 2, 0, 2];
    let batch = segment.len();
    let mut rng = StdRng::seed_from_u64(6);
    let x: Vec<f32> = (0..batch * D_IN).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut head = build(&per_surface(MMOE), shape(3, 0), &ops, batch, 3);
    head.select_surfaces(&ops, &segment).unwrap();
    head.forward(&ops, &x, batch).unwrap();
    mixrank_nn::zero_grads(&ops, &mut *head).unwrap();
    let g = vec![vec![1.0f32; batch]; TASKS];
    let refs: Vec<&Vec<f32>> = g.iter().collect();
    head.backward(&ops, &x, &refs).unwrap();
    let mut norms: BTreeMap<u32, f32> = BTreeMap::new();
    head.params(&mut |name, p| {
        if let Some(rest) = name.strip_prefix("towers.") {
            let s: u32 = rest.split('.').nth(2).unwrap().parse().unwrap();
            *norms.entry(s).or_default() += p.grad[..p.len()].iter().map(|g| g * g).sum::<f32>();
        }
    });
    assert_eq!(norms[&1], 0.0, "{norms:?}");
    assert!(norms[&0] > 0.0 && norms[&2] > 0.0, "{norms:?}");
}

#[test]
fn bad_selections_are_refused() {
    let ops = RefOps::new();
    let mut head = build(&per_surface(SHARED_BOTTOM), shape(2, 0), &ops, 4, 1);
    let e = head.select_surfaces(&ops, &[0, 2]).unwrap_err().to_string();
    assert!(e.contains("row 1") && e.contains("segment id 2") && e.contains("2 surfaces"), "{e}");
    let x = vec![0.5f32; 4 * D_IN];
    let e = head.forward(&ops, &x, 4).unwrap_err().to_string();
    assert!(e.contains("select_surfaces"), "{e}");
    head.select_surfaces(&ops, &[0, 1, 1]).unwrap();
    assert!(head.forward(&ops, &x, 4).is_err(), "3 rows selected, 4 forwarded");
    head.select_surfaces(&ops, &[0, 1, 1, 0]).unwrap();
    head.forward(&ops, &x, 4).unwrap();
    let e = head.select_surfaces(&ops, &[0; 5]).unwrap_err().to_string();
    assert!(e.contains("max_batch"), "{e}");
    // The key and the shape must agree.
    let e = build_head_shaped(&per_surface(SHARED_BOTTOM), shape(1, 0), &ops, 4, &mut StdRng::seed_from_u64(0))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("tower.per_surface") && e.contains("at least two"), "{e}");
    assert!(build_head_shaped(&section(SHARED_BOTTOM), shape(3, 0), &ops, 4, &mut StdRng::seed_from_u64(0)).is_err());
}

/// bf16 inference converts every surface's tower (2 tasks x 3 surfaces x 2 Linear
/// beside the experts' and gates') and tracks f32.
#[test]
fn bf16_inference_covers_every_surfaces_tower() {
    use mixrank_engine::bf16::Bf16Kernel;
    let ops = CpuOps::new();
    let text = "architecture = \"mmoe\"\nexpert_dim = 32\n[[experts]]\nkind = \"mlp\"\ncount = 3\n\
                hidden = [64, 32]\n[tower]\nhidden = [16]\n";
    let (d_in, batch) = (40, 64);
    let shape = HeadShape { d_in, n_tasks: TASKS, d_out: 1, d_gate: 0, surfaces: 3 };
    let segment: Vec<u32> = (0..batch as u32).map(|r| r % 3).collect();
    let mut rng = StdRng::seed_from_u64(9);
    let x: Vec<f32> = (0..batch * d_in).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut head = build(&per_surface(text), shape, &ops, batch, 9);
    head.select_surfaces(&ops, &segment).unwrap();
    head.forward(&ops, &x, batch).unwrap();
    let want: Vec<Vec<f32>> = (0..TASKS).map(|t| head.logits(t)[..batch].to_vec()).collect();
    for kernel in [Some(Bf16Kernel::detect()), Some(Bf16Kernel::portable())].into_iter().flatten() {
        let mut h2 = build(&per_surface(text), shape, &ops, batch, 9);
        // 3 experts x 2 Linear + 2 gates + 2 tasks x 3 surfaces x 2 Linear.
        assert_eq!(h2.use_bf16(&ops.with_bf16_kernel(kernel)).unwrap(), 6 + 2 + 12, "{}", kernel.name());
        h2.select_surfaces(&ops, &segment).unwrap();
        h2.forward(&ops, &x, batch).unwrap();
        let mut max = 0f32;
        for (t, w) in want.iter().enumerate() {
            for (a, b) in w.iter().zip(&h2.logits(t)[..batch]) {
                max = max.max((a - b).abs());
            }
        }
        assert!(max > 0.0 && max < 0.05, "{}: max |Δlogit| {max}", kernel.name());
    }
}

fn configs_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

/// `model` (a model file's text) over the data config `data`, through a file written
/// under the target's temporary directory.
fn with_model(
    data: &mixrank_data::ExperimentConfig,
    name: &str,
    model: &str,
) -> mixrank_data::Result<mixrank_data::ExperimentConfig> {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("per-surface-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, model).unwrap();
    data.with_model_file(&path)
}

/// `[model.tower] per_surface` needs `[columns] segment` with two values or more and a
/// head (not a two-tower model's towers): refused otherwise, naming the key and why.
#[test]
fn per_surface_towers_are_refused_where_they_cannot_apply() {
    use mixrank_data::ExperimentConfig;
    let towers = std::fs::read_to_string(configs_dir().join("experiments/surfaces/per_surface_towers.toml")).unwrap();
    let sim = ExperimentConfig::load(&configs_dir().join("engagement.toml")).unwrap();
    let cfg = with_model(&sim, "ok.toml", &towers).unwrap();
    assert!(cfg.model.as_ref().unwrap().tower.per_surface);
    // No segment column.
    let frappe = ExperimentConfig::load(&configs_dir().join("frappe.toml")).unwrap();
    assert!(frappe.columns.segment.is_none());
    let e = with_model(&frappe, "no_segment.toml", &towers).unwrap_err().to_string();
    assert!(e.contains("model.tower.per_surface") && e.contains("[columns] segment"), "{e}");
    // One segment value.
    let text = std::fs::read_to_string(configs_dir().join("engagement.toml")).unwrap();
    let values = "values = [\"home_feed\", \"related_pins\", \"search\"]";
    assert!(text.contains(values), "the simulator's config changed");
    let one =
        ExperimentConfig::parse(&text.replace(values, "values = [\"home_feed\"]"), &configs_dir().join("one.toml"))
            .unwrap();
    let e = with_model(&one, "one_surface.toml", &towers).unwrap_err().to_string();
    assert!(e.contains("model.tower.per_surface") && e.contains("at least two"), "{e}");
    // A two-tower model's towers, either side.
    let tt = std::fs::read_to_string(configs_dir().join("models/two_tower.toml")).unwrap();
    for side in ["user", "item"] {
        let section = format!("[model.two_tower.{side}.tower]\nhidden = [64]\n");
        assert!(tt.contains(&section), "two_tower.toml changed");
        let text = tt.replace(&section, &format!("{section}per_surface = true\n"));
        let e = with_model(&sim, &format!("two_tower_{side}.toml"), &text).unwrap_err().to_string();
        let key = format!("model.two_tower.{side}.tower.per_surface");
        assert!(e.contains(&key) && e.contains("dot product") && e.contains("cached"), "{e}");
    }
    // Without the key the two-tower file builds (the refusal is the key's).
    with_model(&sim, "two_tower.toml", &tt).unwrap();
}
