//! `mixrank serve --model RUN_DIR`: the scoring server (HTTP/JSON and gRPC).

use anyhow::{Context, Result};
use mixrank_serve::score::ScoreConfig;
use mixrank_serve::{Precision, ServeOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Run directory written by `mixrank train` (its checkpoint/ is loaded and verified).
    #[arg(long)]
    pub model: PathBuf,
    /// Item table of a two-tower model (`mixrank embed-items`; it must come from the
    /// same checkpoint): requests may then send `item_ids` instead of `candidates`.
    #[arg(long)]
    pub items: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: crate::eval_cmd::Precision,
    /// Where the model runs: `cpu` or `cuda[:N]` (f32 only on CUDA).
    #[arg(long, default_value = "cpu")]
    pub device: crate::backend::Device,
    /// HTTP/JSON address. Loopback by default; a non-loopback address needs --admin-token
    /// (or MIXRANK_ADMIN_TOKEN) or --no-admin, and is served with a warning.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// gRPC address (`mixrank.v1.Ranker`).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub grpc_addr: SocketAddr,
    /// Do not serve gRPC.
    #[arg(long)]
    pub no_grpc: bool,
    /// Ranking-score TOML (default: product of the binary tasks' probabilities).
    #[arg(long)]
    pub score: Option<PathBuf>,
    /// Most candidates in one request (larger: 413).
    #[arg(long, default_value_t = 1024)]
    pub max_candidates: usize,
    /// Most ids in one request's `item_ids` (larger: 413).
    #[arg(long, default_value_t = 100_000)]
    pub max_items: usize,
    /// Largest request body / gRPC message, bytes (larger: 413 / RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Most rows in one model forward (micro-batch).
    #[arg(long, default_value_t = 2048)]
    pub max_batch_rows: usize,
    /// Longest wait for more requests to join a micro-batch, microseconds.
    #[arg(long, default_value_t = 1000)]
    pub max_wait_us: u64,
    /// Requests that may wait for the model (more: 429 / RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Per-request timeout, milliseconds (504 / DEADLINE_EXCEEDED).
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Bearer token required by POST /admin/reload (also read from the
    /// MIXRANK_ADMIN_TOKEN environment variable, which keeps it out of `ps`). Without a
    /// token the endpoint is off (403).
    #[arg(long)]
    pub admin_token: Option<String>,
    /// Leave POST /admin/reload out entirely (404); a non-loopback --addr then needs no token.
    #[arg(long, conflicts_with = "admin_token")]
    pub no_admin: bool,
    /// Poll RUN_DIR/checkpoint/manifest.json every this many milliseconds and reload
    /// when it changes (0: off).
    #[arg(long, default_value_t = 0)]
    pub watch_ms: u64,
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn precision(p: crate::eval_cmd::Precision) -> Precision {
    match p {
        crate::eval_cmd::Precision::F32 => Precision::F32,
        crate::eval_cmd::Precision::Bf16 => Precision::Bf16,
    }
}

pub fn run(a: &ServeArgs) -> Result<()> {
    rayon::ThreadPoolBuilder::new().num_threads(a.threads).build_global().ok();
    let mut opts = ServeOptions::new(&a.model, crate::backend::engine_on(a.device)?);
    opts.precision = precision(a.precision);
    opts.http_addr = a.addr;
    opts.grpc_addr = (!a.no_grpc).then_some(a.grpc_addr);
    if let Some(p) = &a.score {
        opts.score = ScoreConfig::load(p)?;
    }
    opts.limits.max_candidates = a.max_candidates;
    opts.limits.max_items = a.max_items;
    opts.items = a.items.clone();
    opts.max_body_bytes = a.max_body_bytes;
    opts.batcher.max_batch_rows = a.max_batch_rows;
    opts.batcher.max_wait = Duration::from_micros(a.max_wait_us);
    opts.batcher.queue_capacity = a.queue;
    opts.timeout = Duration::from_millis(a.timeout_ms);
    opts.admin_route = !a.no_admin;
    opts.admin_token = if a.no_admin {
        None
    } else {
        a.admin_token.clone().or_else(|| std::env::var("MIXRANK_ADMIN_TOKEN").ok()).filter(|t| !t.is_empty())
    };
    mixrank_serve::server::check_exposure(&opts)?;
    opts.watch = (a.watch_ms > 0).then(|| Duration::from_millis(a.watch_ms));
    for addr in [Some(a.addr), opts.grpc_addr].into_iter().flatten() {
        if !addr.ip().is_loopback() {
            eprintln!("warning: listening on {addr}, which is not a loopback address");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let server = mixrank_serve::start(opts).await.with_context(|| format!("serving {}", a.model.display()))?;
        let cur = server.service.slot.current();
        crate::say!(
            "serving {} ({}{}) — HTTP http://{}  gRPC {}",
            cur.session.version,
            cur.session.precision.name(),
            cur.session.kernel.map(|k| format!(", {k} kernel")).unwrap_or_default(),
            server.http_addr,
            server.grpc_addr.map(|g| g.to_string()).unwrap_or_else(|| "off".into())
        );
        drop(cur);
        wait_for_signal().await;
        crate::say!("shutting down: finishing requests in flight");
        server.shutdown();
        server.wait().await?;
        crate::say!("stopped");
        anyhow::Ok(())
    })
}

/// SIGTERM or Ctrl-C.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
