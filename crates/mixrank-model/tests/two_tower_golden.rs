//! The two-tower model against its PyTorch twin (`tests/golden/gen_two_tower.py`, see
//! there for the model): logits, every parameter's gradient and every table's gradient
//! from one forward and backward on a batch with single-valued, mean-pooled and dense
//! features. mixrank runs in float64 (`RefOpsF64`) on the golden's float32 inputs, so the
//! two sides differ only by summation order: agreement to 1e-10 relative. Two cases:
//! the dot score (`two_tower.safetensors`) and the cosine score at temperature 0.25
//! (`two_tower_cosine.safetensors`, the same draws).

use mixrank_data::{Batch, CatColumn, ExperimentConfig};
use mixrank_model::{Model, TwoTowerModel};
use mixrank_nn::testing::RefOpsF64;
use mixrank_nn::Parameters;
use rand::rngs::StdRng;
use rand::SeedableRng;
use safetensors::{Dtype, SafeTensors};

const ROWS: usize = 5;

const CONFIG: &str = r#"
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

[feature_groups]
user = ["user", "interests", "age"]
context = ["device"]
ad = ["ad", "ad_category", "bid"]

[model]
architecture = "two_tower"

[model.two_tower]
dim = 2

[model.two_tower.user]
inputs = ["user", "context"]
architecture = "mmoe"
expert_dim = 3
tower = { hidden = [4], activation = "tanh" }

[[model.two_tower.user.experts]]
kind = "mlp"
count = 2
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

struct Golden(Vec<u8>, &'static str);

impl Golden {
    fn load(file: &'static str) -> Self {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(file);
        Golden(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())), file)
    }

    fn tensor(&self, key: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(key).unwrap_or_else(|e| panic!("{}: {key}: {e}", self.1));
        (t.dtype(), t.shape().to_vec(), t.data().to_vec())
    }

    fn f32(&self, key: &str) -> (Vec<usize>, Vec<f64>) {
        let (dtype, shape, data) = self.tensor(key);
        assert_eq!(dtype, Dtype::F32, "{key}");
        (shape, data.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap()))).collect())
    }

    fn f64(&self, key: &str) -> Vec<f64> {
        let (dtype, _, data) = self.tensor(key);
        assert_eq!(dtype, Dtype::F64, "{key}");
        data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn u32(&self, key: &str) -> Vec<u32> {
        let (dtype, _, data) = self.tensor(key);
        assert_eq!(dtype, Dtype::U32, "{key}");
        data.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn names(&self, prefix: &str) -> Vec<String> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let mut n: Vec<String> =
            st.names().into_iter().filter_map(|k| k.strip_prefix(prefix).map(str::to_string)).collect();
        n.sort();
        n
    }
}

fn close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-10 * (1.0 + w.abs()), "{what}[{i}]: mixrank {g} vs PyTorch {w}");
    }
}

#[test]
fn two_tower_matches_its_pytorch_twin() {
    check_twin("two_tower.safetensors", CONFIG);
}

#[test]
fn the_cosine_score_matches_its_pytorch_twin() {
    let config = CONFIG.replace(
        "[model.two_tower]\ndim = 2\n",
        "[model.two_tower]\ndim = 2\nscore = \"cosine\"\ntemperature = 0.25\n",
    );
    assert_ne!(config, CONFIG);
    check_twin("two_tower_cosine.safetensors", &config);
}

fn check_twin(file: &'static str, config: &str) {
    let golden = Golden::load(file);
    let cfg = ExperimentConfig::parse(config, std::path::Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    let ops = RefOpsF64::new();
    let mut m = TwoTowerModel::new(&cfg, &ops, ROWS, &mut StdRng::seed_from_u64(0)).unwrap();

    // Parameters by name: the golden holds exactly the model's.
    let mut names = Vec::new();
    m.params(&mut |n, p| {
        let (shape, v) = golden.f32(&format!("param.{n}"));
        assert_eq!(shape, p.shape, "{n}: shape");
        p.value[..v.len()].copy_from_slice(&v);
        names.push(n.to_string());
    });
    names.sort();
    assert_eq!(names, golden.names("param."), "the model's parameters and the twin's");

    // Tables, named in the golden by a feature reading them.
    let table_of =
        |feature: &str| cfg.categorical[cfg.categorical.iter().position(|f| f.name == feature).unwrap()].table;
    let tables = [("user", "user"), ("ad", "ad"), ("cat", "ad_category"), ("device", "device")];
    {
        let emb = m.embeddings_mut().unwrap();
        for (name, feature) in tables {
            let (shape, v) = golden.f32(&format!("table.{name}"));
            let t = &mut emb.tables_mut()[table_of(feature)];
            assert_eq!(shape, [t.rows, t.dim], "table {name}");
            t.value[..v.len()].copy_from_slice(&v);
        }
    }

    // The batch, features in config order.
    let cat = cfg
        .categorical
        .iter()
        .map(|f| CatColumn {
            ids: golden.u32(&format!("ids.{}", f.name)),
            offsets: f.pooling.map(|_| golden.u32(&format!("offsets.{}", f.name))),
        })
        .collect();
    let (shape, dense) = golden.f32("dense");
    assert_eq!(shape, [ROWS, cfg.dense_width()]);
    let b = Batch {
        rows: ROWS,
        cat,
        dense: dense.iter().map(|&v| v as f32).collect(),
        dense_width: cfg.dense_width(),
        n_tasks: 2,
        ..Default::default()
    };

    m.forward(&ops, &b).unwrap();
    for t in 0..2 {
        close(&format!("logit {t}"), &Model::logits(&m, t)[..ROWS], &golden.f64(&format!("logit.{t}")));
    }
    let d: Vec<Vec<f64>> = (0..2).map(|t| golden.f32(&format!("d_logit.{t}")).1).collect();
    mixrank_nn::zero_grads(&ops, &mut m).unwrap();
    m.backward(&ops, &b, &[&d[0], &d[1]]).unwrap();
    m.params(&mut |n, p| close(&format!("grad {n}"), &p.grad[..p.len()], &golden.f64(&format!("grad.{n}"))));

    // Sparse gradients per feature, summed into each table's dense gradient.
    let emb = m.embeddings().unwrap();
    for (name, feature) in tables {
        let t = table_of(feature);
        let dim = emb.tables()[t].dim;
        let mut dense = vec![0.0; emb.tables()[t].rows * dim];
        for (f, fc) in emb.config().features.iter().enumerate() {
            if fc.table != t {
                continue;
            }
            let g = emb.grad(f);
            for (k, &id) in g.ids[..g.len].iter().enumerate() {
                for j in 0..dim {
                    dense[id as usize * dim + j] += g.rows[k * dim + j];
                }
            }
        }
        close(&format!("grad table {name}"), &dense, &golden.f64(&format!("grad.table.{name}")));
    }
}
