//! Early stopping on the validation split.
//!
//! The monitored value is `[train] early_stopping_metric` on `early_stopping_task` (a
//! task, or the mean over the tasks the metric applies to), overall; by default the
//! first task's validation AUC (binary) or RMSE (regression). Lower-is-better metrics
//! are negated, so higher is better throughout. After `patience` validations in
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

use mixrank_data::config::model::{Monitor, MonitorMetric};
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

    /// The same policy continuing from `state` (data-parallel: rank 0's, after it
    /// validated).
    pub fn with_state(self, state: EarlyStopState) -> Self {
        EarlyStopping { state, ..self }
    }

    /// The monitored value, oriented so that higher is better (a lower-is-better metric
    /// is negated): the monitor's metric on its task, or its mean over its tasks; `None`
    /// when a task has no value (e.g. AUC of a single-class validation split).
    pub fn monitored(monitor: &Monitor, reports: &[TaskReport]) -> Option<f64> {
        let mut sum = 0.0;
        for &t in &monitor.tasks {
            let v = match (&reports.get(t)?.overall, monitor.metric) {
                (TaskMetrics::Binary(b), MonitorMetric::Auc) => b.auc?,
                (TaskMetrics::Binary(b), MonitorMetric::Gauc) => b.gauc?,
                (TaskMetrics::Binary(b), MonitorMetric::Logloss) => b.logloss,
                (TaskMetrics::Binary(b), MonitorMetric::Ne) => b.ne?,
                (TaskMetrics::Regression(r), MonitorMetric::Rmse) => r.rmse,
                (TaskMetrics::Regression(r), MonitorMetric::Mae) => r.mae,
                _ => return None,
            };
            sum += v;
        }
        let mean = sum / monitor.tasks.len().max(1) as f64;
        Some(if monitor.metric.higher_is_better() { mean } else { -mean })
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
    fn monitored_value_follows_the_task_and_metric() {
        use mixrank_data::config::model::{resolve_monitor, TrainSection};
        use mixrank_metrics::{binary::binary_metrics, regression::regression_metrics};
        let tasks = [("click", true), ("save", true), ("dwell", false)];
        let bin = |p: &[f32], y: &[f32]| TaskMetrics::Binary(binary_metrics(p, y, None, None));
        let reports = vec![
            TaskReport {
                task: "click".into(),
                overall: bin(&[0.9, 0.2, 0.6], &[1.0, 0.0, 0.0]),
                segments: Default::default(),
            },
            TaskReport {
                task: "save".into(),
                overall: bin(&[0.1, 0.8, 0.7], &[1.0, 0.0, 0.0]),
                segments: Default::default(),
            },
            TaskReport {
                task: "dwell".into(),
                overall: TaskMetrics::Regression(regression_metrics(&[1.0, 2.0], &[1.0, 4.0], None)),
                segments: Default::default(),
            },
        ];
        let monitor = |task: Option<&str>, metric: Option<MonitorMetric>| {
            let t = TrainSection {
                early_stopping_task: task.map(str::to_string),
                early_stopping_metric: metric,
                ..TrainSection::default()
            };
            resolve_monitor(&t, &tasks)
        };
        let v = |m: Monitor| EarlyStopping::monitored(&m, &reports).unwrap();
        // Default: the first task's AUC (click: the positive 0.9 is above both negatives → 1).
        assert_eq!(v(monitor(None, None).unwrap()), 1.0);
        // save: 0.1 below both negatives → AUC 0.
        assert_eq!(v(monitor(Some("save"), None).unwrap()), 0.0);
        assert_eq!(v(monitor(Some("mean"), None).unwrap()), 0.5);
        assert_eq!(monitor(Some("mean"), None).unwrap().label, "mean auc (click, save)");
        // Lower-is-better metrics are negated: RMSE of (0, 2) = sqrt(2).
        assert!((v(monitor(Some("dwell"), None).unwrap()) + 2f64.sqrt()).abs() < 1e-12);
        assert!(v(monitor(Some("click"), Some(MonitorMetric::Logloss)).unwrap()) < 0.0);
        // Errors name the key.
        assert_eq!(monitor(Some("ctr"), None).unwrap_err().0, "train.early_stopping_task");
        let e = monitor(Some("dwell"), Some(MonitorMetric::Auc)).unwrap_err();
        assert!(e.0 == "train.early_stopping_metric" && e.1.contains("regression task `dwell`"), "{e:?}");
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
