//! `mixrank embed-items`: every item's per-task embeddings from a two-tower run's item
//! tower, into an [`crate::item_table`] directory.
//!
//! The items file (Parquet) is read in batches of `batch` rows, projected on the item
//! tower's feature columns and the id column, so memory stays bounded by one batch
//! (plus the id set that catches duplicates); each batch is encoded by the training
//! `Encoder` with the checkpoint's statistics (the user tower's columns as nulls: only
//! the item tower runs) and its rows streamed to the table, which is written to a
//! temporary directory and renamed into place at the end (a failure leaves no `--out`).

use crate::error::{Result, ServeError};
use crate::item_table::{ItemId, ItemTableError, TableManifest, TableWriter, FORMAT_VERSION};
use crate::session::InferenceSession;
use arrow::array::{Array, ArrayRef};
use mixrank_data::column::{Col, Key};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `embed-items` is asked to do besides the run and the files.
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    /// Rows per batch read and per item-tower forward.
    pub batch: usize,
    /// Column of the item ids; default: the item tower's first categorical feature's column.
    pub id_column: Option<String>,
    /// Replace an existing `out`.
    pub overwrite: bool,
}

/// What a finished `embed-items` wrote.
#[derive(Debug, Clone)]
pub struct EmbedSummary {
    pub out: PathBuf,
    pub manifest: TableManifest,
    /// Wall time of reading, encoding, the item tower and writing.
    pub seconds: f64,
}

/// Embeds every row of `items` with `session`'s item tower into `out`; `progress(done,
/// total)` is called after each batch.
pub fn embed_items(
    session: &InferenceSession,
    items: &Path,
    out: &Path,
    opts: &EmbedOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EmbedSummary> {
    let t0 = Instant::now();
    let cfg = &session.config;
    let towers = session.towers.as_ref().ok_or_else(|| ItemTableError::NotTwoTower {
        run: session.run_dir.clone(),
        architecture: cfg.model.as_ref().map_or("single_task".into(), |m| {
            serde_json::to_value(m.architecture).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
        }),
    })?;
    let id_column = match &opts.id_column {
        Some(c) => c.clone(),
        None => default_id_column(session).ok_or_else(|| {
            ServeError::from(ItemTableError::BadRow {
                file: items.to_path_buf(),
                message: "the item tower reads no categorical feature to take ids from; pass --id-column".into(),
            })
        })?,
    };
    let ioe = |source| ServeError::from(ItemTableError::Io { path: items.to_path_buf(), source });
    let pq = |e: parquet::errors::ParquetError| {
        ServeError::from(ItemTableError::Format { path: items.to_path_buf(), message: e.to_string() })
    };
    let file = std::fs::File::open(items).map_err(ioe)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq)?;
    let schema = builder.schema().clone();
    let found: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let missing = |column: &str, why: &str| ItemTableError::MissingColumn {
        file: items.to_path_buf(),
        column: column.to_string(),
        why: why.to_string(),
        found: found.clone(),
    };
    if !found.contains(&id_column) {
        return Err(missing(&id_column, "the item ids").into());
    }
    if let Some(c) = towers.item.iter().find(|c| !found.contains(c)) {
        return Err(missing(c, "read by the item tower").into());
    }
    let wanted: Vec<usize> = found
        .iter()
        .enumerate()
        .filter(|(_, c)| towers.item.contains(*c) || **c == id_column)
        .map(|(i, _)| i)
        .collect();
    let total = builder.metadata().file_metadata().num_rows().max(0) as usize;
    let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
    let reader = builder.with_projection(mask).with_batch_size(opts.batch.max(1)).build().map_err(pq)?;

    let tasks = session.tasks();
    let manifest = TableManifest {
        format_version: FORMAT_VERSION,
        checkpoint: session.identity.clone(),
        tasks: tasks.clone(),
        dim: towers.dim,
        items: total,
        id_column: id_column.clone(),
        files: BTreeMap::new(),
    };
    let bias = session.score_bias()?;
    let mut writer = TableWriter::create(out, opts.overwrite, manifest, &bias, items)?;
    let enc = session.encoder();
    let bad = |message: String| ServeError::from(ItemTableError::BadRow { file: items.to_path_buf(), message });
    for rb in reader {
        let rb = rb.map_err(|e| bad(e.to_string()))?;
        let (n, first) = (rb.num_rows(), writer.rows() as u64);
        let arrays: Vec<ArrayRef> = enc
            .column_names()
            .iter()
            .enumerate()
            .map(|(i, name)| match rb.column_by_name(name) {
                Some(c) if towers.item.contains(name) => c.clone(),
                _ => enc.absent(i, n),
            })
            .collect();
        let at = |column: &str, row: Option<u64>| match row {
            Some(r) => format!("row {}, column {column}", first + r),
            None => format!("column {column}"),
        };
        let batch = enc.encode_arrays(arrays, n, &at).map_err(|e| bad(e.to_string()))?;
        let ids = ids_of(rb.column_by_name(&id_column).expect("projected"), &id_column, first).map_err(bad)?;
        let emb = session.embed_items(&batch)?;
        writer.push(ids, &emb)?;
        progress(writer.rows(), total);
    }
    let manifest = writer.finish()?;
    Ok(EmbedSummary { out: out.to_path_buf(), manifest, seconds: t0.elapsed().as_secs_f64() })
}

/// The item tower's first categorical feature's source column (the simulator's `ad_id`).
pub fn default_id_column(session: &InferenceSession) -> Option<String> {
    let inputs = session.config.inputs.as_ref()?.two_tower.as_ref()?;
    inputs.item.features().into_iter().find_map(|f| match f {
        mixrank_data::config::groups::FeatureRef::Categorical(i) => Some(session.config.categorical[i].column.clone()),
        mixrank_data::config::groups::FeatureRef::Dense(_) => None,
    })
}

/// The ids of one batch, read through the data pipeline's [`Col`]: an integer column
/// (32- or 64-bit, signed or not) as integers, a string column (plain, large, view or
/// dictionary) as strings; other types (floats, booleans, lists, 8/16-bit integers) and
/// nulls are refused, a null naming its row.
fn ids_of(a: &ArrayRef, column: &str, first: u64) -> std::result::Result<Vec<ItemId>, String> {
    let refused = || format!("the id column {column} is {}; expected integers or strings", a.data_type());
    let col = Col::from_arrow(a).map_err(|_| refused())?;
    if !col.is_key_type() || matches!(col, Col::Bool(_)) {
        return Err(refused());
    }
    (0..a.len())
        .map(|r| {
            if a.is_null(r) {
                return Err(format!("row {}: the id column {column} is null", first + r as u64));
            }
            Ok(match col.key(r).map_err(|e| format!("row {}: the id column {column}: {e}", first + r as u64))? {
                Key::Int(v) => ItemId::Int(v),
                Key::Bytes(b) | Key::Hashed(_, b) => ItemId::Str(String::from_utf8_lossy(b).into_owned()),
            })
        })
        .collect()
}
