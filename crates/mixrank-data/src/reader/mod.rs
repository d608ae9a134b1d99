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

/// The columns of a source file with the Arrow type its reader gives them: a Parquet
/// file's schema (footer only); the header (or `columns`) of a CSV file and the label
/// and fields of a libsvm file, all text (`Utf8`).
pub fn source_fields(cfg: &ExperimentConfig, file: &Path) -> Result<Vec<(String, arrow::datatypes::DataType)>> {
    use arrow::datatypes::DataType;
    let text = |names: Vec<String>| names.into_iter().map(|n| (n, DataType::Utf8)).collect();
    match &cfg.data.format {
        SourceFormat::Parquet => {
            Ok(parquet::schema(file)?.fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect())
        }
        SourceFormat::Csv(opts) if opts.header => {
            let mut rdr =
                csv::ReaderBuilder::new().delimiter(opts.delimiter).has_headers(true).from_reader(open_text(file)?);
            let h = rdr.byte_headers().map_err(|e| DataError::Io {
                file: file.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?;
            Ok(text(h.iter().map(|c| String::from_utf8_lossy(c).trim().to_string()).collect()))
        }
        SourceFormat::Csv(opts) => Ok(text(opts.columns.clone().unwrap_or_default())),
        SourceFormat::Libsvm(opts) => {
            Ok(text(std::iter::once(opts.label.clone()).chain(opts.fields.iter().cloned()).collect()))
        }
    }
}

/// Source columns carried unchanged beside the encoded rows
/// ([`Encoder::with_passthrough`]), with the one Arrow type every file of a split gives
/// each of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Passthrough {
    pub fields: Vec<(String, arrow::datatypes::DataType)>,
}

impl Passthrough {
    /// Checks, before any row is read (footers and headers only), that every file of
    /// `split` has each of `columns` and gives it one type: a missing column is
    /// [`DataError::MissingColumn`] naming the file, a type that differs between files
    /// [`DataError::WrongType`] naming the second file.
    pub fn plan(cfg: &ExperimentConfig, split: &Split, columns: &[String]) -> Result<Passthrough> {
        let mut fields: Vec<(String, arrow::datatypes::DataType)> = Vec::new();
        let mut first: Option<PathBuf> = None;
        for file in split_files(split)? {
            let have = source_fields(cfg, &file)?;
            for (k, c) in columns.iter().enumerate() {
                let Some((_, t)) = have.iter().find(|(n, _)| n == c) else {
                    let available: Vec<&str> = have.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(DataError::MissingColumn { file, column: c.clone(), available: available.join(", ") });
                };
                match fields.get(k) {
                    None => fields.push((c.clone(), t.clone())),
                    Some((_, t0)) if t0 == t => {}
                    Some((_, t0)) => {
                        let first = first.as_deref().unwrap_or(Path::new("")).display().to_string();
                        return Err(DataError::WrongType {
                            file,
                            column: c.clone(),
                            expected: format!("{t0} (its type in {first})"),
                            found: t.to_string(),
                        });
                    }
                }
            }
            first.get_or_insert(file);
        }
        Ok(Passthrough { fields })
    }

    /// The carried columns' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.fields.iter().map(|(n, _)| n.clone()).collect()
    }
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
