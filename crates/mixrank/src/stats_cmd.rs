//! `mixrank data stats CONFIG`.

use anyhow::{Context, Result};
use mixrank_data::stats::{split_stats, SplitStats};
use mixrank_data::ExperimentConfig;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct StatsArgs {
    /// Experiment config (TOML).
    pub config: PathBuf,
    /// Splits to summarise (default: all, in name order).
    #[arg(long = "split")]
    pub splits: Vec<String>,
    /// Read at most this many rows per split.
    #[arg(long)]
    pub max_rows: Option<u64>,
    /// Also write the summaries as JSON (schema in docs/data.md).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(a: &StatsArgs) -> Result<()> {
    let cfg = Arc::new(ExperimentConfig::load(&a.config)?);
    let names: Vec<String> =
        if a.splits.is_empty() { cfg.data.splits.keys().cloned().collect() } else { a.splits.clone() };
    let mut all = Vec::new();
    for name in &names {
        let split = cfg.split(name)?;
        let s = split_stats(cfg.clone(), split, a.max_rows)?;
        crate::emit(&render(&s));
        all.push(s);
    }
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&all)?;
        write_atomic(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Writes a file via a temporary name and a rename ([`mixrank_data::atomic`]).
pub fn write_atomic(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    mixrank_data::atomic::write_atomic(path, text.as_bytes()).map_err(|(_, e)| e)
}

/// The human-readable summary of one split.
pub fn render(s: &SplitStats) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "== split `{}`: {} rows from {} files ({} units); bad rows skipped: {}",
        s.split, s.rows, s.files, s.units, s.bad_rows
    );
    for e in &s.bad_row_examples {
        let _ = writeln!(o, "   skipped: {e}");
    }
    if let Some(r) = s.requests {
        let _ = writeln!(
            o,
            "   requests: {r} ({:.2} rows/request); mean sample weight {:.4}",
            s.rows as f64 / r.max(1) as f64,
            s.mean_weight
        );
    }
    if s.segments.len() > 1 {
        let _ = writeln!(o, "\n   {:<16} {:>10} {:>8}", "segment", "rows", "share");
        for g in &s.segments {
            let _ = writeln!(
                o,
                "   {:<16} {:>10} {:>7.1}%",
                g.segment,
                g.rows,
                100.0 * g.rows as f64 / s.rows.max(1) as f64
            );
        }
    }
    if !s.tasks.is_empty() {
        let _ = writeln!(
            o,
            "\n   {:<14} {:<10} {:>10} {:>11} {:>10}   per segment",
            "task", "kind", "labelled", "rate/mean", "std"
        );
        for t in &s.tasks {
            let per: Vec<String> =
                t.per_segment.iter().map(|p| format!("{}={:.4} (n={})", p.segment, p.mean, p.labelled)).collect();
            let kind = format!("{:?}", t.kind).to_lowercase();
            let _ = writeln!(
                o,
                "   {:<14} {:<10} {:>10} {:>11.5} {:>10.4}   {}",
                t.name,
                kind,
                t.labelled,
                t.mean,
                t.std,
                per.join("  ")
            );
        }
    }
    if !s.categorical.is_empty() {
        let _ = writeln!(
            o,
            "\n   {:<20} {:>11} {:>11} {:>9} {:>11}",
            "categorical", "table rows", "distinct", "top row", "values/row"
        );
        for c in &s.categorical {
            let _ = writeln!(
                o,
                "   {:<20} {:>11} {:>11} {:>8.2}% {:>11.2}",
                c.name,
                c.table_rows,
                c.distinct_rows,
                100.0 * c.top_row_share,
                c.mean_values
            );
        }
    }
    if !s.dense.is_empty() {
        let _ = writeln!(
            o,
            "\n   {:<20} {:>9} {:>12} {:>12} {:>12} {:>12}",
            "dense", "missing", "mean", "std", "min", "max"
        );
        for d in &s.dense {
            let _ = writeln!(
                o,
                "   {:<20} {:>8.2}% {:>12.4} {:>12.4} {:>12.4} {:>12.4}",
                d.name,
                100.0 * d.missing_fraction,
                d.mean,
                d.std,
                d.min,
                d.max
            );
        }
    }
    o.push('\n');
    o
}
