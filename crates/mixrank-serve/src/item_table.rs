//! The cached item-embedding table of a two-tower model: what `mixrank embed-items`
//! writes and `mixrank serve --items` loads beside the model.
//!
//! ```text
//! DIR/
//!   manifest.json           format version, the checkpoint's identity, tasks, dim, item count,
//!                           id column, size and XXH3 of the two files below
//!   embeddings.safetensors  `bias` [n_tasks] (score.<t>.bias), `embeddings` [n_items, n_tasks, dim] f32
//!   ids.json                the item ids, a JSON array in row order (integers or strings)
//! ```
//!
//! An item's row holds all of its tasks' embeddings side by side (`[n_tasks, dim]`), so
//! the writer streams rows batch by batch and the server's gather reads one contiguous
//! run per item. The table is tied to the checkpoint whose item tower computed it by
//! the checkpoint's identity, the XXH3 of its weights file (what `model_version`'s
//! `#` suffix abbreviates): a server refuses a table of another checkpoint, naming both.
//! Written to a temporary directory beside `DIR` and renamed into place.

use crate::error::{Result, ServeError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Version of this on-disk format.
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const EMBEDDINGS: &str = "embeddings.safetensors";
pub const IDS: &str = "ids.json";

/// The checkpoint an item table was computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointIdentity {
    /// XXH3-64 (hex) of the checkpoint's weights file: the identity compared.
    pub weights_xxh3: String,
    /// The run directory's name and the checkpoint's step (for messages).
    pub run: String,
    pub step: u64,
}

impl std::fmt::Display for CheckpointIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{} (weights {})", self.run, self.step, self.weights_xxh3)
    }
}

/// Size and XXH3-64 (hex) of one file of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableFile {
    pub bytes: u64,
    pub xxh3: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableManifest {
    pub format_version: u32,
    pub checkpoint: CheckpointIdentity,
    /// The model's tasks, in embedding order.
    pub tasks: Vec<String>,
    pub dim: usize,
    pub items: usize,
    /// Source column of the ids in the items file.
    pub id_column: String,
    pub files: BTreeMap<String, TableFile>,
}

/// An item id: the id column's integer or string value. A request names an item with
/// the JSON type of the column (`123` and `"123"` are different ids).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ItemId {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for ItemId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ItemId::Int(v) => write!(f, "{v}"),
            ItemId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl ItemId {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ItemId::Int(v) => (*v).into(),
            ItemId::Str(s) => s.clone().into(),
        }
    }
}

/// A loaded, verified table.
#[derive(Debug)]
pub struct ItemTable {
    pub dir: PathBuf,
    pub manifest: TableManifest,
    ids: Vec<ItemId>,
    index: HashMap<ItemId, u32>,
    /// `[n_items, n_tasks, dim]`.
    embeddings: Vec<f32>,
    /// `[n_tasks]`.
    bias: Vec<f32>,
}

/// The errors of writing and loading a table.
#[derive(Debug, thiserror::Error)]
pub enum ItemTableError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A file that is not a table of this format (named), or fails its checksum.
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    /// The table was computed by another checkpoint than the model's.
    #[error(
        "{}: the item table was computed from checkpoint {table}, but the model is checkpoint {model}; \
         run `mixrank embed-items` on this model's run",
        dir.display()
    )]
    OtherCheckpoint { dir: PathBuf, table: Box<CheckpointIdentity>, model: Box<CheckpointIdentity> },
    /// The table's tasks or width differ from the model's.
    #[error("{}: {message}", dir.display())]
    Shape { dir: PathBuf, message: String },
    /// `embed-items` on a model without an item tower.
    #[error(
        "{}: architecture {architecture:?} is not a two-tower model; embed-items needs a run trained with \
         architecture = \"two_tower\" (configs/models/two_tower.toml)",
        run.display()
    )]
    NotTwoTower { run: PathBuf, architecture: String },
    /// A column the item tower (or the id) needs is not in the items file.
    #[error("{}: no column {column:?} ({why}); the file has: {}", file.display(), found.join(", "))]
    MissingColumn { file: PathBuf, column: String, why: String, found: Vec<String> },
    /// The same id twice in the items file.
    #[error("{}: item id {id} appears twice (rows {first} and {second}); ids must be unique", file.display())]
    DuplicateId { file: PathBuf, id: ItemId, first: u64, second: u64 },
    /// An id cell that is null or of an unsupported type, or a bad feature value.
    #[error("{}: {message}", file.display())]
    BadRow { file: PathBuf, message: String },
    /// `--out` exists.
    #[error("{}: already exists; pass --overwrite to replace it", out.display())]
    Exists { out: PathBuf },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ItemTableError + '_ {
    move |source| ItemTableError::Io { path: path.to_path_buf(), source }
}

impl ItemTable {
    /// Loads `dir` and verifies its format version and both files' sizes and checksums.
    pub fn load(dir: &Path) -> Result<Self, ItemTableError> {
        let mpath = dir.join(MANIFEST);
        let format = |path: &Path, message: String| ItemTableError::Format { path: path.to_path_buf(), message };
        let text = std::fs::read(&mpath).map_err(io(&mpath))?;
        let manifest: TableManifest = serde_json::from_slice(&text)
            .map_err(|e| format(&mpath, format!("not an item table manifest (mixrank embed-items writes one): {e}")))?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(format(
                &mpath,
                format!("item table format {} (this mixrank reads format {FORMAT_VERSION})", manifest.format_version),
            ));
        }
        let read = |name: &str| -> Result<Vec<u8>, ItemTableError> {
            let path = dir.join(name);
            let sum = manifest.files.get(name).ok_or_else(|| format(&mpath, format!("lists no {name}")))?;
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            if bytes.len() as u64 != sum.bytes || mixrank_train::checkpoint::xxh3(&bytes) != sum.xxh3 {
                return Err(format(
                    &path,
                    format!(
                        "size or checksum differs from the manifest ({} bytes, expected {}): a partial or altered table",
                        bytes.len(),
                        sum.bytes
                    ),
                ));
            }
            Ok(bytes)
        };
        let (n, t, d) = (manifest.items, manifest.tasks.len(), manifest.dim);
        let epath = dir.join(EMBEDDINGS);
        let bytes = read(EMBEDDINGS)?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| format(&epath, e.to_string()))?;
        let tensor = |name: &str, shape: &[usize]| -> Result<Vec<f32>, ItemTableError> {
            let v = st.tensor(name).map_err(|e| format(&epath, format!("tensor {name}: {e}")))?;
            if v.dtype() != safetensors::Dtype::F32 || v.shape() != shape {
                return Err(format(
                    &epath,
                    format!("tensor {name}: {:?} {:?}, expected F32 {shape:?}", v.dtype(), v.shape()),
                ));
            }
            Ok(v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        };
        let embeddings = tensor("embeddings", &[n, t, d])?;
        let bias = tensor("bias", &[t])?;
        let ipath = dir.join(IDS);
        let ids: Vec<ItemId> =
            serde_json::from_slice(&read(IDS)?).map_err(|e| format(&ipath, format!("not a list of ids: {e}")))?;
        if ids.len() != n {
            return Err(format(&ipath, format!("{} ids for {n} items", ids.len())));
        }
        let mut index = HashMap::with_capacity(n);
        for (r, id) in ids.iter().enumerate() {
            if index.insert(id.clone(), r as u32).is_some() {
                return Err(format(&ipath, format!("item id {id} appears twice")));
            }
        }
        Ok(ItemTable { dir: dir.to_path_buf(), manifest, ids, index, embeddings, bias })
    }

    /// Refuses a table that is not `model`'s (another checkpoint, other tasks or width).
    pub fn check_model(&self, model: &CheckpointIdentity, tasks: &[String], dim: usize) -> Result<(), ItemTableError> {
        let m = &self.manifest;
        if m.checkpoint.weights_xxh3 != model.weights_xxh3 {
            return Err(ItemTableError::OtherCheckpoint {
                dir: self.dir.clone(),
                table: Box::new(m.checkpoint.clone()),
                model: Box::new(model.clone()),
            });
        }
        if m.tasks != tasks || m.dim != dim {
            return Err(ItemTableError::Shape {
                dir: self.dir.clone(),
                message: format!(
                    "table has tasks [{}] of dim {}, the model [{}] of dim {dim}",
                    m.tasks.join(", "),
                    m.dim,
                    tasks.join(", ")
                ),
            });
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The row of `id`, if the table has it.
    pub fn row(&self, id: &ItemId) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// The ids in row order.
    pub fn ids(&self) -> &[ItemId] {
        &self.ids
    }

    /// Every row's embeddings, `[n_items, n_tasks, dim]`.
    pub fn embeddings(&self) -> &[f32] {
        &self.embeddings
    }

    /// Per task: the score bias stored beside the embeddings (the model's `score.<t>.bias`).
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Row `row`'s embedding for task `t`, `[dim]`.
    pub fn embedding(&self, row: u32, t: usize) -> &[f32] {
        let (nt, d) = (self.manifest.tasks.len(), self.manifest.dim);
        let at = (row as usize * nt + t) * d;
        &self.embeddings[at..at + d]
    }
}

/// Streams a table to a temporary directory beside `out` and renames it into place on
/// [`TableWriter::finish`]; dropped unfinished, it removes the temporary directory.
pub struct TableWriter {
    out: PathBuf,
    tmp: PathBuf,
    emb: std::io::BufWriter<std::fs::File>,
    emb_hash: xxhash_rust::xxh3::Xxh3,
    emb_bytes: u64,
    ids: Vec<ItemId>,
    /// First row of each id, to name both rows of a duplicate.
    seen: HashMap<ItemId, u64>,
    manifest: TableManifest,
    file: PathBuf,
    done: bool,
}

impl TableWriter {
    /// Starts a table of exactly `items` rows (known up front from the Parquet footer,
    /// so the safetensors header can be written first and rows streamed after it).
    pub fn create(
        out: &Path,
        overwrite: bool,
        manifest: TableManifest,
        bias: &[f32],
        source_file: &Path,
    ) -> Result<Self, ItemTableError> {
        if out.exists() && !overwrite {
            return Err(ItemTableError::Exists { out: out.to_path_buf() });
        }
        let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "items".into());
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let epath = tmp.join(EMBEDDINGS);
        let f = std::fs::File::create(&epath).map_err(io(&epath))?;
        let mut w = TableWriter {
            out: out.to_path_buf(),
            tmp,
            emb: std::io::BufWriter::with_capacity(1 << 20, f),
            emb_hash: xxhash_rust::xxh3::Xxh3::new(),
            emb_bytes: 0,
            ids: Vec::with_capacity(manifest.items),
            seen: HashMap::with_capacity(manifest.items),
            manifest,
            file: source_file.to_path_buf(),
            done: false,
        };
        let (n, t, d) = (w.manifest.items, w.manifest.tasks.len(), w.manifest.dim);
        let bias_bytes = 4 * t;
        let emb_len = 4 * n * t * d;
        let header = serde_json::json!({
            "bias": {"dtype": "F32", "shape": [t], "data_offsets": [0, bias_bytes]},
            "embeddings": {"dtype": "F32", "shape": [n, t, d], "data_offsets": [bias_bytes, bias_bytes + emb_len]},
        })
        .to_string();
        // The header is padded with spaces to a multiple of 8 bytes (safetensors' alignment).
        let mut header = header.into_bytes();
        header.resize(header.len().div_ceil(8) * 8, b' ');
        w.put(&(header.len() as u64).to_le_bytes())?;
        w.put(&header)?;
        w.put_f32(bias)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), ItemTableError> {
        self.emb.write_all(bytes).map_err(|e| ItemTableError::Io { path: self.tmp.join(EMBEDDINGS), source: e })?;
        self.emb_hash.update(bytes);
        self.emb_bytes += bytes.len() as u64;
        Ok(())
    }

    fn put_f32(&mut self, v: &[f32]) -> Result<(), ItemTableError> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.put(&bytes)
    }

    /// Appends rows: their ids and their embeddings `[rows, n_tasks, dim]`. A duplicate
    /// id is refused naming it and both rows.
    pub fn push(&mut self, ids: Vec<ItemId>, embeddings: &[f32]) -> Result<(), ItemTableError> {
        let row_len = self.manifest.tasks.len() * self.manifest.dim;
        if embeddings.len() != ids.len() * row_len {
            return Err(ItemTableError::BadRow {
                file: self.file.clone(),
                message: format!("{} embedding floats for {} ids", embeddings.len(), ids.len()),
            });
        }
        for id in ids {
            let row = self.ids.len() as u64;
            if let Some(&first) = self.seen.get(&id) {
                return Err(ItemTableError::DuplicateId { file: self.file.clone(), id, first, second: row });
            }
            self.seen.insert(id.clone(), row);
            self.ids.push(id);
        }
        if self.ids.len() > self.manifest.items {
            return Err(ItemTableError::BadRow {
                file: self.file.clone(),
                message: format!("more rows than the {} its footer declares", self.manifest.items),
            });
        }
        self.put_f32(embeddings)
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// Writes the ids and the manifest, syncs, and renames the directory to `out`.
    pub fn finish(mut self) -> Result<TableManifest, ItemTableError> {
        if self.ids.len() != self.manifest.items {
            return Err(ItemTableError::BadRow {
                file: self.file.clone(),
                message: format!("read {} rows, its footer declares {}", self.ids.len(), self.manifest.items),
            });
        }
        let epath = self.tmp.join(EMBEDDINGS);
        self.emb.flush().map_err(io(&epath))?;
        self.emb.get_ref().sync_all().map_err(io(&epath))?;
        let emb_sum = TableFile { bytes: self.emb_bytes, xxh3: format!("{:016x}", self.emb_hash.digest()) };
        let ids = serde_json::to_vec(&self.ids)
            .map_err(|e| ItemTableError::Format { path: self.tmp.join(IDS), message: e.to_string() })?;
        let ipath = self.tmp.join(IDS);
        std::fs::write(&ipath, &ids).map_err(io(&ipath))?;
        let mut manifest = self.manifest.clone();
        manifest.files.insert(EMBEDDINGS.into(), emb_sum);
        manifest
            .files
            .insert(IDS.into(), TableFile { bytes: ids.len() as u64, xxh3: mixrank_train::checkpoint::xxh3(&ids) });
        let mpath = self.tmp.join(MANIFEST);
        let text = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| ItemTableError::Format { path: mpath.clone(), message: e.to_string() })?;
        std::fs::write(&mpath, text).map_err(io(&mpath))?;
        mixrank_train::checkpoint::replace_dir(&self.tmp, &self.out)
            .map_err(|e| ItemTableError::Format { path: self.out.clone(), message: e.to_string() })?;
        self.done = true;
        Ok(manifest)
    }
}

impl Drop for TableWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

impl From<ItemTableError> for ServeError {
    fn from(e: ItemTableError) -> Self {
        ServeError::ItemTable(Box::new(e))
    }
}

/// Loads `dir` and checks it against the model's identity, tasks and width.
pub fn load_for(
    dir: &Path,
    model: &CheckpointIdentity,
    tasks: &[String],
    dim: usize,
) -> Result<std::sync::Arc<ItemTable>> {
    let t = ItemTable::load(dir)?;
    t.check_model(model, tasks, dim)?;
    Ok(std::sync::Arc::new(t))
}
