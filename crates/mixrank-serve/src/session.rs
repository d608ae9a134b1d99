//! An inference session: a verified checkpoint loaded for scoring only, at a
//! precision chosen at load.
//!
//! - `f32`: the trained weights as they are.
//! - `bf16`: every GEMM the head's layers expose through `Layer::visit_reduced`
//!   (Linear layers and DCNv2's full-rank cross layers) converted to bf16 weights;
//!   activations are rounded to bf16 at each GEMM input and the GEMM accumulates in
//!   f32 (AMX-BF16 / AVX512-BF16 / portable kernel, picked at run time). The
//!   embeddings, low-rank and mixture cross layers, layer norms, gates' softmax,
//!   mixtures and FinalMLP's bilinear products stay f32.
//!
//! The session keeps no gradients: the dense parameters' gradient buffers that the
//! layer constructors allocate are released right after loading (`[rows, d_in]`
//! backward workspaces inside the layers remain; see docs/serving.md for the
//! measured overhead). Predictions go through
//! [`mixrank_train::read_predictions`], the function `mixrank eval` uses.

use crate::encode::RequestEncoder;
use crate::error::{Result, ServeError};
use crate::item_scoring::{gathered_dot, Finish};
use crate::item_table::{CheckpointIdentity, ItemTable};
use crate::request::{Features, ScoreRequest};
use mixrank_data::config::groups::FeatureRef;
use mixrank_data::config::{TaskKind, TaskSpec};
use mixrank_data::{Batch, DenseMode, Encoder, ExperimentConfig};
use mixrank_engine::Backend;
use mixrank_model::Model;
use mixrank_model::Tower;
use mixrank_train::checkpoint::Manifest;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Numeric precision of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
}

impl Precision {
    pub fn name(&self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("unknown precision {other:?}; expected f32 or bf16 (this engine has no f16 path)")),
        }
    }
}

/// The backend sessions run on. The caller picks it (the CLI: the CPU backend); this crate
/// names no backend. Cheap to clone; the server reopens sessions through it on reload.
#[derive(Clone)]
pub struct Engine(Arc<dyn OpenSession>);

trait OpenSession: Send + Sync {
    fn open(&self, run_dir: &Path, precision: Precision, max_batch: usize) -> Result<InferenceSession>;
    fn name(&self) -> &'static str;
}

struct On<B>(Arc<B>);

impl<B: Backend + 'static> OpenSession for On<B> {
    fn open(&self, run_dir: &Path, precision: Precision, max_batch: usize) -> Result<InferenceSession> {
        InferenceSession::open(run_dir, precision, max_batch, self.0.clone())
    }
    fn name(&self) -> &'static str {
        std::any::type_name::<B>()
    }
}

impl Engine {
    pub fn new<B: Backend + 'static>(ops: B) -> Self {
        Engine(Arc::new(On(Arc::new(ops))))
    }

    /// [`InferenceSession::open`] on this backend.
    pub fn open(&self, run_dir: &Path, precision: Precision, max_batch: usize) -> Result<InferenceSession> {
        self.0.open(run_dir, precision, max_batch)
    }

    /// The backend's type name.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({})", self.name())
    }
}

/// A model and its backend, behind the session's lock.
trait Runner: Send {
    /// Appends the predictions of `b`'s rows to `out[task]`.
    fn predict(&mut self, b: &Batch, tasks: &[TaskSpec], out: &mut [Vec<f32>]) -> Result<()>;
    /// Two-tower models: the user tower on `user` (its row 0), then each task's
    /// gathered dot products with `table`'s `rows` ([`crate::item_scoring`]).
    fn score_items(
        &mut self,
        user: &Batch,
        table: &ItemTable,
        rows: &[u32],
        tasks: &[TaskSpec],
    ) -> Result<Vec<Vec<f32>>>;
    /// Two-tower models: the item tower on `b`, appending each row's embeddings
    /// (`[n_tasks, dim]` per row; unit length under a cosine score) to `out`.
    fn embed_items(&mut self, b: &Batch, out: &mut Vec<f32>) -> Result<()>;
    /// Two-tower models: each task's score bias (0 without biases).
    fn score_bias(&mut self) -> Result<Vec<f32>>;
}

struct Loaded<B: Backend> {
    ops: Arc<B>,
    model: Box<dyn Model<B>>,
    host: Vec<f32>,
}

impl<B: Backend + 'static> Runner for Loaded<B> {
    fn predict(&mut self, b: &Batch, tasks: &[TaskSpec], out: &mut [Vec<f32>]) -> Result<()> {
        let ops = &*self.ops;
        // A forward is many short ops: the pool's workers poll for them instead of sleeping.
        let _awake = ops.keep_awake();
        self.model.forward(ops, b).map_err(|e| ServeError::Internal(format!("forward: {e}")))?;
        mixrank_train::read_predictions(&*self.model, ops, tasks, b.rows, &mut self.host, out)
            .map_err(|e| ServeError::Internal(e.to_string()))
    }

    fn score_items(
        &mut self,
        user: &Batch,
        table: &ItemTable,
        rows: &[u32],
        tasks: &[TaskSpec],
    ) -> Result<Vec<Vec<f32>>> {
        let ops = &*self.ops;
        let tt = self.model.as_two_tower_mut().ok_or_else(not_two_tower)?;
        tt.forward_tower(ops, user, Tower::User).map_err(|e| ServeError::Internal(format!("user tower: {e}")))?;
        let dim = tt.dim();
        tasks
            .iter()
            .enumerate()
            .map(|(t, task)| {
                let mut u = vec![0f32; dim];
                ops.read(tt.tower_embedding(Tower::User, t), &mut u).map_err(internal("reading the user embedding"))?;
                let bias = tt.score_bias(t).map(|b| read_scalar(ops, b)).transpose()?;
                let fin = Finish { scale: tt.inv_temperature(), bias };
                let mut z = vec![0f32; rows.len()];
                gathered_dot(table, t, rows, &u, fin, &mut z);
                z.iter_mut().for_each(|v| *v = mixrank_train::prediction_of(task.kind, *v));
                Ok(z)
            })
            .collect()
    }

    fn score_bias(&mut self) -> Result<Vec<f32>> {
        let ops = &*self.ops;
        let n_tasks = self.model.io().tasks.len();
        let tt = self.model.as_two_tower_mut().ok_or_else(not_two_tower)?;
        (0..n_tasks).map(|t| tt.score_bias(t).map_or(Ok(0.0), |b| read_scalar(ops, b))).collect()
    }

    fn embed_items(&mut self, b: &Batch, out: &mut Vec<f32>) -> Result<()> {
        let ops = &*self.ops;
        let n_tasks = self.model.io().tasks.len();
        let tt = self.model.as_two_tower_mut().ok_or_else(not_two_tower)?;
        // A one-row batch would take gemm's matrix-vector kernel (another summation
        // order than a batched forward's): run it as two copies of the row.
        let rows = b.rows;
        let padded;
        let run = if rows == 1 {
            padded = b.gather(&[0, 0]);
            &padded
        } else {
            b
        };
        tt.forward_tower(ops, run, Tower::Item).map_err(|e| ServeError::Internal(format!("item tower: {e}")))?;
        let dim = tt.dim();
        let mut per_task = vec![vec![0f32; rows * dim]; n_tasks];
        for (t, host) in per_task.iter_mut().enumerate() {
            ops.read(tt.tower_embedding(Tower::Item, t), host).map_err(internal("reading item embeddings"))?;
        }
        for r in 0..rows {
            for host in &per_task {
                out.extend_from_slice(&host[r * dim..(r + 1) * dim]);
            }
        }
        Ok(())
    }
}

/// An engine error while serving, with what was being done.
fn internal(what: &'static str) -> impl Fn(mixrank_engine::EngineError) -> ServeError {
    move |e| ServeError::Internal(format!("{what}: {e}"))
}

/// The first element of a backend buffer (a one-element readback).
fn read_scalar<B: Backend>(ops: &B, buf: &B::Buf) -> Result<f32> {
    let mut v = [0f32];
    ops.read(buf, &mut v).map_err(internal("reading a score bias"))?;
    Ok(v[0])
}

fn not_two_tower() -> ServeError {
    ServeError::Internal("a two-tower call on a model that is not two-tower".into())
}
/// What each tower of a two-tower model reads, by source column, and its embedding width.
#[derive(Debug, Clone)]
pub struct TowerColumns {
    pub user: BTreeSet<String>,
    pub item: BTreeSet<String>,
    pub dim: usize,
}

impl TowerColumns {
    /// `None` unless `cfg` is a two-tower config.
    pub fn of(cfg: &ExperimentConfig) -> Option<Self> {
        let inputs = cfg.inputs.as_ref()?.two_tower.as_ref()?;
        let dim = cfg.model.as_ref()?.two_tower.as_ref()?.dim;
        let cols = |spec: &mixrank_data::config::groups::InputSpec| {
            spec.features()
                .into_iter()
                .map(|f| match f {
                    FeatureRef::Categorical(i) => cfg.categorical[i].column.clone(),
                    FeatureRef::Dense(i) => cfg.dense[i].column.clone(),
                })
                .collect::<BTreeSet<String>>()
        };
        Some(TowerColumns { user: cols(&inputs.user), item: cols(&inputs.item), dim })
    }
}

/// A loaded checkpoint ready to score batches of up to `max_batch` rows.
pub struct InferenceSession {
    pub config: Arc<ExperimentConfig>,
    pub manifest: Manifest,
    /// `<run name>@<step>#<first 8 hex digits of the weights' xxh3>`.
    pub version: String,
    pub precision: Precision,
    /// The bf16 kernel in use (`None` at f32).
    pub kernel: Option<&'static str>,
    pub max_batch: usize,
    /// The run directory the checkpoint was loaded from.
    pub run_dir: PathBuf,
    /// Floats released by dropping the dense parameters' gradient buffers.
    pub released_grad_floats: usize,
    /// The checkpoint's calibration layer, applied after the model (as in `mixrank eval`).
    pub calibration: Option<Arc<mixrank_train::calibration::Calibration>>,
    /// The checkpoint's identity (an item table must carry the same).
    pub identity: CheckpointIdentity,
    /// Two-tower models: what each tower reads.
    pub towers: Option<TowerColumns>,
    encoder: RequestEncoder,
    runner: Mutex<Box<dyn Runner>>,
}

impl InferenceSession {
    /// Loads and verifies `run_dir/checkpoint` (checksum, format and hash versions,
    /// every tensor's name and shape) and prepares it at `precision`, on the backend
    /// `ops`.
    pub fn open<B: Backend + 'static>(
        run_dir: &Path,
        precision: Precision,
        max_batch: usize,
        ops: Arc<B>,
    ) -> Result<Self> {
        let dir = run_dir.join("checkpoint");
        let fail = |message: String| ServeError::Checkpoint { dir: dir.clone(), message };
        let loaded = mixrank_train::checkpoint::load(&dir, &*ops, max_batch.max(1)).map_err(|e| fail(e.to_string()))?;
        let run = run_dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        let m = &loaded.manifest;
        let version = format!("{run}@{}#{}", m.step, &m.weights_xxh3()[..m.weights_xxh3().len().min(8)]);
        let mut s = Self::from_parts(loaded.config, loaded.model, ops, loaded.manifest, precision, max_batch, version)?;
        s.run_dir = run_dir.to_path_buf();
        s.calibration = loaded.calibration;
        Ok(s)
    }

    /// A session around a model already in memory (its workspaces must hold
    /// `max_batch` rows): `mixrank bench infer` scores a randomly initialised model
    /// through the same path as a loaded one.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts<B: Backend + 'static>(
        config: Arc<ExperimentConfig>,
        mut model: Box<dyn Model<B>>,
        ops: Arc<B>,
        manifest: Manifest,
        precision: Precision,
        max_batch: usize,
        version: String,
    ) -> Result<Self> {
        let fail = |message: String| ServeError::Checkpoint { dir: PathBuf::from(&version), message };
        // Inference: dropout off (the model is never switched back).
        model.set_training(false);
        let mut released_grad_floats = 0;
        let mut err = None;
        model.params(&mut |_, p| {
            released_grad_floats += ops.len(&p.grad);
            match ops.alloc(0) {
                Ok(empty) => p.grad = empty,
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        });
        if let Some(e) = err {
            return Err(fail(format!("releasing gradients: {e}")));
        }
        let kernel = match precision {
            Precision::F32 => None,
            Precision::Bf16 => {
                model.use_bf16(&*ops).map_err(|e| fail(format!("switching to bf16: {e}")))?;
                model.reduced_kernel()
            }
        };
        let identity = CheckpointIdentity {
            weights_xxh3: manifest.weights_xxh3().to_string(),
            run: version.split('@').next().unwrap_or("model").to_string(),
            step: manifest.step,
        };
        let towers = TowerColumns::of(&config);
        let stats = Arc::new(manifest.dense_stats.clone());
        let encoder = Encoder::new(config.clone(), DenseMode::Fitted(stats)).map_err(|e| fail(e.to_string()))?;
        Ok(InferenceSession {
            encoder: RequestEncoder::new(config.clone(), encoder),
            config,
            manifest,
            version,
            precision,
            kernel,
            max_batch: max_batch.max(1),
            run_dir: PathBuf::new(),
            released_grad_floats,
            calibration: None,
            identity,
            towers,
            runner: Mutex::new(Box::new(Loaded { ops, model, host: Vec::new() })),
        })
    }

    /// Task names, in prediction order.
    pub fn tasks(&self) -> Vec<String> {
        self.config.tasks.iter().map(|t| t.name.clone()).collect()
    }

    /// Task kinds, in prediction order.
    pub fn task_kinds(&self) -> Vec<TaskKind> {
        self.config.tasks.iter().map(|t| t.kind).collect()
    }

    /// Source columns the model reads.
    pub fn feature_columns(&self) -> &BTreeSet<String> {
        self.encoder.feature_columns()
    }

    /// Feature columns the served model does not read (only its position tower does,
    /// which is off at serving): a request need not carry them; one it sends is ignored.
    pub fn ignored_columns(&self) -> &BTreeSet<String> {
        self.encoder.ignored_columns()
    }

    /// The ignored columns `req` carries.
    pub fn ignored_in(&self, req: &ScoreRequest) -> Vec<&str> {
        self.encoder.ignored_in(req)
    }

    /// The segment column a request must carry: with a per-surface calibration layer or
    /// per-surface towers (`[model.tower] per_surface`: each row is scored by its
    /// surface's tower), when the segment is not a feature (a feature is required anyway).
    pub fn required_surface(&self) -> Option<&str> {
        let per_surface = self
            .calibration
            .as_ref()
            .is_some_and(|c| c.file.per == mixrank_data::config::calibration::CalibrationScope::Surface)
            || self.per_surface_towers();
        self.encoder.surface_column().filter(|_| per_surface)
    }

    /// Whether the model has per-surface towers (`[model.tower] per_surface`).
    pub fn per_surface_towers(&self) -> bool {
        self.config.model.as_ref().is_some_and(|m| m.tower.per_surface)
    }

    /// Why a request must name its surface (see [`InferenceSession::required_surface`]).
    fn surface_reason(&self) -> &'static str {
        if self.per_surface_towers() {
            "missing surface: the model scores each row with its surface's tower ([model.tower] per_surface)"
        } else {
            "missing surface: the model is calibrated per surface"
        }
    }

    /// Validates and encodes a request (see [`RequestEncoder::encode`]). With a
    /// per-surface calibration layer the request must name its surface (the segment
    /// column, in the context or in every candidate).
    pub fn encode(&self, req: &ScoreRequest, extra: &BTreeSet<String>) -> Result<Batch> {
        if let Some(col) = self.required_surface() {
            if !req.context.contains_key(col) && !req.candidates.iter().all(|c| c.contains_key(col)) {
                return Err(ServeError::bad(
                    format!("context.{col}"),
                    format!("{} (give it in the context or in every candidate)", self.surface_reason()),
                ));
            }
        }
        self.encoder.encode(req, extra)
    }

    /// Two-tower models with an item table: the predictions `[task][i]` of the table's
    /// `rows` for the user of `context`. The user tower runs once, on two copies of the
    /// context row: a one-row GEMM takes the `gemm` crate's matrix-vector kernel, whose
    /// summation order differs from the batched kernel `predict` and training use, and two
    /// rows keep the batched one (so the scores are `predict`'s bit for bit).
    pub fn score_items(
        &self,
        context: &Features,
        extra: &BTreeSet<String>,
        table: &ItemTable,
        rows: &[u32],
    ) -> Result<Vec<Vec<f32>>> {
        let towers = self.towers.as_ref().ok_or_else(|| {
            ServeError::bad("item_ids", "the served model is not a two-tower model; send `candidates`")
        })?;
        if let Some(col) = self.required_surface().filter(|c| !context.contains_key(*c)) {
            return Err(ServeError::bad(
                format!("context.{col}"),
                format!("{} (give it in the context)", self.surface_reason()),
            ));
        }
        let user = self.encoder.encode_context(context, &towers.user, extra, 2)?;
        let mut r = self.runner.lock().map_err(|_| ServeError::Internal("model lock poisoned".into()))?;
        let mut out = r.score_items(&user, table, rows, &self.config.tasks)?;
        drop(r);
        // The calibration layer, every item at the request's surface.
        if let Some(cal) = &self.calibration {
            let surface = user.segment.first().copied().unwrap_or_default();
            cal.apply_all(&vec![surface; rows.len()], &mut out);
        }
        Ok(out)
    }

    /// Two-tower models: the item tower's embeddings of `batch`'s rows, `[rows, n_tasks,
    /// dim]` (`embed-items`).
    pub fn embed_items(&self, batch: &Batch) -> Result<Vec<f32>> {
        let towers = self.towers.as_ref().ok_or_else(not_two_tower)?;
        let mut out = Vec::with_capacity(batch.rows * self.config.tasks.len() * towers.dim);
        let mut r = self.runner.lock().map_err(|_| ServeError::Internal("model lock poisoned".into()))?;
        for start in (0..batch.rows).step_by(self.max_batch) {
            let end = (start + self.max_batch).min(batch.rows);
            if start == 0 && end == batch.rows {
                r.embed_items(batch, &mut out)?;
            } else {
                r.embed_items(&batch.gather(&(start..end).collect::<Vec<_>>()), &mut out)?;
            }
        }
        Ok(out)
    }

    /// Two-tower models: each task's score bias (0 without biases).
    pub fn score_bias(&self) -> Result<Vec<f32>> {
        self.runner.lock().map_err(|_| ServeError::Internal("model lock poisoned".into()))?.score_bias()
    }

    /// The request encoder (for sources other than requests: `embed-items`).
    pub fn encoder(&self) -> &RequestEncoder {
        &self.encoder
    }

    /// Predictions `[task][row]` for every row of `batch`, in chunks of `max_batch`,
    /// through the calibration layer (each row by its surface) when the checkpoint has one.
    pub fn predict(&self, batch: &Batch) -> Result<Vec<Vec<f32>>> {
        let mut out = vec![Vec::with_capacity(batch.rows); self.config.tasks.len()];
        let mut r = self.runner.lock().map_err(|_| ServeError::Internal("model lock poisoned".into()))?;
        let mut run = |b: &Batch| r.predict(b, &self.config.tasks, &mut out);
        if batch.rows <= self.max_batch {
            run(batch)?;
        } else {
            for start in (0..batch.rows).step_by(self.max_batch) {
                let idx: Vec<usize> = (start..(start + self.max_batch).min(batch.rows)).collect();
                run(&batch.gather(&idx))?;
            }
        }
        if let Some(cal) = &self.calibration {
            cal.apply_all(&batch.segment, &mut out);
        }
        Ok(out)
    }
}
