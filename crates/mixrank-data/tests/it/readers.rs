use crate::util::*;
use arrow::array::{ArrayRef, DictionaryArray, Float64Array, Int64Array, Int64Builder, ListBuilder, StringArray};
use arrow::datatypes::Int32Type;
use mixrank_data::hash::{bucket, hash_bytes, hash_i64};
use std::collections::HashSet;
use std::sync::Arc;

#[test]
#[ignore = "real-data suite: needs ../shared/data beside the repository (cargo test --workspace -- --ignored)"]
fn frappe_splits_partition_the_validation_file() {
    let cfg = || mixrank_data::ExperimentConfig::load(&repo_root().join("configs/frappe.toml")).unwrap();
    let (train, bad) = read_split(cfg(), "train").unwrap();
    let (val, _) = read_split(cfg(), "validation").unwrap();
    let (test, _) = read_split(cfg(), "test").unwrap();
    let (train, val, test) = (concat(&train), concat(&val), concat(&test));
    assert_eq!(bad, 0);
    assert_eq!(train.rows + val.rows, 57_722, "train and validation split the 57,722-row file");
    assert_eq!(test.rows, 28_860);
    let frac = train.rows as f64 / 57_722.0;
    assert!((frac - 0.9).abs() < 0.01, "{frac}");
    // Labels are ±1 in the file; about a third are positive.
    let pos = test.label(0).iter().filter(|&&y| y == 1.0).count() as f64 / test.rows as f64;
    assert!((0.30..0.36).contains(&pos), "{pos}");
    // Field 0 of the first test line is feature 204, hashed like the text "204".
    assert_eq!(test.cat[0].ids[0], bucket(hash_bytes(b"204"), 8192));
    assert_eq!(test.cat[9].ids[0], bucket(hash_bytes(b"5183"), 8192));
}

#[test]
#[ignore = "real-data suite: needs ../shared/data beside the repository (cargo test --workspace -- --ignored)"]
fn criteo_sample_reads_with_missing_indicators() {
    let cfg = mixrank_data::ExperimentConfig::load(&repo_root().join("configs/criteo_sample.toml")).unwrap();
    assert_eq!(cfg.dense_width(), 26);
    let (t, _) = read_split(cfg.clone(), "train").unwrap();
    let (v, _) = read_split(cfg, "validation").unwrap();
    let (t, v) = (concat(&t), concat(&v));
    assert_eq!(t.rows + v.rows, 200);
    // Empty I1 cells: raw mode gives NaN, and the indicator (column 13) says 1.
    let mut all = t.clone();
    all.append(&v);
    let missing_i1 = (0..all.rows).filter(|&r| all.dense[r * 26 + 13] == 1.0).count();
    let nan_i1 = (0..all.rows).filter(|&r| all.dense[r * 26].is_nan()).count();
    assert_eq!(missing_i1, nan_i1);
    assert!(missing_i1 > 0);
}

#[test]
#[ignore = "real-data suite: needs ../shared/data beside the repository (cargo test --workspace -- --ignored)"]
fn multitask_samples_read() {
    let cfg = mixrank_data::ExperimentConfig::load(&repo_root().join("configs/aliexpress_sample.toml")).unwrap();
    let (b, _) = read_split(cfg, "train").unwrap();
    let b = concat(&b);
    assert_eq!(b.rows, 100);
    // Conversion is masked to clicked rows.
    for r in 0..b.rows {
        assert_eq!(b.mask(1)[r], b.label(0)[r], "row {r}");
    }
    let cfg = mixrank_data::ExperimentConfig::load(&repo_root().join("configs/ali_ccp_sample.toml")).unwrap();
    let (t, _) = read_split(cfg.clone(), "train").unwrap();
    let (v, _) = read_split(cfg, "validation").unwrap();
    let text = std::fs::read_to_string(shared_data().join("samples/ali_ccp_train_sample.csv")).unwrap();
    let data_lines = text.lines().filter(|l| !l.trim().is_empty()).count() - 1;
    assert_eq!(concat(&t).rows + concat(&v).rows, data_lines);
}

const MIXED: &str = r#"
[tables.cat]
buckets = 1000
dim = 4

[[features.categorical]]
name = "user"
buckets = 5000
dim = 8

[[features.categorical]]
name = "tags"
table = "cat"
multi_valued = { pooling = "mean" }

[[features.categorical]]
name = "category"
table = "cat"

[[features.categorical]]
name = "color"
vocabulary = ["red", "green"]
dim = 2

[[features.dense]]
name = "price"
log1p = true
clip = [0.0, 3.0]
missing = -1.0
missing_indicator = true

[[tasks]]
name = "click"
kind = "binary"
label = "click"
"#;

fn mixed_parquet(dir: &std::path::Path) {
    let mut tags = ListBuilder::new(Int64Builder::new());
    for row in [vec![1i64, 2], vec![], vec![3]] {
        tags.values().append_slice(&row);
        tags.append(true);
    }
    write_parquet(
        &dir.join("data.parquet"),
        vec![
            ("user", Arc::new(StringArray::from(vec!["u1", "u2", "u1"])) as ArrayRef),
            ("tags", Arc::new(tags.finish()) as ArrayRef),
            ("category", Arc::new(Int64Array::from(vec![2, 3, 1])) as ArrayRef),
            ("color", Arc::new(StringArray::from(vec!["green", "blue", "red"])) as ArrayRef),
            ("price", Arc::new(Float64Array::from(vec![Some(0.0), None, Some(1e6)])) as ArrayRef),
            ("click", Arc::new(Int64Array::from(vec![1, 0, 1])) as ArrayRef),
        ],
        1024,
    );
}

#[test]
fn parquet_and_csv_encode_identically() {
    let d = tempfile::tempdir().unwrap();
    mixed_parquet(d.path());
    let pq = concat(&read_split(load_config(d.path(), &parquet_config(MIXED)).unwrap(), "train").unwrap().0);
    std::fs::write(
        d.path().join("data.csv"),
        "user,tags,category,color,price,click\nu1,1|2,2,green,0,1\nu2,,3,blue,,0\nu1,3,1,red,1000000,1\n",
    )
    .unwrap();
    let csv_cfg = format!("[data]\nformat = \"csv\"\n[data.splits.train]\npaths = [\"data.csv\"]\n{MIXED}");
    let csv = concat(&read_split(load_config(d.path(), &csv_cfg).unwrap(), "train").unwrap().0);
    assert_eq!(pq.cat, csv.cat);
    assert_eq!(pq.labels, csv.labels);
    // NaN != NaN: compare the dense matrices bitwise.
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&pq.dense), bits(&csv.dense));

    // Hand-checked layout.
    assert_eq!(
        pq.cat[0].ids,
        vec![bucket(hash_bytes(b"u1"), 5000), bucket(hash_bytes(b"u2"), 5000), bucket(hash_bytes(b"u1"), 5000)]
    );
    assert_eq!(pq.cat[1].offsets, Some(vec![0, 2, 2, 3]));
    assert_eq!(pq.cat[1].ids, vec![bucket(hash_i64(1), 1000), bucket(hash_i64(2), 1000), bucket(hash_i64(3), 1000)]);
    // The shared table maps the same value to the same row from either feature.
    assert_eq!(pq.cat[2].ids[2], pq.cat[1].ids[0]);
    // Vocabulary: green = 1, unknown "blue" = OOV row 2, red = 0.
    assert_eq!(pq.cat[3].ids, vec![1, 2, 0]);
    // Dense (raw mode): log1p then clip; missing is NaN with indicator 1.
    assert_eq!(pq.dense_width, 2);
    assert_eq!(pq.dense[0], 0.0);
    assert!(pq.dense[2].is_nan());
    assert_eq!(pq.dense[3], 1.0);
    assert_eq!(pq.dense[4], 3.0);
    assert_eq!(pq.dense[5], 0.0);
}

#[test]
fn fitted_mode_standardises_and_fills_missing() {
    let d = tempfile::tempdir().unwrap();
    let n = 1000;
    let price: Vec<Option<f64>> = (0..n).map(|i| if i % 10 == 0 { None } else { Some(i as f64) }).collect();
    write_parquet(
        &d.path().join("data.parquet"),
        vec![
            ("price", Arc::new(Float64Array::from(price)) as ArrayRef),
            ("click", Arc::new(Int64Array::from(vec![0; n])) as ArrayRef),
        ],
        128,
    );
    let body = "[[features.dense]]\nname = \"price\"\nstandardize = true\nmissing = 5.0\nmissing_indicator = true\n\n[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"click\"\n";
    let cfg = Arc::new(load_config(d.path(), &parquet_config(body)).unwrap());
    let stats = mixrank_data::stats::fit_dense_stats(cfg.clone(), cfg.split("train").unwrap(), None).unwrap();
    let observed: Vec<f64> = (0..n).filter(|i| i % 10 != 0).map(|i| i as f64).collect();
    let mean = observed.iter().sum::<f64>() / observed.len() as f64;
    assert!((stats.mean[0] - mean).abs() < 1e-9);
    let enc = Arc::new(
        mixrank_data::Encoder::new(cfg.clone(), mixrank_data::DenseMode::Fitted(Arc::new(stats.clone()))).unwrap(),
    );
    let opts = mixrank_data::StreamOptions::from_config(&cfg, false);
    let b = concat(&mixrank_data::pipeline::read_all(enc, cfg.split("train").unwrap(), opts).unwrap().0);
    // Row 0 is missing: (5 - mean) / std, indicator 1. Row 1: (1 - mean) / std.
    let z = |x: f64| ((x - stats.mean[0]) / stats.std[0]) as f32;
    assert_eq!(b.dense[0], z(5.0));
    assert_eq!(b.dense[1], 1.0);
    assert_eq!(b.dense[2], z(1.0));
    assert_eq!(b.dense[3], 0.0);
}

#[test]
fn dictionary_strings_hash_like_plain_strings() {
    let d = tempfile::tempdir().unwrap();
    let dict: DictionaryArray<Int32Type> = vec!["a", "b", "a", "c"].into_iter().collect();
    write_parquet(
        &d.path().join("data.parquet"),
        vec![("user", Arc::new(dict) as ArrayRef), ("click", Arc::new(Int64Array::from(vec![0, 1, 0, 1])) as ArrayRef)],
        1024,
    );
    let body = "[[features.categorical]]\nname = \"user\"\nbuckets = 97\ndim = 4\n\n[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"click\"\n";
    let b = concat(&read_split(load_config(d.path(), &parquet_config(body)).unwrap(), "train").unwrap().0);
    let want: Vec<u32> = ["a", "b", "a", "c"].iter().map(|s| bucket(hash_bytes(s.as_bytes()), 97)).collect();
    assert_eq!(b.cat[0].ids, want);
}

#[test]
fn gzipped_headerless_tsv_reads() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let f = std::fs::File::create(d.path().join("day.tsv.gz")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    for i in 0..50 {
        writeln!(gz, "{}\t{}\t{}", i % 2, i, if i % 3 == 0 { String::new() } else { format!("c{i}") }).unwrap();
    }
    gz.finish().unwrap();
    let text = "[data]\nformat = \"csv\"\n[data.csv]\ndelimiter = \"\\t\"\nheader = false\ncolumns = [\"label\", \"I1\", \"C1\"]\n[data.splits.train]\npaths = [\"*.tsv.gz\"]\n\n[[features.dense]]\nname = \"I1\"\n\n[[features.categorical]]\nname = \"C1\"\nbuckets = 1000\ndim = 4\n\n[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"label\"\n";
    let b = concat(&read_split(load_config(d.path(), text).unwrap(), "train").unwrap().0);
    assert_eq!(b.rows, 50);
    assert_eq!(b.dense[49], 49.0);
    // Empty categorical cells are the empty key.
    assert_eq!(b.cat[0].ids[0], bucket(hash_bytes(b""), 1000));
    let distinct: HashSet<u32> = b.cat[0].ids.iter().copied().collect();
    assert!(distinct.len() > 30);
}
