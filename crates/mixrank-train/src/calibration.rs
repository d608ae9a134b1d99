//! The calibration layer of a run (`[calibration]`): per binary task, one map of the
//! model's probability (Platt or isotonic, `mixrank_metrics::calibrate`) for all rows or
//! one per surface (`[columns] segment` value), fitted after training on the validation
//! split and stored in the checkpoint as `calibration.json` (listed and checksummed in
//! the manifest, like the weights). [`Calibration::apply`] is what `eval`, `compare`,
//! `predict` and the serving session run after the model's sigmoid; [`render_report`]
//! is the before/after table.
//!
//! A surface whose validation rows hold one class only (or none) cannot be fitted on
//! its own: it uses the task's global map, and the file says so (`fallback`).

use crate::error::{Result, TrainError};
use crate::evaluate::Predictions;
use mixrank_data::config::calibration::{CalibrationMethod, CalibrationScope, CalibrationSection};
use mixrank_data::config::TaskKind;
use mixrank_data::ExperimentConfig;
use mixrank_metrics::calibrate::{ece, Isotonic, Platt, ECE_BINS};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// The file's name in a checkpoint directory.
pub const CALIBRATION: &str = "calibration.json";
/// Version of [`CalibrationFile`].
pub const CALIBRATION_FORMAT: u32 = 1;

/// `calibration.json` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationFile {
    pub format_version: u32,
    pub method: CalibrationMethod,
    pub per: CalibrationScope,
    /// The split it was fitted on.
    pub split: String,
    /// Binary tasks, in config order.
    pub tasks: Vec<TaskMaps>,
}

/// One task's maps: `global` for every row, or for rows of a surface without its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMaps {
    pub task: String,
    /// Labelled validation rows it was fitted on.
    pub rows: u64,
    pub global: MapWire,
    /// `per = "surface"`: one entry per segment value, in id order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub surfaces: Vec<SurfaceMap>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurfaceMap {
    pub segment: String,
    pub rows: u64,
    /// `None`: the surface uses `global` (why, in `fallback`).
    pub map: Option<MapWire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// A fitted map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum MapWire {
    Platt { a: f64, b: f64 },
    Isotonic { x: Vec<f64>, y: Vec<f64> },
}

/// A map ready to apply.
#[derive(Debug, Clone, PartialEq)]
enum Map {
    Platt(Platt),
    Isotonic(Isotonic),
}

impl Map {
    fn apply(&self, p: f64) -> f64 {
        match self {
            Map::Platt(m) => m.apply(p),
            Map::Isotonic(m) => m.apply(p),
        }
    }

    fn wire(&self) -> MapWire {
        match self {
            Map::Platt(m) => MapWire::Platt { a: m.a, b: m.b },
            Map::Isotonic(m) => MapWire::Isotonic { x: m.x.clone(), y: m.y.clone() },
        }
    }

    fn from_wire(w: &MapWire) -> std::result::Result<Map, String> {
        match w {
            MapWire::Platt { a, b } if a.is_finite() && b.is_finite() => Ok(Map::Platt(Platt { a: *a, b: *b })),
            MapWire::Platt { .. } => Err("a Platt map with a non-finite parameter".into()),
            MapWire::Isotonic { x, y } => {
                let ok = !x.is_empty()
                    && x.len() == y.len()
                    && x.windows(2).all(|w| w[0] < w[1])
                    && y.windows(2).all(|w| w[0] <= w[1])
                    && y.iter().all(|v| (0.0..=1.0).contains(v));
                if ok {
                    Ok(Map::Isotonic(Isotonic { x: x.clone(), y: y.clone() }))
                } else {
                    Err("an isotonic map whose x is not strictly increasing, or y not non-decreasing in [0, 1], \
                         or of different lengths"
                        .into())
                }
            }
        }
    }
}

/// Per config task: its maps (`None` for regression tasks).
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    pub file: CalibrationFile,
    maps: Vec<Option<(Map, Vec<Option<Map>>)>>,
}

fn fit_map(method: CalibrationMethod, p: &[f32], y: &[f32], w: &[f64]) -> std::result::Result<Map, String> {
    let r = match method {
        CalibrationMethod::Platt => Platt::fit(p, y, w).map(Map::Platt),
        CalibrationMethod::Isotonic => Isotonic::fit(p, y, w).map(Map::Isotonic),
    };
    r.map_err(|e| e.to_string())
}

impl Calibration {
    /// Fits the section's maps on `p` (the model's uncalibrated predictions of `split`).
    pub fn fit(cfg: &ExperimentConfig, sec: &CalibrationSection, p: &Predictions, split: &str) -> Result<Self> {
        let segments = cfg.segment_names();
        let mut tasks = Vec::new();
        for (t, task) in cfg.tasks.iter().enumerate() {
            if task.kind != TaskKind::Binary {
                continue;
            }
            let (preds, labels, masks) = (&p.preds[t], &p.labels[t], &p.masks[t]);
            let weight = |i: usize| (p.weights[i] * masks[i]) as f64;
            let w: Vec<f64> = (0..preds.len()).map(weight).collect();
            let rows = |w: &[f64]| w.iter().filter(|&&x| x > 0.0).count() as u64;
            let global = fit_map(sec.method, preds, labels, &w).map_err(|e| {
                TrainError::Other(format!("calibration of task `{}` on the {split} split: {e}", task.name))
            })?;
            let mut surfaces = Vec::new();
            if sec.per == CalibrationScope::Surface {
                for (s, name) in segments.iter().enumerate() {
                    let ws: Vec<f64> =
                        w.iter().zip(&p.segments).map(|(&x, &seg)| if seg as usize == s { x } else { 0.0 }).collect();
                    let (map, fallback) = match fit_map(sec.method, preds, labels, &ws) {
                        Ok(m) => (Some(m.wire()), None),
                        Err(e) => (None, Some(format!("uses the global map: {e}"))),
                    };
                    surfaces.push(SurfaceMap { segment: name.clone(), rows: rows(&ws), map, fallback });
                }
            }
            tasks.push(TaskMaps { task: task.name.clone(), rows: rows(&w), global: global.wire(), surfaces });
        }
        let file = CalibrationFile {
            format_version: CALIBRATION_FORMAT,
            method: sec.method,
            per: sec.per,
            split: split.into(),
            tasks,
        };
        // Through the file's text, so the layer in memory is the one stored (serde_json
        // may read a float back one ulp away from the one it wrote).
        let text = serde_json::to_string_pretty(&file).expect("plain data serialises");
        Self::parse(cfg, text.as_bytes()).map_err(TrainError::Other)
    }

    /// Checks `file` against the config (its binary tasks, in order; its segment names)
    /// and builds the maps.
    pub fn from_file(cfg: &ExperimentConfig, file: CalibrationFile) -> std::result::Result<Self, String> {
        if file.format_version != CALIBRATION_FORMAT {
            return Err(format!(
                "{CALIBRATION} has format {} (this build reads {CALIBRATION_FORMAT})",
                file.format_version
            ));
        }
        let segments = cfg.segment_names();
        let mut stored = file.tasks.iter();
        let mut maps = Vec::new();
        for task in &cfg.tasks {
            if task.kind != TaskKind::Binary {
                maps.push(None);
                continue;
            }
            let Some(tm) = stored.next().filter(|tm| tm.task == task.name) else {
                return Err(format!("{CALIBRATION} holds no map for the binary task `{}`", task.name));
            };
            let bad = |e: String| format!("{CALIBRATION}, task `{}`: {e}", tm.task);
            let global = Map::from_wire(&tm.global).map_err(bad)?;
            let mut per = Vec::new();
            if file.per == CalibrationScope::Surface {
                let names: Vec<&str> = tm.surfaces.iter().map(|s| s.segment.as_str()).collect();
                if names != segments.iter().map(String::as_str).collect::<Vec<_>>() {
                    return Err(bad(format!("surfaces {names:?}, the config's segments are {segments:?}")));
                }
                for s in &tm.surfaces {
                    per.push(s.map.as_ref().map(Map::from_wire).transpose().map_err(bad)?);
                }
            }
            maps.push(Some((global, per)));
        }
        if let Some(extra) = stored.next() {
            return Err(format!("{CALIBRATION} holds a map for `{}`, not a binary task of the config", extra.task));
        }
        Ok(Calibration { file, maps })
    }

    /// Parses `calibration.json`.
    pub fn parse(cfg: &ExperimentConfig, bytes: &[u8]) -> std::result::Result<Self, String> {
        let file: CalibrationFile =
            serde_json::from_slice(bytes).map_err(|e| format!("{CALIBRATION} is not a valid calibration file: {e}"))?;
        Self::from_file(cfg, file)
    }

    /// The file's text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.file).expect("plain data serialises")
    }

    /// Maps task `t`'s probabilities in place, row `i` by the map of its surface
    /// `segments[i]` (the global map without per-surface maps, for a surface that has
    /// none, and for a segment id outside the config's). Regression tasks are left as
    /// they are.
    pub fn apply(&self, t: usize, segments: &[u32], preds: &mut [f32]) {
        let Some(Some((global, per))) = self.maps.get(t) else { return };
        for (i, p) in preds.iter_mut().enumerate() {
            let m = segments.get(i).and_then(|&s| per.get(s as usize)).and_then(Option::as_ref).unwrap_or(global);
            *p = m.apply(*p as f64) as f32;
        }
    }

    /// [`Calibration::apply`] to every task of `preds` (`[task][row]`).
    pub fn apply_all(&self, segments: &[u32], preds: &mut [Vec<f32>]) {
        for (t, p) in preds.iter_mut().enumerate() {
            self.apply(t, segments, p);
        }
    }
}

/// One row of the before/after table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationRow {
    pub task: String,
    pub segment: String,
    pub rows: u64,
    /// Mean prediction / label rate (weighted), before and after.
    pub ratio: [Option<f64>; 2],
    pub logloss: [f64; 2],
    /// [`ece`] over [`ECE_BINS`] bins.
    pub ece: [Option<f64>; 2],
}

/// Per binary task, overall (`all`) and per surface: calibration ratio, logloss and ECE
/// of the uncalibrated predictions `raw` (`[task][row]`) and the calibrated ones in `cal`
/// (same rows, with their labels, masks, weights and segments).
pub fn report(cfg: &ExperimentConfig, cal: &Predictions, raw: &[Vec<f32>]) -> Vec<CalibrationRow> {
    let names = cfg.segment_names();
    let mut out = Vec::new();
    for (t, task) in cfg.tasks.iter().enumerate() {
        if task.kind != TaskKind::Binary {
            continue;
        }
        let groups = std::iter::once(("all".to_string(), None)).chain(
            cfg.columns.segment.iter().flat_map(|_| names.iter().enumerate().map(|(s, n)| (n.clone(), Some(s)))),
        );
        for (segment, seg) in groups {
            let idx: Vec<usize> = (0..raw[t].len())
                .filter(|&i| cal.masks[t][i] > 0.0 && seg.is_none_or(|s| cal.segments[i] as usize == s))
                .collect();
            let pick = |v: &[f32]| idx.iter().map(|&i| v[i]).collect::<Vec<f32>>();
            let (y, w) = (pick(&cal.labels[t]), pick(&cal.weights));
            let m = |p: &[f32]| {
                let b = mixrank_metrics::binary_metrics(p, &y, Some(&w), None);
                (b.calibration, b.logloss, ece(p, &y, Some(&w), ECE_BINS))
            };
            let (before, after) = (m(&pick(&raw[t])), m(&pick(&cal.preds[t])));
            out.push(CalibrationRow {
                task: task.name.clone(),
                segment,
                rows: idx.len() as u64,
                ratio: [before.0, after.0],
                logloss: [before.1, after.1],
                ece: [before.2, after.2],
            });
        }
    }
    out
}

/// The table of [`report`].
pub fn render_report(file: &CalibrationFile, rows: &[CalibrationRow]) -> String {
    let mut o = String::new();
    let method = match file.method {
        CalibrationMethod::Platt => "platt",
        CalibrationMethod::Isotonic => "isotonic",
    };
    let per = match file.per {
        CalibrationScope::Global => "global",
        CalibrationScope::Surface => "per surface",
    };
    let _ = writeln!(o, "calibration ({method}, {per}, fitted on `{}`; docs/metrics.md): before → after", file.split);
    let tw = rows.iter().map(|r| r.task.chars().count()).max().unwrap_or(0).max(8);
    let sw = rows.iter().map(|r| r.segment.chars().count()).max().unwrap_or(0).max(14);
    let _ = writeln!(
        o,
        "{:<tw$} {:<sw$} {:>8} {:>19} {:>19} {:>19}",
        "task", "segment", "rows", "mean p / rate", "logloss", "ECE"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.5}"));
    for r in rows {
        let pair = |a: String, b: String| format!("{a:>8} → {b:<8}");
        let _ = writeln!(
            o,
            "{:<tw$} {:<sw$} {:>8} {:>19} {:>19} {:>19}",
            r.task,
            r.segment,
            r.rows,
            pair(opt(r.ratio[0]), opt(r.ratio[1])),
            pair(format!("{:.5}", r.logloss[0]), format!("{:.5}", r.logloss[1])),
            pair(opt(r.ece[0]), opt(r.ece[1])),
        );
    }
    o
}
