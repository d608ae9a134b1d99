//! Input-pipeline throughput: rows/s for read + decode + batch on a Criteo-like
//! 40-column file (label, 13 integer features with missing values, 26 hashed string
//! features), as Parquet and as CSV. Not a test: figures go to docs/BENCHMARKS.md.
//!
//! cargo run --release -p mixrank-data --example data_bench -- [ROWS] [DIR]

use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use mixrank_data::pipeline::{BatchStream, StreamOptions};
use mixrank_data::{DenseMode, Encoder, ExperimentConfig};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2_000_000);
    let dir = std::path::PathBuf::from(args.get(2).cloned().unwrap_or_else(|| "/tmp/mixrank-data-bench".into()));
    std::fs::create_dir_all(&dir).unwrap();
    let pq = dir.join("criteo_like.parquet");
    let csv = dir.join("criteo_like.csv");
    if !pq.exists() || !csv.exists() {
        eprintln!("writing {rows} rows to {}", dir.display());
        write_files(rows, &pq, &csv);
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("rows = {rows}, cores = {threads}, batch = 2048; median of 5 passes");
    for (fmt, file) in [("parquet", &pq), ("csv", &csv)] {
        for shuffle in [false, true] {
            let cfg = Arc::new(config(&dir, fmt, file));
            let mut times = Vec::new();
            for _ in 0..5 {
                times.push(pass(&cfg, shuffle, rows));
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let med = times[times.len() / 2];
            println!(
                "{fmt:<8} shuffle={shuffle:<5} median {:.3} s  {:>10.0} rows/s  (min {:.3} s, max {:.3} s)",
                med,
                rows as f64 / med,
                times[0],
                times[times.len() - 1]
            );
        }
    }
}

fn pass(cfg: &Arc<ExperimentConfig>, shuffle: bool, rows: usize) -> f64 {
    let enc = Arc::new(Encoder::new(cfg.clone(), DenseMode::Raw).unwrap());
    let opts = StreamOptions::from_config(cfg, shuffle);
    let t = Instant::now();
    let mut n = 0;
    let mut checksum = 0u64;
    for b in BatchStream::start(enc, cfg.split("train").unwrap(), opts).unwrap() {
        let b = b.unwrap();
        n += b.rows;
        checksum = checksum.wrapping_add(b.cat[25].ids[0] as u64);
    }
    let dt = t.elapsed().as_secs_f64();
    assert_eq!(n, rows);
    std::hint::black_box(checksum);
    dt
}

fn config(dir: &Path, fmt: &str, file: &Path) -> ExperimentConfig {
    let mut s = format!(
        "[data]\nformat = \"{fmt}\"\nbatch_size = 2048\nshuffle_buffer = 65536\n[data.splits.train]\npaths = [\"{}\"]\n\n",
        file.display()
    );
    for i in 1..=13 {
        s += &format!("[[features.dense]]\nname = \"I{i}\"\nlog1p = true\nmissing_indicator = true\n\n");
    }
    for i in 1..=26 {
        s += &format!("[[features.categorical]]\nname = \"C{i}\"\nbuckets = 1000000\ndim = 16\n\n");
    }
    s += "[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"label\"\n";
    ExperimentConfig::parse(&s, &dir.join("bench.toml")).unwrap()
}

fn write_files(rows: usize, pq: &Path, csv: &Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    // Per-field vocabularies of 8-hex-digit strings, drawn with a skew like Criteo's.
    let vocab: Vec<Vec<String>> = (0..26)
        .map(|f| (0..[10, 1000, 100_000][f % 3]).map(|_| format!("{:08x}", rng.random::<u32>())).collect())
        .collect();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(131_072))
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut w: Option<parquet::arrow::ArrowWriter<std::fs::File>> = None;
    let mut out = std::io::BufWriter::new(std::fs::File::create(csv).unwrap());
    let header: Vec<String> = std::iter::once("label".to_string())
        .chain((1..=13).map(|i| format!("I{i}")))
        .chain((1..=26).map(|i| format!("C{i}")))
        .collect();
    writeln!(out, "{}", header.join(",")).unwrap();
    let chunk = 100_000;
    for start in (0..rows).step_by(chunk) {
        let n = chunk.min(rows - start);
        let label: Vec<i32> = (0..n).map(|_| (rng.random::<f64>() < 0.25) as i32).collect();
        let ints: Vec<Vec<Option<i64>>> = (0..13)
            .map(|_| {
                (0..n)
                    .map(|_| (rng.random::<f64>() > 0.2).then(|| (rng.random::<f64>().powi(3) * 10_000.0) as i64))
                    .collect()
            })
            .collect();
        let cats: Vec<Vec<&str>> = vocab
            .iter()
            .map(|v| {
                (0..n)
                    .map(|_| {
                        let u: f64 = rng.random();
                        v[((u * u * u) * v.len() as f64) as usize].as_str()
                    })
                    .collect()
            })
            .collect();
        let mut cols: Vec<(String, ArrayRef)> = vec![("label".into(), Arc::new(Int32Array::from(label.clone())))];
        for (i, c) in ints.iter().enumerate() {
            cols.push((format!("I{}", i + 1), Arc::new(Int64Array::from(c.clone()))));
        }
        for (i, c) in cats.iter().enumerate() {
            cols.push((format!("C{}", i + 1), Arc::new(StringArray::from(c.clone()))));
        }
        let rb = RecordBatch::try_from_iter(cols).unwrap();
        let w = w.get_or_insert_with(|| {
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(pq).unwrap(), rb.schema(), Some(props.clone()))
                .unwrap()
        });
        w.write(&rb).unwrap();
        for r in 0..n {
            write!(out, "{}", label[r]).unwrap();
            for c in &ints {
                match c[r] {
                    Some(v) => write!(out, ",{v}").unwrap(),
                    None => write!(out, ",").unwrap(),
                }
            }
            for c in &cats {
                write!(out, ",{}", c[r]).unwrap();
            }
            writeln!(out).unwrap();
        }
    }
    w.unwrap().close().unwrap();
}
