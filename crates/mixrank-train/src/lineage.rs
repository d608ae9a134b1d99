//! Where a model comes from: the training stage, the parent it was warm-started from,
//! the days it has been trained on and the teacher it was distilled from.

use mixrank_data::ExperimentConfig;
use serde::{Deserialize, Serialize};

/// The training stage of a run.
///
/// - `Batch`: a model trained on a range of days, from scratch or from `--init`;
///   distillation (when the config names teachers) is on.
/// - `Incremental`: a warm start (`--init`, required) over new day partitions;
///   distillation is off unless explicitly kept on (`--distill-in-incremental`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    #[default]
    Batch,
    Incremental,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Batch => "batch",
            Stage::Incremental => "incremental",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lineage recorded in every checkpoint manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// Checkpoint directory this model was warm-started from (`--init`), if any.
    pub parent: Option<String>,
    pub stage: Stage,
    /// The train splits' day ranges this model has seen, oldest first: the parent's
    /// followed by this run's (`"2026-01-01..2026-01-05"`, or `"*"` for a split that
    /// is not filtered by day).
    pub days: Vec<String>,
    /// Teacher columns per task (`"click<-prod_click"`) when distillation was on.
    pub teacher: Option<String>,
    /// What the warm start changed (added, dropped, remapped or re-initialised parts),
    /// one line each; empty for a run from scratch or an identical config.
    pub warm_start: Vec<String>,
}

/// This run's day range of the config's train split.
pub fn train_days(cfg: &ExperimentConfig) -> String {
    match cfg.split("train").ok().and_then(|s| s.days.clone()) {
        Some((from, to)) => format!("{from}..{to}"),
        None => "*".into(),
    }
}

/// The teacher of a config with a `[distill]` section: `checkpoint <dir>`, or
/// `task<-column` for every distilled task's teacher column; `None` without distillation.
pub fn teacher_columns(cfg: &ExperimentConfig) -> Option<String> {
    let d = cfg.distill.as_ref()?;
    match &d.source {
        mixrank_data::config::distill::TeacherSource::Checkpoint(p) => Some(format!("checkpoint {}", p.display())),
        mixrank_data::config::distill::TeacherSource::Columns => {
            let t: Vec<String> = d
                .tasks
                .iter()
                .filter_map(|dt| {
                    let task = &cfg.tasks[dt.task];
                    task.teacher.as_ref().map(|x| format!("{}<-{}", task.name, x.column))
                })
                .collect();
            (!t.is_empty()).then(|| t.join(","))
        }
    }
}
