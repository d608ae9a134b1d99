//! Early stopping on the validation split.
//!
//! The monitored value is the first task's validation AUC (binary) or its negated RMSE
//! (regression), overall: higher is better either way. After `patience` validations in
//! a row without a strictly better value, training stops. Every improvement is saved as
//! a full checkpoint under `RUN_DIR/best/`; at the end of the run that checkpoint
//! becomes the run's final `checkpoint/`, so eval, compare, report and serve load the
//! best model, not the last one. The counters are not part of the checkpoint: a resumed
//! run starts monitoring afresh.

use mixrank_metrics::{TaskMetrics, TaskReport};
use serde::Serialize;

/// Directory (under the run directory) of the best checkpoint so far.
pub const BEST: &str = "best";

/// Patience bookkeeping.
#[derive(Debug, Clone)]
pub struct EarlyStopping {
    patience: u32,
    best: Option<f64>,
    best_step: u64,
    bad: u32,
}

/// What one validation meant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Verdict {
    pub monitored: f64,
    pub best: f64,
    pub best_step: u64,
    /// Validations since the last improvement.
    pub without_improvement: u32,
    pub improved: bool,
    pub stop: bool,
}

impl EarlyStopping {
    /// `None` for `patience = 0` (early stopping off).
    pub fn new(patience: u32) -> Option<Self> {
        (patience > 0).then_some(EarlyStopping { patience, best: None, best_step: 0, bad: 0 })
    }

    /// The first task's AUC, or minus its RMSE; `None` when it has no value (e.g. a
    /// single-class validation split).
    pub fn monitored(reports: &[TaskReport]) -> Option<f64> {
        match &reports.first()?.overall {
            TaskMetrics::Binary(b) => b.auc,
            TaskMetrics::Regression(r) => Some(-r.rmse),
        }
    }

    /// Records the validation at `step`. A missing value never counts as an improvement.
    pub fn observe(&mut self, value: Option<f64>, step: u64) -> Verdict {
        let improved = match (value, self.best) {
            (Some(v), Some(b)) => v > b,
            (Some(v), None) => v.is_finite(),
            (None, _) => false,
        };
        if improved {
            self.best = value;
            self.best_step = step;
            self.bad = 0;
        } else {
            self.bad += 1;
        }
        Verdict {
            monitored: value.unwrap_or(f64::NAN),
            best: self.best.unwrap_or(f64::NAN),
            best_step: self.best_step,
            without_improvement: self.bad,
            improved,
            stop: self.bad >= self.patience,
        }
    }

    /// Step of the best validation so far (`None` before the first improvement).
    pub fn best_step(&self) -> Option<u64> {
        self.best.map(|_| self.best_step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_after_patience_validations_without_strict_improvement() {
        assert!(EarlyStopping::new(0).is_none());
        let mut e = EarlyStopping::new(2).unwrap();
        assert!(e.observe(Some(0.70), 10).improved);
        let v = e.observe(Some(0.70), 20); // equal is not better
        assert!(!v.improved && !v.stop && v.without_improvement == 1);
        assert!(e.observe(Some(0.72), 30).improved);
        assert_eq!(e.best_step(), Some(30));
        assert!(!e.observe(None, 40).stop);
        let v = e.observe(Some(0.71), 50);
        assert!(v.stop && v.best == 0.72 && v.best_step == 30, "{v:?}");
    }
}
