//! The scoring core shared by the HTTP and gRPC front ends: limits, encoding against
//! the request's model snapshot, the batcher, the ranking score, the per-request
//! timeout and the request metrics. Both front ends therefore return the same numbers
//! and the same errors for the same request.

use crate::batcher::{Batcher, BatcherConfig};
use crate::error::{Result, ServeError};
use crate::metrics::{Metrics, Protocol};
use crate::reload::ModelSlot;
use crate::request::{CandidateScores, Limits, ScoreRequest, ScoreResponse};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Service {
    pub slot: Arc<ModelSlot>,
    pub batcher: Batcher,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Per-request timeout (encode + queue + forward).
    pub timeout: Duration,
    /// Bearer token required by the admin endpoint; `None`: the endpoint is off.
    pub admin_token: Option<String>,
    /// Column of the ranking score's bid, if any.
    pub bid: Option<String>,
    ready: AtomicBool,
}

/// The service's limits and policies.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub batcher: BatcherConfig,
    pub limits: Limits,
    /// Per-request timeout (encode + queue + forward).
    pub timeout: Duration,
    /// Bearer token required by the admin endpoint; `None`: the endpoint is off.
    pub admin_token: Option<String>,
    /// Column of the ranking score's bid, if any.
    pub bid: Option<String>,
}

impl Service {
    pub fn new(slot: Arc<ModelSlot>, metrics: Arc<Metrics>, cfg: ServiceConfig) -> Self {
        Service {
            slot,
            batcher: Batcher::start(cfg.batcher, metrics.clone()),
            metrics,
            limits: cfg.limits,
            timeout: cfg.timeout,
            admin_token: cfg.admin_token,
            bid: cfg.bid,
            ready: AtomicBool::new(true),
        }
    }

    /// Ready to take traffic (false once shutdown has begun).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Scores `req` under the timeout and records the outcome.
    pub async fn score(&self, req: ScoreRequest, protocol: Protocol) -> Result<ScoreResponse> {
        let t = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.score_inner(req)).await {
            Ok(r) => r,
            Err(_) => Err(ServeError::Timeout(self.timeout)),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        self.metrics.request(protocol, outcome, t.elapsed());
        result
    }

    /// Records a request that failed before reaching [`Service::score`] (unreadable body).
    pub fn record_rejected(&self, protocol: Protocol, e: &ServeError, started: Instant) {
        self.metrics.request(protocol, e.code(), started.elapsed());
    }

    async fn score_inner(&self, req: ScoreRequest) -> Result<ScoreResponse> {
        if !self.is_ready() {
            return Err(ServeError::ShuttingDown);
        }
        self.limits.check_candidates(req.candidates.len())?;
        let served = self.slot.current();
        let s = &served.session;
        let extra: BTreeSet<String> = self.bid.iter().cloned().collect();
        let bids = match &self.bid {
            None => None,
            Some(col) => Some(bids(&req, col)?),
        };
        let n = req.candidates.len();
        let preds = if n == 0 {
            // Nothing to score; the context is still checked for unknown features.
            s.encode(&ScoreRequest { candidates: vec![Default::default()], ..req.clone() }, &extra)
                .map(|_| ())
                .or_else(|e| match e {
                    ServeError::BadRequest { ref field, .. } if field.starts_with("candidates[0]") => Ok(()),
                    other => Err(other),
                })?;
            vec![Vec::new(); s.config.tasks.len()]
        } else {
            let batch = s.encode(&req, &extra)?;
            self.batcher
                .submit(s.clone(), batch)?
                .await
                .map_err(|_| ServeError::Internal("the batcher dropped the request".into()))??
        };
        // Columns only the position tower reads were filled, not read: count the
        // requests that sent them anyway.
        for c in s.ignored_in(&req) {
            self.metrics.ignored_field(c);
        }
        let candidates = (0..n)
            .map(|r| CandidateScores {
                predictions: preds.iter().map(|p| p[r]).collect(),
                score: served.score.score(&preds, r, bids.as_ref().map(|b| b[r])),
            })
            .collect();
        Ok(ScoreResponse {
            request_id: req.request_id,
            model_version: s.version.clone(),
            precision: s.precision.name().into(),
            tasks: s.tasks(),
            candidates,
        })
    }

    /// The Prometheus exposition text.
    pub fn metrics_text(&self) -> String {
        let s = self.slot.current();
        self.metrics.render(
            self.batcher.depth(),
            &s.session.version,
            s.session.precision.name(),
            s.session.manifest.step,
        )
    }

    /// Checks the admin bearer token (`Authorization` header value). Without a
    /// configured token the admin endpoint is off: every call is refused.
    pub fn authorize(&self, header: Option<&str>) -> Result<()> {
        match &self.admin_token {
            None => Err(ServeError::AdminDisabled),
            Some(t) => match header.and_then(|h| h.strip_prefix("Bearer ")) {
                Some(given) if constant_time_eq(given.as_bytes(), t.as_bytes()) => Ok(()),
                _ => Err(ServeError::Unauthorized),
            },
        }
    }

    /// Stops readiness and the batcher (after the front ends have drained).
    pub fn close(&self) {
        self.set_ready(false);
        self.batcher.close();
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Each candidate's bid: its own value or the context's; finite and >= 0.
fn bids(req: &ScoreRequest, col: &str) -> Result<Vec<f64>> {
    req.candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (field, v) = match (c.get(col), req.context.get(col)) {
                (Some(v), _) => (format!("candidates[{i}].{col}"), v),
                (None, Some(v)) => (format!("context.{col}"), v),
                (None, None) => {
                    return Err(ServeError::bad(format!("candidates[{i}].{col}"), "missing bid for the ranking score"))
                }
            };
            match v.as_f64() {
                Some(b) if b.is_finite() && b >= 0.0 => Ok(b),
                _ => Err(ServeError::bad(field, format!("bid must be a finite number >= 0, found {}", v.kind()))),
            }
        })
        .collect()
}
