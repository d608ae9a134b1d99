//! The scoring core shared by the HTTP and gRPC front ends: limits, encoding against
//! the request's model snapshot, the batcher, the ranking score, the per-request
//! timeout and the request metrics. Both front ends therefore return the same numbers
//! and the same errors for the same request.

use crate::batcher::{Batcher, BatcherConfig};
use crate::error::{Result, ServeError};
use crate::item_scoring::top_k;
use crate::metrics::{Metrics, Protocol};
use crate::reload::ModelSlot;
use crate::request::{CandidateScores, ItemId, Limits, ScoreRequest, ScoreResponse, Value};
use crate::session::InferenceSession;
use std::collections::{BTreeSet, HashMap};
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
        if req.item_ids.is_some() {
            return self.score_items(req).await;
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
        let order = ranking(&req, s, &preds)?;
        let candidates = order
            .iter()
            .map(|&(r, index)| CandidateScores {
                id: None,
                index,
                predictions: preds.iter().map(|p| p[r]).collect(),
                score: served.score.score(&preds, r, bids.as_ref().map(|b| b[r])),
            })
            .collect();
        Ok(response(req.request_id, s, candidates))
    }

    /// A request with `item_ids`: the table's items through the cached path (user
    /// tower once, gathered dot products), the others from their `item_features`
    /// through the model's ordinary path (micro-batched), merged in request order.
    async fn score_items(&self, req: ScoreRequest) -> Result<ScoreResponse> {
        let served = self.slot.current();
        let s = &served.session;
        let table = served.items.clone().ok_or_else(|| {
            ServeError::bad("item_ids", "this server has no item table (start it with --items DIR); send `candidates`")
        })?;
        if self.bid.is_some() {
            return Err(ServeError::bad(
                "item_ids",
                "the ranking score multiplies a per-candidate bid, which an item-id request cannot carry; send `candidates`",
            ));
        }
        let ids = req.item_ids.as_deref().unwrap_or_default();
        let id_column = &table.manifest.id_column;
        // The item_features entries by id.
        let mut featured: HashMap<ItemId, usize> = HashMap::new();
        for (i, f) in req.item_features.iter().enumerate() {
            let id = match f.get(id_column) {
                Some(Value::Int(v)) => ItemId::Int(*v),
                Some(Value::Str(v)) => ItemId::Str(v.clone()),
                _ => {
                    return Err(ServeError::bad(
                        format!("item_features[{i}].{id_column}"),
                        "missing or not an integer or string: each item_features entry carries its id",
                    ))
                }
            };
            featured.insert(id, i);
        }
        let (mut cached, mut cached_at) = (Vec::with_capacity(ids.len()), Vec::with_capacity(ids.len()));
        let (mut from_features, mut features_at, mut missing) = (Vec::new(), Vec::new(), Vec::new());
        for (i, id) in ids.iter().enumerate() {
            match (table.row(id), featured.get(id)) {
                (Some(r), _) => {
                    cached.push(r);
                    cached_at.push(i);
                }
                (None, Some(&f)) => {
                    from_features.push(req.item_features[f].clone());
                    features_at.push(i);
                }
                (None, None) => missing.push(id.to_string()),
            }
        }
        if !missing.is_empty() {
            return Err(ServeError::bad(
                "item_ids",
                format!(
                    "{} item(s) not in the item table and without item_features: [{}]",
                    missing.len(),
                    missing.join(", ")
                ),
            ));
        }
        let n_tasks = s.config.tasks.len();
        let mut preds = vec![vec![0f32; ids.len()]; n_tasks];
        if !from_features.is_empty() {
            self.limits.check_candidates(from_features.len())?;
            let sub = ScoreRequest { context: req.context.clone(), candidates: from_features, ..Default::default() };
            let batch = s.encode(&sub, &BTreeSet::new())?;
            let p = self
                .batcher
                .submit(s.clone(), batch)?
                .await
                .map_err(|_| ServeError::Internal("the batcher dropped the request".into()))??;
            for (t, pt) in p.iter().enumerate() {
                for (k, &i) in features_at.iter().enumerate() {
                    preds[t][i] = pt[k];
                }
            }
        }
        if !cached.is_empty() {
            let (session, context, table) = (s.clone(), req.context.clone(), table.clone());
            let p =
                tokio::task::spawn_blocking(move || session.score_items(&context, &BTreeSet::new(), &table, &cached))
                    .await
                    .map_err(|e| ServeError::Internal(format!("item scoring task: {e}")))??;
            for (t, pt) in p.iter().enumerate() {
                for (k, &i) in cached_at.iter().enumerate() {
                    preds[t][i] = pt[k];
                }
            }
        }
        let order = ranking(&req, s, &preds)?;
        let candidates = order
            .iter()
            .map(|&(r, _)| CandidateScores {
                id: Some(ids[r].clone()),
                index: None,
                predictions: preds.iter().map(|p| p[r]).collect(),
                score: served.score.score(&preds, r, None),
            })
            .collect();
        Ok(response(req.request_id, s, candidates))
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

/// Which candidates an answer lists, in which order: every one in request order, or
/// with `top_k` the best K by `rank_by` (default: the first task), best first — each
/// with its request index when the candidates have no id.
fn ranking(
    req: &ScoreRequest,
    s: &crate::session::InferenceSession,
    preds: &[Vec<f32>],
) -> Result<Vec<(usize, Option<usize>)>> {
    let n = preds.first().map_or(0, Vec::len);
    let Some(k) = req.top_k else {
        return Ok((0..n).map(|r| (r, None)).collect());
    };
    let tasks = s.tasks();
    let t = match &req.rank_by {
        None => 0,
        Some(name) => tasks.iter().position(|t| t == name).ok_or_else(|| {
            ServeError::bad("rank_by", format!("unknown task {name:?}; the model's tasks: {}", tasks.join(", ")))
        })?,
    };
    let with_index = req.item_ids.is_none();
    Ok(top_k(&preds[t], k).into_iter().map(|r| (r, with_index.then_some(r))).collect())
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

/// The response to request `request_id` from session `s`: its ranked `candidates`.
fn response(request_id: String, s: &InferenceSession, candidates: Vec<CandidateScores>) -> ScoreResponse {
    ScoreResponse {
        request_id,
        model_version: s.version.clone(),
        precision: s.precision.name().into(),
        tasks: s.tasks(),
        candidates,
    }
}
