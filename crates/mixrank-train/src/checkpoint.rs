//! Checkpoints: the model's weights in safetensors plus a JSON manifest (format
//! version, the full config, the hash recipe version, dense statistics, progress,
//! lineage and the weights' checksum), verified on load.
//!
//! Layout of a checkpoint directory:
//! - `weights.safetensors`: every dense parameter as `head.<path>` and every embedding
//!   table as `emb.tables.<i>`, f32;
//! - `manifest.json`: [`Manifest`].
//!
//! Writes go to temporary names and are renamed into place, the manifest last: a crash
//! leaves either the old checkpoint or weights whose checksum the (old) manifest does
//! not match, which [`load`] refuses. Optimizer state is not saved yet.

use crate::error::{write_atomic, Result, TrainError};
use mixrank_data::stats::DenseStats;
use mixrank_data::ExperimentConfig;
use mixrank_engine::CpuOps;
use mixrank_model::RankingModel;
use mixrank_nn::Parameters;
use rand::SeedableRng;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Version of the checkpoint layout.
pub const FORMAT_VERSION: u32 = 1;
const WEIGHTS: &str = "weights.safetensors";
const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// Checkpoint this one was warm-started from.
    pub parent: Option<String>,
    /// "batch" or "incremental".
    pub stage: String,
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
    pub step: u64,
    pub examples: u64,
    pub lineage: Lineage,
    /// XXH3-64 of `weights.safetensors`, hex.
    pub weights_xxh3: String,
    pub tensors: usize,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Everything a checkpoint records besides the weights.
pub struct CheckpointInfo<'a> {
    pub config: &'a ExperimentConfig,
    pub dense_stats: &'a DenseStats,
    pub step: u64,
    pub examples: u64,
    pub lineage: Lineage,
}

/// Writes `model` into the checkpoint directory `dir` (created if needed).
pub fn save(dir: &Path, model: &mut RankingModel<CpuOps>, info: &CheckpointInfo<'_>) -> Result<Manifest> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    model.params(&mut |name, p| tensors.push((format!("head.{name}"), p.shape.clone(), to_bytes(&p.value[..p.len()]))));
    if let Some(emb) = &mut model.emb {
        emb.visit_tables(&mut |name, t| {
            tensors.push((format!("emb.{name}"), vec![t.rows, t.dim], to_bytes(&t.value[..t.rows * t.dim])))
        });
    }
    let views = tensors
        .iter()
        .map(|(n, shape, data)| Ok((n.clone(), TensorView::new(Dtype::F32, shape.clone(), data)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| TrainError::Other(format!("building checkpoint tensors: {e}")))?;
    let bytes =
        safetensors::serialize(views, None).map_err(|e| TrainError::Other(format!("serializing weights: {e}")))?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        created_by: format!("mixrank {}", env!("CARGO_PKG_VERSION")),
        config_toml: toml::to_string(&info.config.wire)
            .map_err(|e| TrainError::Other(format!("config to TOML: {e}")))?,
        config_path: std::path::absolute(&info.config.path).unwrap_or_else(|_| info.config.path.clone()),
        hash_version: mixrank_data::hash::HASH_VERSION,
        dense_stats: info.dense_stats.clone(),
        step: info.step,
        examples: info.examples,
        lineage: info.lineage.clone(),
        weights_xxh3: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)),
        tensors: tensors.len(),
    };
    write_atomic(&dir.join(WEIGHTS), &bytes)?;
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| TrainError::Other(e.to_string()))?;
    write_atomic(&dir.join(MANIFEST), text.as_bytes())?;
    Ok(manifest)
}

/// A loaded, verified checkpoint.
pub struct Loaded {
    pub config: Arc<ExperimentConfig>,
    pub model: RankingModel<CpuOps>,
    pub manifest: Manifest,
}

/// Reads and verifies a checkpoint directory and rebuilds its model with workspaces
/// for `max_batch` rows.
pub fn load(dir: &Path, ops: &CpuOps, max_batch: usize) -> Result<Loaded> {
    let bad = |message: String| TrainError::Other(format!("{}: {message}", dir.display()));
    let mpath = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&mpath).map_err(io(&mpath))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| bad(format!("{MANIFEST} is not a valid manifest: {e}")))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(bad(format!("checkpoint format {} (this build reads {FORMAT_VERSION})", manifest.format_version)));
    }
    if manifest.hash_version != mixrank_data::hash::HASH_VERSION {
        return Err(bad(format!(
            "trained with hash recipe {} but this build hashes with {}",
            manifest.hash_version,
            mixrank_data::hash::HASH_VERSION
        )));
    }
    let wpath = dir.join(WEIGHTS);
    let bytes = std::fs::read(&wpath).map_err(io(&wpath))?;
    let sum = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes));
    if sum != manifest.weights_xxh3 {
        return Err(bad(format!(
            "{WEIGHTS} is corrupt or partial: checksum {sum} does not match the manifest's {}",
            manifest.weights_xxh3
        )));
    }
    let wire = toml::from_str(&manifest.config_toml).map_err(|e| bad(format!("stored config does not parse: {e}")))?;
    let base = manifest.config_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let config = Arc::new(ExperimentConfig::from_wire(wire, &manifest.config_path, &base)?);
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("{WEIGHTS}: {e}")))?;
    let mut model = RankingModel::new(&config, ops, max_batch, &mut rand::rngs::StdRng::seed_from_u64(0))?;
    let mut expected: HashMap<String, Vec<usize>> = HashMap::new();
    let mut missing = None;
    let mut fill = |name: String, shape: &[usize], dst: &mut [f32]| match st.tensor(&name) {
        Ok(t) if t.dtype() == Dtype::F32 && t.shape() == shape => {
            for (d, c) in dst.iter_mut().zip(t.data().chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            expected.insert(name, shape.to_vec());
        }
        Ok(t) => {
            missing.get_or_insert(format!(
                "tensor `{name}` has {:?} {:?}, the model wants F32 {shape:?}",
                t.dtype(),
                t.shape()
            ));
        }
        Err(_) => {
            missing.get_or_insert(format!("tensor `{name}` is missing"));
        }
    };
    model.params(&mut |name, p| {
        let n = p.len();
        fill(format!("head.{name}"), &p.shape.clone(), &mut p.value[..n]);
    });
    if let Some(emb) = &mut model.emb {
        emb.visit_tables(&mut |name, t| {
            let n = t.rows * t.dim;
            fill(format!("emb.{name}"), &[t.rows, t.dim], &mut t.value[..n]);
        });
    }
    if let Some(m) = missing {
        return Err(bad(m));
    }
    if let Some(extra) = st.names().into_iter().find(|n| !expected.contains_key(*n)) {
        return Err(bad(format!("tensor `{extra}` is not part of the model the stored config builds")));
    }
    Ok(Loaded { config, model, manifest })
}
