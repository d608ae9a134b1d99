//! `vocabulary = { from = "train", … }`: the statistics pass builds a learned vocabulary
//! from value counts (min_count, max_size, tie-break), features sharing a table count
//! together, the built vocabulary maps values like a given one (the rest to the
//! out-of-vocabulary row), an unbuilt one is refused for training, and bad keys are
//! refused naming the key.

use crate::util::*;
use arrow::array::{ArrayRef, Int64Array, StringArray};
use mixrank_data::config::{LearnedVocabulary, TableKind};
use mixrank_data::pipeline::{read_all, StreamOptions};
use mixrank_data::stats::{fit_train_stats, select_vocabulary, DenseStats};
use mixrank_data::{DataError, DenseMode, Encoder};
use std::sync::Arc;

const CONFIG: &str = r#"
[tables.shared]
vocabulary = "train"
dim = 2

[[features.categorical]]
name = "u"
vocabulary = { from = "train", min_count = 2, max_size = 3 }
dim = 4

[[features.categorical]]
name = "x"
table = "shared"

[[features.categorical]]
name = "y"
table = "shared"

[[features.dense]]
name = "v"
standardize = true

[[tasks]]
name = "click"
kind = "binary"
label = "click"
"#;

/// `u`: a×5, b×3, c×3, d×3 (first seen in the order d, c, b), e×2, f×1. `x`: p×9, q×8;
/// `y`: q×9, r×8 (so the shared table counts q 17, p 9, r 8; x alone would put p first).
fn write_data(dir: &std::path::Path) {
    let u = ["d", "c", "b", "a", "a", "a", "a", "a", "b", "b", "c", "c", "d", "d", "e", "e", "f"];
    let x: Vec<&str> = (0..17).map(|i| if i < 9 { "p" } else { "q" }).collect();
    let y: Vec<&str> = (0..17).map(|i| if i < 9 { "q" } else { "r" }).collect();
    write_parquet(
        &dir.join("data.parquet"),
        vec![
            ("u", Arc::new(StringArray::from(u.to_vec())) as ArrayRef),
            ("x", Arc::new(StringArray::from(x)) as ArrayRef),
            ("y", Arc::new(StringArray::from(y)) as ArrayRef),
            ("v", Arc::new(Int64Array::from((0..17).collect::<Vec<i64>>())) as ArrayRef),
            ("click", Arc::new(Int64Array::from(vec![0i64; 17])) as ArrayRef),
        ],
        5,
    );
}

#[test]
fn the_statistics_pass_builds_learned_vocabularies_by_count() {
    let d = tempfile::tempdir().unwrap();
    write_data(d.path());
    let cfg = Arc::new(load_config(d.path(), &parquet_config(CONFIG)).unwrap());
    assert_eq!(cfg.unbuilt_vocabularies(), ["shared", "u"]);
    // Not built: refused for training/evaluation encoding, naming the table.
    let e =
        Encoder::new(cfg.clone(), DenseMode::Fitted(Arc::new(DenseStats { mean: vec![0.0], std: vec![1.0], rows: 0 })))
            .err()
            .expect("an unbuilt vocabulary is refused");
    assert!(matches!(&e, DataError::Vocabulary { table, .. } if table == "shared"), "{e}");

    let fitted = fit_train_stats(cfg.clone(), cfg.split("train").unwrap(), Some(1_000_000)).unwrap();
    // a (5), then b, c, d (3 each) by text, capped at 3: d is out by the cap, e (2) too,
    // f (1) by min_count.
    assert_eq!(fitted.vocabularies["u"], ["a", "b", "c"]);
    // Both features of the shared table count: q 17, p 9, r 8.
    assert_eq!(fitted.vocabularies["shared"], ["q", "p", "r"]);
    // The dense statistics of the same pass: v = 0..16.
    assert_eq!(fitted.dense.rows, 17);
    assert!((fitted.dense.mean[0] - 8.0).abs() < 1e-12);
    // With a row budget the dense statistics cover the first rows only; the
    // vocabularies still count every row.
    let first = fit_train_stats(cfg.clone(), cfg.split("train").unwrap(), Some(4)).unwrap();
    assert_eq!((first.dense.rows, first.dense.mean[0]), (4, 1.5));
    assert_eq!(first.vocabularies, fitted.vocabularies);

    let built = Arc::new(cfg.with_vocabularies(&fitted.vocabularies).unwrap());
    assert!(built.unbuilt_vocabularies().is_empty());
    assert_eq!(built.learned_vocabularies(), fitted.vocabularies);
    let u = built.tables.iter().find(|t| t.name == "u").unwrap();
    assert_eq!(u.rows(), 4, "3 values and the out-of-vocabulary row");
    let enc = Arc::new(Encoder::new(built.clone(), DenseMode::Fitted(Arc::new(fitted.dense.clone()))).unwrap());
    let mut opts = StreamOptions::from_config(&built, false);
    opts.batch_size = 100;
    let (batches, _) = read_all(enc, built.split("train").unwrap(), opts).unwrap();
    let b = concat(&batches);
    // d, c, b, a, …: the values below the cap or min_count (d, e, f) read the OOV row 3.
    assert_eq!(b.cat[0].ids, [3, 2, 1, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 3, 3]);
    assert_eq!(b.cat[1].ids[..10], [1, 1, 1, 1, 1, 1, 1, 1, 1, 0], "x: p = 1, q = 0");
    assert_eq!(b.cat[2].ids[8..], [0, 2, 2, 2, 2, 2, 2, 2, 2], "y: q = 0, r = 2");

    // Stored vocabularies are checked when set.
    let mut wrong = fitted.vocabularies.clone();
    wrong.insert("u".into(), vec!["a".into(), "b".into(), "c".into(), "d".into()]);
    let e = cfg.with_vocabularies(&wrong).err().unwrap().to_string();
    assert!(e.contains("`u`") && e.contains("max_size"), "{e}");
    wrong.insert("v".into(), vec![]);
    let e = cfg.with_vocabularies(&wrong).err().unwrap().to_string();
    assert!(e.contains("`v`"), "{e}");
}

#[test]
fn selection_keeps_min_count_caps_by_count_and_breaks_ties_by_value() {
    let counts = |v: &[(&str, u64)]| v.iter().map(|&(s, c)| (s.to_string(), c)).collect::<Vec<_>>();
    let rule = |min_count, max_size| LearnedVocabulary { min_count, max_size };
    let seen = counts(&[("z", 4), ("b", 4), ("a", 1), ("m", 7), ("c", 4)]);
    assert_eq!(select_vocabulary(seen.clone(), rule(1, None)), ["m", "b", "c", "z", "a"]);
    assert_eq!(select_vocabulary(seen.clone(), rule(2, None)), ["m", "b", "c", "z"]);
    assert_eq!(select_vocabulary(seen.clone(), rule(2, Some(2))), ["m", "b"]);
    assert_eq!(select_vocabulary(seen, rule(5, Some(9))), ["m"]);
}

#[test]
fn learned_vocabulary_keys_are_checked_naming_the_key() {
    let d = tempfile::tempdir().unwrap();
    let with = |v: &str| {
        load_config(
            d.path(),
            &parquet_config(&CONFIG.replace("vocabulary = { from = \"train\", min_count = 2, max_size = 3 }", v)),
        )
    };
    let c = with("vocabulary = { from = \"train\", max_size = 10 }").unwrap();
    let TableKind::Learned { rule, built: None } = &c.tables.iter().find(|t| t.name == "u").unwrap().kind else {
        panic!("a learned vocabulary")
    };
    assert_eq!(*rule, LearnedVocabulary { min_count: 1, max_size: Some(10) });
    // The stored config text round-trips (as a checkpoint manifest holds it).
    let text = toml::to_string(&c.wire).unwrap();
    let wire: mixrank_data::config::wire::ConfigFile = toml::from_str(&text).unwrap();
    assert_eq!(toml::to_string(&wire).unwrap(), text);
    for (v, key, says) in [
        ("vocabulary = { from = \"train\", min_count = 0 }", "features.categorical[0].vocabulary.min_count", ">= 1"),
        ("vocabulary = { from = \"train\", max_size = 0 }", "features.categorical[0].vocabulary.max_size", "1..="),
        ("vocabulary = { from = \"test\" }", "features.categorical[0].vocabulary.from", "test"),
        ("vocabulary = { from = \"train\", min = 2 }", "features.categorical[0].vocabulary.min", "unknown field"),
        ("vocabulary = \"validation\"", "features.categorical[0].vocabulary", "validation"),
        ("vocabulary = { from = \"train\" }\nbuckets = 10", "features.categorical[0]", "only one of"),
    ] {
        let e = err_text(with(&format!("{v}\n")));
        assert!(e.contains(&format!("`{key}`")) && e.contains(says), "{v}: {e}");
    }
    let e =
        err_text(load_config(
            d.path(),
            &parquet_config(&CONFIG.replace(
                "vocabulary = \"train\"\ndim = 2",
                "vocabulary = { from = \"train\", min_count = 0 }\ndim = 2",
            )),
        ));
    assert!(e.contains("`tables.shared.vocabulary.min_count`"), "{e}");
}
