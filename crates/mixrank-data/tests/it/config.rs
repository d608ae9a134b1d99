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
    assert_eq!(m.experts.iter().map(|e| e.count()).sum::<usize>(), 5);
    assert_eq!(m.experts[1].kind(), ExpertKind::Masknet);
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
        (
            MMOE.replace("heads = 2", "heads = 2\ncross_layers = 2"),
            "at `model.experts[2].cross_layers`",
            "does not apply to a finalmlp expert (it is a key of dcnv2;",
        ),
        (MMOE.replace("top_k = 2", "top_k = 9"), "model.gate.top_k", "exceeds the 5 experts"),
        (MMOE.replace("temperature = 0.5", "temperature = 0.0"), "model.gate.temperature", "> 0"),
        (MMOE.replace("top_k = 2", "top_k = 2\ndropout = 1.0"), "model.gate.dropout", "0 <= dropout < 1"),
        (MMOE.replace("top_k = 2", "top_k = 2\ndropout = -0.1"), "model.gate.dropout", "0 <= dropout < 1"),
        (MMOE.replace("lr = 0.002", "lr = -1.0"), "train.lr", "> 0"),
        (MMOE.replace("lr = 0.002", "lr = 0.002\nlr_plateau_factor = 1.5"), "train.lr_plateau_factor", "(0, 1]"),
        (MMOE.replace("lr = 0.002", "lr = 0.002\nlr_plateau_factor = 0.1"), "train.lr_plateau_factor", "patience"),
        (MMOE.replace("kind = \"masknet\"", "kind = \"transformer\""), "at `model.experts[1].kind`", "transformer"),
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
fn sparse_weight_decay_scope_is_typed_and_needs_a_decay() {
    use mixrank_data::config::model::SparseDecayScope;
    let d = tempfile::tempdir().unwrap();
    let with = |train: &str| load_config(d.path(), &format!("{BASE}\n[train]\n{train}\n"));
    assert_eq!(with("sparse_weight_decay = 1e-6").unwrap().train.sparse_weight_decay_scope, None);
    let c = with("sparse_weight_decay = 1e-6\nsparse_weight_decay_scope = \"table\"").unwrap();
    assert_eq!(c.train.sparse_weight_decay_scope, Some(SparseDecayScope::Table));
    // Written back only when given.
    assert!(toml::to_string(&c.wire).unwrap().contains("sparse_weight_decay_scope = \"table\""));
    assert!(!toml::to_string(&with("").unwrap().wire).unwrap().contains("sparse_weight_decay_scope"));
    let e = err_text(with("sparse_weight_decay_scope = \"table\""));
    assert!(e.contains("train.sparse_weight_decay_scope") && e.contains("sparse_weight_decay > 0"), "{e}");
    let e = err_text(with("sparse_weight_decay = 1e-6\nsparse_weight_decay_scope = \"rows\""));
    assert!(e.contains("train.sparse_weight_decay_scope") && e.contains("rows"), "{e}");
}

#[test]
fn embedding_sharding_is_typed_and_written_back_only_when_sharded() {
    use mixrank_data::config::model::EmbeddingSharding;
    let d = tempfile::tempdir().unwrap();
    let with = |train: &str| load_config(d.path(), &format!("{BASE}\n[train]\n{train}\n"));
    let plain = with("").unwrap();
    assert_eq!(plain.train.embedding_sharding, EmbeddingSharding::Replicated);
    assert!(!toml::to_string(&plain.wire).unwrap().contains("embedding_sharding"));
    let c = with("embedding_sharding = \"rows\"").unwrap();
    assert_eq!(c.train.embedding_sharding, EmbeddingSharding::Rows);
    assert!(toml::to_string(&c.wire).unwrap().contains("embedding_sharding = \"rows\""));
    let e = err_text(with("embedding_sharding = \"columns\""));
    assert!(e.contains("embedding_sharding") && e.contains("columns"), "{e}");
    // Per-table placement: only with sharded tables, only of tables that exist.
    let c = with("embedding_sharding = \"rows\"\nreplicated_tables = [\"user\"]\nreplicate_tables_under_rows = 1000")
        .unwrap();
    assert_eq!((c.train.replicated_tables.clone(), c.train.replicate_tables_under_rows), (vec!["user".into()], 1000));
    let text = toml::to_string(&c.wire).unwrap();
    assert!(text.contains("replicated_tables") && text.contains("replicate_tables_under_rows = 1000"), "{text}");
    assert!(!toml::to_string(&plain.wire).unwrap().contains("replicate"));
    for keys in ["replicated_tables = [\"user\"]", "replicate_tables_under_rows = 10"] {
        let e = err_text(with(keys));
        let key = keys.split(' ').next().unwrap();
        assert!(e.contains(&format!("train.{key}")) && e.contains("embedding_sharding = \"rows\""), "{e}");
    }
    let e = err_text(with("embedding_sharding = \"rows\"\nreplicated_tables = [\"users\"]"));
    assert!(e.contains("train.replicated_tables") && e.contains("users") && e.contains("tables: user"), "{e}");
}

#[test]
fn train_precision_is_typed_and_written_back_only_when_bf16() {
    use mixrank_data::config::model::TrainPrecision;
    let d = tempfile::tempdir().unwrap();
    let with = |train: &str| load_config(d.path(), &format!("{BASE}\n[train]\n{train}\n"));
    let plain = with("").unwrap();
    assert_eq!(plain.train.precision, TrainPrecision::F32);
    assert!(!toml::to_string(&plain.wire).unwrap().contains("precision"));
    let c = with("precision = \"bf16\"").unwrap();
    assert_eq!(c.train.precision, TrainPrecision::Bf16);
    assert!(toml::to_string(&c.wire).unwrap().contains("precision = \"bf16\""));
    let e = err_text(with("precision = \"fp16\""));
    assert!(e.contains("precision") && e.contains("fp16"), "{e}");
}

#[test]
fn initialisers_are_typed_and_checked_naming_the_key() {
    use mixrank_data::config::model::InitSection;
    let d = tempfile::tempdir().unwrap();
    let with = |keys: &str| {
        load_config(
            d.path(),
            &format!("{BASE}\n[model]\narchitecture = \"single_task\"\n{keys}\n[[model.experts]]\nkind = \"mlp\"\nhidden = [4]\n"),
        )
    };
    let c = with("init = \"he_normal\"\nembedding_init = { uniform = { a = 0.05 } }").unwrap();
    let m = c.model.as_ref().unwrap();
    assert_eq!(m.init, Some(InitSection::HeNormal));
    assert_eq!(m.embedding_init, Some(InitSection::Uniform { a: 0.05 }));
    let text = toml::to_string(&c.wire).unwrap();
    let back: mixrank_data::config::wire::ConfigFile = toml::from_str(&text).unwrap();
    assert_eq!(back.model.unwrap().embedding_init, Some(InitSection::Uniform { a: 0.05 }), "round trip:\n{text}");
    assert!(!toml::to_string(&with("").unwrap().wire).unwrap().contains("init"), "absent keys are not written");
    for (keys, key, says) in [
        ("init = { normal = { std = 0.0 } }", "model.init.normal.std", "> 0"),
        ("embedding_init = { uniform = { a = -1.0 } }", "model.embedding_init.uniform.a", "> 0"),
        ("init = \"orthogonal\"", "model.init", "orthogonal"),
        ("init = { normal = { sd = 0.1 } }", "model.init", "sd"),
    ] {
        let e = err_text(with(keys));
        assert!(e.contains(key) && e.contains(says), "{keys}: {e}");
    }
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

/// Each expert kind takes its own keys only; the error names the key path inside the
/// table and the kind, wherever `kind` stands in the table.
#[test]
fn expert_keys_of_another_kind_are_refused_naming_key_and_kind() {
    let d = tempfile::tempdir().unwrap();
    let masknet = "kind = \"masknet\"\nblocks = 2";
    let cases = [
        // `cross_layers` sorts before `kind`: the table is read whole, then checked.
        (
            masknet.to_string() + "\ncross_layers = 3",
            "model.experts[1].cross_layers",
            "a masknet expert (it is a key of dcnv2;",
        ),
        (
            "low_rank = 4\n".to_string() + masknet,
            "model.experts[1].low_rank",
            "a masknet expert (it is a key of dcnv2;",
        ),
        (masknet.to_string() + "\nheads = 2", "model.experts[1].heads", "a masknet expert (it is a key of finalmlp;"),
        (
            masknet.to_string() + "\nstream2 = [4]",
            "model.experts[1].stream2",
            "a masknet expert (it is a key of finalmlp;",
        ),
        (masknet.to_string() + "\nhiden = [4]", "model.experts[1].hiden", "unknown key for a masknet expert"),
        (masknet.replace("masknet", "mlp") + "\nhidden = [4]", "model.experts[1].blocks", "it is a key of masknet;"),
        (masknet.replace("masknet", "mlp"), "model.experts[1].blocks", "a mlp expert takes `kind`, `count`, `hidden`"),
        (masknet.replace("kind = \"masknet\"\n", ""), "model.experts[1]`", "missing `kind`"),
        (masknet.to_string() + "\nblocks_dim = 4", "model.experts[1].blocks_dim", "unknown key"),
        (masknet.replace("blocks = 2", "blocks = \"two\""), "model.experts[1].blocks", "invalid type"),
        (masknet.replace("blocks = 2", "blocks = -1"), "model.experts[1].blocks", "-1"),
    ];
    let second = "kind = \"masknet\"\nblocks = 2\nblock_dim = 64\nstructure = \"parallel\"";
    assert!(MMOE.contains(second));
    for (entry, key, msg) in cases {
        let text = format!("{BASE}{}", MMOE.replace(second, &entry));
        let e = err_text(load_config(d.path(), &text));
        assert!(
            e.contains(&format!("at `{}", key.trim_end_matches('`'))) && e.contains(msg),
            "want {key} / {msg}, got: {e}"
        );
        assert!(e.contains(key), "want {key}, got: {e}");
    }
    // A separate model file (`--model`) reports the same path.
    let cfg = load_config(d.path(), BASE).unwrap();
    let model = d.path().join("model.toml");
    std::fs::write(&model, MMOE.replace(second, &format!("{masknet}\ncross_layers = 3"))).unwrap();
    let e = err_text(cfg.with_model_file(&model));
    assert!(
        e.contains("model.toml") && e.contains("at `model.experts[1].cross_layers`: does not apply to a masknet"),
        "{e}"
    );
}

#[test]
fn expert_values_are_checked_per_kind() {
    let d = tempfile::tempdir().unwrap();
    let masknet = "kind = \"masknet\"\nblocks = 2\nblock_dim = 64\nstructure = \"parallel\"";
    let cases = [
        (masknet.replace("blocks = 2", "blocks = 0"), "model.experts[1].blocks", ">= 1"),
        (masknet.replace("block_dim = 64", "block_dim = 0"), "model.experts[1].block_dim", ">= 1"),
        (masknet.to_string() + "\nreduction_ratio = 0.0", "model.experts[1].reduction_ratio", "> 0"),
        (masknet.to_string() + "\ndropout = 1.0", "model.experts[1].dropout", "dropout < 1"),
        (masknet.to_string() + "\nhidden = [8, 0]", "model.experts[1].hidden", "positive"),
        // A MaskNet's MLP follows parallel blocks only (FuxiCTR's ParallelMaskNet).
        (masknet.replace("parallel", "stacked") + "\nhidden = [8]", "model.experts[1].hidden", "parallel"),
        (masknet.replace("structure = \"parallel\"", "hidden = [8]"), "model.experts[1].hidden", "parallel"),
        (
            masknet
                .replace("masknet", "mlp")
                .replace("blocks = 2\nblock_dim = 64\nstructure = \"parallel\"", "count = 0\nhidden = [4]"),
            "model.experts[1].count",
            "positive",
        ),
    ];
    let second = "kind = \"masknet\"\nblocks = 2\nblock_dim = 64\nstructure = \"parallel\"";
    for (entry, key, msg) in cases {
        let e = err_text(load_config(d.path(), &format!("{BASE}{}", MMOE.replace(second, &entry))));
        assert!(e.contains(&format!("at `{key}`")) && e.contains(msg), "want {key} / {msg}, got: {e}");
    }
    // Parallel blocks with an MLP, activation and dropout are a valid masknet expert.
    let ok = format!("{masknet}\nhidden = [32]\nactivation = \"gelu\"\ndropout = 0.1");
    let c = load_config(d.path(), &format!("{BASE}{}", MMOE.replace(second, &ok))).unwrap();
    match &c.model.unwrap().experts[1] {
        mixrank_data::config::model::ExpertSection::Masknet(m) => {
            assert_eq!((m.hidden.clone(), m.dropout, m.blocks), (vec![32], 0.1, Some(2)))
        }
        other => panic!("expected a masknet expert, got {other:?}"),
    }
}

#[test]
fn position_tower_needs_its_feature_group() {
    // No longer refused as "not supported yet": built, and validated against the groups
    // (tests/it/groups.rs has the rest).
    let d = tempfile::tempdir().unwrap();
    let text = format!("{BASE}{}", MMOE.replace("shared = { hidden = [128] }", "position_tower = { hidden = [16] }"));
    let e = err_text(load_config(d.path(), &text));
    assert!(e.contains("at `model.position_tower.inputs`") && e.contains("`bias`"), "{e}");
    let grouped = text.replace("[model]", "[feature_groups]\nbias = [\"user\"]\n\n[model]\ninputs = [\"bias\"]");
    // The head and the tower may read the same group.
    let c = load_config(d.path(), &grouped).unwrap();
    let inputs = c.inputs.unwrap();
    assert_eq!(inputs.head.features(), inputs.position_tower.unwrap().input.features());
}

/// `[[model.experts]]` as an earlier version wrote it into checkpoint manifests
/// (`toml::to_string(&cfg.wire)`): every kind carried `hidden`, `activation` and
/// `dropout`, a MaskNet too (then ignored; now its defaults: no MLP, ReLU, no dropout).
const MANIFEST_EXPERTS: &str = r#"[[model.experts]]
kind = "dcnv2"
count = 1
hidden = [128, 64]
activation = "relu"
dropout = 0.0
cross_layers = 3
low_rank = 32
structure = "stacked"

[[model.experts]]
kind = "masknet"
count = 1
hidden = []
activation = "relu"
dropout = 0.0
structure = "parallel"
blocks = 2
block_dim = 64

[[model.experts]]
kind = "finalmlp"
count = 1
hidden = [128]
activation = "relu"
dropout = 0.0
stream2 = [64]
heads = 2

[[model.experts]]
kind = "mlp"
count = 2
hidden = [128, 64]
activation = "relu"
dropout = 0.0
"#;

#[test]
fn manifest_config_text_of_earlier_versions_parses_and_is_written_identically() {
    let d = tempfile::tempdir().unwrap();
    let c = load_config(d.path(), &format!("{BASE}{MMOE}")).unwrap();
    let text = toml::to_string(&c.wire).unwrap();
    assert!(text.contains(MANIFEST_EXPERTS), "the manifest text changed:\n{text}");
    // Read back as a checkpoint does (`toml::from_str` + `from_wire`) and written again.
    let wire: mixrank_data::config::wire::ConfigFile = toml::from_str(&text).unwrap();
    assert_eq!(toml::to_string(&wire).unwrap(), text);
    mixrank_data::ExperimentConfig::from_wire(wire, &d.path().join("config.toml"), d.path()).unwrap();
}

#[test]
fn gate_hidden_layers_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let model = |gate: &str| {
        format!(
            "{BASE}\n[model]\narchitecture = \"mmoe\"\n{gate}\n[[model.experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [8]\n"
        )
    };
    let c = load_config(d.path(), &model("gate = { hidden = [16], activation = \"gelu\" }")).unwrap();
    assert_eq!(c.model.as_ref().unwrap().gate.hidden, vec![16]);
    let e = err_text(load_config(d.path(), &model("gate = { hidden = [0] }")));
    assert!(e.contains("model.gate.hidden"), "{e}");
    let e = err_text(load_config(d.path(), &model("gate = { activation = \"tanh\" }")));
    assert!(e.contains("model.gate.activation") && e.contains("needs gate.hidden"), "{e}");
    // Without hidden layers the config text is as before (checkpoint manifests compare it).
    let c = load_config(d.path(), &model("gate = { top_k = 1 }")).unwrap();
    let v: toml::Value = toml::from_str(&toml::to_string(&c.wire).unwrap()).unwrap();
    let keys: Vec<&String> = v["model"]["gate"].as_table().unwrap().keys().collect();
    assert_eq!(keys, ["temperature", "top_k"]);
    // Gate dropout: read, written only when on, refused where there is no gate.
    let c = load_config(d.path(), &model("gate = { dropout = 0.1 }")).unwrap();
    assert_eq!(c.model.as_ref().unwrap().gate.dropout, 0.1);
    let v: toml::Value = toml::from_str(&toml::to_string(&c.wire).unwrap()).unwrap();
    assert_eq!(v["model"]["gate"]["dropout"].as_float(), Some(0.1));
    let bottom =
        model("gate = { dropout = 0.1 }").replace("\"mmoe\"", "\"shared_bottom\"").replace("count = 2", "count = 1");
    let e = err_text(load_config(d.path(), &bottom));
    assert!(e.contains("model.gate.dropout") && e.contains("no gate"), "{e}");
}
