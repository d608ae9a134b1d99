//! The HTTP/JSON front end (axum).
//!
//! | route | |
//! |---|---|
//! | `POST /v1/score` | score one request (JSON, see [`crate::request`]) |
//! | `GET /v1/model` | the serving model: version, precision, tasks, features |
//! | `GET /healthz` | liveness: 200 while the process serves HTTP |
//! | `GET /readyz` | readiness: 200 with a model, 503 once shutdown has begun |
//! | `GET /metrics` | Prometheus text |
//! | `POST /admin/reload` | reload (body optional: `{"model": "RUN_DIR"}`); bearer token when configured |
//!
//! Errors are `{"error": {"code", "field", "message"}}` with status 400 (validation,
//! `field` names the offending value), 413 (body or request too large), 429 (queue
//! full, with `Retry-After`), 504 (timeout), 503 (shutting down), 401, 422 (reload
//! refused) or 500.

use crate::error::ServeError;
use crate::metrics::Protocol;
use crate::service::Service;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Instant;

/// The router, with request bodies limited to `max_body_bytes`.
pub fn router(service: Arc<Service>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/score", post(score))
        .route("/v1/model", get(model))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/admin/reload", post(reload))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(service)
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The JSON error response of `e`.
pub fn error_response(e: &ServeError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let field = match e {
        ServeError::BadRequest { field, .. } => field.clone(),
        _ => String::new(),
    };
    let message = match e {
        ServeError::BadRequest { message, .. } => message.clone(),
        other => other.to_string(),
    };
    let body = serde_json::json!({ "error": { "code": e.code(), "field": field, "message": message } });
    let mut r = json(status, &body);
    if matches!(e, ServeError::Overloaded { .. }) {
        r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

async fn score(State(s): State<Arc<Service>>, body: Result<Bytes, BytesRejection>) -> Response {
    let t = Instant::now();
    let body = match body {
        Ok(b) => b,
        Err(rej) => {
            let e = if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ServeError::TooLarge(format!("request body: {}", rej.body_text()))
            } else {
                ServeError::bad("", rej.body_text())
            };
            s.record_rejected(Protocol::Http, &e, t);
            return error_response(&e);
        }
    };
    let req = match crate::request::parse_json(&body, &s.limits) {
        Ok(r) => r,
        Err(e) => {
            s.record_rejected(Protocol::Http, &e, t);
            return error_response(&e);
        }
    };
    match s.score(req, Protocol::Http).await {
        Ok(resp) => json(StatusCode::OK, &resp),
        Err(e) => error_response(&e),
    }
}

async fn model(State(s): State<Arc<Service>>) -> Response {
    let cur = s.slot.current();
    let m = &cur.session;
    json(
        StatusCode::OK,
        &serde_json::json!({
            "version": m.version,
            "precision": m.precision.name(),
            "kernel": m.kernel,
            "step": m.manifest.step,
            "run_dir": m.run_dir,
            "tasks": m.tasks(),
            "features": m.feature_columns(),
            "ignored": m.ignored_columns(),
            "bid": s.bid,
            "max_candidates": s.limits.max_candidates,
        }),
    )
}

async fn ready(State(s): State<Arc<Service>>) -> Response {
    if s.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

async fn metrics(State(s): State<Arc<Service>>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics_text()).into_response()
}

async fn reload(State(s): State<Arc<Service>>, headers: HeaderMap, body: Bytes) -> Response {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Err(e) = s.authorize(auth) {
        return error_response(&e);
    }
    let dir = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Object(m)) => match m.get("model") {
                Some(serde_json::Value::String(p)) if m.len() == 1 => Some(std::path::PathBuf::from(p)),
                None if m.is_empty() => None,
                _ => return error_response(&ServeError::bad("model", "expected {\"model\": \"RUN_DIR\"} or no body")),
            },
            _ => return error_response(&ServeError::bad("", "expected {\"model\": \"RUN_DIR\"} or no body")),
        }
    };
    match s.slot.reload(dir).await {
        Ok(r) => json(StatusCode::OK, &serde_json::json!({ "previous": r.previous, "version": r.version })),
        Err(e) => error_response(&e),
    }
}
