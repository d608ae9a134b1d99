//! The `[eval]` section: what `mixrank eval` and `mixrank compare` measure beyond the
//! per-task metrics — metrics against known true probabilities (a simulator's ground
//! truth) and an offline replay of the ads auction. Wire structs (TOML shape, unknown
//! keys rejected) and their validation into [`EvalConfig`].
//!
//! ```toml
//! [eval]
//! truth = { click = "p_click_true", save = "p_save_true" }  # task → true-probability column
//! ndcg_k = 5                     # cutoff of the per-request NDCG against the truth (default 10)
//! auction = { bid = "bid", click_task = "click", slots = 1, reserve = 0.0 }
//! ```
//!
//! The columns named here are carried through the data pipeline with `columns.keep`
//! (the validated config appends them there), so they reach the evaluation beside the
//! predictions. docs/auction.md and docs/metrics.md state what is computed.

use super::wire::TaskKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[eval]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Task name → column holding that task's true probability.
    #[serde(default)]
    pub truth: BTreeMap<String, String>,
    /// Cutoff K of the per-request NDCG@K against the truth; default 10.
    pub ndcg_k: Option<usize>,
    /// Replay each request as an auction.
    pub auction: Option<AuctionSection>,
}

/// `[eval] auction` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuctionSection {
    /// Column holding each candidate's bid per click.
    pub bid: String,
    /// The binary task whose prediction is the pCTR.
    pub click_task: String,
    /// Slots per request; default 1.
    #[serde(default = "one")]
    pub slots: usize,
    /// Reserve price per click; default 0.
    #[serde(default)]
    pub reserve: f64,
}

fn one() -> usize {
    1
}

/// Default NDCG cutoff.
pub const DEFAULT_NDCG_K: usize = 10;

/// A task as `[eval]` validation sees it.
pub struct TaskInfo<'a> {
    pub name: &'a str,
    pub kind: TaskKind,
    /// The task has a label mask column.
    pub masked: bool,
}

/// `[eval]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalConfig {
    /// Per task (config order): the column of its true probability, if any.
    pub truth: Vec<Option<String>>,
    pub ndcg_k: usize,
    pub auction: Option<AuctionConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuctionConfig {
    pub bid: String,
    /// Index of the click task.
    pub click_task: usize,
    pub slots: usize,
    pub reserve: f64,
}

impl EvalConfig {
    /// The source columns evaluation reads besides the model's inputs and labels, in a
    /// stable order: truth columns (task order), then the bid.
    pub fn columns(&self) -> Vec<String> {
        let mut out: Vec<String> = self.truth.iter().flatten().cloned().collect();
        out.extend(self.auction.iter().map(|a| a.bid.clone()));
        out
    }
}

/// Validates `[eval]` against the tasks. Errors are (key path, message).
pub fn validate_eval(
    e: &EvalSection,
    tasks: &[TaskInfo<'_>],
    has_request_id: bool,
) -> Result<EvalConfig, (String, String)> {
    let err = |k: &str, m: String| Err((format!("eval.{k}"), m));
    let have = || tasks.iter().map(|t| t.name).collect::<Vec<_>>().join(", ");
    if e.truth.is_empty() && e.auction.is_none() {
        return Err(("eval".into(), "expected `truth` and/or `auction` (an empty [eval] measures nothing)".into()));
    }
    let mut truth = vec![None; tasks.len()];
    for (name, column) in &e.truth {
        let key = format!("truth.{name}");
        let Some(t) = tasks.iter().position(|t| t.name == name) else {
            return err(&key, format!("no task `{name}` (have: {})", have()));
        };
        if tasks[t].kind != TaskKind::Binary {
            return err(&key, format!("task `{name}` is not binary: the truth is a probability of a binary task"));
        }
        if column.is_empty() {
            return err(&key, "expected a column name".into());
        }
        truth[t] = Some(column.clone());
    }
    let ndcg_k = match e.ndcg_k {
        Some(0) => return err("ndcg_k", "expected a positive integer, found 0".into()),
        Some(_) if e.truth.is_empty() => {
            return err("ndcg_k", "has no effect without `eval.truth`: NDCG's gains are the true probabilities".into())
        }
        Some(_) if !has_request_id => {
            return err("ndcg_k", "needs `columns.request_id`: NDCG ranks the candidates of each request".into())
        }
        Some(k) => k,
        None => DEFAULT_NDCG_K,
    };
    let auction = match &e.auction {
        None => None,
        Some(a) => {
            if !has_request_id {
                return err("auction", "needs `columns.request_id`: each request is one auction".into());
            }
            if a.bid.is_empty() {
                return err("auction.bid", "expected a column name".into());
            }
            let Some(t) = tasks.iter().position(|t| t.name == a.click_task) else {
                return err("auction.click_task", format!("no task `{}` (have: {})", a.click_task, have()));
            };
            if tasks[t].kind != TaskKind::Binary {
                return err(
                    "auction.click_task",
                    format!("task `{}` is not binary: its prediction is the pCTR", a.click_task),
                );
            }
            if tasks[t].masked && truth[t].is_none() {
                return err(
                    "auction.click_task",
                    format!(
                        "task `{}` has a label mask, so its label is not a click on every row; give its true CTR as `eval.truth.{}`",
                        a.click_task, a.click_task
                    ),
                );
            }
            if a.slots == 0 {
                return err("auction.slots", "expected a positive integer, found 0".into());
            }
            if !(a.reserve.is_finite() && a.reserve >= 0.0) {
                return err("auction.reserve", format!("expected a finite price >= 0, found {}", a.reserve));
            }
            Some(AuctionConfig { bid: a.bid.clone(), click_task: t, slots: a.slots, reserve: a.reserve })
        }
    };
    Ok(EvalConfig { truth, ndcg_k, auction })
}

/// Validates the file's `[eval]` (if any) and appends the columns it reads to
/// `columns.keep`, so the pipeline carries them. The step of
/// [`super::ExperimentConfig::from_wire`].
pub(super) fn validate(
    wire: &super::wire::ConfigFile,
    tasks: &[super::TaskSpec],
    columns: &mut super::SpecialColumns,
) -> Result<Option<EvalConfig>, (String, String)> {
    let Some(e) = &wire.eval else { return Ok(None) };
    let info: Vec<TaskInfo<'_>> =
        tasks.iter().map(|t| TaskInfo { name: &t.name, kind: t.kind, masked: t.mask.is_some() }).collect();
    let cfg = validate_eval(e, &info, columns.request_id.is_some())?;
    for c in cfg.columns() {
        if !columns.keep.contains(&c) {
            columns.keep.push(c);
        }
    }
    Ok(Some(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tasks() -> Vec<TaskInfo<'static>> {
        vec![
            TaskInfo { name: "click", kind: TaskKind::Binary, masked: false },
            TaskInfo { name: "dwell", kind: TaskKind::Regression, masked: true },
            TaskInfo { name: "conversion", kind: TaskKind::Binary, masked: true },
        ]
    }

    fn parse(text: &str) -> EvalSection {
        toml::from_str::<BTreeMap<String, EvalSection>>(text).unwrap().remove("eval").unwrap()
    }

    fn key_of(text: &str, request: bool) -> (String, String) {
        validate_eval(&parse(text), &tasks(), request).unwrap_err()
    }

    #[test]
    fn valid_sections_and_defaults() {
        let e = validate_eval(
            &parse("[eval]\ntruth = { click = \"p\" }\nauction = { bid = \"b\", click_task = \"click\" }\n"),
            &tasks(),
            true,
        )
        .unwrap();
        assert_eq!(e.truth, vec![Some("p".to_string()), None, None]);
        assert_eq!(e.ndcg_k, DEFAULT_NDCG_K);
        assert_eq!(e.auction, Some(AuctionConfig { bid: "b".into(), click_task: 0, slots: 1, reserve: 0.0 }));
        assert_eq!(e.columns(), vec!["p".to_string(), "b".into()]);
        // A masked click task with its truth given.
        let e = validate_eval(
            &parse("[eval]\ntruth = { conversion = \"pc\" }\nndcg_k = 3\nauction = { bid = \"b\", click_task = \"conversion\", slots = 2, reserve = 0.5 }\n"),
            &tasks(),
            true,
        )
        .unwrap();
        assert_eq!((e.ndcg_k, e.auction.unwrap().click_task), (3, 2));
    }

    #[test]
    fn every_mistake_names_its_key() {
        let cases = [
            ("[eval]\n", true, "eval", "expected `truth` and/or `auction`"),
            (
                "[eval]\ntruth = { clicks = \"p\" }\n",
                true,
                "eval.truth.clicks",
                "no task `clicks` (have: click, dwell, conversion)",
            ),
            ("[eval]\ntruth = { dwell = \"p\" }\n", true, "eval.truth.dwell", "not binary"),
            ("[eval]\ntruth = { click = \"\" }\n", true, "eval.truth.click", "expected a column name"),
            ("[eval]\ntruth = { click = \"p\" }\nndcg_k = 0\n", true, "eval.ndcg_k", "positive"),
            (
                "[eval]\nndcg_k = 3\nauction = { bid = \"b\", click_task = \"click\" }\n",
                true,
                "eval.ndcg_k",
                "without `eval.truth`",
            ),
            ("[eval]\ntruth = { click = \"p\" }\nndcg_k = 3\n", false, "eval.ndcg_k", "columns.request_id"),
            (
                "[eval]\nauction = { bid = \"b\", click_task = \"click\" }\n",
                false,
                "eval.auction",
                "columns.request_id",
            ),
            ("[eval]\nauction = { bid = \"\", click_task = \"click\" }\n", true, "eval.auction.bid", "column name"),
            (
                "[eval]\nauction = { bid = \"b\", click_task = \"save\" }\n",
                true,
                "eval.auction.click_task",
                "no task `save`",
            ),
            (
                "[eval]\nauction = { bid = \"b\", click_task = \"dwell\" }\n",
                true,
                "eval.auction.click_task",
                "not binary",
            ),
            (
                "[eval]\nauction = { bid = \"b\", click_task = \"conversion\" }\n",
                true,
                "eval.auction.click_task",
                "eval.truth.conversion",
            ),
            (
                "[eval]\nauction = { bid = \"b\", click_task = \"click\", slots = 0 }\n",
                true,
                "eval.auction.slots",
                "positive",
            ),
            (
                "[eval]\nauction = { bid = \"b\", click_task = \"click\", reserve = -1.0 }\n",
                true,
                "eval.auction.reserve",
                "found -1",
            ),
            (
                "[eval]\nauction = { bid = \"b\", click_task = \"click\", reserve = nan }\n",
                true,
                "eval.auction.reserve",
                "found NaN",
            ),
        ];
        for (text, request, key, message) in cases {
            let (k, m) = key_of(text, request);
            assert_eq!(k, key, "{text}");
            assert!(m.contains(message), "{text}: {m}");
        }
    }
}
