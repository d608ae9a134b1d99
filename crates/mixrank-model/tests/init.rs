//! `[model] init` and `embedding_init`: the initialised weights follow the chosen scheme
//! (statistical checks with bounds derived from the sample size), and without the keys
//! the model is today's, draw for draw.

use mixrank_data::ExperimentConfig;
use mixrank_model::build_model;
use mixrank_nn::testing::RefOpsF64;
use mixrank_nn::Init;
use rand::rngs::StdRng;
use rand::SeedableRng;

const SEED: u64 = 7;

fn config(model_keys: &str) -> ExperimentConfig {
    let text = format!(
        r#"
[data]
format = "parquet"
[data.splits.train]
paths = ["x.parquet"]
[[features.categorical]]
name = "user"
buckets = 3000
dim = 32
[[features.categorical]]
name = "item"
buckets = 500
dim = 32
[[features.dense]]
name = "bid"
[[tasks]]
name = "click"
kind = "binary"
label = "click"
[[tasks]]
name = "save"
kind = "binary"
label = "save"
[model]
architecture = "mmoe"
expert_dim = 96
{model_keys}
shared = {{ hidden = [80], layer_norm = true }}
tower = {{ hidden = [40] }}
[[model.experts]]
kind = "mlp"
count = 2
hidden = [200, 96]
[[model.experts]]
kind = "dcnv2"
cross_layers = 1
low_rank = 16
hidden = [64]
"#
    );
    ExperimentConfig::parse(&text, std::path::Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// A built model's parameters: (name, shape, decay, values), then its tables (rows, dim, values).
struct Built {
    params: Vec<(String, Vec<usize>, bool, Vec<f64>)>,
    tables: Vec<(usize, usize, Vec<f64>)>,
}

fn build(model_keys: &str) -> Built {
    let cfg = config(model_keys);
    let ops = RefOpsF64::new();
    let mut m = build_model(&cfg, &ops, 4, &mut StdRng::seed_from_u64(SEED)).unwrap();
    let mut params = Vec::new();
    m.params(&mut |name, p| {
        params.push((name.to_string(), p.shape.clone(), p.decay, p.value[..p.len()].to_vec()));
    });
    let tables =
        m.embeddings().unwrap().tables().iter().map(|t| (t.rows, t.dim, t.value[..t.rows * t.dim].to_vec())).collect();
    Built { params, tables }
}

/// The scheme's standard deviation and (for uniform schemes) bound for fans (fan_in, fan_out).
fn expected(init: Init, fan_in: usize, fan_out: usize) -> (f64, Option<f64>) {
    let (fi, fo) = (fan_in as f64, fan_out as f64);
    let uniform = |a: f64| (a / 3f64.sqrt(), Some(a));
    match init {
        Init::XavierUniform => uniform((6.0 / (fi + fo)).sqrt()),
        Init::XavierNormal => ((2.0 / (fi + fo)).sqrt(), None),
        Init::HeUniform => uniform((6.0 / fi).sqrt()),
        Init::HeNormal => ((2.0 / fi).sqrt(), None),
        Init::Uniform { bound } => uniform(bound as f64),
        Init::Normal { std } => (std as f64, None),
    }
}

/// Checks values drawn i.i.d. from a scheme, matrix by matrix (each with its own fans):
/// standardised by the scheme's std, the pooled z has E z² = 1 and E z⁴ = 3 (normal) or
/// 9/5 (uniform). Each sample mean is held within 6 standard errors of its expectation,
/// the errors from the sample size: Var z² = E z⁴ − 1 and Var z⁴ = E z⁸ − (E z⁴)², with
/// E z⁸ = 105 (normal) or 81/9 = 9 (uniform). Uniform values also stay within the bound,
/// and the largest matrix reaches within 20/n of it (missed with probability e⁻²⁰).
fn check_scheme(what: &str, init: Init, matrices: &[(usize, usize, &[f64])]) {
    let (mut n, mut s2, mut s4) = (0f64, 0f64, 0f64);
    let mut s1 = 0f64;
    let uniform = expected(init, 1, 1).1.is_some();
    for &(fan_in, fan_out, values) in matrices {
        let (std, bound) = expected(init, fan_in, fan_out);
        for &w in values {
            if let Some(a) = bound {
                assert!(w.abs() <= a * (1.0 + 1e-6), "{what}: |{w}| beyond the bound {a} ({fan_in}x{fan_out})");
            }
            let z = w / std;
            n += 1.0;
            s1 += z;
            s2 += z * z;
            s4 += z.powi(4);
        }
    }
    let (m1, m2, m4) = (s1 / n, s2 / n, s4 / n);
    let (e4, e8) = if uniform { (1.8, 9.0) } else { (3.0, 105.0) };
    let se2 = ((e4 - 1.0) / n).sqrt();
    let se4 = ((e8 - e4 * e4) / n).sqrt();
    assert!(m1.abs() <= 6.0 / n.sqrt(), "{what}: mean z {m1} over {n} values");
    assert!((m2 - 1.0).abs() <= 6.0 * se2, "{what}: E z² = {m2}, expected 1 ± {} ({n} values)", 6.0 * se2);
    assert!((m4 - e4).abs() <= 6.0 * se4, "{what}: E z⁴ = {m4}, expected {e4} ± {} ({n} values)", 6.0 * se4);
    if uniform {
        let &(fi, fo, values) = matrices.iter().max_by_key(|m| m.2.len()).unwrap();
        let a = expected(init, fi, fo).1.unwrap();
        let max = values.iter().fold(0f64, |m, w| m.max(w.abs()));
        assert!(max >= a * (1.0 - 20.0 / values.len() as f64), "{what}: max |w| {max} never nears the bound {a}");
    }
}

#[test]
fn every_dense_weight_follows_the_chosen_scheme() {
    let schemes: [(&str, Init); 6] = [
        ("\"xavier_uniform\"", Init::XavierUniform),
        ("\"xavier_normal\"", Init::XavierNormal),
        ("\"he_uniform\"", Init::HeUniform),
        ("\"he_normal\"", Init::HeNormal),
        ("{ normal = { std = 0.02 } }", Init::Normal { std: 0.02 }),
        ("{ uniform = { a = 0.05 } }", Init::Uniform { bound: 0.05 }),
    ];
    let default = build("");
    for (text, init) in schemes {
        let b = build(&format!("init = {text}"));
        let weights: Vec<(usize, usize, &[f64])> =
            b.params.iter().filter(|p| p.2).map(|p| (p.1[0], p.1[1], p.3.as_slice())).collect();
        assert!(weights.len() >= 10, "the model has its weight matrices");
        check_scheme(text, init, &weights);
        // Only the weights change: biases, layer norms and tables are the default's.
        for (p, d) in b.params.iter().zip(&default.params) {
            assert_eq!((&p.0, &p.1), (&d.0, &d.1), "same parameters in the same order");
            if !p.2 {
                assert_eq!(p.3, d.3, "{text}: `{}` (no weight decay) is not re-initialised", p.0);
            } else {
                assert_ne!(p.3, d.3, "{text}: `{}` re-initialised", p.0);
            }
        }
        for (t, d) in b.tables.iter().zip(&default.tables) {
            assert_eq!(t.2, d.2, "{text}: tables keep their default initialisation");
        }
    }
}

#[test]
fn embedding_tables_follow_the_chosen_scheme() {
    for (text, init) in [
        ("{ normal = { std = 0.001 } }", Init::Normal { std: 0.001 }),
        ("{ uniform = { a = 0.2 } }", Init::Uniform { bound: 0.2 }),
        ("\"xavier_normal\"", Init::XavierNormal),
        ("\"he_uniform\"", Init::HeUniform),
    ] {
        let b = build(&format!("embedding_init = {text}"));
        // Fans of a table [rows, dim]: fan_in = dim, fan_out = rows.
        let tables: Vec<(usize, usize, &[f64])> = b.tables.iter().map(|t| (t.1, t.0, t.2.as_slice())).collect();
        check_scheme(text, init, &tables);
        let default = build("");
        for (p, d) in b.params.iter().zip(&default.params) {
            assert_eq!(p.3, d.3, "{text}: dense parameter `{}` unchanged", p.0);
        }
    }
}

/// The check is not vacuous: the default's N(0, 0.01²) tables fail it for std 0.02, and
/// uniform weights fail it as normal ones.
#[test]
fn the_statistical_check_tells_schemes_apart() {
    let b = build("");
    let tables: Vec<(usize, usize, &[f64])> = b.tables.iter().map(|t| (t.1, t.0, t.2.as_slice())).collect();
    check_scheme("default tables", Init::Normal { std: 0.01 }, &tables);
    let wrong_std = std::panic::catch_unwind(|| check_scheme("x", Init::Normal { std: 0.012 }, &tables));
    assert!(wrong_std.is_err(), "std 0.012 must be told from 0.01");
    let weights: Vec<(usize, usize, &[f64])> =
        b.params.iter().filter(|p| p.2).map(|p| (p.1[0], p.1[1], p.3.as_slice())).collect();
    check_scheme("default weights", Init::XavierUniform, &weights);
    let wrong_shape = std::panic::catch_unwind(|| check_scheme("x", Init::XavierNormal, &weights));
    assert!(wrong_shape.is_err(), "uniform weights must be told from normal ones");
}

/// Without the keys nothing is drawn after the model is built: the tables are the first
/// draws of the seeded generator, N(0, 0.01²) row-major table after table, exactly as
/// before the keys existed (`tests/head_params.rs` pins the head's initial values the
/// same way), and the documented defaults spelled out give the same tables bit for bit.
#[test]
fn without_the_keys_the_model_is_todays() {
    let b = build("");
    let mut rng = StdRng::seed_from_u64(SEED);
    for (rows, dim, values) in &b.tables {
        let want: Vec<f64> =
            Init::Normal { std: 0.01 }.sample(*rows, *dim, &mut rng).iter().map(|&v| v as f64).collect();
        assert_eq!(values, &want, "table [{rows}, {dim}]");
    }
    let again = build("");
    assert_eq!(b.params, again.params);
}
