//! Early stopping on the validation split.
//!
//! The monitored value is the first task's validation AUC (binary) or its negated RMSE
//! (regression), overall: higher is better either way. After `patience` validations in
//! a row without a strictly better value, training stops. Every improvement is saved as
//! a full checkpoint under `RUN_DIR/best/`; at the end of the run that checkpoint
//! becomes the run's final `checkpoint/`, so eval, compare, report and serve load the
//! best model, not the last one.
//!
//! With `[train].lr_plateau_factor` below 1, every validation that does not improve
//! also multiplies the learning rates by that factor (reduce on plateau); the
//! accumulated scale is part of the state.
//!
//! The bookkeeping ([`EarlyStopState`]) is part of every checkpoint's manifest, so a
//! run resumed with `--resume` goes on counting where it left off: it stops at the step
//! an uninterrupted run stops at, and its model is the same best validation's.

use mixrank_metrics::{TaskMetrics, TaskReport};
use serde::{Deserialize, Serialize};

/// Directory (under the run directory) of the best checkpoint so far.
pub const BEST: &str = "best";

/// Patience bookkeeping.
#[derive(Debug, Clone)]
pub struct EarlyStopping {
    state: EarlyStopState,
    /// Learning-rate factor per validation without improvement (1 = no reduction).
    plateau_factor: f64,
}

/// The early-stopping state as a checkpoint manifest records it (`early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopState {
    /// Validations without improvement that stop training (`[train].early_stopping_patience`).
    pub patience: u32,
    /// Best monitored value so far; `None` before the first improvement.
    pub best: Option<f64>,
    /// Step of that validation (meaningless while `best` is `None`).
    pub best_step: u64,
    /// Validations since the last improvement.
    pub without_improvement: u32,
    /// Step of the latest validation counted: validating the same step again (a resumed
    /// run that had nothing left to train) is not counted twice.
    pub last_step: Option<u64>,
    /// Product of the plateau reductions so far: the learning rates in use are the
    /// configured ones times this (1 in manifests written before it existed).
    #[serde(default = "one")]
    pub lr_scale: f64,
}

fn one() -> f64 {
    1.0
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
    /// The learning-rate scale from now on.
    pub lr_scale: f64,
}

impl EarlyStopping {
    /// `None` for `patience = 0` (early stopping off).
    pub fn new(patience: u32) -> Option<Self> {
        let state = EarlyStopState {
            patience,
            best: None,
            best_step: 0,
            without_improvement: 0,
            last_step: None,
            lr_scale: 1.0,
        };
        (patience > 0).then_some(EarlyStopping { state, plateau_factor: 1.0 })
    }

    /// Continues from a checkpoint's state (a resumed run).
    pub fn restore(state: EarlyStopState) -> Self {
        EarlyStopping { state, plateau_factor: 1.0 }
    }

    /// Reduce on plateau: each validation without improvement multiplies the
    /// learning-rate scale by `factor` (in (0, 1]; 1 = off).
    pub fn with_plateau_factor(mut self, factor: f64) -> Self {
        self.plateau_factor = factor;
        self
    }

    /// The factor the configured learning rates are multiplied by now.
    pub fn lr_scale(&self) -> f64 {
        self.state.lr_scale
    }

    /// The state to record in a checkpoint.
    pub fn state(&self) -> EarlyStopState {
        self.state
    }

    /// The first task's AUC, or minus its RMSE; `None` when it has no value (e.g. a
    /// single-class validation split).
    pub fn monitored(reports: &[TaskReport]) -> Option<f64> {
        match &reports.first()?.overall {
            TaskMetrics::Binary(b) => b.auc,
            TaskMetrics::Regression(r) => Some(-r.rmse),
        }
    }

    /// Records the validation at `step`. A missing value never counts as an improvement;
    /// a step already recorded is not recorded again (the verdict is `improved: false`).
    pub fn observe(&mut self, value: Option<f64>, step: u64) -> Verdict {
        let factor = self.plateau_factor;
        let s = &mut self.state;
        let repeated = s.last_step == Some(step);
        let improved = !repeated
            && match (value, s.best) {
                (Some(v), Some(b)) => v > b,
                (Some(v), None) => v.is_finite(),
                (None, _) => false,
            };
        if improved {
            s.best = value;
            s.best_step = step;
            s.without_improvement = 0;
        } else if !repeated {
            s.without_improvement += 1;
            s.lr_scale *= factor;
        }
        s.last_step = Some(step);
        Verdict {
            monitored: value.unwrap_or(f64::NAN),
            best: s.best.unwrap_or(f64::NAN),
            best_step: s.best_step,
            without_improvement: s.without_improvement,
            improved,
            stop: s.without_improvement >= s.patience,
            lr_scale: s.lr_scale,
        }
    }

    /// Whether `patience` validations in a row have not improved.
    pub fn stopped(&self) -> bool {
        self.state.without_improvement >= self.state.patience
    }

    /// Step of the best validation so far (`None` before the first improvement).
    pub fn best_step(&self) -> Option<u64> {
        self.state.best.map(|_| self.state.best_step)
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
        // The same step validated again is not counted again.
        assert_eq!(e.observe(Some(0.99), 50), Verdict { monitored: 0.99, improved: false, ..v });
        assert_eq!(e.state().without_improvement, 2);
    }

    #[test]
    fn plateau_factor_multiplies_the_scale_on_each_validation_without_improvement() {
        let mut e = EarlyStopping::new(5).unwrap().with_plateau_factor(0.1);
        assert_eq!(e.observe(Some(0.70), 1).lr_scale, 1.0);
        assert_eq!(e.observe(Some(0.69), 2).lr_scale, 0.1);
        assert!((e.observe(None, 3).lr_scale - 0.01).abs() < 1e-15);
        // An improvement keeps the scale; the same step again changes nothing.
        assert!((e.observe(Some(0.71), 4).lr_scale - 0.01).abs() < 1e-15);
        assert!((e.observe(Some(0.60), 4).lr_scale - 0.01).abs() < 1e-15);
        // The scale is state: a restored monitor continues from it.
        let restored = EarlyStopping::restore(e.state()).with_plateau_factor(0.1);
        assert_eq!(restored.lr_scale(), e.lr_scale());
        // Without a factor the scale stays 1.
        let mut off = EarlyStopping::new(2).unwrap();
        off.observe(Some(0.5), 1);
        assert_eq!(off.observe(Some(0.4), 2).lr_scale, 1.0);
    }

    #[test]
    fn a_restored_state_continues_the_count() {
        let mut whole = EarlyStopping::new(3).unwrap();
        let mut first = EarlyStopping::new(3).unwrap();
        let values = [0.6, 0.7, 0.65, 0.66, 0.69, 0.71, 0.5, 0.5, 0.5];
        for (k, &v) in values.iter().enumerate().take(4) {
            whole.observe(Some(v), k as u64);
            first.observe(Some(v), k as u64);
        }
        // Through the manifest's JSON, as a resumed run reads it.
        let json = serde_json::to_string(&first.state()).unwrap();
        let mut resumed = EarlyStopping::restore(serde_json::from_str(&json).unwrap());
        for (k, &v) in values.iter().enumerate().skip(4) {
            assert_eq!(resumed.observe(Some(v), k as u64), whole.observe(Some(v), k as u64), "step {k}");
        }
        assert_eq!(resumed.state(), whole.state());
        assert!(resumed.stopped() && resumed.best_step() == Some(5));
    }
}
