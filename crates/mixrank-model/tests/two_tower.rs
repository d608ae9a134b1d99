//! The two-tower light ranker: each task's logit is the dot product of the user and
//! item towers' embeddings plus a bias (checked on the host), the finite-difference
//! check runs from the embedding tables through both towers (every parameter and
//! table gets a non-zero gradient), the item tower's embedding does not depend on the
//! request's features nor the user tower's on the item's, parameters carry stable
//! names, and the config refuses what a two-tower model cannot honour.

use mixrank_data::{Batch, CatColumn, ExperimentConfig};
use mixrank_engine::Backend;
use mixrank_model::{build_model, Model, TwoTowerModel};
use mixrank_nn::testing::{check_grads, RefOpsF64};
use mixrank_nn::Parameters;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type F = RefOpsF64;
const ROWS: usize = 5;

/// user (3), a shared `cat` table read by `ad_category` (item) and the pooled
/// `interests` (user), ad (2), position (2), device (2); dense `bid` (+ missing
/// indicator, item) and `age` (user).
const DATA: &str = r#"
[data]
format = "parquet"
[data.splits.train]
paths = ["x"]

[tables.cat]
buckets = 4
dim = 2

[[features.categorical]]
name = "user"
buckets = 6
dim = 3

[[features.categorical]]
name = "ad"
buckets = 5
dim = 2

[[features.categorical]]
name = "ad_category"
table = "cat"

[[features.categorical]]
name = "interests"
table = "cat"
multi_valued = { pooling = "mean" }

[[features.categorical]]
name = "position"
column = "position"
buckets = 4
dim = 2

[[features.categorical]]
name = "device"
vocabulary = ["ios", "web"]
dim = 2

[[features.dense]]
name = "bid"
missing_indicator = true

[[features.dense]]
name = "age"

[[tasks]]
name = "click"
kind = "binary"
label = "click"

[[tasks]]
name = "save"
kind = "binary"
label = "save"

[columns]
position = { column = "position", max = 4 }
"#;

const GROUPS: &str = r#"
[feature_groups]
user = ["user", "interests", "age"]
context = ["device"]
ad = ["ad", "ad_category", "bid"]
"#;

/// User tower: MMoE over an MLP and a DCNv2 expert; item tower: shared-bottom MLP.
const MODEL: &str = r#"
[model]
architecture = "two_tower"

[model.two_tower]
dim = 3

[model.two_tower.user]
inputs = ["user", "context"]
architecture = "mmoe"
expert_dim = 3
tower = { hidden = [4], activation = "tanh" }

[[model.two_tower.user.experts]]
kind = "mlp"
hidden = [3]
activation = "tanh"

[[model.two_tower.user.experts]]
kind = "dcnv2"
cross_layers = 1
low_rank = 2
hidden = [3]
activation = "tanh"

[model.two_tower.item]
inputs = ["ad"]
architecture = "shared_bottom"
expert_dim = 3
tower = { hidden = [2], activation = "tanh" }

[[model.two_tower.item.experts]]
kind = "mlp"
hidden = [4]
activation = "tanh"
"#;

/// [`MODEL`] with `score = "cosine"` at temperature 0.25.
fn cosine_model() -> String {
    MODEL
        .replace("[model.two_tower]\ndim = 3\n", "[model.two_tower]\ndim = 3\nscore = \"cosine\"\ntemperature = 0.25\n")
}

fn parse(text: &str) -> Result<ExperimentConfig, String> {
    ExperimentConfig::parse(text, std::path::Path::new("t.toml")).map_err(|e| e.to_string())
}

fn config() -> ExperimentConfig {
    parse(&format!("{DATA}{GROUPS}{MODEL}")).unwrap_or_else(|e| panic!("{e}"))
}

fn batch(cfg: &ExperimentConfig, seed: u64) -> Batch {
    let mut rng = StdRng::seed_from_u64(seed);
    let cat = cfg
        .categorical
        .iter()
        .map(|f| {
            let rows = cfg.tables[f.table].rows() as u32;
            match f.pooling {
                None => CatColumn { ids: (0..ROWS).map(|_| rng.random_range(0..rows)).collect(), offsets: None },
                // Bags of 2, 1, 0, 3, 1 ids.
                Some(_) => {
                    let offsets = vec![0u32, 2, 3, 3, 6, 7];
                    let ids = (0..offsets[ROWS]).map(|_| rng.random_range(0..rows)).collect();
                    CatColumn { ids, offsets: Some(offsets) }
                }
            }
        })
        .collect();
    let width = cfg.dense_width();
    Batch {
        rows: ROWS,
        cat,
        dense: (0..ROWS * width).map(|_| rng.random_range(-1.0..1.0)).collect(),
        dense_width: width,
        n_tasks: 2,
        position: vec![1, 2, 3, 1, 2],
        ..Default::default()
    }
}

fn model<B: Backend + 'static>(cfg: &ExperimentConfig, ops: &B) -> TwoTowerModel<B>
where
    B::Buf: Send,
{
    TwoTowerModel::new(cfg, ops, ROWS, &mut StdRng::seed_from_u64(3)).unwrap()
}

/// Random parameters (the biases too), so no term hides at 0.
fn randomise(m: &mut TwoTowerModel<F>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    m.params(&mut |_, p| {
        let n = p.len();
        for v in &mut p.value[..n] {
            *v = rng.random_range(-0.8..0.8);
        }
    });
}

#[test]
fn each_logit_is_the_dot_product_of_the_towers_plus_a_bias() {
    let ops = F::new();
    let cfg = config();
    let mut m = model(&cfg, &ops);
    randomise(&mut m, 1);
    let b = batch(&cfg, 2);
    m.forward(&ops, &b).unwrap();
    let mut biases = Vec::new();
    m.params(&mut |n, p| {
        if n.starts_with("score.") {
            biases.push(p.value[0]);
        }
    });
    assert_eq!(biases.len(), 2);
    let d = m.dim();
    for (t, bias) in biases.iter().enumerate() {
        let (u, v) = (m.user_embedding(t), m.item_embedding(t));
        for r in 0..ROWS {
            let dot: f64 = (0..d).map(|j| u[r * d + j] * v[r * d + j]).sum();
            let got = Model::logits(&m, t)[r];
            assert!((got - (dot + bias)).abs() < 1e-12, "task {t} row {r}: {got} vs {}", dot + bias);
        }
        assert!((0..ROWS * d).any(|i| u[i] != 0.0) && (0..ROWS * d).any(|i| v[i] != 0.0));
    }
    // Without the bias the logit is the dot product alone, and there is no bias parameter.
    let cfg = parse(&format!(
        "{DATA}{GROUPS}{}",
        MODEL.replace("[model.two_tower]\ndim = 3\n", "[model.two_tower]\ndim = 3\nbias = false\n")
    ))
    .unwrap();
    let mut m = model(&cfg, &ops);
    let mut names = Vec::new();
    m.params(&mut |n, _| names.push(n.to_string()));
    assert!(!names.iter().any(|n| n.starts_with("score.")), "{names:?}");
    m.forward(&ops, &b).unwrap();
    for r in 0..ROWS {
        let dot: f64 = (0..d).map(|j| m.user_embedding(0)[r * d + j] * m.item_embedding(0)[r * d + j]).sum();
        assert!((Model::logits(&m, 0)[r] - dot).abs() < 1e-12);
    }
}

#[test]
fn a_cosine_logit_is_the_cosine_of_the_towers_over_the_temperature_plus_a_bias() {
    let ops = F::new();
    let (dot_cfg, cos_cfg) = (config(), parse(&format!("{DATA}{GROUPS}{}", cosine_model())).unwrap());
    // The same seed gives the same parameters: the normalisation has none.
    let (mut dot, mut cos) = (model(&dot_cfg, &ops), model(&cos_cfg, &ops));
    randomise(&mut dot, 1);
    randomise(&mut cos, 1);
    assert_eq!(cos.inv_temperature(), Some(4.0));
    assert_eq!(dot.inv_temperature(), None);
    let b = batch(&dot_cfg, 2);
    dot.forward(&ops, &b).unwrap();
    cos.forward(&ops, &b).unwrap();
    let mut biases = Vec::new();
    cos.params(&mut |n, p| {
        if n.starts_with("score.") {
            biases.push(p.value[0]);
        }
    });
    let d = dot.dim();
    for (t, bias) in biases.iter().enumerate() {
        // The dot model's embeddings are the raw tower outputs.
        let (u, v) = (dot.user_embedding(t), dot.item_embedding(t));
        for r in 0..ROWS {
            let (ur, vr) = (&u[r * d..(r + 1) * d], &v[r * d..(r + 1) * d]);
            let norm = |x: &[f64]| x.iter().map(|a| a * a).sum::<f64>().sqrt();
            let cosine = ur.iter().zip(vr).map(|(a, b)| a * b).sum::<f64>() / (norm(ur) * norm(vr));
            let want = cosine / 0.25 + bias;
            let got = Model::logits(&cos, t)[r];
            assert!((got - want).abs() < 1e-9, "task {t} row {r}: {got} vs {want}");
            // The cosine model's embeddings are the unit vectors the score read.
            let unit = &cos.user_embedding(t)[r * d..(r + 1) * d];
            assert!((norm(unit) - 1.0).abs() < 1e-12 && (unit[0] - ur[0] / norm(ur)).abs() < 1e-12);
        }
    }
}

#[test]
fn parameters_are_named_by_tower() {
    let ops = F::new();
    let cfg = config();
    let mut m = model(&cfg, &ops);
    let mut names = Vec::new();
    m.params(&mut |n, p| names.push((n.to_string(), p.shape.clone())));
    let first_item = names.iter().position(|(n, _)| n.starts_with("item.")).unwrap();
    assert!(names[..first_item].iter().all(|(n, _)| n.starts_with("user.")), "{names:?}");
    assert!(names.iter().any(|(n, _)| n.starts_with("user.gates.1.")), "MMoE: a gate per task");
    // Each tower's towers end in `dim` units per task.
    for side in ["user", "item"] {
        for t in 0..2 {
            let out = names.iter().find(|(n, _)| n == &format!("{side}.towers.{t}.output.weight")).unwrap();
            assert_eq!(out.1[1], 3, "{side} tower {t}");
        }
    }
    let tail: Vec<&str> = names[names.len() - 2..].iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(tail, ["score.0.bias", "score.1.bias"]);
    // The description names each tower's groups.
    let io = m.io();
    assert_eq!(io.tasks, ["click", "save"]);
    let parts: Vec<(&str, Vec<&str>)> =
        io.inputs.iter().map(|(p, g)| (p.as_str(), g.iter().map(|g| g.name.as_str()).collect())).collect();
    assert_eq!(parts, [("user", vec!["user", "context"]), ("item", vec!["ad"])]);
    // user 3 + interests 2 + age 1 + device 2; ad 2 + ad_category 2 + bid 1 + indicator 1.
    assert_eq!(io.inputs[0].1.iter().map(|g| g.width).sum::<usize>(), 8);
    assert_eq!(io.inputs[1].1.iter().map(|g| g.width).sum::<usize>(), 6);
    // build_model picks the type from the config.
    let built = build_model(&cfg, &ops, ROWS, &mut StdRng::seed_from_u64(3)).unwrap();
    assert_eq!(built.io(), m.io());
}

#[test]
fn the_item_embedding_does_not_depend_on_the_request_nor_the_user_embedding_on_the_item() {
    let ops = F::new();
    let cfg = config();
    let mut m = model(&cfg, &ops);
    randomise(&mut m, 4);
    let b = batch(&cfg, 5);
    m.forward(&ops, &b).unwrap();
    let snapshot = |m: &TwoTowerModel<F>| -> (Vec<f64>, Vec<f64>) {
        let n = ROWS * m.dim();
        (
            (0..2).flat_map(|t| m.user_embedding(t)[..n].to_vec()).collect(),
            (0..2).flat_map(|t| m.item_embedding(t)[..n].to_vec()).collect(),
        )
    };
    let (u0, v0) = snapshot(&m);
    let feature = |name: &str| cfg.categorical.iter().position(|f| f.name == name).unwrap();
    // Another user, device, interests, age and position: the item side is unchanged.
    let mut request = b.clone();
    for name in ["user", "device", "position"] {
        let f = feature(name);
        let rows = cfg.tables[cfg.categorical[f].table].rows() as u32;
        for id in &mut request.cat[f].ids {
            *id = (*id + 1) % rows;
        }
    }
    request.cat[feature("interests")].ids.iter_mut().for_each(|id| *id = (*id + 1) % 4);
    let age = cfg.dense.iter().position(|d| d.name == "age").unwrap();
    for r in 0..ROWS {
        request.dense[r * cfg.dense_width() + age] += 0.5;
    }
    m.forward(&ops, &request).unwrap();
    let (u1, v1) = snapshot(&m);
    assert_eq!(v1, v0, "the item tower read a request feature");
    assert_ne!(u1, u0);
    // Another ad, category and bid: the user side is unchanged.
    let mut item = b.clone();
    for name in ["ad", "ad_category"] {
        let f = feature(name);
        let rows = cfg.tables[cfg.categorical[f].table].rows() as u32;
        for id in &mut item.cat[f].ids {
            *id = (*id + 1) % rows;
        }
    }
    let bid = cfg.dense.iter().position(|d| d.name == "bid").unwrap();
    for r in 0..ROWS {
        item.dense[r * cfg.dense_width() + bid] -= 0.5;
    }
    m.forward(&ops, &item).unwrap();
    let (u2, v2) = snapshot(&m);
    assert_eq!(u2, u0, "the user tower read an item feature");
    assert_ne!(v2, v0);
}

#[test]
fn gradients_flow_from_the_tables_through_both_towers() {
    check_table_grads(&config(), "embeddings → user and item towers → dot products");
}

#[test]
fn gradients_flow_through_the_cosine_score() {
    let cfg = parse(&format!("{DATA}{GROUPS}{}", cosine_model())).unwrap();
    check_table_grads(&cfg, "embeddings → user and item towers → normalised → cosine / τ");
}

/// The f64 finite-difference check of the logits w.r.t. every embedding table, every
/// tower parameter and the biases.
fn check_table_grads(cfg: &ExperimentConfig, what: &str) {
    let ops = F::new();
    let mut m = model(cfg, &ops);
    let b = batch(cfg, 9);
    randomise(&mut m, 10);
    let mut rng = StdRng::seed_from_u64(11);
    let emb = m.embeddings().unwrap();
    let sizes: Vec<usize> = emb.tables().iter().map(|t| t.rows * t.dim).collect();
    let table_of: Vec<usize> = emb.config().features.iter().map(|f| f.table).collect();
    let tables: Vec<f64> = (0..sizes.iter().sum()).map(|_| rng.random_range(-1.0..1.0)).collect();
    let set_tables = |m: &mut TwoTowerModel<F>, flat: &[f64]| {
        let mut at = 0;
        for t in m.embeddings_mut().unwrap().tables_mut() {
            let n = t.rows * t.dim;
            t.value[..n].copy_from_slice(&flat[at..at + n]);
            at += n;
        }
    };
    let forward = |m: &mut TwoTowerModel<F>, inputs: &[Vec<f64>]| -> Vec<f64> {
        set_tables(m, &inputs[0]);
        m.forward(&ops, &b).unwrap();
        (0..2).flat_map(|t| Model::logits(m, t)[..ROWS].to_vec()).collect()
    };
    let backward = |m: &mut TwoTowerModel<F>, inputs: &[Vec<f64>], r: &[f64]| -> Vec<Vec<f64>> {
        set_tables(m, &inputs[0]);
        m.forward(&ops, &b).unwrap();
        let (d0, d1) = r.split_at(ROWS);
        m.backward(&ops, &b, &[&d0.to_vec(), &d1.to_vec()]).unwrap();
        let emb = m.embeddings().unwrap();
        let offsets: Vec<usize> = sizes.iter().scan(0, |a, &s| Some(std::mem::replace(a, *a + s))).collect();
        let mut d = vec![0.0; sizes.iter().sum()];
        for (f, &t) in table_of.iter().enumerate() {
            let g = emb.grad(f);
            for (k, &id) in g.ids[..g.len].iter().enumerate() {
                for j in 0..g.dim {
                    d[offsets[t] + id as usize * g.dim + j] += g.rows[k * g.dim + j];
                }
            }
        }
        // Every table but position's (no tower reads it) gets a gradient.
        let position = cfg.categorical.iter().find(|f| f.name == "position").unwrap().table;
        for (t, (&o, &s)) in offsets.iter().zip(&sizes).enumerate() {
            let any = d[o..o + s].iter().any(|v| v.abs() > 1e-6);
            assert_eq!(any, t != position, "table {t}: gradient present = {any}");
        }
        vec![d]
    };
    // Also asserts every parameter of both towers and the biases gets a non-zero gradient.
    check_grads(what, &mut m, &[tables], forward, backward, 12);
}

#[test]
fn the_config_refuses_what_a_two_tower_model_cannot_honour() {
    let err = |groups: &str, model: &str| parse(&format!("{DATA}{groups}{model}")).err().unwrap_or_default();
    let cases: Vec<(String, &str, &str)> = vec![
        // Position in a tower.
        (
            err(&GROUPS.replace("context = [\"device\"]", "context = [\"device\", \"position\"]"), MODEL),
            "model.two_tower.user.inputs",
            "position",
        ),
        // A feature in both towers.
        (
            err(&GROUPS.replace("ad = [\"ad\",", "ad = [\"device\", \"ad\","), MODEL),
            "model.two_tower.item.inputs",
            "both towers",
        ),
        // A bias group in the item tower.
        (
            err(
                &format!("{GROUPS}bias = [\"device\"]\n"),
                &MODEL.replace("inputs = [\"ad\"]", "inputs = [\"ad\", \"bias\"]"),
            ),
            "model.two_tower.item.inputs",
            "bias features",
        ),
        // Head keys at the top of [model].
        (
            err(
                GROUPS,
                &MODEL.replace("architecture = \"two_tower\"\n", "architecture = \"two_tower\"\nexpert_dim = 8\n"),
            ),
            "model.expert_dim",
            "[model.two_tower.user]",
        ),
        (
            err(
                GROUPS,
                &MODEL
                    .replace("architecture = \"two_tower\"\n", "architecture = \"two_tower\"\ngate = { top_k = 1 }\n"),
            ),
            "model.gate",
            "[model.two_tower.user]",
        ),
        (
            err(
                GROUPS,
                &MODEL.replace("architecture = \"two_tower\"\n", "architecture = \"two_tower\"\ninputs = [\"ad\"]\n"),
            ),
            "model.inputs",
            "two-tower",
        ),
        (
            err(GROUPS, &format!("{MODEL}[[model.experts]]\nkind = \"mlp\"\nhidden = [2]\n")),
            "model.experts",
            "two-tower",
        ),
        // No [model.two_tower], or one for another architecture.
        (err(GROUPS, "[model]\narchitecture = \"two_tower\"\n"), "model.two_tower", "required"),
        (err(GROUPS, &MODEL.replacen("architecture = \"two_tower\"", "architecture = \"mmoe\"", 1)), "model.", ""),
        // A tower of the wrong architecture, a bad dim, a bad tower head.
        (
            err(GROUPS, &MODEL.replace("architecture = \"shared_bottom\"", "architecture = \"two_tower\"")),
            "model.two_tower.item.architecture",
            "any architecture but",
        ),
        (
            err(GROUPS, &MODEL.replace("[model.two_tower]\ndim = 3\n", "[model.two_tower]\ndim = 0\n")),
            "model.two_tower.dim",
            "positive",
        ),
        (
            err(GROUPS, &MODEL.replace("hidden = [4]\nactivation", "hidden = [0]\nactivation")),
            "model.two_tower.item.experts[0].hidden",
            "positive",
        ),
        (
            err(GROUPS, &MODEL.replace("cross_layers = 1", "blocks = 1")),
            "model.two_tower.user.experts[1].blocks",
            "dcnv2",
        ),
        // Unknown group; a feature in no tower.
        (
            err(GROUPS, &MODEL.replace("inputs = [\"ad\"]", "inputs = [\"ads\"]")),
            "model.two_tower.item.inputs",
            "no feature group `ads`",
        ),
        (err(&GROUPS.replace(", \"age\"]", "]"), MODEL), "model.inputs", "`age` is read by no part"),
        // A temperature without a cosine score; a cosine score without one, or a bad one.
        (
            err(
                GROUPS,
                &MODEL.replace("[model.two_tower]\ndim = 3\n", "[model.two_tower]\ndim = 3\ntemperature = 0.1\n"),
            ),
            "model.two_tower.temperature",
            "only a cosine score",
        ),
        (err(GROUPS, &cosine_model().replace("temperature = 0.25\n", "")), "model.two_tower.temperature", "needs"),
        (
            err(GROUPS, &cosine_model().replace("temperature = 0.25", "temperature = 0.0")),
            "model.two_tower.temperature",
            "> 0",
        ),
        (
            err(
                GROUPS,
                &MODEL.replace("[model.two_tower]\ndim = 3\n", "[model.two_tower]\ndim = 3\nscore = \"cos\"\n"),
            ),
            "score",
            "unknown variant",
        ),
        // Not yet: a position tower beside the two towers.
        (
            err(&format!("{GROUPS}bias = [\"position\"]\n"), &format!("{MODEL}[model.position_tower]\n")),
            "model.position_tower",
            "not yet",
        ),
    ];
    for (i, (e, key, words)) in cases.iter().enumerate() {
        assert!(e.contains(key) && e.contains(words), "case {i}: expected `{key}` and `{words}` in: {e}");
    }
    // The mmoe case above: a [model.two_tower] for another architecture is refused.
    assert!(cases[8].0.contains("model.two_tower") && cases[8].0.contains("only for"), "{}", cases[8].0);
    // Unread position is fine for a two-tower model, and a request need not carry it.
    let cfg = config();
    let free: Vec<String> = cfg.request_free_columns();
    assert_eq!(free, ["position"]);
}

#[test]
fn the_config_round_trips_through_its_serialised_form() {
    let cfg = config();
    let text = toml::to_string(&cfg.wire).unwrap();
    assert!(!text.contains("expert_dim = 128"), "no head keys written at the top:\n{text}");
    let again = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(toml::to_string(&again.wire).unwrap(), text);
    assert_eq!(again.inputs, cfg.inputs);
    // And a cosine score keeps its temperature.
    let cfg = parse(&format!("{DATA}{GROUPS}{}", cosine_model())).unwrap();
    let text = toml::to_string(&cfg.wire).unwrap();
    let again = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let tt = |c: &ExperimentConfig| c.model.as_ref().unwrap().two_tower.as_ref().unwrap().score();
    assert_eq!(tt(&again), mixrank_data::config::model::TwoTowerScore::Cosine { temperature: 0.25 });
}

#[test]
fn the_towers_gates_are_reported_by_tower_in_order() {
    use mixrank_model::{GateRole, TowerName};
    // The item tower as an OMoE over two MLP experts: one gate for every task.
    let item_omoe = MODEL.replace(
        "[model.two_tower.item]\ninputs = [\"ad\"]\narchitecture = \"shared_bottom\"",
        "[model.two_tower.item]\ninputs = [\"ad\"]\narchitecture = \"omoe\"",
    ) + "\n[[model.two_tower.item.experts]]\nkind = \"mlp\"\nhidden = [2]\n";
    let cfg = parse(&format!("{DATA}{GROUPS}{item_omoe}")).unwrap_or_else(|e| panic!("{e}"));
    let ops = F::new();
    let mut m = model(&cfg, &ops);
    randomise(&mut m, 4);
    let gates = Model::gates(&m);
    let got: Vec<(Option<TowerName>, GateRole, Vec<String>)> =
        gates.iter().map(|g| (g.tower, g.role, g.experts.iter().map(|e| e.kind.clone()).collect())).collect();
    let user = vec!["mlp".to_string(), "dcnv2".to_string()];
    let item = vec!["mlp".to_string(), "mlp".to_string()];
    assert_eq!(
        got,
        vec![
            (Some(TowerName::User), GateRole::Task(0), user.clone()),
            (Some(TowerName::User), GateRole::Task(1), user),
            (Some(TowerName::Item), GateRole::AllTasks, item),
        ]
    );
    // Each gate's weights from the last forward: a distribution over its experts per row.
    let b = batch(&cfg, 5);
    m.forward(&ops, &b).unwrap();
    let weights = |m: &TwoTowerModel<F>| -> Vec<Vec<f64>> {
        (0..3).map(|g| Model::gate_weights(m, g).expect("gate").to_vec()).collect()
    };
    let w = weights(&m);
    for (g, w) in w.iter().enumerate() {
        assert_eq!(w.len(), ROWS * 2, "gate {g}");
        for r in 0..ROWS {
            let row = &w[r * 2..r * 2 + 2];
            assert!(row.iter().all(|&x| x > 0.0) && (row.iter().sum::<f64>() - 1.0).abs() < 1e-12, "gate {g} row {r}");
        }
    }
    assert!(Model::gate_weights(&m, 3).is_none());
    // Gate 2 is the item tower's: other item features move it and leave the user
    // tower's gates (0, 1) as they were.
    let mut other = b.clone();
    let ad = cfg.categorical.iter().position(|f| f.name == "ad").unwrap();
    for id in &mut other.cat[ad].ids {
        *id = (*id + 1) % cfg.tables[cfg.categorical[ad].table].rows() as u32;
    }
    m.forward(&ops, &other).unwrap();
    let w2 = weights(&m);
    assert_eq!(w2[..2], w[..2], "the user tower's gates do not read the item");
    assert_ne!(w2[2], w[2], "the item tower's gate reads the item");
}
