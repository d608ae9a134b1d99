//! `[feature_groups]`, `[model] inputs` and `[model.position_tower]`: what each part of
//! the model reads, the column layout, the defaults, and every refusal naming its key
//! and the group, feature or task.

use crate::util::*;
use mixrank_data::config::groups::{BlockSource, FeatureRef, InputSpec};
use mixrank_data::ExperimentConfig;

/// Four categorical features, two dense ones (`bid` with a missing indicator), two tasks.
const FEATURES: &str = r#"
[[features.categorical]]
name = "user"
buckets = 10
dim = 3

[[features.categorical]]
name = "ad"
buckets = 10
dim = 2

[[features.categorical]]
name = "position"
buckets = 8
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
"#;

const GROUPS: &str = r#"
[feature_groups]
user = ["user", "age"]
ad = ["ad", "bid"]
bias = ["position", "device"]
context = ["device"]
"#;

const MODEL: &str = "\n[model]\narchitecture = \"shared_bottom\"\n[[model.experts]]\nkind = \"mlp\"\nhidden = [4]\n";

fn config(groups: &str, model_keys: &str, tower: &str) -> String {
    let model =
        MODEL.replace("architecture = \"shared_bottom\"\n", &format!("architecture = \"shared_bottom\"\n{model_keys}"));
    parquet_config(&format!("{FEATURES}{groups}{model}{tower}"))
}

fn load(text: &str) -> ExperimentConfig {
    let d = tempfile::tempdir().unwrap();
    load_config(d.path(), text).unwrap_or_else(|e| panic!("{e}"))
}

fn names(cfg: &ExperimentConfig, spec: &InputSpec) -> Vec<String> {
    spec.features().into_iter().map(|f| cfg.feature_name(f).to_string()).collect()
}

/// Blocks as `emb:user`, `dense:bid`, `missing:bid`.
fn layout(cfg: &ExperimentConfig, spec: &InputSpec) -> Vec<String> {
    spec.blocks(&cfg.dense)
        .into_iter()
        .map(|b| match b.source {
            BlockSource::Embedding(i) => format!("emb:{}", cfg.categorical[i].name),
            BlockSource::DenseValue(i) => format!("dense:{}", cfg.dense[i].name),
            BlockSource::MissingIndicator(i) => format!("missing:{}", cfg.dense[i].name),
        })
        .collect()
}

#[test]
fn without_groups_the_head_reads_every_feature_in_the_batch_layout() {
    let cfg = load(&config("", "", ""));
    assert!(cfg.feature_groups.is_empty());
    let head = cfg.head_input();
    assert_eq!(head.groups.len(), 1);
    assert_eq!(head.groups[0].name, "default");
    // [emb (config order) | dense values | missing indicators]: the batch's layout.
    assert_eq!(
        layout(&cfg, &head),
        ["emb:user", "emb:ad", "emb:position", "emb:device", "dense:bid", "dense:age", "missing:bid"]
    );
    assert!(cfg.inputs.as_ref().unwrap().position_tower.is_none());
    // Groups without a position tower and without `inputs` change nothing.
    let grouped = load(&config(GROUPS, "", ""));
    assert_eq!(grouped.head_input().features(), head.features());
    assert_eq!(grouped.feature_groups.len(), 4);
    // A group listing every feature in config order is the same layout.
    let all = "\n[feature_groups]\nall = [\"user\", \"ad\", \"position\", \"device\", \"bid\", \"age\"]\n";
    let explicit = load(&config(all, "inputs = [\"all\"]\n", ""));
    assert_eq!(layout(&explicit, &explicit.head_input()), layout(&cfg, &head));
}

#[test]
fn explicit_inputs_concatenate_groups_in_order() {
    let cfg = load(&config(GROUPS, "inputs = [\"ad\", \"user\", \"bias\"]\n", ""));
    let head = cfg.head_input();
    let groups: Vec<&str> = head.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(groups, ["ad", "user", "bias"]);
    // Each group: its features as listed, then its missing indicators.
    assert_eq!(
        layout(&cfg, &head),
        ["emb:ad", "dense:bid", "missing:bid", "emb:user", "dense:age", "emb:position", "emb:device"]
    );
    // The indicator shares its feature's slot (feature dropout drops both).
    let blocks = head.blocks(&cfg.dense);
    assert_eq!(blocks[1].slot, blocks[2].slot);
    assert_eq!(blocks.iter().map(|b| b.group).collect::<Vec<_>>(), [0, 0, 0, 1, 1, 2, 2]);
}

#[test]
fn the_position_tower_reads_bias_and_its_features_leave_the_head() {
    let cfg = load(&config(GROUPS, "", "[model.position_tower]\n"));
    let inputs = cfg.inputs.as_ref().unwrap();
    let tower = inputs.position_tower.as_ref().unwrap();
    assert_eq!(names(&cfg, &tower.input), ["position", "device"]);
    assert_eq!(tower.tasks, [true, true], "default: every task");
    // `position` is only in `bias`: not in the head; `device` is also in `context`: kept.
    assert_eq!(names(&cfg, &inputs.head), ["user", "ad", "device", "bid", "age"]);
    let section = cfg.model.as_ref().unwrap().position_tower.as_ref().unwrap();
    assert_eq!((section.hidden.clone(), section.dropout, section.inputs.clone()), (vec![16], 0.1, vec!["bias".into()]));
    // Chosen tasks, and a head whose groups are given.
    let cfg = load(&config(
        GROUPS,
        "inputs = [\"user\", \"ad\", \"context\"]\n",
        "[model.position_tower]\ntasks = [\"save\"]\n",
    ));
    assert_eq!(cfg.inputs.clone().unwrap().position_tower.unwrap().tasks, [false, true]);
    assert_eq!(names(&cfg, &cfg.head_input()), ["user", "age", "ad", "bid", "device"]);
}

/// `groups` (a `[feature_groups]` table, last) and `[columns] position` on the column
/// `position`.
fn with_position(groups: &str) -> String {
    format!("{groups}\n[columns]\nposition = {{ column = \"position\", max = 10 }}\n")
}

#[test]
fn serve_position_names_the_position_feature_and_frees_only_it_at_serving() {
    use mixrank_data::config::groups::ServePosition;
    // Off at serving: every feature only the tower reads is free (here: position).
    let cfg = load(&config(&with_position(GROUPS), "", "[model.position_tower]\n"));
    assert_eq!(cfg.inputs.as_ref().unwrap().position_tower.as_ref().unwrap().serve_position, None);
    assert_eq!(cfg.request_free_features(), [FeatureRef::Categorical(2)]);
    assert_eq!(cfg.request_free_columns(), ["position"]);
    // A tower-only `age` too: free while the tower is off ...
    let groups = "\n[feature_groups]\nuser = [\"user\"]\nad = [\"ad\", \"bid\"]\nbias = [\"position\", \"device\", \"age\"]\ncontext = [\"device\"]\n";
    let cfg = load(&config(&with_position(groups), "", "[model.position_tower]\n"));
    assert_eq!(cfg.request_free_columns(), ["age", "position"]);
    // ... but the tower runs at serving with serve_position: only position is free.
    let cfg = load(&config(&with_position(groups), "", "[model.position_tower]\nserve_position = 3\n"));
    let tower = cfg.inputs.as_ref().unwrap().position_tower.clone().unwrap();
    assert_eq!(tower.serve_position, Some(ServePosition { position: 3, features: vec![2] }));
    assert_eq!(cfg.request_free_columns(), ["position"]);
    // It round-trips through the manifest's config text.
    let d = tempfile::tempdir().unwrap();
    let again = load_config(d.path(), &toml::to_string(&cfg.wire).unwrap()).unwrap();
    assert_eq!(again.inputs, cfg.inputs);
    // Without a tower nothing is free.
    assert!(load(&config(&with_position(GROUPS), "inputs = [\"user\", \"ad\", \"bias\"]\n", ""))
        .request_free_columns()
        .is_empty());
}

#[test]
fn configs_without_groups_serialise_as_before() {
    let cfg = load(&config("", "", ""));
    let text = toml::to_string(&cfg.wire).unwrap();
    for key in ["feature_groups", "inputs", "position_tower"] {
        assert!(!text.contains(key), "{key} written for a config without it:\n{text}");
    }
    // With them, the text round-trips to the same inputs.
    let cfg = load(&config(GROUPS, "", "[model.position_tower]\ntasks = [\"click\"]\n"));
    let d = tempfile::tempdir().unwrap();
    let again = load_config(d.path(), &toml::to_string(&cfg.wire).unwrap()).unwrap();
    assert_eq!(again.inputs, cfg.inputs);
    assert_eq!(again.feature_groups, cfg.feature_groups);
}

#[test]
fn bad_groups_inputs_and_tower_keys_are_refused_naming_the_key() {
    let tower = "[model.position_tower]\n";
    let cases: Vec<(String, &str, &[&str])> = vec![
        // [feature_groups]
        (
            config("\n[feature_groups]\nuser = [\"user\", \"nope\"]\n", "", ""),
            "feature_groups.user",
            &["no feature `nope`", "group `user`"],
        ),
        (config("\n[feature_groups]\nuser = []\n", "", ""), "feature_groups.user", &["empty"]),
        (
            config("\n[feature_groups]\nuser = [\"user\", \"age\", \"user\"]\n", "", ""),
            "feature_groups.user",
            &["`user` is listed twice"],
        ),
        (config("\n[feature_groups]\n\"\" = [\"user\"]\n", "", ""), "feature_groups", &["non-empty name"]),
        // [model] inputs
        (
            config(GROUPS, "inputs = [\"users\", \"ad\"]\n", ""),
            "model.inputs",
            &["no feature group `users`", "groups: ad, bias, context, user"],
        ),
        (config("", "inputs = [\"user\"]\n", ""), "model.inputs", &["no feature group `user`", "defines none"]),
        (config(GROUPS, "inputs = []\n", ""), "model.inputs", &["at least one"]),
        (
            config(GROUPS, "inputs = [\"user\", \"ad\", \"bias\", \"user\"]\n", ""),
            "model.inputs",
            &["group `user` is listed twice"],
        ),
        (
            config(GROUPS, "inputs = [\"user\", \"ad\", \"bias\", \"context\"]\n", ""),
            "model.inputs",
            &["feature `device`", "`bias` and `context`", "read twice"],
        ),
        (
            config(GROUPS, "inputs = [\"user\", \"ad\"]\n", ""),
            "model.inputs",
            &["feature `position` is read by no part"],
        ),
        (
            config(
                "\n[feature_groups]\nbias = [\"user\", \"ad\", \"position\", \"device\", \"bid\", \"age\"]\n",
                "",
                tower,
            ),
            "model.inputs",
            &["the head would read no feature"],
        ),
        // [model.position_tower]
        (config("", "", tower), "model.position_tower.inputs", &["`bias`", "defines none", "[feature_groups]"]),
        (
            config(GROUPS, "", "[model.position_tower]\ninputs = [\"biases\"]\n"),
            "model.position_tower.inputs",
            &["no feature group `biases`"],
        ),
        (
            config(GROUPS, "", "[model.position_tower]\ninputs = [\"context\", \"bias\"]\n"),
            "model.position_tower.inputs",
            &["feature `device`", "read twice"],
        ),
        (
            config(GROUPS, "", "[model.position_tower]\ntasks = [\"click\", \"dwell\"]\n"),
            "model.position_tower.tasks",
            &["no task `dwell`", "tasks: click, save"],
        ),
        (
            config(GROUPS, "", "[model.position_tower]\ntasks = [\"click\", \"click\"]\n"),
            "model.position_tower.tasks",
            &["task `click` is listed twice"],
        ),
        (
            config(GROUPS, "", "[model.position_tower]\ntasks = []\n"),
            "model.position_tower.tasks",
            &["at least one task"],
        ),
        (
            config(GROUPS, "", "[model.position_tower]\ndropout = 1.0\n"),
            "model.position_tower.dropout",
            &["0 <= dropout < 1"],
        ),
        (config(GROUPS, "", "[model.position_tower]\nhidden = [8, 0]\n"), "model.position_tower.hidden", &["positive"]),
        // serve_position
        (
            config(&with_position(GROUPS), "", "[model.position_tower]\nserve_position = 0\n"),
            "model.position_tower.serve_position",
            &["expected a position >= 1", "found 0"],
        ),
        (
            config(&with_position(GROUPS), "", "[model.position_tower]\nserve_position = -2\n"),
            "model.position_tower.serve_position",
            &["expected a position >= 1", "found -2"],
        ),
        (
            config(GROUPS, "", "[model.position_tower]\nserve_position = 1\n"),
            "model.position_tower.serve_position",
            &["sets no `[columns] position`"],
        ),
        (
            config(
                &format!("{GROUPS}\n[columns]\nposition = {{ column = \"user\", max = 10 }}\n"),
                "",
                "[model.position_tower]\nserve_position = 1\n",
            ),
            "model.position_tower.serve_position",
            &["hold no feature reading the `[columns] position` column `user`", "position, device"],
        ),
        (
            config(
                "\n[feature_groups]\nuser = [\"user\", \"age\"]\nad = [\"ad\", \"bid\"]\nbias = [\"position\", \"device\", \"bid\"]\n\
                 [columns]\nposition = { column = \"bid\", max = 10 }\n",
                "",
                "[model.position_tower]\nserve_position = 1\n",
            ),
            "model.position_tower.serve_position",
            &["`bid` is dense"],
        ),
        (
            config(
                &with_position(&format!("{GROUPS}pos = [\"position\"]\n")),
                "inputs = [\"user\", \"ad\", \"context\", \"pos\"]\n",
                "[model.position_tower]\nserve_position = 1\n",
            ),
            "model.position_tower.serve_position",
            &["`position` also feeds the head"],
        ),
        (
            config(GROUPS, "", "[model.position_tower]\nlayer_norm = true\n"),
            "model.position_tower.layer_norm",
            &["unknown field `layer_norm`"],
        ),
    ];
    let d = tempfile::tempdir().unwrap();
    for (text, key, parts) in cases {
        let e = err_text(load_config(d.path(), &text));
        assert!(e.contains(&format!("at `{key}`")), "want key {key}: {e}");
        for p in parts {
            assert!(e.contains(p), "want {p:?} at {key}: {e}");
        }
    }
    // A linear tower (no hidden layer) is allowed.
    load(&config(GROUPS, "", "[model.position_tower]\nhidden = []\ndropout = 0.0\n"));
    // FeatureRef order: categorical before dense.
    assert!(FeatureRef::Categorical(5) < FeatureRef::Dense(0));
}

#[test]
fn a_model_file_may_bring_its_feature_groups() {
    let d = tempfile::tempdir().unwrap();
    let data = load_config(d.path(), &config(GROUPS, "", "")).unwrap();
    let file = d.path().join("model.toml");
    // Groups in the model file replace the data config's.
    std::fs::write(&file, format!("[feature_groups]\nbias = [\"position\"]\n{MODEL}[model.position_tower]\n")).unwrap();
    let c = data.with_model_file(&file).unwrap();
    assert_eq!(c.feature_groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["bias"]);
    let inputs = c.inputs.as_ref().unwrap();
    assert_eq!(names(&c, &inputs.position_tower.as_ref().unwrap().input), ["position"]);
    assert_eq!(names(&c, &inputs.head), ["user", "ad", "device", "bid", "age"]);
    // Without groups, the data config's stay; a bad group names the model file and key.
    std::fs::write(&file, format!("{MODEL}[model.position_tower]\n")).unwrap();
    let c = data.with_model_file(&file).unwrap();
    assert_eq!(names(&c, &c.inputs.clone().unwrap().position_tower.unwrap().input), ["position", "device"]);
    std::fs::write(&file, format!("[feature_groups]\nbias = [\"pos\"]\n{MODEL}")).unwrap();
    let e = err_text(data.with_model_file(&file));
    assert!(
        e.contains("model.toml") && e.contains("at `feature_groups.bias`") && e.contains("no feature `pos`"),
        "{e}"
    );
}
