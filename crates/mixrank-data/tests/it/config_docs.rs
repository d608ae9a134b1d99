//! docs/config.md against the config structs: every key in the page's TOML examples is a
//! key the structs accept, every accepted key is in an example, each expert kind's
//! example lists exactly that kind's keys, and reserved keys are documented as refused
//! and are refused. The accepted keys are read from the structs
//! (`config::keys::accepted_keys`), so neither side can drift unnoticed.

use crate::util::*;
use mixrank_data::config::keys::{accepted_keys, enum_variants};
use mixrank_data::config::model::{ExpertKind, ExpertSection};
use std::collections::BTreeSet;

/// Keys the structs parse but validation refuses until they are built: documented in
/// prose (not in the examples), with the snippet that must be refused. None today
/// (`model.position_tower` was one until the tower was built).
const RESERVED: &[(&str, &str)] = &[];

/// The page's ```toml blocks, each parsed as a TOML document.
fn doc_blocks() -> Vec<toml::Table> {
    let md = std::fs::read_to_string(repo_root().join("docs/config.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in md.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(text), "```") => {
                let doc = text
                    .parse::<toml::Table>()
                    .unwrap_or_else(|e| panic!("docs/config.md: a TOML example does not parse: {e}\n{text}"));
                blocks.push(doc);
                current = None;
            }
            (Some(text), l) => {
                text.push_str(l);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "docs/config.md: unterminated ```toml block");
    assert!(blocks.len() >= 3, "docs/config.md: expected the data, model/train and distill examples");
    blocks
}

/// Every key path in a table: sections too; array-of-tables elements as `name[]`.
fn flatten(prefix: &str, t: &toml::Table, out: &mut BTreeSet<String>) {
    for (k, v) in t {
        let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        out.insert(p.clone());
        match v {
            toml::Value::Table(inner) => flatten(&p, inner, out),
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(inner) = item {
                        flatten(&format!("{p}[]"), inner, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// `pattern` (with `*` for a name under `[tables]` / `[data.splits]`) matches `path`.
fn matches(pattern: &str, path: &str) -> bool {
    let (p, q): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), path.split('.').collect());
    p.len() == q.len() && p.iter().zip(&q).all(|(a, b)| a == b || *a == "*")
}

fn reserved(path: &str) -> bool {
    RESERVED.iter().any(|(r, _)| path == *r || path.starts_with(&format!("{r}.")))
}

#[test]
fn accepted_keys_are_read_from_every_section() {
    let keys = accepted_keys();
    for k in [
        "version",
        "data.csv.delimiter",
        "data.splits.*.days.from",
        "tables.*.vocabulary_file",
        "features.categorical[].multi_valued.pooling",
        "features.dense[].clip",
        "tasks[].teacher.kind",
        "columns.position.max",
        // Keys of the `[model]` struct after `experts`, and of the sections after `[model]`:
        // the walk goes on past the expert tables.
        "model.experts[].kind",
        "model.experts[].cross_layers",
        "model.experts[].stream2",
        "model.gate.top_k",
        "model.ple.task_experts",
        "model.inputs",
        "model.position_tower.tasks",
        "feature_groups.*",
        "train.threads",
        "distill.tasks[].pairs_per_row",
    ] {
        assert!(keys.contains(k), "{k} missing from {keys:?}");
    }
    assert!(!keys.contains("model.experts[].nonsense"));
    let names: Vec<&str> = ExpertKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(names, enum_variants::<ExpertKind>(), "ExpertKind::ALL lists every kind");
}

#[test]
fn documented_keys_and_accepted_keys_agree() {
    let accepted: Vec<String> = accepted_keys().into_iter().filter(|k| !reserved(k)).collect();
    let mut documented = BTreeSet::new();
    for block in doc_blocks() {
        flatten("", &block, &mut documented);
    }
    let not_accepted: Vec<&String> = documented.iter().filter(|d| !accepted.iter().any(|a| matches(a, d))).collect();
    assert!(not_accepted.is_empty(), "docs/config.md documents keys the config does not accept: {not_accepted:?}");
    // A two-tower model's towers take the keys of `[model]` for their architecture: a
    // tower key is documented by its example or by the same key of `[model]`.
    let as_head_key = |a: &str| -> Option<String> {
        let rest = a.strip_prefix("model.two_tower.user.").or_else(|| a.strip_prefix("model.two_tower.item."))?;
        Some(format!("model.{rest}"))
    };
    let undocumented: Vec<&String> = accepted
        .iter()
        .filter(|a| {
            !documented.iter().any(|d| matches(a, d))
                && !as_head_key(a).is_some_and(|h| documented.iter().any(|d| matches(&h, d)))
        })
        .collect();
    assert!(undocumented.is_empty(), "accepted keys missing from the docs/config.md examples: {undocumented:?}");
    let in_examples: Vec<&String> = documented.iter().filter(|d| reserved(d)).collect();
    assert!(in_examples.is_empty(), "reserved keys shown in an example as if they worked: {in_examples:?}");
}

#[test]
fn each_expert_kind_is_documented_with_exactly_its_keys() {
    let mut seen = Vec::new();
    for block in doc_blocks() {
        let Some(experts) = block.get("model").and_then(|m| m.get("experts")).and_then(|e| e.as_array()) else {
            continue;
        };
        for e in experts {
            let t = e.as_table().expect("an expert example is a table");
            let kind = t.get("kind").and_then(|k| k.as_str()).expect("an expert example has a kind");
            let kind =
                *ExpertKind::ALL.iter().find(|k| k.name() == kind).unwrap_or_else(|| panic!("unknown kind {kind}"));
            let documented: BTreeSet<&str> = t.keys().map(String::as_str).filter(|k| *k != "kind").collect();
            let accepted: BTreeSet<&str> = ExpertSection::keys(kind).iter().copied().collect();
            assert_eq!(documented, accepted, "docs/config.md: the {kind} example's keys");
            // The example is a valid expert of its kind.
            ExpertSection::from_table(t.clone()).unwrap_or_else(|e| panic!("the {kind} example: {e}"));
            seen.push(kind);
        }
    }
    assert_eq!(seen, ExpertKind::ALL, "docs/config.md: one example per expert kind, in order");
}

#[test]
fn reserved_keys_are_documented_and_refused() {
    let md = std::fs::read_to_string(repo_root().join("docs/config.md")).unwrap();
    let d = tempfile::tempdir().unwrap();
    for (key, snippet) in RESERVED {
        let name = key.rsplit('.').next().unwrap();
        assert!(
            md.contains(&format!("`{name}`")) || md.contains(&format!("{name}`")),
            "docs/config.md: {key} undocumented"
        );
        let text = format!(
            "{}\n[model]\narchitecture = \"single_task\"\n{snippet}\n[[model.experts]]\nkind = \"mlp\"\nhidden = [4]\n",
            parquet_config("[[features.categorical]]\nname = \"u\"\nbuckets = 10\ndim = 2\n[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"click\"\n")
        );
        let e = err_text(load_config(d.path(), &text));
        assert!(e.contains(&format!("at `{key}`")) && e.contains("not supported yet"), "{key}: {e}");
    }
    if !RESERVED.is_empty() {
        assert!(md.contains("not supported yet"), "docs/config.md: reserved keys are said to be refused");
    }
}
