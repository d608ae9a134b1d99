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
