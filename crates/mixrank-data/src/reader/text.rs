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

/// Chunks encoded side by side (rayon) before being emitted in order: text parsing is
/// sequential, encoding is not, so one large text file still uses every core.
const PAR_CHUNKS: usize = 4;

/// A chunk's records, kept and refilled so steady-state reading does not allocate.
struct OwnedChunk {
    records: Vec<csv::ByteRecord>,
    lines: Vec<u64>,
    len: usize,
    first_row: u64,
}

/// Where the records of a text file go and how they are encoded.
pub(super) struct TextSink<'a> {
    pub file: &'a Path,
    pub pos: &'a [usize],
    pub sep: u8,
    pub fraction: Option<(f64, f64)>,
}

impl TextSink<'_> {
    /// Reads records with `fill` (which writes the next valid record and returns its
    /// line, or `None` at the end, recording bad rows itself), encodes them in groups of
    /// chunks in parallel and emits the batches in file order.
    pub(super) fn drive(
        &self,
        enc: &Encoder,
        bad: &BadRows,
        emit: &mut dyn FnMut(Batch) -> bool,
        mut fill: impl FnMut(&mut csv::ByteRecord) -> Result<Option<u64>>,
    ) -> Result<()> {
        use rayon::prelude::*;
        let chunk_rows = enc.config().data.chunk_rows;
        let mut free: Vec<OwnedChunk> = Vec::new();
        let mut next_row = 0u64;
        let mut eof = false;
        while !eof {
            let mut group = Vec::with_capacity(PAR_CHUNKS);
            while group.len() < PAR_CHUNKS && !eof {
                let mut c = free.pop().unwrap_or_else(|| OwnedChunk {
                    records: Vec::new(),
                    lines: Vec::new(),
                    len: 0,
                    first_row: 0,
                });
                c.len = 0;
                c.lines.clear();
                while c.len < chunk_rows {
                    if c.records.len() == c.len {
                        c.records.push(csv::ByteRecord::new());
                    }
                    match fill(&mut c.records[c.len])? {
                        Some(line) => {
                            c.lines.push(line);
                            c.len += 1;
                        }
                        None => {
                            eof = true;
                            break;
                        }
                    }
                }
                if c.len == 0 {
                    free.push(c);
                    break;
                }
                c.first_row = next_row;
                next_row += c.len as u64;
                group.push(c);
            }
            let batches: Vec<Result<Batch>> = group
                .par_iter()
                .map(|c| {
                    let chunk = TextChunk {
                        file: self.file,
                        pos: self.pos,
                        records: &c.records[..c.len],
                        lines: &c.lines,
                        first_row: c.first_row,
                        sep: self.sep,
                    };
                    chunk.encode(enc, self.fraction, bad)
                })
                .collect();
            for b in batches {
                if !emit(b?) {
                    return Ok(());
                }
            }
            free.extend(group);
        }
        Ok(())
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
    let sink = TextSink { file, pos: &pos, sep: opts.multi_value_separator as u8, fraction };
    let mut seen = false;
    let fill = |rec: &mut csv::ByteRecord| -> Result<Option<u64>> {
        loop {
            match rdr.read_byte_record(rec) {
                Ok(false) => return Ok(None),
                Ok(true) => seen = true,
                Err(e) => {
                    let e = csv_err(e);
                    if !e.is_row_level() {
                        return Err(e);
                    }
                    bad.record(e)?;
                    continue;
                }
            }
            let line = rec.position().map(|p| p.line()).unwrap_or(0);
            if rec.len() != header.len() {
                bad.record(DataError::BadRow {
                    file: file.to_path_buf(),
                    location: Location::Line(line),
                    message: format!("expected {} fields, found {}", header.len(), rec.len()),
                })?;
                continue;
            }
            return Ok(Some(line));
        }
    };
    sink.drive(enc, bad, emit, fill)?;
    if !seen && !opts.header {
        return Err(DataError::EmptyFile { file: file.to_path_buf(), expected: "data rows" });
    }
    Ok(())
}
