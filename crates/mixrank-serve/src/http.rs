//! The HTTP/JSON front end (axum).
//!
//! | route | |
//! |---|---|
//! | `POST /v1/score` | score one request (JSON, see [`crate::request`]) |
//! | `GET /v1/model` | the serving model: version, precision, tasks, features |
//! | `GET /healthz` | liveness: 200 while the process serves HTTP |
//! | `GET /readyz` | readiness: 200 with a model, 503 once shutdown has begun |
//! | `GET /metrics` | Prometheus text |
//! | `POST /admin/reload` | reload (body optional: `{"model": "RUN_DIR", "items": "TABLE_DIR", "force": false}`); needs the bearer token; off (403) without one, not routed (404) with the route off |
//!
//! Errors are `{"error": {"code", "field", "message"}}` with status 400 (validation,
//! `field` names the offending value), 413 (body or request too large), 429 (queue
//! full, with `Retry-After`), 504 (timeout), 503 (shutting down), 401 (wrong token),
//! 403 (admin endpoint off), 409 (reload refused: the request schema would change; the
//! body also has `schema_changes`), 422 (reload refused: checkpoint or config) or 500.

use crate::error::ServeError;
use crate::metrics::Protocol;
use crate::reload::SchemaDiff;
use crate::request::ReloadRequest;
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

/// The router, with request bodies limited to `max_body_bytes`; `admin_route: false`
/// leaves `POST /admin/reload` out (404).
pub fn router(service: Arc<Service>, max_body_bytes: usize, admin_route: bool) -> Router {
    let r = Router::new()
        .route("/v1/score", post(score))
        .route("/v1/model", get(model))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics));
    let r = if admin_route { r.route("/admin/reload", post(reload)) } else { r };
    r.layer(DefaultBodyLimit::max(max_body_bytes)).with_state(service)
}

/// The schema differences as JSON (the 409 body's `schema_changes`, a forced reload's answer).
fn schema_json(d: &SchemaDiff) -> serde_json::Value {
    serde_json::json!({
        "features_added": d.features_added,
        "features_removed": d.features_removed,
        "tasks_added": d.tasks_added,
        "tasks_removed": d.tasks_removed,
        "tasks_reordered": d.tasks_reordered.as_ref().map(|(old, new)| serde_json::json!({"old": old, "new": new})),
        "calibration_surfaces": d.calibration_surfaces.as_ref().map(|(old, new)| serde_json::json!({"old": old, "new": new})),
        "surface_column": d.surface_column.as_ref().map(|(old, new)| serde_json::json!({"old": old, "new": new})),
    })
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
    let mut body = serde_json::json!({ "error": { "code": e.code(), "field": field, "message": message } });
    if let ServeError::SchemaChanged(d) = e {
        body["schema_changes"] = schema_json(d);
    }
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
            "max_items": s.limits.max_items,
            "items": cur.items.as_ref().map(|t| serde_json::json!({
                "dir": t.dir,
                "items": t.len(),
                "id_column": t.manifest.id_column,
                "checkpoint": t.manifest.checkpoint,
            })),
            "user_features": m.towers.as_ref().map(|t| &t.user),
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
    let req = match ReloadRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    match s
        .slot
        .reload(req.model.map(std::path::PathBuf::from), req.items.map(std::path::PathBuf::from), req.force)
        .await
    {
        Ok(r) => json(
            StatusCode::OK,
            &serde_json::json!({
                "previous": r.previous,
                "version": r.version,
                "schema_changes": (!r.schema_changes.is_empty()).then(|| schema_json(&r.schema_changes)),
            }),
        ),
        Err(e) => error_response(&e),
    }
}
