//! CSV / TSV (with or without a header; Criteo's TSV has none), streamed in chunks.

use super::{file_key, open_text};
use crate::batch::Batch;
use crate::column::Col;
use crate::config::CsvOptions;
use crate::encode::{BadRows, ChunkOrigin, Encoder};
use crate::error::{DataError, Location, Result};
use std::path::Path;

/// Maps each required column to its index in the file's records.
pub(super) fn column_positions(enc: &Encoder, file: &Path, header: &[String]) -> Result<Vec<usize>> {
    enc.column_names()
        .iter()
        .map(|n| {
            header.iter().position(|h| h == n).ok_or_else(|| DataError::MissingColumn {
                file: file.to_path_buf(),
                column: n.clone(),
                available: header.join(", "),
            })
        })
        .collect()
}

/// A chunk of parsed text records and where they came from.
pub(super) struct TextChunk<'a> {
    pub file: &'a Path,
    /// Index of each required column within a record.
    pub pos: &'a [usize],
    pub records: &'a [csv::ByteRecord],
    /// 1-based line of each record.
    pub lines: &'a [u64],
    /// Row index within the file of the first record.
    pub first_row: u64,
    /// Separator inside multi-valued cells.
    pub sep: u8,
}

impl TextChunk<'_> {
    pub(super) fn encode(&self, enc: &Encoder, fraction: Option<(f64, f64)>, bad: &BadRows) -> Result<Batch> {
        let cols: Vec<Col<'_>> =
            self.pos.iter().map(|&idx| Col::Text { records: self.records, idx, sep: self.sep }).collect();
        let origin = ChunkOrigin {
            file: self.file,
            file_key: file_key(self.file),
            first_row: self.first_row,
            row_group: None,
            lines: Some(self.lines),
        };
        enc.encode(&cols, self.records.len(), &origin, fraction, bad)
    }
}

pub(super) fn decode_csv(
    enc: &Encoder,
    opts: &CsvOptions,
    file: &Path,
    fraction: Option<(f64, f64)>,
    bad: &BadRows,
    emit: &mut dyn FnMut(Batch) -> bool,
) -> Result<()> {
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(opts.delimiter)
        .has_headers(opts.header)
        .flexible(true)
        .buffer_capacity(1 << 16)
        .from_reader(open_text(file)?);
    let csv_err = |e: csv::Error| match e.kind() {
        csv::ErrorKind::Io(_) => {
            DataError::Io { file: file.to_path_buf(), source: std::io::Error::other(e.to_string()) }
        }
        _ => DataError::BadRow {
            file: file.to_path_buf(),
            location: Location::Line(e.position().map(|p| p.line()).unwrap_or(0)),
            message: e.to_string(),
        },
    };
    let header: Vec<String> = if opts.header {
        let h = rdr.byte_headers().map_err(csv_err)?;
        if h.is_empty() || (h.len() == 1 && h[0].is_empty()) {
            return Err(DataError::EmptyFile { file: file.to_path_buf(), expected: "a header row" });
        }
        h.iter().map(|c| String::from_utf8_lossy(c).trim().to_string()).collect()
    } else {
        opts.columns.clone().expect("validated: columns given when header = false")
    };
    let pos = column_positions(enc, file, &header)?;
    let chunk = enc.config().data.chunk_rows;
    let mut records: Vec<csv::ByteRecord> = Vec::with_capacity(chunk);
    let mut lines = Vec::with_capacity(chunk);
    let mut first_row = 0u64;
    let mut rec = csv::ByteRecord::new();
    let mut seen_any = false;
    loop {
        records.clear();
        lines.clear();
        while records.len() < chunk {
            match rdr.read_byte_record(&mut rec) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    let e = csv_err(e);
                    if !e.is_row_level() {
                        return Err(e);
                    }
                    bad.record(e)?;
                    continue;
                }
            }
            seen_any = true;
            let line = rec.position().map(|p| p.line()).unwrap_or(0);
            if rec.len() != header.len() {
                bad.record(DataError::BadRow {
                    file: file.to_path_buf(),
                    location: Location::Line(line),
                    message: format!("expected {} fields, found {}", header.len(), rec.len()),
                })?;
                continue;
            }
            records.push(rec.clone());
            lines.push(line);
        }
        if records.is_empty() {
            break;
        }
        let n = records.len() as u64;
        let sep = opts.multi_value_separator as u8;
        let chunk = TextChunk { file, pos: &pos, records: &records, lines: &lines, first_row, sep };
        let batch = chunk.encode(enc, fraction, bad)?;
        first_row += n;
        if !emit(batch) {
            return Ok(());
        }
    }
    if !seen_any && !opts.header {
        return Err(DataError::EmptyFile { file: file.to_path_buf(), expected: "data rows" });
    }
    Ok(())
}
