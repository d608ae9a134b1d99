//! Checkpoint compatibility of the heads: every architecture's parameters keep their
//! names, shapes, visit order and initial values (the same draws from the seeded rng,
//! in the same order). Checkpoints, optimizer state and warm starts are keyed on the
//! names; the CLI snapshots and resume-equality tests depend on the initial values.
//!
//! `tests/golden/head_params.txt` was written by the single-struct head this crate had
//! before the heads became separate types; a difference here is a format change.

use mixrank_data::config::model::ModelSection;
use mixrank_model::build_head;
use mixrank_nn::testing::RefOpsF64;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::fmt::Write;

/// One model file per architecture, each with as many parts as it takes (shared layer,
/// every expert kind, top-k gates, several PLE levels).
const ARCHITECTURES: [(&str, usize, &str); 5] = [
    (
        "single_task",
        1,
        "architecture = \"single_task\"\nexpert_dim = 4\nshared = { hidden = [6], layer_norm = true }\n\
         tower = { hidden = [3] }\n[[experts]]\nkind = \"finalmlp\"\nhidden = [4]\nstream2 = [2]\nheads = 2\n",
    ),
    (
        "shared_bottom",
        2,
        "architecture = \"shared_bottom\"\nexpert_dim = 4\ntower = { hidden = [3] }\n\
         [[experts]]\nkind = \"dcnv2\"\ncross_layers = 2\nlow_rank = 2\nhidden = [5]\n",
    ),
    (
        "omoe",
        2,
        "architecture = \"omoe\"\nexpert_dim = 4\nshared = { hidden = [6] }\ntower = { hidden = [3] }\n\
         [[experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nhidden = [4]\n\
         [[experts]]\nkind = \"masknet\"\nblocks = 2\nblock_dim = 3\n\
         [[experts]]\nkind = \"finalmlp\"\nhidden = [4]\nstream2 = [2]\nheads = 2\n\
         [[experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [5]\n",
    ),
    (
        "mmoe_top_k",
        3,
        "architecture = \"mmoe\"\nexpert_dim = 4\ntower = { hidden = [3] }\ngate = { top_k = 2, temperature = 0.7 }\n\
         [[experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nstructure = \"parallel\"\nhidden = [4]\n\
         [[experts]]\nkind = \"masknet\"\nblocks = 1\nblock_dim = 3\nstructure = \"parallel\"\n\
         [[experts]]\nkind = \"finalmlp\"\nhidden = [4]\n\
         [[experts]]\nkind = \"mlp\"\nhidden = [4]\n",
    ),
    (
        "ple",
        2,
        "architecture = \"ple\"\nexpert_dim = 4\nshared = { hidden = [5] }\ntower = { hidden = [3] }\n\
         ple = { levels = 3, shared_experts = 3, task_experts = 2 }\n\
         [[experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nhidden = [4]\n\
         [[experts]]\nkind = \"masknet\"\nblocks = 1\nblock_dim = 3\n\
         [[experts]]\nkind = \"finalmlp\"\nhidden = [4]\n\
         [[experts]]\nkind = \"mlp\"\nhidden = [4]\n",
    ),
];

/// Per architecture, per parameter in visit order: name, shape, and the exact sum and
/// first element of its initial values (f32 draws, summed exactly in f64 order).
fn render() -> String {
    let ops = RefOpsF64::new();
    let mut out = String::new();
    for (name, tasks, text) in ARCHITECTURES {
        let m: ModelSection = toml::from_str(text).expect("valid [model] section");
        let mut head = build_head(&m, 7, tasks, &ops, 3, &mut StdRng::seed_from_u64(11)).unwrap();
        writeln!(out, "## {name}").unwrap();
        head.params(&mut |p, param| {
            let n = param.len();
            let v = &param.value[..n];
            let sum: f64 = v.iter().sum();
            writeln!(out, "{p} {:?} {:e} {:e}", param.shape, v[0], sum).unwrap();
        });
    }
    out
}

#[test]
fn parameter_names_shapes_and_initial_values_are_unchanged() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/head_params.txt");
    let got = render();
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        assert_eq!(g, w, "line {}", i + 1);
    }
    assert_eq!(got.lines().count(), want.lines().count());
    // Every architecture is there, each with its parameters.
    for (name, _, _) in ARCHITECTURES {
        assert!(want.contains(&format!("## {name}\n")), "{name}");
    }
    assert!(want.lines().count() > 100, "{}", want.lines().count());
}
