//! The two-tower model's in-batch softmax loss (`[model.two_tower.in_batch]`): its
//! gradient, joined to the pointwise logit gradients, matches f64 finite differences of
//! `J = Σ r ⊙ logits + weight · L_in_batch` (the loss recomputed here from the towers'
//! embeddings, not read from the model) for every parameter, under the dot and the
//! cosine score; the model reports the loss; in evaluation mode it is off; the config
//! refuses what the loss cannot honour.

use mixrank_data::{Batch, CatColumn, ExperimentConfig};
use mixrank_model::{Model, TwoTowerModel};
use mixrank_nn::testing::gradcheck::{derivative, TOL};
use mixrank_nn::testing::RefOpsF64;
use mixrank_nn::Parameters;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type F = RefOpsF64;
const ROWS: usize = 6;
const TEMPERATURE: f64 = 0.5;
const WEIGHT: f64 = 0.7;

const CONFIG: &str = r#"
[data]
format = "parquet"
[data.splits.train]
paths = ["x"]

[[features.categorical]]
name = "user"
buckets = 7
dim = 3

[[features.categorical]]
name = "ad"
buckets = 5
dim = 2

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

[feature_groups]
user = ["user", "age"]
ad = ["ad"]

[model]
architecture = "two_tower"

[model.two_tower]
dim = 3
SCORE
[model.two_tower.in_batch]
task = "click"
temperature = 0.5
weight = 0.7

[model.two_tower.user]
inputs = ["user"]
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

fn config(score: &str) -> ExperimentConfig {
    let text = CONFIG.replace("SCORE", score);
    ExperimentConfig::parse(&text, std::path::Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// Clicks on rows 0, 2, 3 (row 3 masked out of `click`), varied sample weights.
fn batch(cfg: &ExperimentConfig) -> Batch {
    let mut rng = StdRng::seed_from_u64(5);
    let cat = cfg
        .categorical
        .iter()
        .map(|f| {
            let rows = cfg.tables[f.table].rows() as u32;
            CatColumn { ids: (0..ROWS).map(|_| rng.random_range(0..rows)).collect(), offsets: None }
        })
        .collect();
    let width = cfg.dense_width();
    let click = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0];
    let save = [0.0, 1.0, 0.0, 0.0, 1.0, 0.0];
    let mut mask = vec![1.0f32; 2 * ROWS];
    mask[3] = 0.0;
    Batch {
        rows: ROWS,
        cat,
        dense: (0..ROWS * width).map(|_| rng.random_range(-1.0..1.0)).collect(),
        dense_width: width,
        n_tasks: 2,
        labels: click.iter().chain(&save).copied().collect(),
        label_mask: mask,
        weights: vec![1.0, 2.0, 0.5, 1.0, 1.0, 1.5],
        ..Default::default()
    }
}

/// The in-batch loss from the model's score embeddings, in f64: positives of `click`
/// (label 1, not masked) against every row's item.
fn in_batch_loss(m: &TwoTowerModel<F>, b: &Batch) -> f64 {
    let (u, v, dim) = (m.user_embedding(0), m.item_embedding(0), m.dim());
    let (mut l, mut wsum) = (0.0, 0.0);
    for i in 0..ROWS {
        if b.mask(0)[i] == 0.0 || b.label(0)[i] < 0.5 {
            continue;
        }
        let s: Vec<f64> =
            (0..ROWS).map(|j| (0..dim).map(|k| u[i * dim + k] * v[j * dim + k]).sum::<f64>() / TEMPERATURE).collect();
        let lse = s.iter().map(|x| x.exp()).sum::<f64>().ln();
        let w = b.weights[i] as f64;
        l += w * (lse - s[i]);
        wsum += w;
    }
    l / wsum
}

fn randomise(m: &mut TwoTowerModel<F>) {
    let mut rng = StdRng::seed_from_u64(10);
    m.params(&mut |_, p| {
        let n = p.len();
        for v in &mut p.value[..n] {
            *v = rng.random_range(-0.8..0.8);
        }
    });
    for t in m.embeddings_mut().unwrap().tables_mut() {
        let n = t.rows * t.dim;
        for v in &mut t.value[..n] {
            *v = rng.random_range(-1.0..1.0);
        }
    }
}

/// Adds `delta` to element `elem` of the `index`-th dense parameter.
fn nudge(m: &mut TwoTowerModel<F>, index: usize, elem: usize, delta: f64) {
    let mut i = 0;
    m.params(&mut |_, p| {
        if i == index {
            p.value[elem] += delta;
        }
        i += 1;
    });
}

fn check(score: &str) {
    let cfg = config(score);
    let ops = F::new();
    let mut m = TwoTowerModel::new(&cfg, &ops, ROWS, &mut StdRng::seed_from_u64(3)).unwrap();
    randomise(&mut m);
    let b = batch(&cfg);
    let mut rng = StdRng::seed_from_u64(12);
    let r: Vec<Vec<f64>> = (0..2).map(|_| (0..ROWS).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
    let objective = |m: &mut TwoTowerModel<F>| {
        Model::forward(m, &ops, &b).unwrap();
        let pointwise: f64 = (0..2).map(|t| (0..ROWS).map(|i| r[t][i] * Model::logits(m, t)[i]).sum::<f64>()).sum();
        pointwise + WEIGHT * in_batch_loss(m, &b)
    };
    mixrank_nn::zero_grads(&ops, &mut m).unwrap();
    Model::forward(&mut m, &ops, &b).unwrap();
    Model::backward(&mut m, &ops, &b, &[&r[0], &r[1]]).unwrap();
    let reported = m.aux_losses();
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0].0, "in_batch_softmax:click");
    let want = in_batch_loss(&m, &b);
    assert!((reported[0].1 as f64 - want).abs() <= 1e-6 * want, "{reported:?} vs {want}");
    let mut analytic = Vec::new();
    m.params(&mut |name, p| analytic.push((name.to_string(), p.grad[..p.len()].to_vec())));
    for (index, (name, grad)) in analytic.iter().enumerate() {
        for (elem, &an) in grad.iter().enumerate() {
            let fd = derivative(|delta| {
                nudge(&mut m, index, elem, delta);
                let j = objective(&mut m);
                nudge(&mut m, index, elem, -delta);
                j
            });
            assert!(
                (fd - an).abs() <= TOL * (1.0 + fd.abs()),
                "{score}: d{name}[{elem}] analytic {an} vs numeric {fd}"
            );
        }
    }
    // The in-batch term is there: without it (evaluation mode) the click towers'
    // gradients differ, and the save towers' do not.
    m.set_training(false);
    mixrank_nn::zero_grads(&ops, &mut m).unwrap();
    Model::forward(&mut m, &ops, &b).unwrap();
    Model::backward(&mut m, &ops, &b, &[&r[0], &r[1]]).unwrap();
    let mut pointwise = Vec::new();
    m.params(&mut |name, p| pointwise.push((name.to_string(), p.grad[..p.len()].to_vec())));
    let differs = |pred: &dyn Fn(&str) -> bool| {
        analytic.iter().zip(&pointwise).filter(|((n, _), _)| pred(n)).any(|((_, a), (_, p))| a != p)
    };
    assert!(differs(&|n: &str| n.contains("towers.0") || n.contains("user.experts")), "{score}: no in-batch term");
    assert!(!differs(&|n: &str| n.contains("towers.1")), "{score}: the in-batch loss of click moved save's tower");
}

#[test]
fn the_in_batch_gradient_matches_finite_differences_under_a_dot_score() {
    check("");
}

#[test]
fn the_in_batch_gradient_matches_finite_differences_under_a_cosine_score() {
    check("score = \"cosine\"\ntemperature = 0.25\n");
}

#[test]
fn the_config_refuses_a_bad_in_batch_section() {
    let bad = |from: &str, to: &str| {
        let text = CONFIG.replace("SCORE", "").replace(from, to);
        ExperimentConfig::parse(&text, std::path::Path::new("t.toml")).unwrap_err().to_string()
    };
    let e = bad("task = \"click\"\ntemperature", "task = \"dwell\"\ntemperature");
    assert!(e.contains("model.two_tower.in_batch.task") && e.contains("dwell"), "{e}");
    let e = bad("temperature = 0.5\nweight", "temperature = 0.0\nweight");
    assert!(e.contains("model.two_tower.in_batch.temperature"), "{e}");
    let e = bad("weight = 0.7", "weight = -1.0");
    assert!(e.contains("model.two_tower.in_batch.weight"), "{e}");
    let e = bad("weight = 0.7", "weight = 0.7\nnegatives = 5");
    assert!(e.contains("negatives"), "{e}");
}
