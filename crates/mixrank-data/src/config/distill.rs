//! The `[distill]` section: knowledge distillation from a teacher — a frozen mixrank
//! checkpoint run beside the student, or logged scores in the tasks' `teacher` columns —
//! with a loss per task added to the label loss. Wire structs (TOML shape, unknown keys
//! rejected) and their validation into [`DistillConfig`].
//!
//! ```toml
//! [distill]
//! source = "checkpoint"          # or "columns" (each task's `teacher = { column, kind }`)
//! checkpoint = "runs/production" # a run directory (or its checkpoint/), relative to this file
//! teacher_precision = "f32"      # checkpoint: "f32" | "bf16" (the teacher's inference)
//!
//! [[distill.tasks]]
//! task = "click"
//! loss = "pairwise"              # pointwise_bce | logit_mse | pairwise | listwise
//! weight = 1.0                   # λ in  L_task = w_task·L_label + λ·L_distill
//! temperature = 1.0
//! pairs = "batch"                # pairwise: "request" (same request id) | "batch" (sampled)
//! pairs_per_row = 4              # pairwise: partners per row (cost O(batch × k))
//! teacher_task = "click"         # checkpoint source: the teacher's task (default: `task`)
//! ```

use super::wire::TaskKind;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TeacherSourceKind {
    /// Scores logged in each distilled task's `teacher` column.
    Columns,
    /// A mixrank checkpoint scored beside the student.
    Checkpoint,
}

/// Arithmetic of a checkpoint teacher's forward pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TeacherPrecision {
    #[default]
    F32,
    /// bf16 weights and activations with f32 accumulation in the head's Linear layers
    /// (as `mixrank eval --precision bf16`): a cheaper teacher, scores within bf16 noise.
    Bf16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DistillLossKind {
    /// Soft-label BCE on σ(t/T) with temperature (binary tasks).
    PointwiseBce,
    /// Squared difference of student and teacher logits (values for regression).
    LogitMse,
    /// RankNet on score differences toward the teacher's preference probability.
    Pairwise,
    /// Softmax cross-entropy within each request.
    Listwise,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PairSampling {
    /// Partners are rows of the same request in the batch.
    Request,
    /// Partners are sampled uniformly from the batch.
    Batch,
}

/// `[distill]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSection {
    pub source: TeacherSourceKind,
    /// Run or checkpoint directory; required for `source = "checkpoint"`.
    pub checkpoint: Option<String>,
    /// Checkpoint source only; default f32.
    pub teacher_precision: Option<TeacherPrecision>,
    pub tasks: Vec<DistillTaskSection>,
}

/// `[[distill.tasks]]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DistillTaskSection {
    pub task: String,
    pub loss: DistillLossKind,
    #[serde(default = "unit")]
    pub weight: f64,
    #[serde(default = "unit")]
    pub temperature: f64,
    pub pairs: Option<PairSampling>,
    pub pairs_per_row: Option<usize>,
    pub teacher_task: Option<String>,
}

fn unit() -> f64 {
    1.0
}

/// Partners per row when `pairs_per_row` is not given.
pub const DEFAULT_PAIRS_PER_ROW: usize = 4;

/// Where teacher scores come from (validated).
#[derive(Debug, Clone, PartialEq)]
pub enum TeacherSource {
    Columns,
    /// Absolute (or config-relative resolved) run or checkpoint directory.
    Checkpoint(PathBuf),
}

/// A distillation loss with its options (validated).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DistillLoss {
    PointwiseBce,
    LogitMse,
    Pairwise { sampling: PairSampling, per_row: usize },
    Listwise,
}

/// One distilled task (validated).
#[derive(Debug, Clone, PartialEq)]
pub struct DistillTask {
    /// Index into the config's tasks.
    pub task: usize,
    pub loss: DistillLoss,
    pub weight: f64,
    pub temperature: f64,
    /// The teacher checkpoint's task name (checkpoint source only; the task's own name
    /// by default).
    pub teacher_task: String,
}

/// `[distill]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DistillConfig {
    pub source: TeacherSource,
    pub teacher_precision: TeacherPrecision,
    pub tasks: Vec<DistillTask>,
}

/// What the validation needs to know about a task.
pub struct TaskInfo<'a> {
    pub name: &'a str,
    pub kind: TaskKind,
    pub has_teacher_column: bool,
}

/// Validates `[distill]`; `Err((key, message))`.
pub fn validate_distill(
    d: &DistillSection,
    tasks: &[TaskInfo<'_>],
    has_request_id: bool,
    base_dir: &Path,
) -> Result<DistillConfig, (String, String)> {
    let err = |k: String, m: String| Err((format!("distill.{k}"), m));
    let source = match (d.source, &d.checkpoint) {
        (TeacherSourceKind::Checkpoint, Some(p)) if !p.is_empty() => {
            let p = Path::new(p);
            TeacherSource::Checkpoint(if p.is_absolute() { p.to_path_buf() } else { base_dir.join(p) })
        }
        (TeacherSourceKind::Checkpoint, _) => {
            return err("checkpoint".into(), "required for source = \"checkpoint\": the teacher's run directory".into())
        }
        (TeacherSourceKind::Columns, Some(_)) => {
            return err("checkpoint".into(), "only for source = \"checkpoint\" (source is \"columns\")".into())
        }
        (TeacherSourceKind::Columns, None) => TeacherSource::Columns,
    };
    if source == TeacherSource::Columns && d.teacher_precision.is_some() {
        return err("teacher_precision".into(), "only for source = \"checkpoint\"".into());
    }
    if d.tasks.is_empty() {
        return err("tasks".into(), "expected at least one [[distill.tasks]] entry".into());
    }
    let mut out = Vec::new();
    for (i, t) in d.tasks.iter().enumerate() {
        let key = |f: &str| format!("tasks[{i}].{f}");
        let Some(ti) = tasks.iter().position(|x| x.name == t.task) else {
            let have: Vec<&str> = tasks.iter().map(|x| x.name).collect();
            return err(key("task"), format!("no task `{}` (have: {})", t.task, have.join(", ")));
        };
        if out.iter().any(|o: &DistillTask| o.task == ti) {
            return err(key("task"), format!("task `{}` is distilled twice", t.task));
        }
        let info = &tasks[ti];
        if !(t.weight.is_finite() && t.weight >= 0.0) {
            return err(key("weight"), format!("expected a finite number >= 0, found {}", t.weight));
        }
        if !(t.temperature.is_finite() && t.temperature > 0.0) {
            return err(key("temperature"), format!("expected a number > 0, found {}", t.temperature));
        }
        let pairwise = t.loss == DistillLossKind::Pairwise;
        if !pairwise && (t.pairs.is_some() || t.pairs_per_row.is_some()) {
            let k = if t.pairs.is_some() { "pairs" } else { "pairs_per_row" };
            return err(key(k), "only for loss = \"pairwise\"".into());
        }
        let loss = match t.loss {
            DistillLossKind::PointwiseBce if info.kind != TaskKind::Binary => {
                return err(
                    key("loss"),
                    format!("pointwise_bce needs a binary task; `{}` is a regression (use logit_mse)", t.task),
                )
            }
            DistillLossKind::PointwiseBce => DistillLoss::PointwiseBce,
            DistillLossKind::LogitMse => DistillLoss::LogitMse,
            DistillLossKind::Listwise if !has_request_id => {
                return err(key("loss"), "listwise needs request groups: set [columns] request_id".into())
            }
            DistillLossKind::Listwise => DistillLoss::Listwise,
            DistillLossKind::Pairwise => {
                let sampling =
                    t.pairs.unwrap_or(if has_request_id { PairSampling::Request } else { PairSampling::Batch });
                if sampling == PairSampling::Request && !has_request_id {
                    return err(key("pairs"), "\"request\" needs [columns] request_id (or use \"batch\")".into());
                }
                let per_row = t.pairs_per_row.unwrap_or(DEFAULT_PAIRS_PER_ROW);
                if per_row == 0 {
                    return err(key("pairs_per_row"), "expected a positive integer".into());
                }
                DistillLoss::Pairwise { sampling, per_row }
            }
        };
        let teacher_task = match (&source, &t.teacher_task) {
            (TeacherSource::Columns, Some(_)) => {
                return err(key("teacher_task"), "only for source = \"checkpoint\"".into())
            }
            (TeacherSource::Columns, None) if !info.has_teacher_column => {
                return err(
                    key("task"),
                    format!("source = \"columns\" but task `{}` has no `teacher = {{ column, kind }}`", t.task),
                )
            }
            (_, Some(n)) => n.clone(),
            (_, None) => t.task.clone(),
        };
        out.push(DistillTask { task: ti, loss, weight: t.weight, temperature: t.temperature, teacher_task });
    }
    Ok(DistillConfig { source, teacher_precision: d.teacher_precision.unwrap_or_default(), tasks: out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExperimentConfig;

    const BASE: &str = "[data]\nformat = \"parquet\"\n[data.splits.train]\npaths = [\"x\"]\n\
        [[features.dense]]\nname = \"a\"\n\
        [[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"y\"\nteacher = { column = \"prod\", kind = \"probability\" }\n\
        [[tasks]]\nname = \"dwell\"\nkind = \"regression\"\nlabel = \"d\"\n";

    fn parse(extra: &str) -> Result<ExperimentConfig, String> {
        ExperimentConfig::parse(&format!("{BASE}{extra}"), Path::new("/cfg/exp.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn valid_sections_are_typed() {
        let c = parse(
            "[distill]\nsource = \"checkpoint\"\ncheckpoint = \"runs/prod\"\n\
             [[distill.tasks]]\ntask = \"dwell\"\nloss = \"pairwise\"\nweight = 0.5\ntemperature = 2.0\npairs_per_row = 8\n\
             [[distill.tasks]]\ntask = \"click\"\nloss = \"pointwise_bce\"\nteacher_task = \"ctr\"\n",
        )
        .unwrap();
        let d = c.distill.unwrap();
        assert_eq!(d.source, TeacherSource::Checkpoint(PathBuf::from("/cfg/runs/prod")));
        assert_eq!(d.teacher_precision, TeacherPrecision::F32);
        // No request id column: pairs are sampled in the batch.
        assert_eq!(d.tasks[0].loss, DistillLoss::Pairwise { sampling: PairSampling::Batch, per_row: 8 });
        assert_eq!((d.tasks[0].task, d.tasks[0].weight, d.tasks[0].temperature), (1, 0.5, 2.0));
        assert_eq!(d.tasks[0].teacher_task, "dwell");
        assert_eq!((d.tasks[1].task, d.tasks[1].teacher_task.as_str()), (0, "ctr"));
        let c = parse("[columns]\nrequest_id = \"r\"\n[distill]\nsource = \"columns\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"pairwise\"\n")
            .unwrap();
        let d = c.distill.unwrap();
        assert_eq!(d.source, TeacherSource::Columns);
        assert_eq!(
            d.tasks[0].loss,
            DistillLoss::Pairwise { sampling: PairSampling::Request, per_row: DEFAULT_PAIRS_PER_ROW }
        );
        assert!(parse("").unwrap().distill.is_none());
    }

    #[test]
    fn bad_sections_name_the_key() {
        let cases = [
            ("[distill]\nsource = \"checkpoint\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"logit_mse\"\n", "distill.checkpoint"),
            ("[distill]\nsource = \"columns\"\ncheckpoint = \"x\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"logit_mse\"\n", "distill.checkpoint"),
            ("[distill]\nsource = \"columns\"\ntasks = []\n", "distill.tasks"),
            ("[distill]\nsource = \"columns\"\nteacher_precision = \"bf16\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"logit_mse\"\n", "distill.teacher_precision"),
            ("[distill]\nsource = \"columns\"\n[[distill.tasks]]\ntask = \"ctr\"\nloss = \"logit_mse\"\n", "no task `ctr`"),
            ("[distill]\nsource = \"columns\"\n[[distill.tasks]]\ntask = \"dwell\"\nloss = \"logit_mse\"\n", "has no `teacher"),
            ("[distill]\nsource = \"checkpoint\"\ncheckpoint = \"p\"\n[[distill.tasks]]\ntask = \"dwell\"\nloss = \"pointwise_bce\"\n", "needs a binary task"),
            ("[distill]\nsource = \"columns\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"listwise\"\n", "request_id"),
            ("[distill]\nsource = \"columns\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"pairwise\"\npairs = \"request\"\n", "distill.tasks[0].pairs"),
            ("[distill]\nsource = \"columns\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"pairwise\"\npairs_per_row = 0\n", "pairs_per_row"),
            ("[distill]\nsource = \"columns\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"logit_mse\"\npairs_per_row = 2\n", "only for loss = \"pairwise\""),
            ("[distill]\nsource = \"columns\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"logit_mse\"\ntemperature = 0.0\n", "distill.tasks[0].temperature"),
            ("[distill]\nsource = \"columns\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"logit_mse\"\nweight = -1.0\n", "distill.tasks[0].weight"),
            ("[distill]\nsource = \"columns\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"logit_mse\"\nteacher_task = \"x\"\n", "teacher_task"),
            ("[distill]\nsource = \"columns\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"logit_mse\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"pairwise\"\n", "distilled twice"),
            ("[distill]\nsource = \"columns\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"ranknet\"\n", "distill.tasks[0].loss"),
        ];
        for (extra, want) in cases {
            let e = parse(extra).expect_err(extra);
            assert!(e.contains(want) && e.contains("exp.toml"), "{extra}\n-> {e}\n(wanted `{want}`)");
        }
    }
}
