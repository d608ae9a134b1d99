//! Starting and stopping the whole server: model slot, batcher, HTTP and gRPC
//! listeners, the optional checkpoint watcher, and graceful shutdown.
//!
//! Shutdown (SIGTERM / Ctrl-C in `mixrank serve`, [`RunningServer::shutdown`] here):
//! readiness turns 503, both listeners stop accepting, requests in flight finish and
//! are answered, then the batcher drains and stops.

use crate::batcher::BatcherConfig;
use crate::error::{Result, ServeError};
use crate::grpc::GrpcRanker;
use crate::metrics::Metrics;
use crate::reload::ModelSlot;
use crate::request::Limits;
use crate::score::ScoreConfig;
use crate::service::{Service, ServiceConfig};
use crate::session::{Engine, Precision};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Everything `mixrank serve` configures.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub run_dir: PathBuf,
    /// Item table of a two-tower model (`mixrank embed-items`), served beside it.
    pub items: Option<PathBuf>,
    /// The backend the model runs on.
    pub engine: Engine,
    pub precision: Precision,
    pub http_addr: SocketAddr,
    /// `None`: no gRPC listener.
    pub grpc_addr: Option<SocketAddr>,
    pub score: ScoreConfig,
    pub limits: Limits,
    /// Largest request body (HTTP) or message (gRPC), bytes.
    pub max_body_bytes: usize,
    pub batcher: BatcherConfig,
    pub timeout: Duration,
    /// Bearer token of `POST /admin/reload`. Without one the endpoint is off (403).
    pub admin_token: Option<String>,
    /// Route `POST /admin/reload` at all (false: 404, as `mixrank serve --no-admin`).
    /// A non-loopback HTTP address is refused at start while the route is on without a
    /// token: an exposed server either authenticates its admin endpoint or has none.
    pub admin_route: bool,
    /// Poll the run's manifest and reload on change.
    pub watch: Option<Duration>,
}

impl ServeOptions {
    /// Loopback on ephemeral ports and the default limits, on the backend `engine`.
    pub fn new(run_dir: impl Into<PathBuf>, engine: Engine) -> Self {
        ServeOptions {
            run_dir: run_dir.into(),
            items: None,
            engine,
            precision: Precision::F32,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            grpc_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            score: ScoreConfig::default_product(),
            limits: Limits::default(),
            max_body_bytes: 4 << 20,
            batcher: BatcherConfig::default(),
            timeout: Duration::from_secs(2),
            admin_token: None,
            admin_route: true,
            watch: None,
        }
    }
}

/// A started server.
pub struct RunningServer {
    pub http_addr: SocketAddr,
    pub grpc_addr: Option<SocketAddr>,
    pub service: Arc<Service>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<std::result::Result<(), String>>>,
}

fn io(what: &str, addr: SocketAddr) -> impl Fn(std::io::Error) -> ServeError + '_ {
    move |e| ServeError::Internal(format!("{what} {addr}: {e}"))
}

/// Refuses a non-loopback HTTP address while the admin route is on without a token
/// (the gRPC service has no admin call, so its address is not checked).
pub fn check_exposure(opts: &ServeOptions) -> Result<()> {
    if opts.admin_route && opts.admin_token.is_none() && !opts.http_addr.ip().is_loopback() {
        return Err(ServeError::InsecureBind { addr: opts.http_addr });
    }
    Ok(())
}

/// Checks the exposure rule ([`check_exposure`]), loads the model and starts listening
/// (call inside a tokio runtime).
pub async fn start(opts: ServeOptions) -> Result<RunningServer> {
    check_exposure(&opts)?;
    let metrics = Arc::new(Metrics::default());
    let max_batch = opts.batcher.max_batch_rows.max(opts.limits.max_candidates).max(1);
    let (dir, items, engine, precision, score, m) = (
        opts.run_dir.clone(),
        opts.items.clone(),
        opts.engine.clone(),
        opts.precision,
        opts.score.clone(),
        metrics.clone(),
    );
    let slot = tokio::task::spawn_blocking(move || {
        ModelSlot::open(&dir, items.as_deref(), engine, precision, max_batch, score, m)
    })
    .await
    .map_err(|e| ServeError::Internal(e.to_string()))??;
    let slot = Arc::new(slot);
    let mut batcher = opts.batcher;
    batcher.max_batch_rows = max_batch;
    let cfg = ServiceConfig {
        batcher,
        limits: opts.limits,
        timeout: opts.timeout,
        admin_token: opts.admin_token.clone(),
        bid: opts.score.bid.clone(),
    };
    let service = Arc::new(Service::new(slot.clone(), metrics, cfg));
    let (stop, stop_rx) = watch::channel(false);
    let signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();

    let http = tokio::net::TcpListener::bind(opts.http_addr).await.map_err(io("binding HTTP to", opts.http_addr))?;
    let http_addr = http.local_addr().map_err(io("reading the address of", opts.http_addr))?;
    let app = crate::http::router(service.clone(), opts.max_body_bytes, opts.admin_route);
    let sig = signal(stop_rx.clone());
    tasks.push(tokio::spawn(async move {
        axum::serve(http, app).with_graceful_shutdown(sig).await.map_err(|e| format!("HTTP server: {e}"))
    }));

    let grpc_addr = match opts.grpc_addr {
        None => None,
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await.map_err(io("binding gRPC to", addr))?;
            let bound = l.local_addr().map_err(io("reading the address of", addr))?;
            let svc = crate::proto::ranker_server::RankerServer::new(GrpcRanker { service: service.clone() })
                .max_decoding_message_size(opts.max_body_bytes);
            let sig = signal(stop_rx.clone());
            tasks.push(tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(l), sig)
                    .await
                    .map_err(|e| format!("gRPC server: {e}"))
            }));
            Some(bound)
        }
    };

    if let Some(every) = opts.watch {
        let sig = signal(stop_rx.clone());
        let s = slot.clone();
        tasks.push(tokio::spawn(async move {
            s.watch(every, sig).await;
            Ok(())
        }));
    }
    Ok(RunningServer { http_addr, grpc_addr, service, stop, tasks })
}

impl RunningServer {
    /// Begins a graceful shutdown (readiness goes to 503 at once).
    pub fn shutdown(&self) {
        self.service.set_ready(false);
        let _ = self.stop.send(true);
    }

    /// Waits until both listeners have drained, then stops the batcher.
    pub async fn wait(self) -> Result<()> {
        let mut first_err = None;
        for t in self.tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(e.to_string());
                }
            }
        }
        let svc = self.service.clone();
        let _ = tokio::task::spawn_blocking(move || svc.close()).await;
        match first_err {
            Some(e) => Err(ServeError::Internal(e)),
            None => Ok(()),
        }
    }
}
