//! The serving model and its atomic replacement.
//!
//! [`ModelSlot`] holds the current [`Served`] (session + bound ranking score) behind
//! an `ArcSwap`: a request takes one snapshot when it starts and keeps it to the end,
//! so a swap never changes the model under a request, and the old session is freed
//! when its last request finishes. A reload loads and verifies the new checkpoint on
//! a blocking thread while the old one keeps serving, binds the score config to its
//! tasks, and only then swaps; any failure leaves the old model in place. A new model
//! that changes the request schema (the feature columns a request must carry, the task
//! names and their order in answers, the surfaces a per-surface calibration layer maps
//! and the segment column it or per-surface towers make a request carry: [`SchemaDiff`]) is refused unless the reload is
//! forced, so a reload cannot silently break every client. Reloads are
//! serialised. [`ModelSlot::watch`] polls `checkpoint/manifest.xxh3` (written last by
//! a checkpoint save) and reloads when its content changes.

use crate::error::{Result, ServeError};
use crate::item_table::ItemTable;
use crate::metrics::Metrics;
use crate::score::{ResolvedScore, ScoreConfig};
use crate::session::{Engine, InferenceSession, Precision};
use arc_swap::ArcSwap;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A session with the score bound to its tasks, and its item table (two-tower models
/// served with `--items`): swapped together, so a request never pairs a model with
/// another checkpoint's table.
pub struct Served {
    pub session: Arc<InferenceSession>,
    pub score: ResolvedScore,
    pub items: Option<Arc<ItemTable>>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub previous: String,
    pub version: String,
    /// The schema changes a forced reload went through with (empty otherwise).
    pub schema_changes: SchemaDiff,
}

/// How a new model's request schema differs from the served one's: the feature columns
/// a request must carry (`GET /v1/model`'s `features`) and the tasks an answer's
/// `predictions` follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaDiff {
    /// Columns the new model requires that the served one does not.
    pub features_added: Vec<String>,
    /// Columns the served model requires that the new one does not.
    pub features_removed: Vec<String>,
    pub tasks_added: Vec<String>,
    pub tasks_removed: Vec<String>,
    /// Same task names in another order (predictions are positional): `(old, new)`.
    pub tasks_reordered: Option<(Vec<String>, Vec<String>)>,
    /// The surfaces a per-surface calibration layer maps, in id order, `(old, new)`,
    /// when they differ (`None` on a side: no layer, or one global map). A client that
    /// reads a score as a calibrated probability at its surface would get another
    /// surface's (or the global) map without noticing; none ↔ global is not listed (the
    /// request and the meaning per surface do not change).
    pub calibration_surfaces: Option<(CalibratedSurfaces, CalibratedSurfaces)>,
    /// The segment column a request must carry for a per-surface calibration layer or
    /// per-surface towers (when the segment is not a feature, whose column is required
    /// anyway), `(old, new)`, when it differs.
    pub surface_column: Option<(Option<String>, Option<String>)>,
}

/// The surfaces a per-surface calibration layer maps, in id order; `None` without a
/// layer or with a global one.
pub type CalibratedSurfaces = Option<Vec<String>>;

/// The surfaces a per-surface calibration layer maps, in id order; `None` without a
/// layer or with a global one.
pub fn calibrated_surfaces(c: Option<&mixrank_train::calibration::CalibrationFile>) -> CalibratedSurfaces {
    use mixrank_data::config::calibration::CalibrationScope;
    let c = c.filter(|c| c.per == CalibrationScope::Surface)?;
    let mut out: Vec<String> = Vec::new();
    for s in c.tasks.iter().flat_map(|t| &t.surfaces) {
        if !out.contains(&s.segment) {
            out.push(s.segment.clone());
        }
    }
    Some(out)
}

impl SchemaDiff {
    /// The differences from `old` to `new`.
    pub fn between(old: &InferenceSession, new: &InferenceSession) -> Self {
        let minus = |a: &BTreeSet<String>, b: &BTreeSet<String>| a.difference(b).cloned().collect::<Vec<_>>();
        let (fo, fn_) = (old.feature_columns(), new.feature_columns());
        let (to, tn) = (old.tasks(), new.tasks());
        let (so, sn): (BTreeSet<String>, BTreeSet<String>) =
            (to.iter().cloned().collect(), tn.iter().cloned().collect());
        let tasks_reordered = (so == sn && to != tn).then(|| (to.clone(), tn.clone()));
        SchemaDiff {
            features_added: minus(fn_, fo),
            features_removed: minus(fo, fn_),
            tasks_added: tn.iter().filter(|t| !so.contains(*t)).cloned().collect(),
            tasks_removed: to.iter().filter(|t| !sn.contains(*t)).cloned().collect(),
            tasks_reordered,
            calibration_surfaces: changed(
                calibrated_surfaces(old.calibration.as_deref().map(|c| &c.file)),
                calibrated_surfaces(new.calibration.as_deref().map(|c| &c.file)),
            ),
            surface_column: changed(
                old.required_surface().map(str::to_string),
                new.required_surface().map(str::to_string),
            ),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == SchemaDiff::default()
    }
}

/// `Some((old, new))` when they differ.
fn changed<T: PartialEq>(old: T, new: T) -> Option<(T, T)> {
    (old != new).then_some((old, new))
}

impl std::fmt::Display for SchemaDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (what, v) in [
            ("feature columns added", &self.features_added),
            ("feature columns removed", &self.features_removed),
            ("tasks added", &self.tasks_added),
            ("tasks removed", &self.tasks_removed),
        ] {
            if !v.is_empty() {
                parts.push(format!("{what}: {}", v.join(", ")));
            }
        }
        if let Some((old, new)) = &self.tasks_reordered {
            parts.push(format!("task order changed: {} -> {}", old.join(", "), new.join(", ")));
        }
        if let Some((old, new)) = &self.calibration_surfaces {
            let side = |s: &Option<Vec<String>>| match s {
                None => "none (no layer or a global one)".to_string(),
                Some(v) => v.join(", "),
            };
            parts.push(format!("calibrated surfaces changed: {} -> {}", side(old), side(new)));
        }
        if let Some((old, new)) = &self.surface_column {
            let side = |s: &Option<String>| s.clone().unwrap_or_else(|| "none".into());
            parts.push(format!("required surface column changed: {} -> {}", side(old), side(new)));
        }
        if parts.is_empty() {
            return write!(f, "no changes");
        }
        write!(f, "{}", parts.join("; "))
    }
}

pub struct ModelSlot {
    current: ArcSwap<Served>,
    run_dir: std::sync::Mutex<PathBuf>,
    items_dir: std::sync::Mutex<Option<PathBuf>>,
    engine: Engine,
    precision: Precision,
    max_batch: usize,
    score: ScoreConfig,
    lock: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

/// Binds the score to the session's tasks and loads `items` (checked against the
/// session's checkpoint: another checkpoint's table is refused naming both).
fn bind(session: InferenceSession, score: &ScoreConfig, items: Option<&Path>) -> Result<Served> {
    let resolved = score.resolve(&session.tasks(), &session.task_kinds())?;
    let items = match items {
        None => None,
        Some(dir) => {
            let dim = session.towers.as_ref().map(|t| t.dim).ok_or_else(|| ServeError::Checkpoint {
                dir: session.run_dir.clone(),
                message: format!(
                    "not a two-tower model, so it cannot serve the item table {} (--items)",
                    dir.display()
                ),
            })?;
            Some(crate::item_table::load_for(dir, &session.identity, &session.tasks(), dim)?)
        }
    };
    Ok(Served { session: Arc::new(session), score: resolved, items })
}

impl ModelSlot {
    /// Loads the first model (blocking).
    pub fn open(
        run_dir: &Path,
        items: Option<&Path>,
        engine: Engine,
        precision: Precision,
        max_batch: usize,
        score: ScoreConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let served = bind(engine.open(run_dir, precision, max_batch)?, &score, items)?;
        Ok(ModelSlot {
            current: ArcSwap::from_pointee(served),
            run_dir: std::sync::Mutex::new(run_dir.to_path_buf()),
            items_dir: std::sync::Mutex::new(items.map(Path::to_path_buf)),
            engine,
            precision,
            max_batch,
            score,
            lock: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    /// The serving model, for one request.
    pub fn current(&self) -> Arc<Served> {
        self.current.load_full()
    }

    /// Loads `run_dir` (default: the directory served now) and swaps it in; on any
    /// error the old model keeps serving and the error is returned. A model whose
    /// request schema differs from the served one's is refused
    /// ([`ServeError::SchemaChanged`]) unless `force`.
    ///
    /// `items` names the item table to serve with it (default: the one served now, if
    /// any); model and table are loaded, checked against each other and swapped in
    /// together.
    pub async fn reload(&self, run_dir: Option<PathBuf>, items: Option<PathBuf>, force: bool) -> Result<ReloadReport> {
        let _guard = self.lock.lock().await;
        let poisoned = |_| ServeError::Internal("lock poisoned".into());
        let dir = match run_dir {
            Some(d) => d,
            None => self.run_dir.lock().map_err(poisoned)?.clone(),
        };
        let items = match items {
            Some(d) => Some(d),
            None => self.items_dir.lock().map_err(|_| ServeError::Internal("lock poisoned".into()))?.clone(),
        };
        let (engine, precision, max_batch, score) =
            (self.engine.clone(), self.precision, self.max_batch, self.score.clone());
        let (d, it) = (dir.clone(), items.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            engine.open(&d, precision, max_batch).and_then(|s| bind(s, &score, it.as_deref()))
        })
        .await
        .map_err(|e| ServeError::Internal(format!("reload task: {e}")))?;
        let checked = loaded.and_then(|served| {
            let diff = SchemaDiff::between(&self.current().session, &served.session);
            if diff.is_empty() || force {
                Ok((served, diff))
            } else {
                Err(ServeError::SchemaChanged(Box::new(diff)))
            }
        });
        match checked {
            Ok((served, schema_changes)) => {
                let version = served.session.version.clone();
                let old = self.current.swap(Arc::new(served));
                if let Ok(mut r) = self.run_dir.lock() {
                    *r = dir;
                }
                if let Ok(mut r) = self.items_dir.lock() {
                    *r = items;
                }
                self.metrics.reload(true);
                if schema_changes.is_empty() {
                    tracing::info!(previous = %old.session.version, %version, "model reloaded");
                } else {
                    tracing::warn!(previous = %old.session.version, %version, changes = %schema_changes,
                        "model reloaded with a changed request schema (forced)");
                }
                Ok(ReloadReport { previous: old.session.version.clone(), version, schema_changes })
            }
            Err(e) => {
                self.metrics.reload(false);
                tracing::warn!(error = %e, "reload refused; the previous model keeps serving");
                Err(e)
            }
        }
    }

    /// Polls the served run's manifest every `every` and reloads when it changes,
    /// until `stop` resolves. A new checkpoint that changes the request schema is
    /// refused (logged, counted as refused); a forced admin reload can take it.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: impl std::future::Future<Output = ()>) {
        let manifest = |slot: &ModelSlot| {
            slot.run_dir
                .lock()
                .ok()
                .map(|d| d.join("checkpoint").join(mixrank_train::checkpoint::MANIFEST_SUM))
                .unwrap_or_default()
        };
        let read = |p: PathBuf| async move { tokio::fs::read(p).await.ok() };
        let mut seen = read(manifest(&self)).await;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = read(manifest(&self)).await;
            if now.is_some() && now != seen {
                seen = now;
                let _ = self.reload(None, None, false).await;
            }
        }
    }
}
