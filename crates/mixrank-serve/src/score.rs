//! The ranking score: one number per candidate from its task predictions.
//!
//! - `product` (YouTube-style): `score = Π_t max(g_t(p_t), floor)^{w_t}`, e.g.
//!   `p_click^a · p_save^b · g(dwell)^c`;
//! - `sum`: `score = Σ_t w_t · g_t(p_t)`;
//!
//! then, with `bid = "<column>"`, multiplied by that request value (eCPM). `g_t` is
//! `identity`, `expm1` (a log1p-trained regression back to its unit) or `log1p`.
//! Without a file the score is the product of every binary task's probability.
//!
//! ```toml
//! combine = "product"
//! bid = "bid"
//! [tasks.click]
//! weight = 1.0
//! [tasks.dwell]
//! weight = 0.5
//! transform = "expm1"
//! ```

use crate::error::{Result, ServeError};
use mixrank_data::config::TaskKind;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    #[default]
    Product,
    Sum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    #[default]
    Identity,
    Expm1,
    Log1p,
}

impl Transform {
    fn apply(self, v: f64) -> f64 {
        match self {
            Transform::Identity => v,
            Transform::Expm1 => v.exp_m1(),
            Transform::Log1p => v.ln_1p(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireTerm {
    weight: f64,
    #[serde(default)]
    transform: Transform,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireScore {
    #[serde(default)]
    combine: Combine,
    bid: Option<String>,
    floor: Option<f64>,
    #[serde(default)]
    tasks: BTreeMap<String, WireTerm>,
}

/// One task's part in the score.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub task: String,
    pub weight: f64,
    pub transform: Transform,
}

/// A validated score definition (task names are checked against a model by
/// [`ScoreConfig::resolve`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScoreConfig {
    pub combine: Combine,
    /// Request column multiplied in (eCPM).
    pub bid: Option<String>,
    /// Lower clamp of each factor of a product (keeps `0^w` and negatives out).
    pub floor: f64,
    /// Empty: the default (product of binary tasks).
    pub terms: Vec<Term>,
    /// Where it came from, for messages.
    pub source: Option<PathBuf>,
}

impl ScoreConfig {
    /// The default: product of every binary task's probability, no bid.
    pub fn default_product() -> Self {
        ScoreConfig { floor: 1e-12, ..Default::default() }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServeError::Config { file: path.to_path_buf(), message: e.to_string() })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let bad = |message: String| ServeError::Config { file: path.to_path_buf(), message };
        let de = toml::Deserializer::parse(text).map_err(|e| bad(format!("invalid TOML: {}", e.message())))?;
        let w: WireScore = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            bad(format!("at `{key}`: {}", e.into_inner().message()))
        })?;
        let floor = w.floor.unwrap_or(1e-12);
        if !(floor.is_finite() && floor >= 0.0) {
            return Err(bad(format!("floor: must be finite and >= 0, found {floor}")));
        }
        let mut terms = Vec::new();
        for (task, t) in w.tasks {
            if !t.weight.is_finite() {
                return Err(bad(format!("tasks.{task}.weight: must be finite, found {}", t.weight)));
            }
            terms.push(Term { task, weight: t.weight, transform: t.transform });
        }
        if let Some(b) = &w.bid {
            if b.is_empty() {
                return Err(bad("bid: empty column name".into()));
            }
        }
        Ok(ScoreConfig { combine: w.combine, bid: w.bid, floor, terms, source: Some(path.to_path_buf()) })
    }

    /// Binds the terms to a model's tasks; an unknown task name is an error.
    pub fn resolve(&self, tasks: &[String], kinds: &[TaskKind]) -> Result<ResolvedScore> {
        let terms = if self.terms.is_empty() {
            kinds
                .iter()
                .enumerate()
                .filter(|(_, k)| **k == TaskKind::Binary)
                .map(|(i, _)| (i, 1.0, Transform::Identity))
                .collect()
        } else {
            self.terms
                .iter()
                .map(|t| match tasks.iter().position(|n| *n == t.task) {
                    Some(i) => Ok((i, t.weight, t.transform)),
                    None => Err(ServeError::Config {
                        file: self.source.clone().unwrap_or_else(|| "score config".into()),
                        message: format!("tasks.{}: unknown task; the model has {}", t.task, tasks.join(", ")),
                    }),
                })
                .collect::<Result<Vec<_>>>()?
        };
        Ok(ResolvedScore { combine: self.combine, floor: self.floor, terms })
    }
}

/// A score definition bound to a model's task order.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedScore {
    combine: Combine,
    floor: f64,
    terms: Vec<(usize, f64, Transform)>,
}

impl ResolvedScore {
    /// The score of row `r` of `preds` (`[task][row]`), times `bid` when given.
    pub fn score(&self, preds: &[Vec<f32>], r: usize, bid: Option<f64>) -> f64 {
        let v = |t: usize, g: Transform| g.apply(preds[t][r] as f64);
        let s = match self.combine {
            Combine::Product => self.terms.iter().map(|&(t, w, g)| v(t, g).max(self.floor).powf(w)).product(),
            Combine::Sum => self.terms.iter().map(|&(t, w, g)| w * v(t, g)).sum::<f64>(),
        };
        s * bid.unwrap_or(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tasks() -> (Vec<String>, Vec<TaskKind>) {
        (
            vec!["click".into(), "save".into(), "dwell".into()],
            vec![TaskKind::Binary, TaskKind::Binary, TaskKind::Regression],
        )
    }

    #[test]
    fn default_is_the_product_of_binary_probabilities() {
        let (t, k) = tasks();
        let s = ScoreConfig::default_product().resolve(&t, &k).unwrap();
        let preds = vec![vec![0.5f32], vec![0.25], vec![3.0]];
        assert!((s.score(&preds, 0, None) - 0.125).abs() < 1e-12);
        assert!((s.score(&preds, 0, Some(4.0)) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn weighted_product_and_sum_with_transforms() {
        let (t, k) = tasks();
        let p = Path::new("s.toml");
        let prod =
            ScoreConfig::parse("[tasks.click]\nweight = 2.0\n[tasks.dwell]\nweight = 0.5\ntransform = \"expm1\"\n", p)
                .unwrap()
                .resolve(&t, &k)
                .unwrap();
        let preds = vec![vec![0.5f32], vec![0.1], vec![(9.0f32).ln_1p()]];
        // 0.5^2 * 9^0.5 = 0.75
        assert!((prod.score(&preds, 0, None) - 0.75).abs() < 1e-5, "{}", prod.score(&preds, 0, None));
        let sum =
            ScoreConfig::parse("combine = \"sum\"\n[tasks.click]\nweight = 2.0\n[tasks.save]\nweight = -1.0\n", p)
                .unwrap()
                .resolve(&t, &k)
                .unwrap();
        assert!((sum.score(&preds, 0, Some(2.0)) - 2.0 * (1.0 - 0.1)).abs() < 1e-6);
    }

    #[test]
    fn unknown_task_and_unknown_key_are_errors() {
        let (t, k) = tasks();
        let p = Path::new("s.toml");
        let e = ScoreConfig::parse("[tasks.like]\nweight = 1.0\n", p).unwrap().resolve(&t, &k).unwrap_err();
        assert!(e.to_string().contains("tasks.like") && e.to_string().contains("s.toml"), "{e}");
        let e = ScoreConfig::parse("combine = \"product\"\nbids = \"x\"\n", p).unwrap_err();
        assert!(e.to_string().contains("bids"), "{e}");
        let e = ScoreConfig::parse("[tasks.click]\nwieght = 1.0\n", p).unwrap_err();
        assert!(e.to_string().contains("tasks.click") && e.to_string().contains("wieght"), "{e}");
        let e = ScoreConfig::parse("combine = \"max\"\n", p).unwrap_err();
        assert!(e.to_string().contains("max"), "{e}");
    }
}
