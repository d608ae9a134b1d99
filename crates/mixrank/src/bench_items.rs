//! `mixrank bench items`: the two-tower light ranker with its cached item table against
//! a full ranker, scoring the same large candidate sets per request through real
//! servers on loopback; `embed-items` throughput; and where the light ranker's time goes.
//!
//! The catalogue is built from the run's test split: the first row of every ad, then
//! copies of those rows under new ids (`id + k · 1_000_000_007`: other hash buckets, so
//! other embeddings) until it holds the largest candidate count. One user (the first
//! row's user and context columns) is scored against the first N items.

use anyhow::{bail, Result};
use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::Int64Type;
use mixrank_serve::embed_items::{embed_items, EmbedOptions};
use mixrank_serve::item_table::ItemTable;
use mixrank_serve::loadgen::{run_load, LoadConfig};
use mixrank_serve::replay::{requests_from_parquet, split_files, Grouping};
use mixrank_serve::request::{Features, Limits};
use mixrank_serve::session::TowerColumns;
use mixrank_serve::{Precision, ServeOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ItemsBenchArgs {
    /// A trained two-tower run (`configs/models/two_tower.toml`).
    #[arg(long)]
    pub model: PathBuf,
    /// A full ranker trained on the same data, scoring the same candidates.
    #[arg(long)]
    pub ranker: PathBuf,
    /// Candidates per request (one run per value).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    pub candidates: Vec<usize>,
    /// Precisions (one run per value).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    pub precisions: Vec<String>,
    /// Sequential requests per point for the light ranker (the full ranker: a tenth, at
    /// least 10), after one untimed request.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Compute threads of the servers and of embed-items.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// The light ranker's requests ask for the best K candidates only (`"top_k": K`,
    /// ranked by the first task), as a light ranker in front of a full ranker would;
    /// without it every candidate's predictions are answered.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Working directory for the catalogue and the table (default: a temporary one).
    #[arg(long)]
    pub work: Option<PathBuf>,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn read_parquet(path: &Path) -> Result<RecordBatch> {
    let f = std::fs::File::open(path)?;
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)?.build()?;
    let batches = r.collect::<std::result::Result<Vec<_>, _>>()?;
    let Some(first) = batches.first() else { bail!("{}: no rows", path.display()) };
    Ok(arrow::compute::concat_batches(&first.schema(), &batches)?)
}

fn write_parquet(path: &Path, rb: &RecordBatch) -> Result<()> {
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path)?, rb.schema(), None)?;
    w.write(rb)?;
    w.close()?;
    Ok(())
}

/// `n` items: every ad's first row, then copies under new ids.
fn catalogue(rows: &RecordBatch, id_column: &str, n: usize) -> Result<RecordBatch> {
    let Some(ids) = rows.column_by_name(id_column) else { bail!("the split has no column {id_column}") };
    let ids = ids.as_primitive_opt::<Int64Type>().ok_or_else(|| anyhow::anyhow!("{id_column} is not Int64"))?;
    let mut seen = std::collections::HashSet::new();
    let first: Vec<u32> = (0..rows.num_rows()).filter(|&r| seen.insert(ids.value(r))).map(|r| r as u32).collect();
    let base = arrow::compute::take_record_batch(rows, &UInt32Array::from(first))?;
    let col = base.schema().index_of(id_column)?;
    let mut parts = Vec::new();
    let mut have = 0;
    for k in 0.. {
        if have >= n {
            break;
        }
        let ids = base.column(col).as_primitive::<Int64Type>();
        let shifted: Int64Array = ids.iter().map(|v| v.map(|v| v + k * 1_000_000_007)).collect();
        let mut cols: Vec<ArrayRef> = base.columns().to_vec();
        cols[col] = Arc::new(shifted);
        parts.push(RecordBatch::try_new(base.schema(), cols)?);
        have += base.num_rows();
    }
    Ok(arrow::compute::concat_batches(&base.schema(), &parts)?.slice(0, n))
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn time_ms(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut l: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    l.sort_by(f64::total_cmp);
    (pct(&l, 0.5), pct(&l, 0.99))
}

pub fn run(a: &ItemsBenchArgs) -> Result<()> {
    rayon::ThreadPoolBuilder::new().num_threads(a.threads).build_global().ok();
    let engine = crate::backend::engine();
    let max_n = a.candidates.iter().copied().max().unwrap_or(0);
    let tt = engine.open(&a.model, Precision::F32, 4096)?;
    let Some(towers) = TowerColumns::of(&tt.config) else { bail!("{}: not a two-tower run", a.model.display()) };
    let id_column = mixrank_serve::embed_items::default_id_column(&tt).unwrap_or_else(|| "ad_id".into());
    let tmp = tempdir_in(a.work.as_deref())?;
    let files = split_files(&tt.config, "test")?;
    let Some(file) = files.first() else { bail!("the run's config has no test files") };
    let cat = catalogue(&read_parquet(file)?, &id_column, max_n)?;
    let items_file = tmp.join("items.parquet");
    write_parquet(&items_file, &cat)?;
    // One user with every item: the user columns set to row 0's.
    let zeros = UInt32Array::from(vec![0u32; cat.num_rows()]);
    let cols = cat
        .schema()
        .fields()
        .iter()
        .zip(cat.columns())
        .map(|(f, c)| {
            Ok(if towers.user.contains(f.name()) { arrow::compute::take(c, &zeros, None)? } else { c.clone() })
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    let request_file = tmp.join("request.parquet");
    write_parquet(&request_file, &RecordBatch::try_new(cat.schema(), cols)?)?;

    // embed-items throughput.
    let table_dir = tmp.join("table");
    let _ = std::fs::remove_dir_all(&table_dir);
    let opts = EmbedOptions { batch: 4096, id_column: Some(id_column.clone()), overwrite: true };
    let s = embed_items(&tt, &items_file, &table_dir, &opts, &mut |_, _| {})?;
    let ads_per_s = s.manifest.items as f64 / s.seconds;
    crate::say!(
        "embed-items: {} items in {:.2} s — {:.0} items/s (batch 4096, {} threads)",
        s.manifest.items,
        s.seconds,
        ads_per_s,
        a.threads
    );
    let table = Arc::new(ItemTable::load(&table_dir)?);

    let mut out = vec![
        serde_json::json!({"embed_items": {"items": s.manifest.items, "seconds": s.seconds, "items_per_s": ads_per_s}}),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    for &n in &a.candidates {
        let req = requests_from_parquet(&request_file, &tt.config, Grouping::Fixed(n), n)?.remove(0);
        let ids: Vec<serde_json::Value> = table.ids()[..n].iter().map(|i| i.to_json()).collect();
        let mut ctx: Features = req.context.clone();
        ctx.extend(req.candidates[0].clone());
        let ctx: serde_json::Map<String, serde_json::Value> =
            ctx.into_iter().filter(|(k, _)| towers.user.contains(k)).map(|(k, v)| (k, v.to_json())).collect();
        let mut tt_body = serde_json::json!({"context": ctx, "item_ids": ids});
        if let Some(k) = a.top_k {
            tt_body["top_k"] = k.into();
        }
        let tt_body = tt_body.to_string().into_bytes();
        let tt_name = match a.top_k {
            Some(k) => format!("two-tower, top {k}"),
            None => "two-tower + table".to_string(),
        };
        let ranker_cfg = engine.open(&a.ranker, Precision::F32, 1)?.config.clone();
        let full_req = requests_from_parquet(&request_file, &ranker_cfg, Grouping::Fixed(n), n)?.remove(0);
        let full_body = full_req.to_json().to_string().into_bytes();
        for p in &a.precisions {
            let precision: Precision = p.parse().map_err(anyhow::Error::msg)?;
            for (name, run, body, reps) in [
                (tt_name.as_str(), &a.model, &tt_body, a.requests),
                ("full ranker", &a.ranker, &full_body, (a.requests / 10).max(10)),
            ] {
                let mut opts = ServeOptions::new(run, engine.clone());
                opts.items = (run == &a.model).then(|| table_dir.clone());
                opts.precision = precision;
                opts.grpc_addr = None;
                opts.limits = Limits { max_candidates: n.max(1024), max_list_len: 1024, max_items: n.max(1024) };
                opts.max_body_bytes = 64 << 20;
                opts.batcher.max_batch_rows = n.max(2048);
                opts.timeout = Duration::from_secs(120);
                let server = rt.block_on(mixrank_serve::start(opts))?;
                let lc = LoadConfig {
                    addr: server.http_addr,
                    clients: 1,
                    requests: reps,
                    max_time: Duration::from_secs(120),
                    reload_every: None,
                    admin_token: None,
                };
                // One untimed request first (first-touch allocations, page faults).
                let warm = LoadConfig { requests: 1, ..lc.clone() };
                run_load(&warm, Arc::new(vec![body.clone()]));
                let r = run_load(&lc, Arc::new(vec![body.clone()]));
                server.shutdown();
                rt.block_on(server.wait())?;
                crate::say!(
                    "{n:>6} candidates {:<4} {name:<17}: {:>4} ok {:>2} failed  p50 {:>9.2} ms  p99 {:>9.2} ms  ({:.0} candidates/s)",
                    precision.name(),
                    r.ok,
                    r.failed,
                    r.p50_ms,
                    r.p99_ms,
                    n as f64 / (r.p50_ms / 1e3)
                );
                for f in &r.failures {
                    crate::say!("    {f}");
                }
                out.push(serde_json::json!({
                    "candidates": n, "precision": precision.name(), "model": name, "requests": r.ok, "failed": r.failed,
                    "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "top_k": a.top_k.filter(|_| run == &a.model),
                }));
            }
            // Where the light ranker's time goes (in process, same request).
            let session = engine.open(&a.model, precision, 4096)?;
            let rows: Vec<u32> = (0..n as u32).collect();
            let limits = Limits { max_candidates: n, max_list_len: 1024, max_items: n };
            let reps = a.requests.min(100);
            let parsed = mixrank_serve::request::parse_json(&tt_body, &limits)?;
            let none = std::collections::BTreeSet::new();
            let parse = time_ms(reps, || {
                std::hint::black_box(mixrank_serve::request::parse_json(&tt_body, &limits).ok());
            });
            let user = time_ms(reps, || {
                std::hint::black_box(session.score_items(&parsed.context, &none, &table, &[]).ok());
            });
            let all = time_ms(reps, || {
                std::hint::black_box(session.score_items(&parsed.context, &none, &table, &rows).ok());
            });
            let preds = session.score_items(&parsed.context, &none, &table, &rows)?;
            let resp = serde_json::json!({"candidates": (0..n).map(|r| serde_json::json!({
                "id": table.ids()[r].to_json(), "predictions": preds.iter().map(|p| p[r]).collect::<Vec<_>>(), "score": 0.0,
            })).collect::<Vec<_>>()});
            let ser = time_ms(reps, || {
                std::hint::black_box(serde_json::to_vec(&resp).ok());
            });
            crate::say!(
                "{n:>6} candidates {:<4} light ranker breakdown (p50 ms): parse {:.2}, user tower (encode + forward) {:.2}, dot products {:.2}, serialise {:.2}",
                precision.name(),
                parse.0,
                user.0,
                (all.0 - user.0).max(0.0),
                ser.0
            );
            out.push(serde_json::json!({
                "candidates": n, "precision": precision.name(), "breakdown_p50_ms": {
                    "parse": parse.0, "user_tower": user.0, "dot_products": (all.0 - user.0).max(0.0), "serialise": ser.0,
                },
            }));
        }
    }
    if let Some(p) = &a.json {
        crate::stats_cmd::write_atomic(p, &serde_json::to_string_pretty(&out)?)?;
    }
    if a.work.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

fn tempdir_in(work: Option<&Path>) -> Result<PathBuf> {
    let d = match work {
        Some(w) => w.to_path_buf(),
        None => std::env::temp_dir().join(format!("mixrank-bench-items-{}", std::process::id())),
    };
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
