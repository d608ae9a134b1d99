//! The pipeline: every row exactly once, deterministic order for a seed, batches of the
//! configured size, several decode threads.

use crate::util::*;
use arrow::array::{ArrayRef, Int64Array};
use mixrank_data::pipeline::{read_all, BatchStream, StreamOptions};
use mixrank_data::{DenseMode, Encoder};
use std::sync::Arc;

fn many_files(dir: &std::path::Path, files: usize, rows: usize) {
    for f in 0..files {
        let ids: Vec<i64> = (0..rows as i64).map(|r| (f * rows) as i64 + r).collect();
        write_parquet(
            &dir.join(format!("part-{f:03}.parquet")),
            vec![
                ("rid", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
                ("click", Arc::new(Int64Array::from(ids.iter().map(|i| i % 2).collect::<Vec<_>>())) as ArrayRef),
            ],
            300,
        );
    }
}

const CFG: &str = "[data]\nformat = \"parquet\"\nbatch_size = 256\nshuffle_buffer = 2000\ndecode_threads = 3\n[data.splits.train]\npaths = [\"part-*.parquet\"]\n\n[[features.categorical]]\nname = \"rid\"\nbuckets = 1000\ndim = 4\n\n[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"click\"\n\n[columns]\nrequest_id = \"rid\"\n";

fn order(dir: &std::path::Path, shuffle: bool, epoch: u64, threads: usize) -> Vec<u64> {
    let cfg = Arc::new(load_config(dir, CFG).unwrap());
    let enc = Arc::new(Encoder::new(cfg.clone(), DenseMode::Raw).unwrap());
    let mut opts = StreamOptions::from_config(&cfg, shuffle);
    opts.epoch = epoch;
    opts.decode_threads = threads;
    let (batches, _) = read_all(enc, cfg.split("train").unwrap(), opts).unwrap();
    for b in &batches[..batches.len() - 1] {
        assert_eq!(b.rows, 256);
    }
    batches.iter().flat_map(|b| b.request_id.clone()).collect()
}

#[test]
fn every_row_once_and_deterministic() {
    let d = tempfile::tempdir().unwrap();
    many_files(d.path(), 7, 1000);
    let plain = order(d.path(), false, 0, 3);
    let hashes: Vec<u64> = (0..7000i64).map(mixrank_data::hash::hash_i64).collect();
    assert_eq!(plain, hashes, "unshuffled reads keep file and row order");

    let a = order(d.path(), true, 0, 3);
    let b = order(d.path(), true, 0, 1);
    assert_eq!(a, b, "the order depends on the seed and epoch only, not on threads");
    assert_ne!(a, plain, "shuffled");
    let c = order(d.path(), true, 1, 2);
    assert_ne!(a, c, "each epoch has its own order");
    for v in [&a, &c] {
        let mut s = v.clone();
        s.sort();
        let mut h = hashes.clone();
        h.sort();
        assert_eq!(s, h, "every row exactly once");
    }
}

#[test]
fn skipping_batches_yields_the_tail_of_the_same_stream() {
    let d = tempfile::tempdir().unwrap();
    many_files(d.path(), 5, 1000);
    let cfg = Arc::new(load_config(d.path(), CFG).unwrap());
    let enc = Arc::new(Encoder::new(cfg.clone(), DenseMode::Raw).unwrap());
    let split = cfg.split("train").unwrap();
    let mut opts = StreamOptions::from_config(&cfg, true);
    opts.epoch = 2;
    let (all, _) = read_all(enc.clone(), split, opts.clone()).unwrap();
    assert_eq!(all.len(), 5000usize.div_ceil(256));
    // Skips inside the first shuffle window, across windows, up to the end and past it.
    for skip in [0u64, 3, 9, 19, 20, 25] {
        let mut o = opts.clone();
        o.skip_batches = skip;
        o.decode_threads = 1 + skip as usize % 3;
        let (tail, _) = read_all(enc.clone(), split, o).unwrap();
        // (Batches hold NaN teacher logits, so compare row identities and labels.)
        let key = |b: &mixrank_data::Batch| (b.request_id.clone(), b.labels.clone());
        let want: Vec<_> = all[(skip as usize).min(all.len())..].iter().map(key).collect();
        assert_eq!(tail.iter().map(key).collect::<Vec<_>>(), want, "skip {skip}");
    }
}

#[test]
fn max_rows_and_early_drop_stop_cleanly() {
    let d = tempfile::tempdir().unwrap();
    many_files(d.path(), 4, 1000);
    let cfg = Arc::new(load_config(d.path(), CFG).unwrap());
    let enc = Arc::new(Encoder::new(cfg.clone(), DenseMode::Raw).unwrap());
    let mut opts = StreamOptions::from_config(&cfg, true);
    opts.max_rows = Some(1000);
    let (batches, _) = read_all(enc.clone(), cfg.split("train").unwrap(), opts).unwrap();
    assert_eq!(batches.iter().map(|b| b.rows).sum::<usize>(), 1000);
    // Dropping a stream after one batch joins its threads without hanging.
    let mut s = BatchStream::start(enc, cfg.split("train").unwrap(), StreamOptions::from_config(&cfg, true)).unwrap();
    assert!(s.next().unwrap().is_ok());
    drop(s);
}

#[test]
fn day_partitions_filter_files() {
    let d = tempfile::tempdir().unwrap();
    for day in ["2026-01-01", "2026-01-02", "2026-01-03"] {
        let dir = d.path().join(format!("day={day}"));
        std::fs::create_dir_all(&dir).unwrap();
        many_files(&dir, 1, 10);
    }
    let text = CFG.replace(
        "paths = [\"part-*.parquet\"]",
        "paths = [\"day=*/*.parquet\"]\ndays = { from = \"2026-01-02\", to = \"2026-01-03\" }",
    );
    let cfg = load_config(d.path(), &text).unwrap();
    let files = mixrank_data::reader::split_files(cfg.split("train").unwrap()).unwrap();
    assert_eq!(files.len(), 2);
    assert!(files[0].to_string_lossy().contains("day=2026-01-02"));
}
