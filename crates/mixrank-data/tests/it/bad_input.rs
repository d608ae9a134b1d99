//! One test per bad-input case: the error names the file, the row (or row group) and
//! the column; under `max_bad_rows` bad rows are skipped and counted instead.

use crate::util::*;
use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use std::sync::Arc;

const TASK: &str = "[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"click\"\n";
const USER: &str = "[[features.categorical]]\nname = \"user\"\nbuckets = 10\ndim = 4\n";

fn csv_config(extra_data: &str) -> String {
    format!(
        "[data]\nformat = \"csv\"\n{extra_data}\n[data.splits.train]\npaths = [\"data.csv\"]\n\n{USER}\n[[features.dense]]\nname = \"price\"\n\n{TASK}"
    )
}

fn run_csv(body: &str, extra_data: &str) -> Result<(Vec<mixrank_data::Batch>, u64), mixrank_data::DataError> {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("data.csv"), body).unwrap();
    let cfg = load_config(d.path(), &csv_config(extra_data))?;
    read_split(cfg, "train")
}

#[test]
fn missing_column_in_parquet() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("data.parquet");
    write_parquet(&p, vec![("user", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef)], 1024);
    let cfg = load_config(d.path(), &parquet_config(&format!("{USER}\n{TASK}"))).unwrap();
    let e = err_text(read_split(cfg, "train"));
    assert!(e.contains("data.parquet") && e.contains("missing column `click`") && e.contains("available: user"), "{e}");
}

#[test]
fn missing_column_in_csv_header() {
    let e = err_text(run_csv("user,click\n1,0\n", ""));
    assert!(e.contains("data.csv") && e.contains("missing column `price`"), "{e}");
}

#[test]
fn wrong_type_in_parquet() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("data.parquet");
    write_parquet(
        &p,
        vec![
            ("user", Arc::new(Float64Array::from(vec![1.5, 2.5])) as ArrayRef),
            ("click", Arc::new(Int64Array::from(vec![0, 1])) as ArrayRef),
        ],
        1024,
    );
    let cfg = load_config(d.path(), &parquet_config(&format!("{USER}\n{TASK}"))).unwrap();
    let e = err_text(read_split(cfg, "train"));
    assert!(
        e.contains("data.parquet") && e.contains("column `user` has type double, expected string or integer"),
        "{e}"
    );
}

#[test]
fn unparsable_value_in_csv_names_line_and_column() {
    let e = err_text(run_csv("user,price,click\na,1.5,0\nb,cheap,1\n", ""));
    assert!(e.contains("data.csv") && e.contains("line 3") && e.contains("column `price`"), "{e}");
    assert!(e.contains("expected a number, found \"cheap\""), "{e}");
}

#[test]
fn nan_label_is_rejected() {
    let e = err_text(run_csv("user,price,click\na,1.5,0\nb,2,NaN\n", ""));
    assert!(e.contains("line 3") && e.contains("column `click`") && e.contains("must be finite, found NaN"), "{e}");
}

#[test]
fn infinite_label_in_parquet_names_row_and_row_group() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("data.parquet");
    let mut y = vec![0.0; 10];
    y[7] = f64::INFINITY;
    write_parquet(
        &p,
        vec![
            ("user", Arc::new(Int64Array::from((0..10).collect::<Vec<i64>>())) as ArrayRef),
            ("click", Arc::new(Float64Array::from(y)) as ArrayRef),
        ],
        4,
    );
    let cfg = load_config(d.path(), &parquet_config(&format!("{USER}\n{TASK}"))).unwrap();
    let e = err_text(read_split(cfg, "train"));
    assert!(e.contains("data.parquet") && e.contains("row 7 (row group 1)") && e.contains("column `click`"), "{e}");
    assert!(e.contains("must be finite, found inf"), "{e}");
}

#[test]
fn binary_label_outside_zero_one() {
    let e = err_text(run_csv("user,price,click\na,1.5,0\nb,2,2\n", ""));
    assert!(e.contains("line 3") && e.contains("column `click`") && e.contains("must be in {0, 1}, found 2"), "{e}");
}

#[test]
fn libsvm_label_outside_plus_minus_one() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("data.libfm"), "1 3:1 7:1\n-1 4:1 8:1\n2 5:1 9:1\n").unwrap();
    let cfg = load_config(
        d.path(),
        "[data]\nformat = \"libsvm\"\n[data.libsvm]\nfields = [\"a\", \"b\"]\nfield_mode = \"positional\"\n[data.splits.train]\npaths = [\"data.libfm\"]\n\n[[features.categorical]]\nname = \"a\"\nbuckets = 10\ndim = 4\n\n[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"label\"\n",
    )
    .unwrap();
    let e = err_text(read_split(cfg, "train"));
    assert!(e.contains("data.libfm") && e.contains("line 3") && e.contains("{-1, 0, 1}, found 2"), "{e}");
}

#[test]
fn libsvm_malformed_token() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("data.libfm"), "1 3:1 7:1\n1 3-1 7:1\n").unwrap();
    let cfg = load_config(
        d.path(),
        "[data]\nformat = \"libsvm\"\n[data.libsvm]\nfields = [\"a\", \"b\"]\nfield_mode = \"positional\"\n[data.splits.train]\npaths = [\"data.libfm\"]\n\n[[features.categorical]]\nname = \"a\"\nbuckets = 10\ndim = 4\n\n[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"label\"\n",
    )
    .unwrap();
    let e = err_text(read_split(cfg, "train"));
    assert!(e.contains("line 2") && e.contains("expected `idx:val`"), "{e}");
}

#[test]
fn empty_csv_file() {
    let e = err_text(run_csv("", ""));
    assert!(e.contains("data.csv") && e.contains("the file is empty"), "{e}");
}

#[test]
fn empty_parquet_file() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("data.parquet"), b"").unwrap();
    let cfg = load_config(d.path(), &parquet_config(&format!("{USER}\n{TASK}"))).unwrap();
    let e = err_text(read_split(cfg, "train"));
    assert!(e.contains("data.parquet") && e.contains("the file is empty (expected a Parquet file)"), "{e}");
}

#[test]
fn truncated_parquet_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("data.parquet");
    write_parquet(
        &p,
        vec![
            ("user", Arc::new(Int64Array::from((0..1000).collect::<Vec<i64>>())) as ArrayRef),
            ("click", Arc::new(Int64Array::from(vec![1; 1000])) as ArrayRef),
        ],
        100,
    );
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let cfg = load_config(d.path(), &parquet_config(&format!("{USER}\n{TASK}"))).unwrap();
    let e = err_text(read_split(cfg, "train"));
    assert!(e.contains("data.parquet") && e.contains("not a readable Parquet file"), "{e}");
}

#[test]
fn wrong_field_count_in_csv_row() {
    let e = err_text(run_csv("user,price,click\na,1.5,0\nb,2\n", ""));
    assert!(e.contains("data.csv") && e.contains("line 3") && e.contains("expected 3 fields, found 2"), "{e}");
}

#[test]
fn unknown_segment_value() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("data.csv"), "user,surface,click\na,home,0\nb,tv,1\n").unwrap();
    let text = format!(
        "[data]\nformat = \"csv\"\n[data.splits.train]\npaths = [\"data.csv\"]\n{USER}\n{TASK}\n[columns]\nsegment = {{ column = \"surface\", values = [\"home\", \"search\"] }}\n"
    );
    let e = err_text(read_split(load_config(d.path(), &text).unwrap(), "train"));
    assert!(e.contains("line 3") && e.contains("column `surface`") && e.contains("unknown value \"tv\""), "{e}");
}

#[test]
fn bad_rows_are_skipped_and_counted_under_the_policy() {
    let body = "user,price,click\na,1,0\nb,x,1\nc,3,5\nd,4,1\n";
    let (batches, bad) = run_csv(body, "max_bad_rows = 2").unwrap();
    let b = concat(&batches);
    assert_eq!(bad, 2);
    assert_eq!(b.rows, 2);
    assert_eq!(b.label(0), &[0.0, 1.0]);
}

#[test]
fn too_many_bad_rows_fail_with_the_first_reason() {
    let body = "user,price,click\na,1,0\nb,x,1\nc,3,5\nd,4,1\n";
    let e = err_text(run_csv(body, "max_bad_rows = 1"));
    assert!(e.contains("too many bad rows: 2 exceeds max_bad_rows = 1"), "{e}");
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn no_files_match() {
    let d = tempfile::tempdir().unwrap();
    let cfg = load_config(d.path(), &parquet_config(&format!("{USER}\n{TASK}"))).unwrap();
    let e = err_text(read_split(cfg, "train"));
    assert!(e.contains("split `train`: no files match"), "{e}");
}

#[test]
fn string_column_used_as_label() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("data.parquet");
    write_parquet(
        &p,
        vec![
            ("user", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("click", Arc::new(StringArray::from(vec!["0", "yes"])) as ArrayRef),
        ],
        1024,
    );
    let cfg = load_config(d.path(), &parquet_config(&format!("{USER}\n{TASK}"))).unwrap();
    let e = err_text(read_split(cfg, "train"));
    assert!(e.contains("row 1 (row group 0)") && e.contains("column `click`") && e.contains("found \"yes\""), "{e}");
}

/// Pass-through columns (`Encoder::with_passthrough`, what `mixrank predict` keeps) hold
/// exactly the rows the encoder keeps: bad rows skipped, rows outside the split's
/// fraction dropped, across chunk and batch boundaries; text cells as strings, an
/// empty cell as null.
#[test]
fn passthrough_columns_follow_the_rows_the_encoder_keeps() {
    use arrow::array::{Array, AsArray};
    let d = tempfile::tempdir().unwrap();
    let mut body = String::from("user,price,click,note\n");
    for i in 0..40 {
        // Every 7th row has a bad label; every 5th an empty note.
        let click = if i % 7 == 3 { "5" } else { "1" };
        let note = if i % 5 == 0 { String::new() } else { format!("n{i}") };
        body.push_str(&format!("u{i},{i},{click},{note}\n"));
    }
    std::fs::write(d.path().join("data.csv"), &body).unwrap();
    let text = format!(
        "[data]\nformat = \"csv\"\nmax_bad_rows = 10\nchunk_rows = 3\nbatch_size = 4\n\
         [data.splits.train]\npaths = [\"data.csv\"]\nrows = {{ from = 0.0, to = 0.6 }}\n\n{USER}\n\
         [[features.dense]]\nname = \"price\"\n\n{TASK}"
    );
    let cfg = Arc::new(load_config(d.path(), &text).unwrap());
    let enc = mixrank_data::Encoder::new(cfg.clone(), mixrank_data::DenseMode::Raw)
        .unwrap()
        .with_passthrough(&["note".to_string(), "user".to_string()]);
    let opts = mixrank_data::StreamOptions::from_config(&cfg, false);
    let (batches, bad) = mixrank_data::pipeline::read_all(Arc::new(enc), cfg.split("train").unwrap(), opts).unwrap();
    assert!(batches.len() > 2 && bad > 0, "{} batches, {bad} bad", batches.len());
    let mut kept = 0;
    for b in &batches {
        assert_eq!(b.passthrough.len(), 2);
        let (note, user) = (b.passthrough[0].as_string::<i32>(), b.passthrough[1].as_string::<i32>());
        assert_eq!((note.len(), user.len()), (b.rows, b.rows));
        for r in 0..b.rows {
            // The encoded price is the row number: the carried cells are that row's.
            let i = b.dense[r * b.dense_width] as usize;
            assert_eq!(user.value(r), format!("u{i}"));
            assert_ne!(i % 7, 3, "a bad row was carried");
            if i.is_multiple_of(5) {
                assert!(note.is_null(r), "row {i}: an empty cell is null");
            } else {
                assert_eq!(note.value(r), format!("n{i}"));
            }
        }
        kept += b.rows;
    }
    assert!(kept < 40 - bad as usize, "the row fraction dropped rows ({kept} kept)");
}
