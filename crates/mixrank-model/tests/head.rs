//! The heads' backward against finite differences in f64, for every architecture
//! `build_head` builds (single-task, shared-bottom, OMoE, MMoE, MMoE top-k, PLE),
//! including heterogeneous experts (DCNv2, MaskNet, FinalMLP, MLP) and a shared layer:
//! every parameter's gradient and the input gradient, with the stencil and tolerance of
//! the layer-level checks (`mixrank_nn::testing::gradcheck`), and every parameter must
//! receive a non-zero gradient.

use mixrank_data::config::model::ModelSection;
use mixrank_model::{build_head, Head};
use mixrank_nn::testing::{check_grads, RefOpsF64};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const D_IN: usize = 7;
const BATCH: usize = 3;
const TASKS: usize = 2;

/// A boxed head's type (`'static` objects, as `build_head` returns).
type DynHead = dyn Head<RefOpsF64>;

fn section(text: &str) -> ModelSection {
    toml::from_str(text).expect("valid [model] section")
}

fn check(text: &str, seed: u64) {
    check_tasks(text, TASKS, seed);
}

/// Checks `L = Σ_t Σ_b r[t][b] · logit_t[b]` (random `r`) against the analytic gradients
/// of every parameter and of `x`.
fn check_tasks(text: &str, tasks: usize, seed: u64) {
    let ops = RefOpsF64::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let m = section(text);
    let mut head = build_head(&m, D_IN, tasks, &ops, BATCH, &mut rng).unwrap();
    assert_eq!((head.d_in(), head.n_tasks(), head.max_batch()), (D_IN, tasks, BATCH));
    // Random parameters everywhere (biases and norm scales too), so no term hides at 0/1.
    head.params(&mut |name, p| {
        let n = p.len();
        let (lo, hi) = if name.ends_with("gamma") { (0.5, 1.5) } else { (-0.8, 0.8) };
        for v in &mut p.value[..n] {
            *v = rng.random_range(lo..hi);
        }
    });
    let n_params = head.num_params();
    assert!(n_params > 50, "only {n_params} parameters");
    let x: Vec<f64> = (0..BATCH * D_IN).map(|_| rng.random_range(-1.0..1.0)).collect();
    let forward = |h: &mut DynHead, inputs: &[Vec<f64>]| -> Vec<f64> {
        h.forward(&ops, &inputs[0], BATCH).unwrap();
        (0..tasks).flat_map(|t| h.logits(t)[..BATCH].to_vec()).collect()
    };
    let backward = |h: &mut DynHead, inputs: &[Vec<f64>], r: &[f64]| -> Vec<Vec<f64>> {
        h.forward(&ops, &inputs[0], BATCH).unwrap();
        let d_logits: Vec<Vec<f64>> = r.chunks(BATCH).map(<[f64]>::to_vec).collect();
        assert_eq!(d_logits.len(), tasks);
        let refs: Vec<&Vec<f64>> = d_logits.iter().collect();
        vec![h.backward(&ops, &inputs[0], &refs).unwrap()[..BATCH * D_IN].to_vec()]
    };
    check_grads(text, &mut *head, &[x], forward, backward, seed);
}

#[test]
fn single_task_finalmlp_with_shared_layer_gradients() {
    check_tasks(
        "architecture = \"single_task\"\nexpert_dim = 4\nshared = { hidden = [6], activation = \"tanh\" }\n\
         tower = { hidden = [3], activation = \"tanh\" }\n\
         [[experts]]\nkind = \"finalmlp\"\nhidden = [4]\nstream2 = [6]\nheads = 2\nactivation = \"tanh\"\n",
        1,
        11,
    );
}

#[test]
fn single_task_masknet_gradients() {
    check_tasks(
        "architecture = \"single_task\"\nexpert_dim = 4\ntower = { hidden = [3], activation = \"tanh\" }\n\
         [[experts]]\nkind = \"masknet\"\nblocks = 2\nblock_dim = 3\n",
        1,
        12,
    );
}

#[test]
fn shared_bottom_mlp_with_shared_layer_gradients() {
    check(
        "architecture = \"shared_bottom\"\nexpert_dim = 4\nshared = { hidden = [5], activation = \"tanh\", layer_norm = true }\n\
         tower = { hidden = [3], activation = \"tanh\" }\n\
         [[experts]]\nkind = \"mlp\"\nhidden = [6]\nactivation = \"tanh\"\n",
        13,
    );
}

#[test]
fn heterogeneous_omoe_gradients() {
    check(
        "architecture = \"omoe\"\nexpert_dim = 4\ntower = { hidden = [3], activation = \"tanh\" }\n\
         [[experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nhidden = [4]\nactivation = \"tanh\"\n\
         [[experts]]\nkind = \"masknet\"\nblocks = 2\nblock_dim = 3\nstructure = \"parallel\"\n\
         [[experts]]\nkind = \"finalmlp\"\nhidden = [4]\nstream2 = [2]\nheads = 2\nactivation = \"tanh\"\n\
         [[experts]]\nkind = \"mlp\"\nhidden = [4]\nactivation = \"tanh\"\n",
        14,
    );
}

#[test]
fn heterogeneous_top_k_mmoe_gradients() {
    // Top-k gates are piecewise smooth; random logits keep the selection away from
    // ties, so the differences see one piece. Three tasks, so each expert is picked by
    // some (task, row) and every parameter gets a gradient.
    check_tasks(
        "architecture = \"mmoe\"\nexpert_dim = 4\ntower = { hidden = [3], activation = \"tanh\" }\n\
         gate = { top_k = 2, temperature = 0.8 }\n\
         [[experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nlow_rank = 2\nhidden = [4]\nactivation = \"tanh\"\n\
         [[experts]]\nkind = \"masknet\"\nblocks = 1\nblock_dim = 3\n\
         [[experts]]\nkind = \"finalmlp\"\nhidden = [4]\nactivation = \"tanh\"\n\
         [[experts]]\nkind = \"mlp\"\nhidden = [4]\nactivation = \"tanh\"\n",
        3,
        15,
    );
}

#[test]
fn ple_every_expert_kind_gradients() {
    // Shared experts cycle through all four kinds; each task's two are dcnv2, masknet.
    check(
        "architecture = \"ple\"\nexpert_dim = 3\nshared = { hidden = [5], activation = \"tanh\" }\n\
         tower = { hidden = [2], activation = \"tanh\" }\n\
         ple = { levels = 2, shared_experts = 4, task_experts = 2 }\n\
         [[experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nhidden = [4]\nactivation = \"tanh\"\n\
         [[experts]]\nkind = \"masknet\"\nblocks = 1\nblock_dim = 3\n\
         [[experts]]\nkind = \"finalmlp\"\nhidden = [3]\nactivation = \"tanh\"\n\
         [[experts]]\nkind = \"mlp\"\nhidden = [4]\nactivation = \"tanh\"\n",
        16,
    );
}

#[test]
fn shared_bottom_dcnv2_gradients() {
    check(
        "architecture = \"shared_bottom\"\nexpert_dim = 4\ntower = { hidden = [3], activation = \"tanh\" }\n\
         [[experts]]\nkind = \"dcnv2\"\ncross_layers = 2\nlow_rank = 2\nhidden = [5]\nactivation = \"tanh\"\n",
        1,
    );
}

#[test]
fn omoe_gradients() {
    check(
        "architecture = \"omoe\"\nexpert_dim = 4\ntower = { hidden = [3], activation = \"tanh\" }\n\
         [[experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [6]\nactivation = \"tanh\"\n",
        2,
    );
}

#[test]
fn heterogeneous_mmoe_with_shared_layer_gradients() {
    check(
        "architecture = \"mmoe\"\nexpert_dim = 4\nshared = { hidden = [6], activation = \"tanh\" }\n\
         tower = { hidden = [3], activation = \"tanh\" }\ngate = { temperature = 0.7 }\n\
         [[experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nstructure = \"parallel\"\nhidden = [4]\nactivation = \"tanh\"\n\
         [[experts]]\nkind = \"masknet\"\nblocks = 2\nblock_dim = 3\nstructure = \"parallel\"\n\
         [[experts]]\nkind = \"mlp\"\nhidden = [4]\nactivation = \"tanh\"\n\
         [[experts]]\nkind = \"finalmlp\"\nhidden = [4]\nstream2 = [2]\nheads = 2\nactivation = \"tanh\"\n",
        3,
    );
}

#[test]
fn masknet_with_mlp_activation_and_both_structures_gradients() {
    check(
        "architecture = \"mmoe\"\nexpert_dim = 4\ntower = { hidden = [3], activation = \"tanh\" }\n\
         [[experts]]\nkind = \"masknet\"\nblocks = 2\nblock_dim = 3\nstructure = \"parallel\"\nhidden = [5, 4]\n\
         activation = \"tanh\"\n\
         [[experts]]\nkind = \"masknet\"\nblocks = 2\nblock_dim = 3\nactivation = \"gelu\"\n",
        6,
    );
}

#[test]
fn ple_two_levels_heterogeneous_gradients() {
    check(
        "architecture = \"ple\"\nexpert_dim = 4\ntower = { hidden = [3], activation = \"tanh\" }\n\
         ple = { levels = 2, shared_experts = 2, task_experts = 1 }\n\
         [[experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nhidden = [4]\nactivation = \"tanh\"\n\
         [[experts]]\nkind = \"mlp\"\nhidden = [5]\nactivation = \"tanh\"\n",
        4,
    );
}

#[test]
fn ple_with_shared_layer_and_three_levels_gradients() {
    check(
        "architecture = \"ple\"\nexpert_dim = 3\nshared = { hidden = [5], activation = \"tanh\" }\n\
         tower = { hidden = [2], activation = \"tanh\" }\ngate = { temperature = 1.3 }\n\
         ple = { levels = 3, shared_experts = 1, task_experts = 2 }\n\
         [[experts]]\nkind = \"mlp\"\nhidden = [4]\nactivation = \"tanh\"\n\
         [[experts]]\nkind = \"masknet\"\nblocks = 1\nblock_dim = 3\n",
        5,
    );
}

#[test]
fn top_k_mmoe_gradients() {
    // With top-k the gate is piecewise smooth; random logits keep the selection away
    // from ties, so central differences see one piece.
    check(
        "architecture = \"mmoe\"\nexpert_dim = 4\ntower = { hidden = [3], activation = \"tanh\" }\n\
         gate = { top_k = 2 }\n[[experts]]\nkind = \"mlp\"\ncount = 3\nhidden = [4]\nactivation = \"tanh\"\n",
        6,
    );
}

#[test]
fn mmoe_with_gate_hidden_layers_gradients() {
    check(
        "architecture = \"mmoe\"\nexpert_dim = 4\ntower = { hidden = [3], activation = \"tanh\" }\n\
         gate = { hidden = [5], activation = \"tanh\" }\n[[experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [4]\nactivation = \"tanh\"\n\
         [[experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nhidden = [4]\nactivation = \"tanh\"\n",
        7,
    );
}

#[test]
fn ple_parameters_follow_the_documented_expert_cycle() {
    let ops = RefOpsF64::new();
    let mut rng = StdRng::seed_from_u64(0);
    let m = section(
        "architecture = \"ple\"\nexpert_dim = 4\nple = { levels = 2, shared_experts = 2, task_experts = 1 }\n\
         [[experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nhidden = [4]\n[[experts]]\nkind = \"mlp\"\nhidden = [4]\n",
    );
    let mut head = build_head(&m, D_IN, TASKS, &ops, BATCH, &mut rng).unwrap();
    let mut names = Vec::new();
    head.params(&mut |name, _| names.push(name.to_string()));
    let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
    // Shared experts 0 and 1 are dcnv2 and mlp; each task's one expert is the first kind.
    assert!(has("ple.levels.0.shared_experts.0.cross"), "{names:?}");
    assert!(!has("ple.levels.0.shared_experts.1.cross"), "{names:?}");
    assert!(has("ple.levels.1.tasks.1.experts.0.cross") && has("ple.levels.1.tasks.1.gate.weight"), "{names:?}");
    // Inner levels have a shared gate; the last level does not.
    assert!(has("ple.levels.0.shared_gate") && !has("ple.levels.1.shared_gate"), "{names:?}");
    // Per level a gate per task; the inner level also has the shared gate.
    use mixrank_model::{ExpertOwner, GateRole};
    let gates = head.gates();
    assert_eq!(gates.len(), 2 * TASKS + 1, "{gates:?}");
    let roles: Vec<GateRole> = gates.iter().map(|g| g.role).collect();
    let mut want: Vec<GateRole> = (0..TASKS).map(|task| GateRole::PleTask { level: 0, task }).collect();
    want.push(GateRole::PleShared { level: 0 });
    want.extend((0..TASKS).map(|task| GateRole::PleTask { level: 1, task }));
    assert_eq!(roles, want);
    // Task 1's gate mixes its own expert (dcnv2), then the shared dcnv2 and mlp.
    let own: Vec<(ExpertOwner, usize, &str)> =
        gates[1].experts.iter().map(|e| (e.owner, e.index, e.kind.as_str())).collect();
    assert_eq!(
        own,
        vec![
            (ExpertOwner::PleTask(1), 0, "dcnv2"),
            (ExpertOwner::PleShared, 0, "dcnv2"),
            (ExpertOwner::PleShared, 1, "mlp")
        ]
    );
    assert_eq!(gates[TASKS].experts.len(), TASKS + 2, "the shared gate mixes every expert of its level");
    // Each gate's weights, after a forward, are one softmax row per example over its experts.
    let x: Vec<f64> = (0..BATCH * D_IN).map(|i| (i as f64 * 0.37).sin()).collect();
    head.forward(&ops, &x, BATCH).unwrap();
    for (g, info) in gates.iter().enumerate() {
        let w = head.gate_weights(g).unwrap();
        let n = info.experts.len();
        for r in 0..BATCH {
            let sum: f64 = w[r * n..(r + 1) * n].iter().sum();
            assert!((sum - 1.0).abs() < 1e-12, "gate {g} row {r}: {sum}");
        }
    }
    assert!(head.gate_weights(gates.len()).is_none());
}

#[test]
fn bf16_inference_tracks_f32_and_refuses_backward() {
    use mixrank_engine::{bf16::Bf16Kernel, CpuOps};
    let ops = CpuOps::new();
    let mut rng = StdRng::seed_from_u64(9);
    let m = section(
        "architecture = \"mmoe\"\nexpert_dim = 32\n[[experts]]\nkind = \"mlp\"\ncount = 3\nhidden = [64, 32]\n",
    );
    let (d_in, batch) = (40, 64);
    let mut head = build_head(&m, d_in, TASKS, &ops, batch, &mut rng).unwrap();
    let x: Vec<f32> = (0..batch * d_in).map(|_| rng.random_range(-1.0..1.0)).collect();
    head.forward(&ops, &x, batch).unwrap();
    let want: Vec<Vec<f32>> = (0..TASKS).map(|t| head.logits(t)[..batch].to_vec()).collect();
    for kernel in
        [Some(Bf16Kernel::detect()), Some(Bf16Kernel::portable()), Bf16Kernel::widen().ok()].into_iter().flatten()
    {
        let mut h2 = build_head(&m, d_in, TASKS, &ops, batch, &mut StdRng::seed_from_u64(9)).unwrap();
        // 3 experts x 2 Linear + 2 gates + 2 towers x 2 Linear.
        assert_eq!(h2.use_bf16(&ops.with_bf16_kernel(kernel)).unwrap(), 12, "{}", kernel.name());
        h2.forward(&ops, &x, batch).unwrap();
        let mut max = 0f32;
        for (t, w) in want.iter().enumerate() {
            for (a, b) in w.iter().zip(&h2.logits(t)[..batch]) {
                max = max.max((a - b).abs());
            }
        }
        // bf16 keeps 8 significant bits (relative rounding 2^-9 per operand); through
        // four chained layers of |logit| ~ 1 that is a few 1e-2 at most, and it is not 0.
        assert!(max > 0.0 && max < 0.05, "{}: max |Δlogit| {max}", kernel.name());
        let g = vec![vec![1.0f32; batch]; TASKS];
        let refs: Vec<&Vec<f32>> = g.iter().collect();
        let e = h2.backward(&ops, &x, &refs).err().unwrap().to_string();
        assert!(e.contains("inference only"), "{e}");
    }
}

#[test]
fn dropout_is_on_in_training_and_off_in_evaluation() {
    let ops = RefOpsF64::new();
    let text = |p: f64| {
        format!(
            "architecture = \"mmoe\"\nexpert_dim = 4\nshared = {{ hidden = [6], dropout = {p} }}\n\
             [[experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [5]\ndropout = {p}\n\
             [[experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nhidden = [5]\ndropout = {p}\n"
        )
    };
    let mut with = build_head(&section(&text(0.5)), D_IN, TASKS, &ops, BATCH, &mut StdRng::seed_from_u64(1)).unwrap();
    let mut without =
        build_head(&section(&text(0.0)), D_IN, TASKS, &ops, BATCH, &mut StdRng::seed_from_u64(2)).unwrap();
    // Same weights in both (dropout has no parameters, so the lists line up).
    let mut values = Vec::new();
    with.params(&mut |_, p| values.push(p.value[..p.len()].to_vec()));
    let mut i = 0;
    without.params(&mut |_, p| {
        let n = p.len();
        p.value[..n].copy_from_slice(&values[i]);
        i += 1;
    });
    let mut rng = StdRng::seed_from_u64(3);
    let x: Vec<f64> = (0..BATCH * D_IN).map(|_| rng.random_range(-1.0..1.0)).collect();
    let logits = |h: &mut Box<dyn Head<RefOpsF64>>| {
        h.forward(&ops, &x, BATCH).unwrap();
        (0..TASKS).flat_map(|t| h.logits(t)[..BATCH].to_vec()).collect::<Vec<f64>>()
    };
    let reference = logits(&mut without);
    let train_a = logits(&mut with);
    let train_b = logits(&mut with);
    assert_ne!(train_a, reference, "training mode drops units");
    assert_ne!(train_a, train_b, "each training step draws a new mask");
    with.set_training(false);
    assert_eq!(logits(&mut with), reference, "evaluation mode is the full network");
    with.set_training(true);
    assert_ne!(logits(&mut with), reference);
}

#[test]
fn build_head_maps_each_architecture_to_its_gates() {
    use mixrank_model::GateRole;
    let ops = RefOpsF64::new();
    let experts = "[[experts]]\nkind = \"mlp\"\ncount = 3\nhidden = [4]\n";
    let one = "[[experts]]\nkind = \"mlp\"\nhidden = [4]\n";
    let cases: [(&str, &str, Vec<GateRole>); 5] = [
        ("single_task", one, vec![]),
        ("shared_bottom", one, vec![]),
        ("omoe", experts, vec![GateRole::AllTasks]),
        ("mmoe", experts, vec![GateRole::Task(0), GateRole::Task(1)]),
        ("ple", experts, vec![GateRole::PleTask { level: 0, task: 0 }, GateRole::PleTask { level: 0, task: 1 }]),
    ];
    for (arch, experts, roles) in cases {
        let ple = if arch == "ple" { "ple = { levels = 1, shared_experts = 1, task_experts = 1 }\n" } else { "" };
        let m = section(&format!("architecture = \"{arch}\"\nexpert_dim = 4\n{ple}{experts}"));
        let mut head = build_head(&m, D_IN, TASKS, &ops, BATCH, &mut StdRng::seed_from_u64(0)).unwrap();
        let gates = head.gates();
        assert_eq!(gates.iter().map(|g| g.role).collect::<Vec<_>>(), roles, "{arch}");
        assert_eq!(head.n_gates(), gates.len(), "{arch}: n_gates");
        let x: Vec<f64> = (0..BATCH * D_IN).map(|i| (i as f64 * 0.61).cos()).collect();
        head.forward(&ops, &x, BATCH).unwrap();
        for (g, info) in gates.iter().enumerate() {
            let w = head.gate_weights(g).unwrap();
            let n = info.experts.len();
            assert_eq!(n, if arch == "ple" { 2 } else { 3 }, "{arch}");
            for r in 0..BATCH {
                let sum: f64 = w[r * n..(r + 1) * n].iter().sum();
                assert!((sum - 1.0).abs() < 1e-12, "{arch} gate {g} row {r}: {sum}");
            }
        }
        assert!(head.gate_weights(gates.len()).is_none(), "{arch}");
    }
}

#[test]
fn heads_refuse_what_they_cannot_build_or_run() {
    let ops = RefOpsF64::new();
    let build = |text: &str| {
        build_head(&section(text), D_IN, TASKS, &ops, BATCH, &mut StdRng::seed_from_u64(0)).err().map(|e| e.to_string())
    };
    let two = "[[experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [4]\n";
    let e = build(&format!("architecture = \"shared_bottom\"\n{two}")).expect("two bottoms refused");
    assert!(e.contains("model.experts") && e.contains("exactly one expert"), "{e}");
    let e = build(&format!("architecture = \"ple\"\n{two}")).expect("PLE without [model.ple] refused");
    assert!(e.contains("model.ple"), "{e}");

    let m = section(&format!("architecture = \"mmoe\"\nexpert_dim = 4\n{two}"));
    let mut head = build_head(&m, D_IN, TASKS, &ops, BATCH, &mut StdRng::seed_from_u64(0)).unwrap();
    let x = vec![0.5; BATCH * D_IN];
    let g = vec![1.0; BATCH];
    let e = head.backward(&ops, &x, &[&g, &g]).err().unwrap().to_string();
    assert!(e.contains("before forward"), "{e}");
    let e = head.forward(&ops, &x, BATCH + 1).err().unwrap().to_string();
    assert!(e.contains("exceeds max_batch"), "{e}");
    head.forward(&ops, &x, BATCH).unwrap();
    let e = head.backward(&ops, &x, &[&g]).err().unwrap().to_string();
    assert!(e.contains("1 logit gradients for 2 tasks"), "{e}");
}

/// Gate dropout reaches every gate (MMoE, OMoE, PLE through `set_training` and
/// `set_dropout_step`): on in training, a function of the step, off in evaluation; and
/// the whole head's backward matches finite differences with the step pinned.
#[test]
fn gate_dropout_in_every_gated_head() {
    let ops = RefOpsF64::new();
    let experts = "[[experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [5]\nactivation = \"tanh\"\n\
                   [[experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nhidden = [5]\nactivation = \"tanh\"\n";
    let heads = [("mmoe", ""), ("omoe", ""), ("mmoe", "top_k = 2, "), ("ple", "")];
    for (i, (arch, extra)) in heads.into_iter().enumerate() {
        let ple = if arch == "ple" { "ple = { levels = 1, shared_experts = 2, task_experts = 1 }\n" } else { "" };
        let text = |p: f64| {
            format!(
                "architecture = \"{arch}\"\nexpert_dim = 4\ntower = {{ hidden = [3], activation = \"tanh\" }}\n\
                 gate = {{ {extra}dropout = {p} }}\n{ple}{experts}"
            )
        };
        let seed = 40 + i as u64;
        let mut with =
            build_head(&section(&text(0.4)), D_IN, TASKS, &ops, BATCH, &mut StdRng::seed_from_u64(seed)).unwrap();
        let mut without =
            build_head(&section(&text(0.0)), D_IN, TASKS, &ops, BATCH, &mut StdRng::seed_from_u64(seed)).unwrap();
        let mut values = Vec::new();
        with.params(&mut |_, p| values.push(p.value[..p.len()].to_vec()));
        let mut k = 0;
        without.params(&mut |_, p| {
            let n = p.len();
            p.value[..n].copy_from_slice(&values[k]);
            k += 1;
        });
        let mut rng = StdRng::seed_from_u64(3);
        let x: Vec<f64> = (0..BATCH * D_IN).map(|_| rng.random_range(-1.0..1.0)).collect();
        let logits = |h: &mut Box<dyn Head<RefOpsF64>>| {
            h.forward(&ops, &x, BATCH).unwrap();
            (0..TASKS).flat_map(|t| h.logits(t)[..BATCH].to_vec()).collect::<Vec<f64>>()
        };
        let reference = logits(&mut without);
        // Some step drops an expert somewhere (p = 0.4 over every gate's rows).
        let changed = (0..20).any(|s| {
            with.set_dropout_step(s);
            logits(&mut with) != reference
        });
        assert!(changed, "{arch}: gate dropout never changed the logits");
        with.set_dropout_step(5);
        let a = logits(&mut with);
        with.set_dropout_step(5);
        assert_eq!(logits(&mut with), a, "{arch}: same step, same masks");
        with.set_training(false);
        assert_eq!(logits(&mut with), reference, "{arch}: off in evaluation");
        with.set_training(true);
        // The gradient check with the masks pinned to one step: the first step whose
        // masks leave every expert some weight in some row of each gate (an expert dropped
        // everywhere has an all-zero gradient, which the harness refuses).
        let step = (0..100)
            .find(|&s| {
                with.set_dropout_step(s);
                with.forward(&ops, &x, BATCH).unwrap();
                with.gates().iter().enumerate().all(|(g, info)| {
                    let (w, e) = (with.gate_weights(g).unwrap(), info.experts.len());
                    (0..e).all(|j| (0..BATCH).any(|r| w[r * e + j] > 0.0))
                })
            })
            .expect("some step keeps every expert");
        let forward = |h: &mut DynHead, inputs: &[Vec<f64>]| -> Vec<f64> {
            h.set_dropout_step(step);
            h.forward(&ops, &inputs[0], BATCH).unwrap();
            (0..TASKS).flat_map(|t| h.logits(t)[..BATCH].to_vec()).collect()
        };
        let backward = |h: &mut DynHead, inputs: &[Vec<f64>], r: &[f64]| -> Vec<Vec<f64>> {
            h.set_dropout_step(step);
            h.forward(&ops, &inputs[0], BATCH).unwrap();
            let d: Vec<Vec<f64>> = r.chunks(BATCH).map(<[f64]>::to_vec).collect();
            let refs: Vec<&Vec<f64>> = d.iter().collect();
            vec![h.backward(&ops, &inputs[0], &refs).unwrap()[..BATCH * D_IN].to_vec()]
        };
        check_grads(
            &format!("{arch} {extra}gate dropout"),
            &mut *with,
            std::slice::from_ref(&x),
            forward,
            backward,
            seed,
        );
    }
}

/// `exclude_experts` (the expert report's ablation): an expert whose gate weight is
/// already 0 everywhere changes nothing when masked; masking one with weight changes
/// the logits; an empty list restores the model; PLE refuses.
#[test]
fn excluding_experts_from_every_gate() {
    let ops = RefOpsF64::new();
    let text = "architecture = \"mmoe\"\nexpert_dim = 4\n\
                [[experts]]\nkind = \"mlp\"\ncount = 3\nhidden = [5]\nactivation = \"tanh\"\n";
    let mut head = build_head(&section(text), D_IN, TASKS, &ops, BATCH, &mut StdRng::seed_from_u64(9)).unwrap();
    // Expert 2 gets a logit bias of -1e4 in every gate: weight exp(-1e4) = 0 exactly.
    let mut biased = 0;
    head.params(&mut |name, p| {
        if name.starts_with("gates.") && name.ends_with("bias") {
            p.value[2] = -1e4;
            biased += 1;
        }
    });
    assert_eq!(biased, TASKS, "one gate per task");
    let mut rng = StdRng::seed_from_u64(4);
    let x: Vec<f64> = (0..BATCH * D_IN).map(|_| rng.random_range(-1.0..1.0)).collect();
    let logits = |h: &mut Box<dyn Head<RefOpsF64>>| {
        h.forward(&ops, &x, BATCH).unwrap();
        (0..TASKS).flat_map(|t| h.logits(t)[..BATCH].to_vec()).collect::<Vec<f64>>()
    };
    let full = logits(&mut head);
    for g in 0..head.gates().len() {
        let w = head.gate_weights(g).unwrap();
        assert!((0..BATCH).all(|r| w[r * 3 + 2] == 0.0), "the bias zeroes expert 2");
    }
    head.exclude_experts(&ops, &[2]).unwrap();
    assert_eq!(logits(&mut head), full, "masking a zero-weight expert changes nothing");
    head.exclude_experts(&ops, &[0]).unwrap();
    let cut = logits(&mut head);
    assert_ne!(cut, full, "masking a used expert changes the scores");
    for g in 0..head.gates().len() {
        let w = head.gate_weights(g).unwrap();
        for r in 0..BATCH {
            let row = &w[r * 3..r * 3 + 3];
            assert_eq!(row[0], 0.0);
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12, "renormalised: {row:?}");
        }
    }
    head.exclude_experts(&ops, &[]).unwrap();
    assert_eq!(logits(&mut head), full, "an empty list restores the model");
    let ple = "architecture = \"ple\"\nexpert_dim = 4\nple = { levels = 1, shared_experts = 1, task_experts = 1 }\n\
               [[experts]]\nkind = \"mlp\"\nhidden = [5]\n";
    let mut p = build_head(&section(ple), D_IN, TASKS, &ops, BATCH, &mut StdRng::seed_from_u64(9)).unwrap();
    let e = p.exclude_experts(&ops, &[0]).err().unwrap().to_string();
    assert!(e.contains("mmoe or omoe"), "{e}");
}
