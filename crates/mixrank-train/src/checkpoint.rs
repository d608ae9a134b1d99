//! Checkpoints (format 2): the model's weights and the optimizer state in safetensors
//! plus a JSON manifest (format version, the full config, the hash recipe version,
//! dense statistics, the data cursor, optimizer kinds and step counts, lineage, the
//! early-stopping state and a checksum of every file), verified on load.
//!
//! Layout of a checkpoint directory:
//! - `weights.safetensors`: every dense parameter as `head.<path>` and every embedding
//!   table as `emb.tables.<i>`, f32;
//! - `optimizer.safetensors`: the optimizer state ([`crate::optimizers`] lists the names);
//! - `manifest.json`: [`Manifest`], with the XXH3-64 and size of both files;
//! - `manifest.xxh3`: the XXH3-64 of `manifest.json` (hex), written last;
//! - `calibration.json` (only in a run's final `checkpoint/` with `[calibration]`): the
//!   calibration layer ([`crate::calibration`]), listed in the manifest like the others
//!   ([`attach_calibration`]).
//!
//! [`save`] writes everything into a temporary sibling directory and renames it into
//! place, so a crash leaves either the old directory or the new one complete; a
//! checkpoint damaged later (a flipped byte, a truncated file, a missing file) fails a
//! checksum and [`read_verified`] refuses it, naming the file.
//!
//! Format 1 checkpoints (weights only, no optimizer state or data cursor) are refused
//! with a message saying so: they cannot be resumed exactly, and a weights-only warm
//! start would silently reset the optimizer.

use crate::calibration::{Calibration, CALIBRATION};
use crate::early_stop::EarlyStopState;
use crate::error::{write_atomic, Result, TrainError};
use crate::lineage::Lineage;
use crate::optimizers::{OptimizerManifest, Optimizers};
use crate::tensors::{serialize, Tensor, TensorFile};
use mixrank_data::stats::DenseStats;
use mixrank_data::ExperimentConfig;
use mixrank_dist::Collective;
use mixrank_engine::Backend;
use mixrank_model::{build_model, Model};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Version of the checkpoint layout.
pub const FORMAT_VERSION: u32 = 2;
pub const WEIGHTS: &str = "weights.safetensors";
pub const OPTIMIZER: &str = "optimizer.safetensors";
pub const MANIFEST: &str = "manifest.json";
pub const MANIFEST_SUM: &str = "manifest.xxh3";

/// Where in the data a checkpoint was taken: training continues with batch
/// `batch_in_epoch` (0-based) of epoch `epoch`'s stream, whose order depends only on
/// (seed, epoch), so the batches before it are exactly the ones already trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub batch_in_epoch: u64,
    /// Data-parallel sharded reading (`[data] distributed_reading = "sharded"`): the
    /// number of ranks whose shards `batch_in_epoch` counts batches of (each rank's
    /// stream depends on it). Absent for every other run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
}

/// Size and XXH3-64 (hex) of one file of the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    pub xxh3: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub created_by: String,
    /// The experiment config as TOML (the parsed file, verbatim in content).
    pub config_toml: String,
    /// Where that config was loaded from, made absolute (relative data paths resolve
    /// against its directory, whatever the working directory of a later command).
    pub config_path: PathBuf,
    /// [`mixrank_data::hash::HASH_VERSION`] the embedding rows were trained with.
    pub hash_version: u32,
    pub dense_stats: DenseStats,
    /// The learned vocabularies (`vocabulary = { from = "train" }`), table name → values
    /// in row order, as the run's statistics pass built them: [`Verified::config`] maps
    /// values with them, so evaluation, serving, `--resume` and `--init` use the rows
    /// training used without reading the training data. Absent when there are none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vocabularies: BTreeMap<String, Vec<String>>,
    /// Optimizer updates so far (also the learning-rate schedule's position).
    pub step: u64,
    /// Training examples so far.
    pub examples: u64,
    pub cursor: Cursor,
    pub optimizer: OptimizerManifest,
    pub lineage: Lineage,
    /// Early-stopping bookkeeping at this step, restored by `--resume`; absent when early
    /// stopping is off (and in manifests written before it was recorded: such a
    /// checkpoint resumes with monitoring started afresh, and says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopState>,
    /// Every other file of the checkpoint by name.
    pub files: BTreeMap<String, FileSum>,
    /// Written by a job with row-wise sharded tables (`crate::sharded_tables`): the
    /// embedding tables and their sparse optimizer state are not in `weights.safetensors`
    /// and `optimizer.safetensors` but in this many files [`shard_file`]`(r, N)`, rank
    /// `r`'s holding the rows `id ≡ r (mod N)` in id order. [`read_verified`] puts them
    /// back together. Absent for every other checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_shards: Option<usize>,
    /// Tensors in `weights.safetensors`.
    pub tensors: usize,
}

impl Manifest {
    /// XXH3-64 (hex) of the weights file, the short identity of a model version. With
    /// sharded tables the weights are the dense file and the shard files: the XXH3-64 of
    /// their checksums in order.
    pub fn weights_xxh3(&self) -> String {
        let sum = |name: &str| self.files.get(name).map_or("", |f| f.xxh3.as_str()).to_string();
        match self.table_shards {
            None => sum(WEIGHTS),
            Some(n) => {
                let all: String = std::iter::once(sum(WEIGHTS)).chain((0..n).map(|r| sum(&shard_file(r, n)))).collect();
                xxh3(all.as_bytes())
            }
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

/// The checksum a manifest records for a file: XXH3-64 of its bytes, 16 hex digits.
pub fn xxh3(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// Everything a checkpoint records besides the tensors.
pub struct CheckpointInfo<'a> {
    pub config: &'a ExperimentConfig,
    pub dense_stats: &'a DenseStats,
    pub step: u64,
    pub examples: u64,
    pub cursor: Cursor,
    pub lineage: Lineage,
    pub early_stopping: Option<EarlyStopState>,
}

/// The file of rank `r`'s rows of the tables in a checkpoint of `n` table shards.
pub fn shard_file(r: usize, n: usize) -> String {
    format!("tables.shard-{r}-of-{n}.safetensors")
}

/// The weights of `model` as named tensors (read back from the backend); the embedding
/// tables only with `tables`.
fn weight_tensors<B: Backend>(ops: &B, model: &mut dyn Model<B>, tables: bool) -> Result<Vec<Tensor>> {
    let mut out = Vec::new();
    let mut err = None;
    model.params(&mut |name, p| match p.read_value(ops) {
        Ok(v) => out.push(Tensor::f32(format!("head.{name}"), p.shape.clone(), &v)),
        Err(e) => {
            err.get_or_insert(e);
        }
    });
    if let Some(emb) = model.embeddings_mut().filter(|_| tables) {
        emb.visit_tables(&mut |name, t| match t.read_value(ops) {
            Ok(v) => out.push(Tensor::f32(format!("emb.{name}"), vec![t.rows, t.dim], &v)),
            Err(e) => {
                err.get_or_insert(e);
            }
        });
    }
    match err {
        Some(e) => Err(crate::error::layer("reading the weights")(e)),
        None => Ok(out),
    }
}

/// Writes `model` and `optim` as the checkpoint directory `dir`, replacing an existing
/// one: everything goes to a temporary sibling directory first, which is renamed into
/// place.
pub fn save<B: Backend>(
    dir: &Path,
    ops: &B,
    model: &mut dyn Model<B>,
    optim: &Optimizers<B>,
    info: &CheckpointInfo<'_>,
) -> Result<Manifest> {
    let weights = weight_tensors(ops, model, true)?;
    let optimizer = optim.tensors(ops, model)?;
    let tmp = fresh_tmp(dir)?;
    let parts = Parts { weights, optimizer, optim: optim.manifest(&info.config.train), shards: None };
    finish(dir, &tmp, parts, info)
}

/// A new, empty temporary sibling of `dir`.
fn fresh_tmp(dir: &Path) -> Result<PathBuf> {
    let tmp = mixrank_data::atomic::tmp_name(dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    Ok(tmp)
}

/// What rank 0 writes besides files already in the temporary directory.
struct Parts {
    weights: Vec<Tensor>,
    optimizer: Vec<Tensor>,
    optim: OptimizerManifest,
    /// Sharded tables: the shard count and each shard file's sum (already written).
    shards: Option<(usize, BTreeMap<String, FileSum>)>,
}

/// Writes the weights, optimizer state and manifest into `tmp` and renames it to `dir`.
fn finish(dir: &Path, tmp: &Path, parts: Parts, info: &CheckpointInfo<'_>) -> Result<Manifest> {
    let other = |m: String| TrainError::Checkpoint { path: dir.to_path_buf(), message: m };
    let wbytes = serialize(&parts.weights).map_err(other)?;
    let obytes = serialize(&parts.optimizer).map_err(other)?;
    let sum = |b: &[u8]| FileSum { bytes: b.len() as u64, xxh3: xxh3(b) };
    let mut files: BTreeMap<String, FileSum> =
        [(WEIGHTS.to_string(), sum(&wbytes)), (OPTIMIZER.to_string(), sum(&obytes))].into_iter().collect();
    let table_shards = parts.shards.map(|(n, sums)| {
        files.extend(sums);
        n
    });
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        created_by: format!("mixrank {}", env!("CARGO_PKG_VERSION")),
        config_toml: toml::to_string(&info.config.wire).map_err(|e| other(format!("config to TOML: {e}")))?,
        config_path: std::path::absolute(&info.config.path).unwrap_or_else(|_| info.config.path.clone()),
        hash_version: mixrank_data::hash::HASH_VERSION,
        dense_stats: info.dense_stats.clone(),
        vocabularies: info.config.learned_vocabularies(),
        step: info.step,
        examples: info.examples,
        cursor: info.cursor,
        optimizer: parts.optim,
        lineage: info.lineage.clone(),
        early_stopping: info.early_stopping,
        files,
        tensors: parts.weights.len(),
        table_shards,
    };
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| other(e.to_string()))?;
    write_atomic(&tmp.join(WEIGHTS), &wbytes)?;
    write_atomic(&tmp.join(OPTIMIZER), &obytes)?;
    write_atomic(&tmp.join(MANIFEST), text.as_bytes())?;
    write_atomic(&tmp.join(MANIFEST_SUM), xxh3(text.as_bytes()).as_bytes())?;
    replace_dir(tmp, dir)?;
    Ok(manifest)
}

/// Collective, for a job with sharded tables ([`crate::sharded_tables`]): writes the
/// checkpoint directory `dir` with each rank's rows of the tables (`shard`, its
/// [`ShardedTables::tensors`](crate::sharded_tables::ShardedTables::tensors)) in that
/// rank's [`shard_file`], and rank 0's dense weights and Adam state in the usual files.
/// Rank 0 makes the temporary directory and tells the others where it is; each writes
/// its file there; the files' sums are gathered; rank 0 writes the manifest listing them
/// all and renames the directory into place, so a crash of any rank leaves the old
/// checkpoint or the new one, never a mix. `dir` must be the same path on every rank
/// (a shared file system across machines). Returns the manifest on rank 0.
pub fn save_sharded<B: Backend>(
    dir: &Path,
    c: &dyn Collective,
    ops: &B,
    model: &mut dyn Model<B>,
    optim: &Optimizers<B>,
    shard: Vec<Tensor>,
    info: &CheckpointInfo<'_>,
) -> Result<Option<Manifest>> {
    let (rank, n) = (c.rank(), c.size());
    let other = |m: String| TrainError::Checkpoint { path: dir.to_path_buf(), message: m };
    // 1. Rank 0's temporary directory, as UTF-8 (empty: it could not make one).
    let mut made = None;
    let mut where_ = Vec::new();
    if rank == 0 {
        match fresh_tmp(dir) {
            Ok(tmp) => match tmp.to_str() {
                Some(t) => {
                    where_ = t.as_bytes().to_vec();
                    made = Some(Ok(tmp));
                }
                None => made = Some(Err(other(format!("{} is not UTF-8", tmp.display())))),
            },
            Err(e) => made = Some(Err(e)),
        }
    }
    c.broadcast_bytes(&mut where_, 0)?;
    // 2. Every rank's shard file, and its sum or why it failed.
    let name = shard_file(rank, n);
    let mine: std::result::Result<FileSum, String> = if where_.is_empty() {
        Err("rank 0 could not make the checkpoint's temporary directory".into())
    } else {
        let tmp = PathBuf::from(String::from_utf8_lossy(&where_).into_owned());
        serialize(&shard).and_then(|bytes| {
            write_atomic(&tmp.join(&name), &bytes)
                .map(|_| FileSum { bytes: bytes.len() as u64, xxh3: xxh3(&bytes) })
                .map_err(|e| e.to_string())
        })
    };
    let report = serde_json::to_vec(&mine).map_err(|e| other(e.to_string()))?;
    let all = c.all_gather_bytes(&report)?;
    if rank != 0 {
        return mine.map(|_| None).map_err(|m| other(format!("rank {rank}'s {name}: {m}")));
    }
    let tmp = made.expect("rank 0 tried")?;
    let mut sums = BTreeMap::new();
    for (r, bytes) in all.iter().enumerate() {
        let got: std::result::Result<FileSum, String> =
            serde_json::from_slice(bytes).map_err(|e| other(format!("rank {r}'s report: {e}")))?;
        match got {
            Ok(sum) => {
                sums.insert(shard_file(r, n), sum);
            }
            Err(m) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(other(format!("rank {r} could not write {}: {m}", shard_file(r, n))));
            }
        }
    }
    // 3. Rank 0: dense weights, Adam state, the manifest over every file; the rename.
    let parts = Parts {
        weights: weight_tensors(ops, model, false)?,
        optimizer: optim.dense_tensors(ops, model)?,
        optim: optim.manifest(&info.config.train),
        shards: Some((n, sums)),
    };
    finish(dir, &tmp, parts, info).map(Some)
}

/// Adds `cal` to the checkpoint directory `dir` as `calibration.json`, listed in a
/// rewritten manifest: the checkpoint is copied to a temporary sibling directory, the
/// file and the new manifest written there, and the copy renamed into place
/// ([`replace_dir`]), so `dir` is the old checkpoint or the new one, never a mix.
pub fn attach_calibration(dir: &Path, cal: &Calibration) -> Result<Manifest> {
    let other = |m: String| TrainError::Checkpoint { path: dir.to_path_buf(), message: m };
    let v = read_verified(dir)?;
    let bytes = cal.to_json().into_bytes();
    let mut manifest = v.manifest;
    manifest.files.insert(CALIBRATION.to_string(), FileSum { bytes: bytes.len() as u64, xxh3: xxh3(&bytes) });
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| other(e.to_string()))?;
    let tmp = fresh_tmp(dir)?;
    // Every file as it is on disk (verified above; with sharded tables `v.weights` is
    // the put-together whole, not the file).
    for name in manifest.files.keys().filter(|n| n.as_str() != CALIBRATION) {
        let src = dir.join(name);
        let raw = std::fs::read(&src).map_err(io(&src))?;
        write_atomic(&tmp.join(name), &raw)?;
    }
    write_atomic(&tmp.join(CALIBRATION), &bytes)?;
    write_atomic(&tmp.join(MANIFEST), text.as_bytes())?;
    write_atomic(&tmp.join(MANIFEST_SUM), xxh3(text.as_bytes()).as_bytes())?;
    replace_dir(&tmp, dir)?;
    Ok(manifest)
}

/// Moves the complete checkpoint directory `src` to `dir`, replacing any checkpoint
/// there. A directory cannot be renamed over a non-empty one, so the old one is moved
/// aside first and removed last: at every moment `dir` is either the old checkpoint or
/// the new one (or, between the two renames, absent while both exist on disk).
pub fn replace_dir(src: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        let old = dir.with_file_name(format!(
            ".{}.old-{}",
            dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            std::process::id()
        ));
        std::fs::rename(dir, &old).map_err(io(dir))?;
        std::fs::rename(src, dir).map_err(io(dir))?;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        std::fs::rename(src, dir).map_err(io(dir))?;
    }
    Ok(())
}

/// A checkpoint whose files all match their checksums, not yet turned into a model.
pub struct Verified {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub weights: Vec<u8>,
    pub optimizer: Vec<u8>,
    /// `calibration.json`, when the manifest lists one.
    pub calibration: Option<Vec<u8>>,
}

/// Reads a checkpoint directory and checks the manifest's own checksum, its format and
/// hash versions, and the size and checksum of every file it lists.
pub fn read_verified(dir: &Path) -> Result<Verified> {
    let bad = |message: String| TrainError::Checkpoint { path: dir.to_path_buf(), message };
    let read = |name: &str| -> Result<Vec<u8>> {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| bad(format!("cannot read {name}: {e}")))
    };
    let text = read(MANIFEST)?;
    let want = read(MANIFEST_SUM)?;
    let want = String::from_utf8_lossy(&want).trim().to_string();
    let got = xxh3(&text);
    if got != want {
        return Err(bad(format!(
            "{MANIFEST} is corrupt or partial: checksum {got} does not match {MANIFEST_SUM} ({want})"
        )));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("{MANIFEST} is not valid JSON: {e}")))?;
    match v.get("format_version").and_then(|f| f.as_u64()) {
        Some(f) if f == FORMAT_VERSION as u64 => {}
        Some(1) => {
            return Err(bad(format!(
                "checkpoint format 1 holds weights only (no optimizer state, data cursor or lineage); \
                 this build reads format {FORMAT_VERSION}: retrain to get a resumable checkpoint"
            )))
        }
        f => return Err(bad(format!("checkpoint format {f:?} (this build reads {FORMAT_VERSION})"))),
    }
    let manifest: Manifest =
        serde_json::from_value(v).map_err(|e| bad(format!("{MANIFEST} is not a valid manifest: {e}")))?;
    if manifest.hash_version != mixrank_data::hash::HASH_VERSION {
        return Err(bad(format!(
            "trained with hash recipe {} but this build hashes with {}",
            manifest.hash_version,
            mixrank_data::hash::HASH_VERSION
        )));
    }
    let check = |name: &str| -> Result<Vec<u8>> {
        let want = manifest.files.get(name).ok_or_else(|| bad(format!("{MANIFEST} does not list {name}")))?;
        let bytes = read(name)?;
        let got = xxh3(&bytes);
        if bytes.len() as u64 != want.bytes || got != want.xxh3 {
            return Err(bad(format!(
                "{name} is corrupt or partial: {} bytes with checksum {got}, the manifest says {} bytes with {}",
                bytes.len(),
                want.bytes,
                want.xxh3
            )));
        }
        Ok(bytes)
    };
    let mut weights = check(WEIGHTS)?;
    let mut optimizer = check(OPTIMIZER)?;
    if let Some(n) = manifest.table_shards {
        let shards: Vec<Vec<u8>> = (0..n).map(|r| check(&shard_file(r, n))).collect::<Result<_>>()?;
        (weights, optimizer) = whole_from_shards(&weights, &optimizer, &shards).map_err(bad)?;
    }
    let calibration = manifest.files.contains_key(CALIBRATION).then(|| check(CALIBRATION)).transpose()?;
    Ok(Verified { dir: dir.to_path_buf(), manifest, weights, optimizer, calibration })
}

/// The whole weights and optimizer files of a checkpoint with sharded tables: the dense
/// files' tensors plus every shard file's tensors put back together
/// ([`whole_tensors`]); tables (`emb.*`) go to the weights, their optimizer state to the
/// optimizer file. The result is the file a job with replicated tables writes (tested
/// byte for byte).
fn whole_from_shards(
    weights: &[u8],
    optimizer: &[u8],
    shards: &[Vec<u8>],
) -> std::result::Result<(Vec<u8>, Vec<u8>), String> {
    let copy = |f: &TensorFile<'_>| -> std::result::Result<Vec<Tensor>, String> {
        f.names()
            .into_iter()
            .map(|name| {
                let t = f.st.tensor(name).map_err(|e| format!("{}: `{name}`: {e}", f.file))?;
                Ok(Tensor {
                    name: name.to_string(),
                    dtype: t.dtype(),
                    shape: t.shape().to_vec(),
                    data: t.data().to_vec(),
                })
            })
            .collect()
    };
    let mut whole_w = copy(&TensorFile::parse(WEIGHTS, weights)?)?;
    let mut whole_o = copy(&TensorFile::parse(OPTIMIZER, optimizer)?)?;
    for whole in whole_tensors(shards)? {
        if whole.name.starts_with("emb.") {
            whole_w.push(whole)
        } else {
            whole_o.push(whole)
        }
    }
    Ok((serialize(&whole_w)?, serialize(&whole_o)?))
}

/// Every tensor of the table shard files `shards` (shard `r` of `N = shards.len()`, as
/// [`ShardedTables::tensors`](crate::sharded_tables::ShardedTables::tensors) writes
/// them) put back together: row `id` from shard `id mod N`, its local row `id / N`. Used
/// for a checkpoint's shard files and for the shards gathered on rank 0 during training.
pub(crate) fn whole_tensors(shards: &[Vec<u8>]) -> std::result::Result<Vec<Tensor>, String> {
    use safetensors::tensor::Dtype;
    let n = shards.len();
    let files: Vec<TensorFile<'_>> =
        shards.iter().map(|b| TensorFile::parse("a table shard file", b)).collect::<std::result::Result<_, _>>()?;
    let Some(first) = files.first() else { return Err("no table shard files".into()) };
    let mut out = Vec::new();
    for name in first.names() {
        let mut parts = Vec::with_capacity(n);
        for (r, f) in files.iter().enumerate() {
            let t = f.st.tensor(name).map_err(|_| format!("{}: `{name}` is missing", shard_file(r, n)))?;
            parts.push(t);
        }
        let (dtype, shape) = (parts[0].dtype(), parts[0].shape().to_vec());
        if !matches!(dtype, Dtype::F32 | Dtype::U32) || shape.is_empty() {
            return Err(format!("{}: `{name}` is {dtype:?} {shape:?}, not a table's rows", shard_file(0, n)));
        }
        let rows: usize = parts.iter().map(|t| t.shape()[0]).sum();
        let width = 4 * shape[1..].iter().product::<usize>();
        for (r, t) in parts.iter().enumerate() {
            let want = crate::sharded_tables::owned_rows(rows, r, n);
            if t.dtype() != dtype || t.shape()[1..] != shape[1..] || t.shape()[0] != want {
                return Err(format!(
                    "{}: `{name}` is {:?} {:?}, expected {dtype:?} with {want} rows of {:?}",
                    shard_file(r, n),
                    t.dtype(),
                    t.shape(),
                    &shape[1..]
                ));
            }
        }
        let mut data = vec![0u8; rows * width];
        for (id, row) in data.chunks_exact_mut(width.max(1)).enumerate() {
            let j = id / n;
            row.copy_from_slice(&parts[id % n].data()[j * width..(j + 1) * width]);
        }
        out.push(Tensor { name: name.to_string(), dtype, shape: [vec![rows], shape[1..].to_vec()].concat(), data });
    }
    Ok(out)
}

impl Verified {
    fn bad(&self, message: String) -> TrainError {
        TrainError::Checkpoint { path: self.dir.clone(), message }
    }

    /// The config the checkpoint was trained with, its learned vocabularies set from the
    /// manifest.
    pub fn config(&self) -> Result<Arc<ExperimentConfig>> {
        let m = &self.manifest;
        let wire =
            toml::from_str(&m.config_toml).map_err(|e| self.bad(format!("stored config does not parse: {e}")))?;
        let base = m.config_path.parent().map(Path::to_path_buf).unwrap_or_default();
        let cfg = ExperimentConfig::from_wire(wire, &m.config_path, &base)?;
        if cfg.learned_tables().is_empty() && m.vocabularies.is_empty() {
            return Ok(Arc::new(cfg));
        }
        let cfg = cfg.with_vocabularies(&m.vocabularies).map_err(|e| self.bad(format!("{MANIFEST}: {e}")))?;
        if let Some(t) = cfg.unbuilt_vocabularies().first() {
            return Err(self.bad(format!("{MANIFEST} stores no vocabulary for the learned table `{t}`")));
        }
        Ok(Arc::new(cfg))
    }

    /// The calibration layer, when the checkpoint has one, checked against `cfg` (the
    /// stored config).
    pub fn calibration(&self, cfg: &ExperimentConfig) -> Result<Option<Arc<Calibration>>> {
        let Some(bytes) = &self.calibration else { return Ok(None) };
        Calibration::parse(cfg, bytes).map(|c| Some(Arc::new(c))).map_err(|m| self.bad(m))
    }

    /// The parsed weights file.
    pub fn weights(&self) -> Result<TensorFile<'_>> {
        TensorFile::parse(WEIGHTS, &self.weights).map_err(|m| self.bad(m))
    }

    /// The parsed optimizer-state file.
    pub fn optimizer(&self) -> Result<TensorFile<'_>> {
        TensorFile::parse(OPTIMIZER, &self.optimizer).map_err(|m| self.bad(m))
    }

    /// Copies the weights into `model` (on any backend, through `ops.write`), which
    /// must be the model the stored config builds: every tensor present with the
    /// model's shape, and no others.
    pub fn fill_model<B: Backend>(&self, ops: &B, model: &mut dyn Model<B>) -> Result<()> {
        let file = self.weights()?;
        let mut expected = HashSet::new();
        let mut err = None;
        let mut fill = |name: String, shape: &[usize], dst: &mut B::Buf| {
            let r = file.f32(&name, shape).and_then(|v| ops.write(&v, dst).map_err(|e| format!("`{name}`: {e}")));
            match r {
                Ok(()) => {
                    expected.insert(name);
                }
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        };
        model.params(&mut |name, p| fill(format!("head.{name}"), &p.shape.clone(), &mut p.value));
        if let Some(emb) = model.embeddings_mut() {
            emb.visit_tables(&mut |name, t| fill(format!("emb.{name}"), &[t.rows, t.dim], &mut t.value));
        }
        if let Some(e) = err {
            return Err(self.bad(e));
        }
        if let Some(extra) = file.names().into_iter().find(|n| !expected.contains(*n)) {
            return Err(self.bad(format!("tensor `{extra}` is not part of the model the stored config builds")));
        }
        Ok(())
    }

    /// Restores the optimizer state of the same model.
    pub fn restore_optimizers<B: Backend>(
        &self,
        ops: &B,
        model: &mut dyn Model<B>,
        optim: &mut Optimizers<B>,
    ) -> Result<()> {
        let file = self.optimizer()?;
        let cfg = self.config()?;
        optim.restore(ops, model, &file, &self.manifest.optimizer, &cfg.train).map_err(|m| self.bad(m))
    }
}

/// A loaded, verified checkpoint.
pub struct Loaded<B: Backend> {
    pub config: Arc<ExperimentConfig>,
    pub model: Box<dyn Model<B>>,
    pub manifest: Manifest,
    /// The calibration layer applied after the model's probabilities, if fitted.
    pub calibration: Option<Arc<Calibration>>,
}

/// Reads and verifies a checkpoint directory and rebuilds its model with workspaces
/// for `max_batch` rows.
pub fn load<B: Backend + 'static>(dir: &Path, ops: &B, max_batch: usize) -> Result<Loaded<B>>
where
    B::Buf: Send,
{
    let v = read_verified(dir)?;
    let config = v.config()?;
    let mut model = build_model(&config, ops, max_batch, &mut rand::rngs::StdRng::seed_from_u64(0))?;
    v.fill_model(ops, &mut *model)?;
    let calibration = v.calibration(&config)?;
    Ok(Loaded { config, model, manifest: v.manifest, calibration })
}
