//! The trainer's `train_log.jsonl`, read back as curves. Each line is one JSON object
//! with an `event` field; `train` lines carry the windowed loss per task and the
//! throughput, `validation` lines the per-task reports. Lines of other events (resume
//! notes, warnings) are skipped; a line that is not JSON, or a `train`/`validation` line
//! missing a field, is an error naming the line.

use crate::error::ReportError;
use mixrank_metrics::TaskReport;
use serde::Deserialize;

/// One `train` line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TrainPoint {
    pub step: u64,
    pub examples_per_s: f64,
    /// Weighted sum of the task losses over the log window.
    pub loss: f64,
    /// `(task, mean loss over the window)`.
    pub task_loss: Vec<(String, f64)>,
}

/// One `validation` line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ValidationPoint {
    pub step: u64,
    pub epoch: usize,
    pub reports: Vec<TaskReport>,
}

/// A parsed training log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunLog {
    pub train: Vec<TrainPoint>,
    pub validation: Vec<ValidationPoint>,
}

/// Parses the text of a training log; `path` only names it in errors.
pub fn parse_train_log(text: &str, path: &str) -> Result<RunLog, ReportError> {
    let mut log = RunLog::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| ReportError::Log { path: path.to_string(), line: i + 1, message };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| err(format!("not JSON: {e}")))?;
        match v.get("event").and_then(|e| e.as_str()) {
            Some("train") => {
                log.train.push(serde_json::from_value(v).map_err(|e| err(format!("not a train record: {e}")))?)
            }
            Some("validation") => log
                .validation
                .push(serde_json::from_value(v).map_err(|e| err(format!("not a validation record: {e}")))?),
            Some(_) => {}
            None => return Err(err("no `event` field".into())),
        }
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"{"event":"train","step":50,"epoch":0,"examples":1000,"elapsed_s":1.0,"examples_per_s":1000.0,"lr":0.001,"loss":0.9,"task_loss":[["click",0.5],["save",0.4]]}
{"event":"resume","step":50}

{"event":"validation","step":100,"epoch":0,"reports":[{"task":"click","overall":{"type":"regression","rows":3,"weight":3.0,"rmse":1.0,"mae":0.5,"mean_label":0.0,"mean_prediction":0.1},"segments":{}}]}
"#;

    #[test]
    fn parses_train_and_validation_and_skips_other_events() {
        let log = parse_train_log(LOG, "train_log.jsonl").unwrap();
        assert_eq!(log.train.len(), 1);
        assert_eq!(log.train[0].task_loss[1], ("save".to_string(), 0.4));
        assert_eq!(log.validation.len(), 1);
        assert_eq!(log.validation[0].step, 100);
        assert_eq!(log.validation[0].reports[0].task, "click");
    }

    #[test]
    fn errors_name_the_line() {
        let text = format!("{LOG}{{\"event\":\"train\",\"step\":1}}\n");
        let e = parse_train_log(&text, "run/train_log.jsonl").unwrap_err().to_string();
        assert!(e.starts_with("run/train_log.jsonl line 5: not a train record"), "{e}");
        let e = parse_train_log("{oops\n", "x").unwrap_err().to_string();
        assert!(e.contains("line 1: not JSON"), "{e}");
    }
}
