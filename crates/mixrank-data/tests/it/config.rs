use crate::util::*;

const BASE: &str = r#"
[data]
format = "parquet"
[data.splits.train]
paths = ["*.parquet"]

[[features.categorical]]
name = "user"
buckets = 100
dim = 8

[[tasks]]
name = "click"
kind = "binary"
label = "click"
"#;

#[test]
fn valid_config_loads_with_defaults() {
    let d = tempfile::tempdir().unwrap();
    let c = load_config(d.path(), BASE).unwrap();
    assert_eq!(c.data.batch_size, 2048);
    assert_eq!(c.categorical[0].column, "user");
    assert_eq!(c.tables[0].rows(), 100);
    assert!(c.split("train").unwrap().patterns[0].ends_with("*.parquet"));
}

#[test]
fn unknown_key_names_file_and_key_path() {
    let d = tempfile::tempdir().unwrap();
    let text = BASE.replace("paths = [\"*.parquet\"]", "paths = [\"*.parquet\"]\npathz = 1");
    let e = err_text(load_config(d.path(), &text));
    assert!(e.contains("config.toml"), "{e}");
    assert!(e.contains("data.splits.train"), "{e}");
    assert!(e.contains("unknown field `pathz`"), "{e}");
}

#[test]
fn wrong_type_names_the_key_and_expected_type() {
    let d = tempfile::tempdir().unwrap();
    let e = err_text(load_config(d.path(), &BASE.replace("dim = 8", "dim = \"eight\"")));
    assert!(e.contains("features.categorical[0].dim"), "{e}");
    assert!(e.contains("expected"), "{e}");
}

#[test]
fn invalid_enum_value_is_rejected() {
    let d = tempfile::tempdir().unwrap();
    let e = err_text(load_config(d.path(), &BASE.replace("kind = \"binary\"", "kind = \"ordinal\"")));
    assert!(e.contains("tasks[0].kind"), "{e}");
    assert!(e.contains("ordinal"), "{e}");
}

#[test]
fn unknown_shared_table_is_named() {
    let d = tempfile::tempdir().unwrap();
    let e = err_text(load_config(d.path(), &BASE.replace("buckets = 100\ndim = 8", "table = \"ids\"")));
    assert!(e.contains("features.categorical[0].table"), "{e}");
    assert!(e.contains("no table `ids`"), "{e}");
}

#[test]
fn shared_table_is_one_table() {
    let d = tempfile::tempdir().unwrap();
    let text = BASE.replace(
        "[[features.categorical]]\nname = \"user\"\nbuckets = 100\ndim = 8",
        "[tables.ids]\nbuckets = 64\ndim = 4\n\n[[features.categorical]]\nname = \"a\"\ntable = \"ids\"\n\n[[features.categorical]]\nname = \"b\"\ntable = \"ids\"",
    );
    let c = load_config(d.path(), &text).unwrap();
    assert_eq!(c.tables.len(), 1);
    assert_eq!(c.categorical[0].table, c.categorical[1].table);
}

#[test]
fn bad_day_range_and_row_fraction_are_rejected() {
    let d = tempfile::tempdir().unwrap();
    let e = err_text(load_config(
        d.path(),
        &BASE.replace(
            "paths = [\"*.parquet\"]",
            "paths = [\"*.parquet\"]\ndays = { from = \"2026-1-1\", to = \"2026-01-02\" }",
        ),
    ));
    assert!(e.contains("data.splits.train.days.from") && e.contains("YYYY-MM-DD"), "{e}");
    let e = err_text(load_config(
        d.path(),
        &BASE.replace("paths = [\"*.parquet\"]", "paths = [\"*.parquet\"]\nrows = { from = 0.5, to = 0.2 }"),
    ));
    assert!(e.contains("data.splits.train.rows") && e.contains("from < to"), "{e}");
}

#[test]
fn duplicate_names_and_label_transform_on_binary_are_rejected() {
    let d = tempfile::tempdir().unwrap();
    let dup = format!("{BASE}\n[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"x\"\n");
    let e = err_text(load_config(d.path(), &dup));
    assert!(e.contains("tasks[1].name") && e.contains("duplicate name `click`"), "{e}");
    let e = err_text(load_config(
        d.path(),
        &BASE.replace("label = \"click\"", "label = \"click\"\nlabel_transform = \"log1p\""),
    ));
    assert!(e.contains("tasks[0].label_transform"), "{e}");
}

#[test]
fn csv_without_header_needs_column_names() {
    let d = tempfile::tempdir().unwrap();
    let text =
        BASE.replace("format = \"parquet\"", "format = \"csv\"\n[data.csv]\ndelimiter = \"\\t\"\nheader = false");
    let e = err_text(load_config(d.path(), &text));
    assert!(e.contains("data.csv.columns"), "{e}");
}

#[test]
fn invalid_toml_names_the_file() {
    let d = tempfile::tempdir().unwrap();
    let e = err_text(load_config(d.path(), "[data\nformat = 1"));
    assert!(e.contains("config.toml") && e.contains("invalid TOML"), "{e}");
}

#[test]
fn committed_configs_load() {
    for name in ["frappe", "criteo_sample", "aliexpress_sample", "ali_ccp_sample"] {
        let p = repo_root().join("configs").join(format!("{name}.toml"));
        mixrank_data::ExperimentConfig::load(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

const MMOE: &str = r#"
[model]
architecture = "mmoe"
expert_dim = 64
shared = { hidden = [128] }

[[model.experts]]
kind = "dcnv2"
cross_layers = 3
low_rank = 32
structure = "stacked"
hidden = [128, 64]

[[model.experts]]
kind = "masknet"
blocks = 2
block_dim = 64
structure = "parallel"

[[model.experts]]
kind = "finalmlp"
hidden = [128]
stream2 = [64]
heads = 2

[[model.experts]]
kind = "mlp"
count = 2
hidden = [128, 64]

[model.gate]
temperature = 0.5
top_k = 2

[train]
epochs = 2
lr = 0.002
sparse_optimizer = "lazy_adam"
decay = "cosine"
warmup_steps = 100
"#;

#[test]
fn heterogeneous_mmoe_and_train_sections_load() {
    use mixrank_data::config::model::{Architecture, ExpertKind, LrDecay, SparseOptimizer};
    let d = tempfile::tempdir().unwrap();
    let c = load_config(d.path(), &format!("{BASE}{MMOE}")).unwrap();
    let m = c.model.as_ref().unwrap();
    assert_eq!(m.architecture, Architecture::Mmoe);
    assert_eq!(m.experts.iter().map(|e| e.count).sum::<usize>(), 5);
    assert_eq!(m.experts[1].kind, ExpertKind::Masknet);
    assert_eq!(m.tower.hidden, vec![64], "tower defaults");
    assert_eq!(
        (c.train.epochs, c.train.sparse_optimizer, c.train.decay),
        (2, SparseOptimizer::LazyAdam, LrDecay::Cosine)
    );
    // Without [train] every key has its default.
    let c = load_config(d.path(), BASE).unwrap();
    assert!(c.model.is_none());
    assert_eq!(c.train.lr, 1e-3);
}

#[test]
fn model_errors_name_the_key() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        (
            MMOE.replace("architecture = \"mmoe\"", "architecture = \"shared_bottom\""),
            "model.experts",
            "exactly one expert",
        ),
        (MMOE.replace("heads = 2", "heads = 2\ncross_layers = 2"), "model.experts[2].cross_layers", "does not apply"),
        (MMOE.replace("top_k = 2", "top_k = 9"), "model.gate.top_k", "exceeds the 5 experts"),
        (MMOE.replace("temperature = 0.5", "temperature = 0.0"), "model.gate.temperature", "> 0"),
        (MMOE.replace("lr = 0.002", "lr = -1.0"), "train.lr", "> 0"),
        (MMOE.replace("lr = 0.002", "lr = 0.002\nlr_plateau_factor = 1.5"), "train.lr_plateau_factor", "(0, 1]"),
        (MMOE.replace("lr = 0.002", "lr = 0.002\nlr_plateau_factor = 0.1"), "train.lr_plateau_factor", "patience"),
        (MMOE.replace("kind = \"masknet\"", "kind = \"transformer\""), "model.experts[1].kind", "transformer"),
        (MMOE.replace("architecture = \"mmoe\"", "architecture = \"ple\""), "model.ple", "required"),
    ];
    for (text, key, msg) in cases {
        let e = err_text(load_config(d.path(), &format!("{BASE}{text}")));
        assert!(e.contains(key) && e.contains(msg), "want {key} / {msg}, got: {e}");
    }
}

#[test]
fn regression_loss_choice_is_validated() {
    use mixrank_data::config::RegressionLoss;
    let d = tempfile::tempdir().unwrap();
    let reg =
        |extra: &str| format!("{BASE}\n[[tasks]]\nname = \"dwell\"\nkind = \"regression\"\nlabel = \"dwell\"\n{extra}");
    let c = load_config(d.path(), &reg("")).unwrap();
    assert_eq!(c.tasks[1].regression_loss, RegressionLoss::Mse);
    let c = load_config(d.path(), &reg("loss = \"huber\"")).unwrap();
    assert_eq!(c.tasks[1].regression_loss, RegressionLoss::Huber { delta: 1.0 });
    let c = load_config(d.path(), &reg("loss = \"huber\"\nhuber_delta = 2.5")).unwrap();
    assert_eq!(c.tasks[1].regression_loss, RegressionLoss::Huber { delta: 2.5 });
    let e = err_text(load_config(d.path(), &reg("loss = \"huber\"\nhuber_delta = 0.0")));
    assert!(e.contains("tasks[1].huber_delta") && e.contains("> 0"), "{e}");
    let e = err_text(load_config(d.path(), &reg("huber_delta = 2.0")));
    assert!(e.contains("tasks[1].huber_delta"), "{e}");
    let e = err_text(load_config(d.path(), &BASE.replace("label = \"click\"", "label = \"click\"\nloss = \"mse\"")));
    assert!(e.contains("tasks[0].loss") && e.contains("binary"), "{e}");
}

#[test]
fn grad_clip_zero_switches_clipping_off_and_negative_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let with = |train: &str| load_config(d.path(), &format!("{BASE}\n[train]\n{train}\n"));
    assert_eq!(with("grad_clip = 0.0").unwrap().train.clip_norm(), None);
    assert_eq!(with("").unwrap().train.clip_norm(), None);
    assert_eq!(with("grad_clip = 5.0").unwrap().train.clip_norm(), Some(5.0));
    let e = err_text(with("grad_clip = -1.0"));
    assert!(e.contains("train.grad_clip") && e.contains("0 = no clipping"), "{e}");
}

#[test]
fn early_stopping_monitor_keys_are_checked_against_the_tasks() {
    let d = tempfile::tempdir().unwrap();
    let two = BASE.to_string() + "\n[[tasks]]\nname = \"dwell\"\nkind = \"regression\"\nlabel = \"dwell\"\n";
    let with = |train: &str| load_config(d.path(), &format!("{two}\n[train]\n{train}\n"));
    let c = with("early_stopping_patience = 2\nearly_stopping_task = \"dwell\"").unwrap();
    assert_eq!(c.monitor().label, "dwell rmse");
    let c = with("early_stopping_patience = 2\nearly_stopping_task = \"mean\"\nearly_stopping_metric = \"logloss\"")
        .unwrap();
    assert_eq!((c.monitor().tasks, c.monitor().label), (vec![0], "mean logloss (click)".to_string()));
    assert_eq!(with("").unwrap().monitor().label, "click auc");
    let e = err_text(with("early_stopping_patience = 2\nearly_stopping_task = \"ctr\""));
    assert!(e.contains("train.early_stopping_task") && e.contains("no task `ctr`"), "{e}");
    let e =
        err_text(with("early_stopping_patience = 2\nearly_stopping_task = \"click\"\nearly_stopping_metric = \"mae\""));
    assert!(e.contains("train.early_stopping_metric") && e.contains("binary task `click`"), "{e}");
    // Without early stopping the keys would have no effect: refused.
    let e = err_text(with("early_stopping_task = \"click\""));
    assert!(e.contains("train.early_stopping_task") && e.contains("early_stopping_patience > 0"), "{e}");
}

#[test]
fn with_seed_sets_the_data_and_the_training_seed() {
    let d = tempfile::tempdir().unwrap();
    let c = load_config(d.path(), BASE).unwrap().with_seed(42).unwrap();
    assert_eq!((c.data.seed, c.train.seed), (42, 42));
    let text = toml::to_string(&c.wire).unwrap();
    assert_eq!(text.matches("seed = 42").count(), 2, "{text}");
}
