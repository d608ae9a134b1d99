//! Snapshot assertions for the CLI's text output.
//!
//! [`check`] compares a normalised output with the committed file
//! `tests/snapshots/<name>.txt` and fails with a line diff when they differ. A missing
//! file is a failure too, so a new snapshot cannot pass unreviewed. To accept the
//! current output instead, run
//!
//! ```sh
//! MIXRANK_UPDATE_SNAPSHOTS=1 cargo test --workspace --release --test cli
//! ```
//!
//! which rewrites the files that differ; review `git diff` and commit them.
//!
//! Normalisation touches only what legitimately changes from run to run:
//! - [`normalize_paths`]: a temporary directory becomes `<TMP>`;
//! - [`mask_timings`]: seconds, throughputs and ETAs become `<T>`;
//! - [`mask_metrics`], for outputs computed from trained weights (train, eval and compare
//!   tables): every decimal number, with the padding before it, becomes a right-aligned
//!   `#` of the same width. The values depend on the CPU's GEMM code path; the layout,
//!   column, task, segment and expert names, integer counts and `-` (no value) do not,
//!   and stay exact;
//! - trailing whitespace of every line is dropped (editors strip it from the files).

use regex::{Captures, Regex};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// Set to `1` to rewrite snapshots from the current output.
pub const UPDATE_ENV: &str = "MIXRANK_UPDATE_SNAPSHOTS";

fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots")
}

/// Lines without trailing whitespace, `\n`-terminated.
fn tidy(text: &str) -> String {
    text.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

/// Compares `actual` (already normalised) with snapshot `name`; with
/// `MIXRANK_UPDATE_SNAPSHOTS=1` writes it instead. `Err` holds a readable report.
pub fn check(name: &str, actual: &str) -> Result<(), String> {
    let actual = tidy(actual);
    let path = snapshot_dir().join(format!("{name}.txt"));
    let expected = std::fs::read_to_string(&path).ok();
    if expected.as_deref() == Some(actual.as_str()) {
        return Ok(());
    }
    if std::env::var(UPDATE_ENV).as_deref() == Ok("1") {
        std::fs::create_dir_all(snapshot_dir()).map_err(|e| e.to_string())?;
        std::fs::write(&path, &actual).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("updated snapshot {}", path.display());
        return Ok(());
    }
    Err(match expected {
        None => format!(
            "snapshot `{name}` is missing ({}); run with {UPDATE_ENV}=1 to write it, then review and commit it.\n\
             actual output:\n{actual}",
            path.display()
        ),
        Some(expected) => format!(
            "snapshot `{name}` differs ({}; - expected, + actual); if the change is intended, \
             run with {UPDATE_ENV}=1 and commit the file.\n{}",
            path.display(),
            line_diff(&expected, &actual)
        ),
    })
}

/// Panics with every failed [`check`] of `results`, so one run shows all differences.
pub fn assert_all(results: impl IntoIterator<Item = Result<(), String>>) {
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{} snapshot(s) failed:\n\n{}", failures.len(), failures.join("\n\n"));
}

/// Replaces `dir` (as given and canonicalised) with `<TMP>`.
pub fn normalize_paths(text: &str, dir: &Path) -> String {
    let mut forms = vec![dir.display().to_string()];
    if let Ok(c) = dir.canonicalize() {
        forms.push(c.display().to_string());
    }
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.iter().fold(text.to_string(), |t, f| t.replace(f.as_str(), "<TMP>"))
}

/// Durations, rates and ETAs (`0.12 s`, `26308 examples/s`, `10.1k ex/s`, `ETA 3s`)
/// become `<T>` with their unit.
pub fn mask_timings(text: &str) -> String {
    static RATE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\b\d+(?:\.\d+)?(?: ?[kM])? ?(s|ms|rows/s|examples/s|ex/s)\b").unwrap());
    static ETA: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\bETA \S+").unwrap());
    let t = ETA.replace_all(text, "ETA <T>");
    RATE.replace_all(&t, "<T> $1").into_owned()
}

/// Every decimal number (sign, digits, point, digits, exponent; or `inf`, `NaN`)
/// together with the spaces before it becomes spaces and one `#`, right-aligned in the
/// same width: a right-aligned column keeps its width whatever the value's length, and
/// integers, `-` and names are untouched. A number glued to a word (`v0.1`) is left
/// alone.
pub fn mask_metrics(text: &str) -> String {
    static NUM: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"( *)([-+]?(?:\d+\.\d+(?:[eE][-+]?\d+)?|inf\b|NaN\b))").unwrap());
    NUM.replace_all(text, |c: &Captures| {
        let whole = c.get(0).unwrap();
        let glued = c[1].is_empty()
            && text[..whole.start()].chars().next_back().is_some_and(|p| p.is_alphabetic() || p == '_' || p == '.');
        if glued {
            whole.as_str().to_string()
        } else {
            format!("{}#", " ".repeat(whole.as_str().chars().count() - 1))
        }
    })
    .into_owned()
}

/// [`mask_metrics`] on every line but those `keep` selects (e.g. a legend with constants).
pub fn mask_metrics_except(text: &str, keep: impl Fn(&str) -> bool) -> String {
    text.lines().map(|l| if keep(l) { format!("{l}\n") } else { mask_metrics(&format!("{l}\n")) }).collect()
}

/// A line diff of `expected` → `actual` (longest common subsequence), changed lines with
/// two lines of context, `@@ line N @@` (of `expected`) before each hunk.
pub fn line_diff(expected: &str, actual: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    // (mark, line of expected where it happens, text)
    let mut ops: Vec<(char, usize, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', i, a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', i, a[i]));
            i += 1;
        } else {
            ops.push(('+', i, b[j]));
            j += 1;
        }
    }
    const CONTEXT: usize = 2;
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let near = |k: usize| changed.iter().any(|&c| c.abs_diff(k) <= CONTEXT);
    let mut out = String::new();
    let mut last: Option<usize> = None;
    for (k, (mark, line, text)) in ops.iter().enumerate() {
        if !near(k) {
            continue;
        }
        if last.is_none_or(|l| l + 1 != k) {
            out.push_str(&format!("@@ line {} @@\n", line + 1));
        }
        out.push_str(&format!("{mark} {text}\n"));
        last = Some(k);
    }
    if out.is_empty() {
        out.push_str("(the texts differ only in line endings)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
task         segment             rows       AUC   logloss       NE    calib      RMSE
click        all                 1000   0.47620   0.74013  1.64073  3.18808         -
click        search               160   0.51671   0.73011  1.54265  2.91202         -
dwell        all                  167         -         -        -        -   3.74878
conversion   search                29   0.46429   0.75809  5.05411  15.4656         -
";

    #[test]
    fn masked_metrics_ignore_values_but_not_names_counts_or_layout() {
        let masked = mask_metrics(TABLE);
        assert!(
            masked.contains("click        all                 1000         #         #        #        #         -")
        );
        // Other values, of other lengths and signs in the same field width, mask the same.
        let other = TABLE.replace(" 0.47620", "10.47620").replace(" 3.18808", "-12.3450").replace("15.4656", "3.54772");
        assert_eq!(mask_metrics(&other), masked);
        // Names, counts, missing values and layout are still compared.
        for (what, from, to) in [
            ("a column name", "logloss", "log_loss"),
            ("a task name", "conversion", "conversions"),
            ("a segment name", "search  ", "searches"),
            ("a row count", "  167 ", "  168 "),
            ("a missing value", "        -   3.74878", "  0.12345   3.74878"),
            ("a column's width", "   0.51671", "  0.51671"),
        ] {
            let changed = TABLE.replacen(from, to, 1);
            assert_ne!(changed, TABLE, "{what}: the edit applies");
            assert_ne!(mask_metrics(&changed), masked, "{what} must count");
        }
        let dropped: String = TABLE.lines().take(4).map(|l| format!("{l}\n")).collect();
        assert_ne!(mask_metrics(&dropped), masked, "a dropped row must count");
        // Numbers inside words are names, not values; infinities and NaN are values.
        assert_eq!(mask_metrics("mixrank v0.1.0, layer_2.5"), "mixrank v0.1.0, layer_2.5");
        assert_eq!(mask_metrics("[ -inf%,    NaN%] info"), "[    #%,      #%] info");
        assert_eq!(mask_metrics_except("a 0.5\nkeep 0.5\n", |l| l.starts_with("keep")), "a   #\nkeep 0.5\n");
    }

    #[test]
    fn timings_and_paths_are_masked_and_nothing_else() {
        let line =
            "wrote 3000 rows in 3 files to /x/sim in 0.01 s (265136 rows/s); trained 2 steps at 10.1k ex/s, ETA 4s";
        assert_eq!(
            mask_timings(line),
            "wrote 3000 rows in 3 files to /x/sim in <T> s (<T> rows/s); trained 2 steps at <T> ex/s, ETA <T>"
        );
        let d = tempfile::tempdir().unwrap();
        let text = format!("report: {}/run/report.html", d.path().display());
        assert_eq!(normalize_paths(&text, d.path()), "report: <TMP>/run/report.html");
    }

    #[test]
    fn the_diff_shows_changed_lines_with_context() {
        let a: String = (1..=12).map(|i| format!("{i}\n")).collect();
        let b = a.replace("4\n", "four\n") + "thirteen\n";
        assert_eq!(
            line_diff(&a, &b),
            "@@ line 2 @@\n  2\n  3\n- 4\n+ four\n  5\n  6\n@@ line 11 @@\n  11\n  12\n+ thirteen\n"
        );
    }

    #[test]
    fn a_missing_snapshot_fails() {
        if std::env::var(UPDATE_ENV).as_deref() == Ok("1") {
            return; // an update run would write it
        }
        let e = check("no_such_snapshot", "text\n").unwrap_err();
        assert!(e.contains("is missing") && e.contains(UPDATE_ENV), "{e}");
    }
}
