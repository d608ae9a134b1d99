//! libsvm / libFM text: `label idx:val idx:val …` (positional fields, as in Frappe)
//! or `label field:idx:val …`. Each field becomes a text column holding the feature
//! index, so it hashes like any categorical value.

use super::open_text;
use super::text::{column_positions, TextSink};
use crate::batch::Batch;
use crate::config::{LibsvmFieldMode, LibsvmOptions};
use crate::encode::{BadRows, Encoder};
use crate::error::{DataError, Location, Result};
use std::io::BufRead;
use std::path::Path;

pub(super) fn decode(
    enc: &Encoder,
    opts: &LibsvmOptions,
    file: &Path,
    fraction: Option<(f64, f64)>,
    bad: &BadRows,
    emit: &mut dyn FnMut(Batch) -> bool,
) -> Result<()> {
    let mut header = vec![opts.label.clone()];
    header.extend(opts.fields.iter().cloned());
    let pos = column_positions(enc, file, &header)?;
    let reader = std::io::BufReader::with_capacity(1 << 16, open_text(file)?);
    let mut it = reader.split(b'\n');
    let mut line_no = 0u64;
    let sink = TextSink { file, pos: &pos, sep: b'|', fraction };
    let mut seen = false;
    let fill = |rec: &mut csv::ByteRecord| -> Result<Option<u64>> {
        loop {
            let Some(line) = it.next() else { return Ok(None) };
            let line = line.map_err(|source| DataError::Io { file: file.to_path_buf(), source })?;
            line_no += 1;
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            seen = true;
            let mut cells: Vec<&[u8]> = Vec::with_capacity(header.len());
            match parse_line(line, opts, &mut cells) {
                Ok(()) => {
                    rec.clear();
                    for c in &cells {
                        rec.push_field(c);
                    }
                    return Ok(Some(line_no));
                }
                Err(message) => bad.record(DataError::BadRow {
                    file: file.to_path_buf(),
                    location: Location::Line(line_no),
                    message,
                })?,
            }
        }
    };
    sink.drive(enc, bad, emit, fill)?;
    if !seen {
        return Err(DataError::EmptyFile { file: file.to_path_buf(), expected: "libsvm lines `label idx:val ...`" });
    }
    Ok(())
}

/// Splits one line into `[label, field_0, …]` cells (borrowing from `line`).
fn parse_line<'l>(line: &'l [u8], opts: &LibsvmOptions, cells: &mut Vec<&'l [u8]>) -> Result<(), String> {
    let n = opts.fields.len();
    cells.clear();
    cells.resize(n + 1, b"");
    let mut toks = line.split(|b| b.is_ascii_whitespace()).filter(|t| !t.is_empty());
    cells[0] = toks.next().ok_or("empty line")?;
    for (i, tok) in toks.enumerate() {
        let parts: Vec<&[u8]> = tok.split(|&b| b == b':').collect();
        let (field, idx, val) = match (opts.field_mode, parts.as_slice()) {
            (LibsvmFieldMode::Positional, [idx, val]) => (i, *idx, *val),
            (LibsvmFieldMode::Libfm, [f, idx, val]) => {
                let f = std::str::from_utf8(f).ok().and_then(|s| s.parse::<usize>().ok());
                (f.ok_or_else(|| format!("token {}: field number is not an integer", i + 1))?, *idx, *val)
            }
            (LibsvmFieldMode::Positional, _) => {
                return Err(format!("token {}: expected `idx:val`, found {:?}", i + 1, String::from_utf8_lossy(tok)))
            }
            (LibsvmFieldMode::Libfm, _) => {
                return Err(format!(
                    "token {}: expected `field:idx:val`, found {:?}",
                    i + 1,
                    String::from_utf8_lossy(tok)
                ))
            }
        };
        if field >= n {
            return Err(format!("token {}: field {field} but only {n} fields are configured", i + 1));
        }
        if !cells[field + 1].is_empty() {
            return Err(format!("token {}: field {field} appears twice", i + 1));
        }
        if idx.is_empty() || !idx.iter().all(u8::is_ascii_digit) {
            return Err(format!(
                "token {}: feature index {:?} is not a non-negative integer",
                i + 1,
                String::from_utf8_lossy(idx)
            ));
        }
        let v = std::str::from_utf8(val).ok().and_then(|s| s.parse::<f64>().ok());
        if v != Some(1.0) {
            return Err(format!(
                "token {}: value {:?} — only one-hot categorical features (value 1) are supported",
                i + 1,
                String::from_utf8_lossy(val)
            ));
        }
        cells[field + 1] = idx;
    }
    Ok(())
}
