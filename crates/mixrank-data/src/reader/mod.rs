//! Readers: list a split's files, cut them into units of work (a Parquet row group, a
//! text file), and decode a unit into encoded chunks.

mod libsvm;
mod parquet;
mod text;

use crate::batch::Batch;
use crate::config::{ExperimentConfig, SourceFormat, Split};
use crate::encode::{BadRows, Encoder};
use crate::error::{DataError, Result};
use std::path::{Path, PathBuf};

/// The smallest piece of input one decode thread handles, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub file: PathBuf,
    /// Parquet: the row group; text formats: None (the whole file).
    pub row_group: Option<usize>,
    /// Rows in the unit when known up front (Parquet).
    pub rows: Option<u64>,
}

/// Files of a split: globs expanded, day filter applied, sorted, deduplicated.
pub fn split_files(split: &Split) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for pat in &split.patterns {
        let paths =
            glob::glob(pat).map_err(|e| DataError::Other(format!("split `{}`: bad glob {pat:?}: {e}", split.name)))?;
        for p in paths {
            let p = p.map_err(|e| DataError::Io {
                file: e.path().to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?;
            if p.is_file() {
                files.push(p);
            }
        }
    }
    if let Some((from, to)) = &split.days {
        files.retain(|f| day_of(f).is_some_and(|d| from.as_str() <= d && d <= to.as_str()));
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        let days = split.days.as_ref().map(|(a, b)| format!(" within days {a}..={b}")).unwrap_or_default();
        return Err(DataError::NoFiles { split: split.name.clone(), patterns: format!("{:?}{days}", split.patterns) });
    }
    Ok(files)
}

/// The `YYYY-MM-DD` of the innermost `day=YYYY-MM-DD` directory in a path.
pub fn day_of(path: &Path) -> Option<&str> {
    path.components().rev().find_map(|c| {
        let s = c.as_os_str().to_str()?;
        let d = s.strip_prefix("day=")?;
        crate::config::is_day(d).then_some(d)
    })
}

/// Cuts a split into units. Parquet files are opened (footer only) to count row groups,
/// so a truncated file fails here, before training starts.
pub fn plan_units(cfg: &ExperimentConfig, split: &Split) -> Result<Vec<Unit>> {
    let mut units = Vec::new();
    for file in split_files(split)? {
        let len = std::fs::metadata(&file).map_err(|source| DataError::Io { file: file.clone(), source })?.len();
        if len == 0 {
            return Err(DataError::EmptyFile { file, expected: expected_content(&cfg.data.format) });
        }
        match cfg.data.format {
            SourceFormat::Parquet => {
                for (g, rows) in parquet::row_groups(&file)?.into_iter().enumerate() {
                    units.push(Unit { file: file.clone(), row_group: Some(g), rows: Some(rows) });
                }
            }
            _ => units.push(Unit { file, row_group: None, rows: None }),
        }
    }
    Ok(units)
}

fn expected_content(f: &SourceFormat) -> &'static str {
    match f {
        SourceFormat::Parquet => "a Parquet file",
        SourceFormat::Csv(_) => "a header or data rows",
        SourceFormat::Libsvm(_) => "libsvm lines `label idx:val ...`",
    }
}

/// Decodes one unit, calling `emit` with each encoded chunk (at most `chunk_rows`
/// rows before the split's row filter). `emit` returns false to stop early.
pub fn decode_unit(
    enc: &Encoder,
    unit: &Unit,
    fraction: Option<(f64, f64)>,
    bad: &BadRows,
    emit: &mut dyn FnMut(Batch) -> bool,
) -> Result<()> {
    match &enc.config().data.format {
        SourceFormat::Parquet => parquet::decode(enc, unit, fraction, bad, emit),
        SourceFormat::Csv(opts) => text::decode_csv(enc, opts, &unit.file, fraction, bad, emit),
        SourceFormat::Libsvm(opts) => libsvm::decode(enc, opts, &unit.file, fraction, bad, emit),
    }
}

/// Hash of a file's name (not its directory), for row-fraction splits and default
/// request ids.
pub(crate) fn file_key(file: &Path) -> u64 {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parent =
        file.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    crate::hash::hash_bytes(format!("{parent}/{name}").as_bytes())
}

/// Opens a text file, transparently gunzipping `*.gz`.
pub(crate) fn open_text(file: &Path) -> Result<Box<dyn std::io::Read + Send>> {
    let f = std::fs::File::open(file).map_err(|source| DataError::Io { file: file.to_path_buf(), source })?;
    if file.extension().is_some_and(|e| e == "gz") {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::with_capacity(1 << 16, f))))
    } else {
        Ok(Box::new(f))
    }
}
