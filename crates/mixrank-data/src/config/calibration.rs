//! The `[calibration]` section: a calibration layer fitted after training on the
//! validation split, per binary task and (optionally) per surface, stored with the
//! checkpoint and applied by `eval`, `compare`, `predict` and serving.
//!
//! ```toml
//! [calibration]
//! method = "platt"     # "platt" (σ(a·logit + b)) or "isotonic" (pool-adjacent-violators)
//! per = "surface"      # "surface" (one map per `[columns] segment` value) or "global"
//! ```
//!
//! docs/metrics.md states what is fitted and reported.

use serde::{Deserialize, Serialize};

/// `[calibration]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSection {
    pub method: CalibrationMethod,
    /// One map per surface or one for all rows; default `global`.
    #[serde(default)]
    pub per: CalibrationScope,
}

/// How predictions are mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationMethod {
    /// Platt scaling: `σ(a·z + b)` on the model's logit `z`.
    Platt,
    /// Isotonic regression (pool-adjacent-violators), interpolated linearly.
    Isotonic,
}

/// Which rows share a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationScope {
    /// One map per task for all rows.
    #[default]
    Global,
    /// One map per task and `[columns] segment` value.
    Surface,
}

/// Validates `[calibration]`: `per = "surface"` needs a segment column, and the config a
/// binary task and a validation split to fit on. Errors are (key path, message).
pub fn validate_calibration(
    c: &CalibrationSection,
    has_segment: bool,
    has_binary_task: bool,
    has_validation: bool,
) -> Result<CalibrationSection, (String, String)> {
    if c.per == CalibrationScope::Surface && !has_segment {
        return Err((
            "calibration.per".into(),
            "`surface` needs `[columns] segment` (the column whose values are the surfaces)".into(),
        ));
    }
    if !has_binary_task {
        return Err(("calibration".into(), "calibration maps probabilities: the config has no binary task".into()));
    }
    if !has_validation {
        return Err((
            "calibration".into(),
            "calibration is fitted on the validation split: add `[data.splits.validation]`".into(),
        ));
    }
    Ok(c.clone())
}

#[cfg(test)]
mod tests {
    use crate::ExperimentConfig;

    fn parse(extra: &str) -> Result<ExperimentConfig, String> {
        let text = format!(
            "[data]\nformat = \"parquet\"\n[data.splits.train]\npaths = [\"x\"]\n[data.splits.validation]\npaths = [\"y\"]\n\
             [[features.dense]]\nname = \"a\"\n[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"y\"\n{extra}"
        );
        ExperimentConfig::parse(&text, std::path::Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn per_surface_needs_a_segment_column_and_unknown_keys_are_refused() {
        let e = parse("[calibration]\nmethod = \"platt\"\nper = \"surface\"\n").unwrap_err();
        assert!(e.contains("calibration.per") && e.contains("[columns] segment"), "{e}");
        let ok = parse(
            "[columns]\nsegment = { column = \"s\", values = [\"a\", \"b\"] }\n\
             [calibration]\nmethod = \"isotonic\"\nper = \"surface\"\n",
        )
        .unwrap();
        assert_eq!(ok.calibration.unwrap().per, super::CalibrationScope::Surface);
        let global = parse("[calibration]\nmethod = \"platt\"\n").unwrap();
        assert_eq!(global.calibration.unwrap().per, super::CalibrationScope::Global, "the default");
        assert!(parse("[calibration]\nmethod = \"beta\"\n").is_err());
        assert!(parse("[calibration]\nmethod = \"platt\"\nbins = 3\n").is_err());
    }

    #[test]
    fn calibration_needs_a_validation_split() {
        let text =
            "[data]\nformat = \"parquet\"\n[data.splits.train]\npaths = [\"x\"]\n[[features.dense]]\nname = \"a\"\n\
                    [[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"y\"\n[calibration]\nmethod = \"platt\"\n";
        let e = ExperimentConfig::parse(text, std::path::Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.contains("validation"), "{e}");
    }
}
