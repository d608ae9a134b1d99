//! `mixrank bench infer` (session latency per batch size and precision) and
//! `mixrank bench serve` (a bounded loopback load test of a real server); `bench items`
//! and `bench train` live beside it.

use anyhow::{bail, Context, Result};
use mixrank_data::{Batch, CatColumn, ExperimentConfig};
use mixrank_model::build_model;
use mixrank_serve::loadgen::{run_load, LoadConfig};
use mixrank_serve::replay::{requests_from_parquet, split_files, Grouping};
use mixrank_serve::{InferenceSession, Precision, ServeOptions};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Inference latency (p50/p99) and throughput per batch size and precision, through
    /// the serving session (embedding lookup, forward, probabilities).
    Infer(InferArgs),
    /// Load test: a real server on loopback, N keep-alive clients, bounded in count
    /// and time; QPS and latency per request size.
    Serve(ServeBenchArgs),
    /// The two-tower light ranker with its cached item table vs a full ranker on the
    /// same 1k–50k candidates per request (p50/p99, f32 and bf16), embed-items
    /// throughput, and where the light ranker's time goes.
    Items(crate::bench_items::ItemsBenchArgs),
    /// Training throughput on random batches: examples/s, matrix-product FLOPs per
    /// example, achieved GFLOP/s against this machine's f32/bf16 GEMM peak (measured by
    /// the same command), and where a step's time goes.
    Train(crate::bench_train::TrainBenchArgs),
}

#[derive(clap::Args)]
pub struct InferArgs {
    /// A trained run directory; without it, the DESIGN.md bench model (26 fields of
    /// 100,000 × 16, 13 dense, 4 MLP experts 429→256→128, 2 tasks), randomly initialised.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256,512,2048")]
    pub batches: Vec<usize>,
    /// Timed repetitions per point and precision (0: 200 up to batch 64, 50 above),
    /// in 5 rounds alternating f32 and bf16.
    #[arg(long, default_value_t = 0)]
    pub reps: usize,
    /// Compute threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Also write the figures as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where to run: `cpu` (f32 and bf16) or `cuda[:N]` (f32).
    #[arg(long, default_value = "cpu")]
    pub device: crate::backend::Device,
}

#[derive(clap::Args)]
pub struct ServeBenchArgs {
    /// A trained engagement run directory; requests are rebuilt from its test split.
    #[arg(long)]
    pub model: PathBuf,
    /// Candidates per request (one run per value).
    #[arg(long, value_delimiter = ',', default_value = "100,500")]
    pub candidates: Vec<usize>,
    /// Precisions (one run per value).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    pub precisions: Vec<String>,
    /// Concurrent keep-alive clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Requests per run (upper bound).
    #[arg(long, default_value_t = 400)]
    pub requests: usize,
    /// Seconds per run (upper bound).
    #[arg(long, default_value_t = 20)]
    pub max_seconds: u64,
    /// Reload the model through the admin endpoint this often during each run (ms; 0: never).
    #[arg(long, default_value_t = 0)]
    pub reload_every_ms: u64,
    /// Compute threads of the server.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(c: &BenchCommand) -> Result<()> {
    match c {
        BenchCommand::Infer(a) => infer(a),
        BenchCommand::Serve(a) => serve(a),
        BenchCommand::Items(a) => crate::bench_items::run(a),
        BenchCommand::Train(a) => crate::bench_train::run(a),
    }
}

/// The DESIGN.md bench model as an experiment config.
pub(crate) fn bench_config() -> Result<ExperimentConfig> {
    let mut t = String::from("[data]\nformat = \"parquet\"\n[data.splits.train]\npaths = [\"unused\"]\n");
    for i in 0..26 {
        t.push_str(&format!("[[features.categorical]]\nname = \"c{i}\"\nbuckets = 100000\ndim = 16\n"));
    }
    for i in 0..13 {
        t.push_str(&format!("[[features.dense]]\nname = \"d{i}\"\n"));
    }
    t.push_str("[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"y1\"\n");
    t.push_str("[[tasks]]\nname = \"save\"\nkind = \"binary\"\nlabel = \"y2\"\n");
    t.push_str(
        "[model]\narchitecture = \"mmoe\"\nexpert_dim = 128\ntower = { hidden = [64] }\n\
         [[model.experts]]\nkind = \"mlp\"\ncount = 4\nhidden = [256, 128]\n\
         [train]\nlr = 0.001\nsparse_optimizer = \"lazy_adam\"\nsparse_lr = 0.001\n",
    );
    Ok(ExperimentConfig::parse(&t, std::path::Path::new("bench-model.toml"))?)
}

fn session(a: &InferArgs, precision: Precision, max_batch: usize) -> Result<InferenceSession> {
    use crate::backend::Device;
    match (&a.model, a.device) {
        (Some(run), d) => Ok(crate::backend::engine_on(d)?.open(run, precision, max_batch)?),
        (None, Device::Cpu) => bench_session(crate::backend::ops(), precision, max_batch),
        (None, Device::Cuda(n)) => bench_session(crate::backend::cuda(n)?, precision, max_batch),
    }
}

/// The DESIGN.md bench model, randomly initialised, as a session on `ops`.
fn bench_session<B: mixrank_engine::Backend + 'static>(
    ops: B,
    precision: Precision,
    max_batch: usize,
) -> Result<InferenceSession> {
    Ok({
        let cfg = Arc::new(bench_config()?);
        let ops = Arc::new(ops);
        let model = build_model(&cfg, &*ops, max_batch, &mut rand::rngs::StdRng::seed_from_u64(0))?;
        let n = cfg.dense.len();
        let manifest = mixrank_train::checkpoint::Manifest {
            format_version: mixrank_train::checkpoint::FORMAT_VERSION,
            created_by: "mixrank bench".into(),
            config_toml: String::new(),
            config_path: cfg.path.clone(),
            hash_version: mixrank_data::hash::HASH_VERSION,
            dense_stats: mixrank_data::stats::DenseStats { mean: vec![0.0; n], std: vec![1.0; n], rows: 0 },
            vocabularies: Default::default(),
            step: 0,
            examples: 0,
            cursor: Default::default(),
            optimizer: mixrank_train::optimizers::OptimizerManifest {
                dense: mixrank_data::config::model::DenseOptimizer::Adam,
                dense_steps: 0,
                sparse: None,
                sparse_steps: 0,
            },
            lineage: mixrank_train::Lineage {
                parent: None,
                stage: mixrank_train::Stage::Batch,
                days: Vec::new(),
                teacher: None,
                warm_start: Vec::new(),
            },
            early_stopping: None,
            table_shards: None,
            files: Default::default(),
            tensors: 0,
        };
        InferenceSession::from_parts(cfg, model, ops, manifest, precision, max_batch, "bench-model@0#random".into())?
    })
}

/// A random batch for `cfg`: uniform table rows, 1–3 ids per multi-valued feature,
/// dense values uniform in [-1, 1].
pub(crate) fn random_batch(cfg: &ExperimentConfig, rows: usize, rng: &mut rand::rngs::StdRng) -> Batch {
    let cat = cfg
        .categorical
        .iter()
        .map(|f| {
            let n = cfg.tables[f.table].rows() as u32;
            match f.pooling {
                None => CatColumn { ids: (0..rows).map(|_| rng.random_range(0..n)).collect(), offsets: None },
                Some(_) => {
                    let mut ids = Vec::new();
                    let mut offsets = vec![0u32];
                    for _ in 0..rows {
                        for _ in 0..rng.random_range(1..=3) {
                            ids.push(rng.random_range(0..n));
                        }
                        offsets.push(ids.len() as u32);
                    }
                    CatColumn { ids, offsets: Some(offsets) }
                }
            }
        })
        .collect();
    let dw = cfg.dense_width();
    let nt = cfg.tasks.len();
    Batch {
        rows,
        cat,
        dense: (0..rows * dw).map(|_| rng.random_range(-1.0..1.0)).collect(),
        dense_width: dw,
        labels: vec![0.0; rows * nt],
        label_mask: vec![1.0; rows * nt],
        teacher_logits: vec![f32::NAN; rows * nt],
        n_tasks: nt,
        weights: vec![1.0; rows],
        segment: vec![0; rows],
        device: vec![0; rows],
        position: vec![1; rows],
        request_id: vec![0; rows],
        keep: Vec::new(),
        n_keep: 0,
        passthrough: Vec::new(),
    }
}

/// Resident set size of this process (Linux), MiB.
fn rss_mib() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0 / (1 << 20) as f64)
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn infer(a: &InferArgs) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.threads).build()?;
    pool.install(|| infer_in_pool(a))
}

/// Rounds per point: f32 and bf16 alternate round by round, so both see the same
/// background load on a shared machine.
const ROUNDS: usize = 5;

fn infer_in_pool(a: &InferArgs) -> Result<()> {
    let max_batch = a.batches.iter().copied().max().unwrap_or(1);
    // bf16 inference is CPU-only (the CUDA backend has no reduced-precision GEMM yet).
    let mut sessions = vec![session(a, Precision::F32, max_batch)?];
    if a.device == crate::backend::Device::Cpu {
        sessions.push(session(a, Precision::Bf16, max_batch)?);
    }
    crate::say!(
        "model {} — {} threads; {:.1} MiB of gradient buffers released per session at load; resident set {} (both sessions)",
        sessions[0].version,
        a.threads,
        sessions[0].released_grad_floats as f64 * 4.0 / (1 << 20) as f64,
        rss_mib().map(|m| format!("{m:.0} MiB")).unwrap_or_else(|| "unknown".into())
    );
    let mut rows_out = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for &b in &a.batches {
        let batches: Vec<Batch> = (0..4).map(|_| random_batch(&sessions[0].config, b, &mut rng)).collect();
        let reps = if a.reps > 0 {
            a.reps
        } else if b <= 64 {
            200
        } else {
            50
        };
        let per_round = reps.div_ceil(ROUNDS);
        let mut lat = vec![Vec::with_capacity(reps); sessions.len()];
        for s in &sessions {
            for batch in &batches {
                std::hint::black_box(s.predict(batch)?);
            }
        }
        for _ in 0..ROUNDS {
            for (s, l) in sessions.iter().zip(&mut lat) {
                for r in 0..per_round {
                    let t = Instant::now();
                    let out = s.predict(&batches[r % batches.len()])?;
                    l.push(t.elapsed().as_secs_f64() * 1e3);
                    std::hint::black_box(out);
                }
            }
        }
        let mut f32_p50 = f64::NAN;
        for (s, l) in sessions.iter().zip(&mut lat) {
            l.sort_by(f64::total_cmp);
            let (m, p) = (pct(l, 0.5), pct(l, 0.99));
            let vs = match s.precision {
                Precision::F32 => {
                    f32_p50 = m;
                    String::new()
                }
                Precision::Bf16 => format!("{:+.0}% p50 vs f32", 100.0 * (m / f32_p50 - 1.0)),
            };
            let kernel = s.kernel.unwrap_or("-");
            crate::say!(
                "{:<5} {:<11} batch {b:>5}: p50 {m:>8.3} ms  p99 {p:>8.3} ms  {:>10.0} rows/s  {vs}",
                s.precision.name(),
                kernel,
                b as f64 / (m / 1e3)
            );
            rows_out.push(serde_json::json!({
                "precision": s.precision.name(), "kernel": kernel, "batch": b,
                "p50_ms": m, "p99_ms": p, "rows_per_s": b as f64 / (m / 1e3),
            }));
        }
    }
    if let Some(p) = &a.json {
        crate::stats_cmd::write_atomic(p, &serde_json::to_string_pretty(&rows_out)?)?;
    }
    Ok(())
}

fn serve(a: &ServeBenchArgs) -> Result<()> {
    rayon::ThreadPoolBuilder::new().num_threads(a.threads).build_global().ok();
    let cfg = crate::backend::engine().open(&a.model, Precision::F32, 1)?.config.clone();
    let files = split_files(&cfg, "test").or_else(|_| split_files(&cfg, "validation"))?;
    let Some(file) = files.first() else { bail!("the run's config has no test or validation files") };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut out = Vec::new();
    for &n in &a.candidates {
        let reqs = requests_from_parquet(file, &cfg, Grouping::Fixed(n), 64 * n)
            .with_context(|| format!("building {n}-candidate requests from {}", file.display()))?;
        let bodies: Vec<Vec<u8>> =
            reqs.iter().filter(|r| r.candidates.len() == n).map(|r| r.to_json().to_string().into_bytes()).collect();
        if bodies.is_empty() {
            bail!("{} has fewer than {n} rows", file.display());
        }
        for p in &a.precisions {
            let precision: Precision = p.parse().map_err(anyhow::Error::msg)?;
            let mut opts = ServeOptions::new(&a.model, crate::backend::engine());
            // The reloader authenticates with a token made for this run (the admin
            // endpoint is off without one).
            let token = (a.reload_every_ms > 0).then(|| format!("bench-{:016x}", rand::random::<u64>()));
            opts.admin_token = token.clone();
            opts.precision = precision;
            opts.grpc_addr = None;
            opts.limits.max_candidates = n.max(1024);
            opts.timeout = Duration::from_secs(30);
            let server = rt.block_on(mixrank_serve::start(opts))?;
            let lc = LoadConfig {
                addr: server.http_addr,
                clients: a.clients,
                requests: a.requests,
                max_time: Duration::from_secs(a.max_seconds),
                reload_every: (a.reload_every_ms > 0).then(|| Duration::from_millis(a.reload_every_ms)),
                admin_token: token,
            };
            let r = run_load(&lc, Arc::new(bodies.clone()));
            let batch_rows = server.service.metrics.batch_rows.count();
            server.shutdown();
            rt.block_on(server.wait())?;
            crate::say!(
                "{n:>4} candidates {:<4} {} clients: {:>5} ok {:>3} failed in {:>5.1} s — {:>7.1} QPS ({:>8.0} rows/s)  p50 {:>7.2} ms  p99 {:>7.2} ms  forwards {batch_rows}{}",
                precision.name(),
                a.clients,
                r.ok,
                r.failed,
                r.seconds,
                r.qps,
                r.qps * n as f64,
                r.p50_ms,
                r.p99_ms,
                if lc.reload_every.is_some() { format!("  reloads {} ok / {} failed", r.reloads_ok, r.reloads_failed) } else { String::new() }
            );
            for f in &r.failures {
                crate::say!("    {f}");
            }
            out.push(serde_json::json!({
                "candidates": n, "precision": precision.name(), "clients": a.clients,
                "ok": r.ok, "failed": r.failed, "seconds": r.seconds, "qps": r.qps,
                "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "forwards": batch_rows,
                "reloads_ok": r.reloads_ok, "reloads_failed": r.reloads_failed,
            }));
        }
    }
    if let Some(p) = &a.json {
        crate::stats_cmd::write_atomic(p, &serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
