//! The wire form of a scoring request and its JSON parsing and validation.
//!
//! ```json
//! {
//!   "request_id": "r-1",                      // optional, echoed back
//!   "context":    { "user_id": "u42", "surface": "home_feed", "user_interests": ["c1", "c7"] },
//!   "candidates": [ { "ad_id": "a9", "bid": 1.25 }, { "ad_id": "a3", "bid": 0.5 } ]
//! }
//! ```
//!
//! Features are named by their source column. A context value is broadcast to every
//! candidate. Values: string or integer (categorical), number (dense), list of strings
//! or list of integers (multi-valued categorical), `null` (missing). Every problem is a
//! [`ServeError::BadRequest`] naming the JSON path of the offending value.

use crate::error::{Result, ServeError};
pub use crate::item_table::ItemId;
use serde::Serialize;
use std::collections::BTreeMap;

/// One feature value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Float(f64),
    Str(String),
    IntList(Vec<i64>),
    StrList(Vec<String>),
}

impl Value {
    /// For messages: what kind of value this is.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::IntList(_) => "a list of integers",
            Value::StrList(_) => "a list of strings",
        }
    }

    /// The numeric value, if any (used for the bid).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(*v as f64),
            Value::Float(v) => Some(*v),
            Value::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// Features by source column.
pub type Features = BTreeMap<String, Value>;

/// A request: the shared context and the candidates to score — or, for a two-tower
/// model served with an item table, the ids of the items to score.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreRequest {
    pub request_id: String,
    pub context: Features,
    pub candidates: Vec<Features>,
    /// `item_ids`: items scored from the server's item table against the context's
    /// user (two-tower models; instead of `candidates`).
    pub item_ids: Option<Vec<ItemId>>,
    /// `item_features`: the features of items the table may lack, each with the
    /// table's id column; used only for ids of `item_ids` the table does not have.
    pub item_features: Vec<Features>,
    /// `top_k`: answer only the best K, best first.
    pub top_k: Option<usize>,
    /// `rank_by`: the task `top_k` ranks by (default: the first task).
    pub rank_by: Option<String>,
}

impl Value {
    /// The JSON form [`parse_json`] reads back to the same value.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Int(v) => (*v).into(),
            Value::Float(v) => serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, Into::into),
            Value::Str(s) => s.clone().into(),
            Value::IntList(l) => l.clone().into(),
            Value::StrList(l) => l.clone().into(),
        }
    }
}

impl ScoreRequest {
    /// The JSON body of this request.
    pub fn to_json(&self) -> serde_json::Value {
        let obj = |f: &Features| f.iter().map(|(k, v)| (k.clone(), v.to_json())).collect::<serde_json::Map<_, _>>();
        let mut v = serde_json::json!({
            "request_id": self.request_id,
            "context": obj(&self.context),
        });
        if let Some(ids) = &self.item_ids {
            v["item_ids"] = ids.iter().map(ItemId::to_json).collect::<Vec<_>>().into();
            if !self.item_features.is_empty() {
                v["item_features"] = self.item_features.iter().map(obj).collect::<Vec<_>>().into();
            }
        } else {
            v["candidates"] = self.candidates.iter().map(obj).collect::<Vec<_>>().into();
        }
        if let Some(k) = self.top_k {
            v["top_k"] = k.into();
        }
        if let Some(t) = &self.rank_by {
            v["rank_by"] = t.clone().into();
        }
        v
    }
}

/// Size limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Candidates per request.
    pub max_candidates: usize,
    /// Values in one multi-valued feature.
    pub max_list_len: usize,
    /// Ids in one request's `item_ids`.
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_candidates: 1024, max_list_len: 1024, max_items: 100_000 }
    }
}

impl Limits {
    /// Checks the candidate count.
    pub fn check_candidates(&self, n: usize) -> Result<()> {
        if n > self.max_candidates {
            return Err(ServeError::TooLarge(format!(
                "candidates: {n} candidates exceed the limit of {} per request",
                self.max_candidates
            )));
        }
        Ok(())
    }

    /// Checks the length of a list value at `field`.
    pub fn check_list(&self, field: &str, n: usize) -> Result<()> {
        if n > self.max_list_len {
            return Err(ServeError::TooLarge(format!(
                "{field}: {n} values exceed the limit of {} per feature",
                self.max_list_len
            )));
        }
        Ok(())
    }
}

/// Parses and validates the JSON body of a scoring request.
pub fn parse_json(body: &[u8], limits: &Limits) -> Result<ScoreRequest> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ServeError::bad("", format!("invalid JSON: {e}")))?;
    let serde_json::Value::Object(top) = v else {
        return Err(ServeError::bad("", format!("expected a JSON object, found {}", json_kind(&v))));
    };
    let mut req = ScoreRequest::default();
    let mut saw_candidates = false;
    for (k, v) in top {
        match k.as_str() {
            "request_id" => match v {
                serde_json::Value::String(s) => req.request_id = s,
                serde_json::Value::Number(n) => req.request_id = n.to_string(),
                serde_json::Value::Null => {}
                other => {
                    return Err(ServeError::bad(
                        "request_id",
                        format!("expected a string, found {}", json_kind(&other)),
                    ))
                }
            },
            "context" => match v {
                serde_json::Value::Object(m) => req.context = features("context", m, limits)?,
                serde_json::Value::Null => {}
                other => {
                    return Err(ServeError::bad("context", format!("expected an object, found {}", json_kind(&other))))
                }
            },
            "candidates" => {
                saw_candidates = true;
                let serde_json::Value::Array(list) = v else {
                    return Err(ServeError::bad("candidates", format!("expected an array, found {}", json_kind(&v))));
                };
                limits.check_candidates(list.len())?;
                req.candidates.reserve(list.len());
                for (i, c) in list.into_iter().enumerate() {
                    let at = format!("candidates[{i}]");
                    let serde_json::Value::Object(m) = c else {
                        return Err(ServeError::bad(at, format!("expected an object, found {}", json_kind(&c))));
                    };
                    req.candidates.push(features(&at, m, limits)?);
                }
            }
            "item_ids" => {
                let serde_json::Value::Array(list) = v else {
                    return Err(ServeError::bad("item_ids", format!("expected an array, found {}", json_kind(&v))));
                };
                if list.len() > limits.max_items {
                    return Err(ServeError::TooLarge(format!(
                        "item_ids: {} ids exceed the limit of {} per request",
                        list.len(),
                        limits.max_items
                    )));
                }
                let ids = list
                    .into_iter()
                    .enumerate()
                    .map(|(i, x)| match x {
                        serde_json::Value::Number(n) if n.is_i64() => Ok(ItemId::Int(n.as_i64().unwrap_or_default())),
                        serde_json::Value::String(s) => Ok(ItemId::Str(s)),
                        other => Err(ServeError::bad(
                            format!("item_ids[{i}]"),
                            format!("expected an integer or a string id, found {}", json_kind(&other)),
                        )),
                    })
                    .collect::<Result<Vec<_>>>()?;
                req.item_ids = Some(ids);
            }
            "item_features" => {
                let serde_json::Value::Array(list) = v else {
                    return Err(ServeError::bad(
                        "item_features",
                        format!("expected an array, found {}", json_kind(&v)),
                    ));
                };
                limits.check_candidates(list.len())?;
                for (i, c) in list.into_iter().enumerate() {
                    let at = format!("item_features[{i}]");
                    let serde_json::Value::Object(m) = c else {
                        return Err(ServeError::bad(at, format!("expected an object, found {}", json_kind(&c))));
                    };
                    req.item_features.push(features(&at, m, limits)?);
                }
            }
            "top_k" => match v.as_u64() {
                Some(k) if k >= 1 => req.top_k = Some(k as usize),
                _ => return Err(ServeError::bad("top_k", format!("expected an integer >= 1, found {v}"))),
            },
            "rank_by" => match v {
                serde_json::Value::String(s) => req.rank_by = Some(s),
                other => {
                    return Err(ServeError::bad(
                        "rank_by",
                        format!("expected a task name, found {}", json_kind(&other)),
                    ))
                }
            },
            other => {
                return Err(ServeError::bad(
                    other,
                    "unknown field; a request has `request_id`, `context` and `candidates` (or `item_ids` and \
                     `item_features`), `top_k`, `rank_by`",
                ))
            }
        }
    }
    match (saw_candidates, req.item_ids.is_some()) {
        (false, false) => return Err(ServeError::bad("candidates", "missing")),
        (true, true) => return Err(ServeError::bad("item_ids", "give `candidates` or `item_ids`, not both")),
        _ => {}
    }
    if !req.item_features.is_empty() && req.item_ids.is_none() {
        return Err(ServeError::bad("item_features", "only with `item_ids`"));
    }
    if req.rank_by.is_some() && req.top_k.is_none() {
        return Err(ServeError::bad("rank_by", "only with `top_k`"));
    }
    Ok(req)
}

fn features(at: &str, m: serde_json::Map<String, serde_json::Value>, limits: &Limits) -> Result<Features> {
    m.into_iter()
        .map(|(k, v)| {
            let field = format!("{at}.{k}");
            let value = value(&field, v, limits)?;
            Ok((k, value))
        })
        .collect()
}

fn value(field: &str, v: serde_json::Value, limits: &Limits) -> Result<Value> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Int(b as i64),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => return Err(ServeError::bad(field, format!("integer {u} exceeds the int64 range"))),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::Str(s),
        J::Array(items) => {
            limits.check_list(field, items.len())?;
            if items.iter().all(|x| x.is_string()) {
                Value::StrList(
                    items.into_iter().map(|x| if let J::String(s) = x { s } else { String::new() }).collect(),
                )
            } else if items.iter().all(|x| x.is_i64()) {
                Value::IntList(items.iter().map(|x| x.as_i64().unwrap_or_default()).collect())
            } else {
                // The first element whose kind differs from the first element's.
                let first_is_string = items.first().is_some_and(|x| x.is_string());
                let bad =
                    items.iter().position(|x| if first_is_string { !x.is_string() } else { !x.is_i64() }).unwrap_or(0);
                return Err(ServeError::bad(
                    format!("{field}[{bad}]"),
                    "list elements must be all strings or all integers",
                ));
            }
        }
        J::Object(_) => return Err(ServeError::bad(field, "expected a string, number, list or null, found an object")),
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// One candidate's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CandidateScores {
    /// The item's id (requests with `item_ids`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<ItemId>,
    /// The candidate's position in the request (answers with `top_k`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// One per task, in [`ScoreResponse::tasks`] order.
    pub predictions: Vec<f32>,
    pub score: f64,
}

/// The reply to a [`ScoreRequest`], candidates in request order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreResponse {
    pub request_id: String,
    pub model_version: String,
    pub precision: String,
    pub tasks: Vec<String>,
    pub candidates: Vec<CandidateScores>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> String {
        match parse_json(body.as_bytes(), &Limits::default()) {
            Err(ServeError::BadRequest { field, .. }) => field,
            other => panic!("expected a bad request for {body}, got {other:?}"),
        }
    }

    #[test]
    fn parses_context_candidates_and_value_kinds() {
        let r = parse_json(
            br#"{"request_id":"r","context":{"u":"a","l":[1,2],"s":["x"],"n":null},"candidates":[{"b":1.5,"i":3}]}"#,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(r.request_id, "r");
        assert_eq!(r.context["l"], Value::IntList(vec![1, 2]));
        assert_eq!(r.context["s"], Value::StrList(vec!["x".into()]));
        assert_eq!(r.context["n"], Value::Null);
        assert_eq!(r.candidates[0]["b"], Value::Float(1.5));
        assert_eq!(r.candidates[0]["i"], Value::Int(3));
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(r#"{"candidates":[{"a":1},{"b":{"x":1}}]}"#), "candidates[1].b");
        assert_eq!(field_of(r#"{"candidates":[{"a":[1,"x"]}]}"#), "candidates[0].a[1]");
        assert_eq!(field_of(r#"{"candidates":{}}"#), "candidates");
        assert_eq!(field_of(r#"{"context":[],"candidates":[]}"#), "context");
        assert_eq!(field_of(r#"{"candidate":[]}"#), "candidate");
        assert_eq!(field_of(r#"{"context":{}}"#), "candidates");
        assert_eq!(field_of(r#"{"candidates":[{"a":18446744073709551615}]}"#), "candidates[0].a");
        assert_eq!(field_of("{not json"), "");
        assert_eq!(field_of("[1]"), "");
    }

    #[test]
    fn limits_give_too_large() {
        let l = Limits { max_candidates: 2, max_list_len: 3, max_items: 4 };
        let many = r#"{"candidates":[{},{},{}]}"#;
        assert!(matches!(parse_json(many.as_bytes(), &l), Err(ServeError::TooLarge(_))));
        let long = r#"{"candidates":[{"x":[1,2,3,4]}]}"#;
        assert!(
            matches!(parse_json(long.as_bytes(), &l), Err(ServeError::TooLarge(m)) if m.contains("candidates[0].x"))
        );
    }
}

/// The body of `POST /admin/reload` (empty, or this object; every key optional).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    /// Run directory to switch to (default: the one served now).
    pub model: Option<String>,
    /// Item table to load with it (default: the one served now, if any).
    pub items: Option<String>,
    /// Reload even when the new model changes the request schema.
    #[serde(default)]
    pub force: bool,
}

impl ReloadRequest {
    /// Parses a reload body; an empty or blank body is the default request.
    pub fn parse(body: &[u8]) -> Result<Self> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(ReloadRequest::default());
        }
        serde_json::from_slice(body).map_err(|e| {
            ServeError::bad(
                "",
                format!(
                    "expected {{\"model\": \"RUN_DIR\", \"items\": \"TABLE_DIR\", \"force\": true|false}} \
                     (each optional) or no body: {e}"
                ),
            )
        })
    }
}
