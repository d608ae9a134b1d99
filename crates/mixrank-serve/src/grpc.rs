//! The gRPC front end (tonic): `mixrank.v1.Ranker/Score`, defined in
//! `proto/mixrank.proto`, over the same [`Service`] as HTTP.

use crate::error::ServeError;
use crate::metrics::Protocol;
use crate::proto::{self, value::Kind};
use crate::request::{Features, Limits, ScoreRequest, Value};
use crate::service::Service;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct GrpcRanker {
    pub service: Arc<Service>,
}

/// Converts a proto request, validating value kinds and list lengths.
pub fn from_proto(r: proto::ScoreRequest, limits: &Limits) -> Result<ScoreRequest, ServeError> {
    limits.check_candidates(r.candidates.len())?;
    let features = |at: &str, f: Option<proto::Features>| -> Result<Features, ServeError> {
        let mut out = Features::new();
        for (k, v) in f.map(|f| f.values).unwrap_or_default() {
            let field = format!("{at}.{k}");
            let value = match v.kind {
                None | Some(Kind::NullValue(_)) => Value::Null,
                Some(Kind::StringValue(s)) => Value::Str(s),
                Some(Kind::IntValue(i)) => Value::Int(i),
                Some(Kind::DoubleValue(d)) => Value::Float(d),
                Some(Kind::StringList(l)) => {
                    limits.check_list(&field, l.values.len())?;
                    Value::StrList(l.values)
                }
                Some(Kind::IntList(l)) => {
                    limits.check_list(&field, l.values.len())?;
                    Value::IntList(l.values)
                }
            };
            out.insert(k, value);
        }
        Ok(out)
    };
    let context = features("context", r.context)?;
    let candidates = r
        .candidates
        .into_iter()
        .enumerate()
        .map(|(i, c)| features(&format!("candidates[{i}]"), Some(c)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ScoreRequest { request_id: r.request_id, context, candidates, ..Default::default() })
}

/// The proto form of a request (for clients and tests).
pub fn request_to_proto(r: &ScoreRequest) -> proto::ScoreRequest {
    let f = |f: &Features| proto::Features {
        values: f
            .iter()
            .map(|(k, v)| {
                let kind = match v {
                    Value::Null => Kind::NullValue(true),
                    Value::Int(i) => Kind::IntValue(*i),
                    Value::Float(d) => Kind::DoubleValue(*d),
                    Value::Str(s) => Kind::StringValue(s.clone()),
                    Value::IntList(l) => Kind::IntList(proto::IntList { values: l.clone() }),
                    Value::StrList(l) => Kind::StringList(proto::StringList { values: l.clone() }),
                };
                (k.clone(), proto::Value { kind: Some(kind) })
            })
            .collect(),
    };
    proto::ScoreRequest {
        request_id: r.request_id.clone(),
        context: Some(f(&r.context)),
        candidates: r.candidates.iter().map(f).collect(),
    }
}

/// Converts a response to proto.
pub fn to_proto(r: crate::request::ScoreResponse) -> proto::ScoreResponse {
    proto::ScoreResponse {
        request_id: r.request_id,
        model_version: r.model_version,
        tasks: r.tasks,
        candidates: r
            .candidates
            .into_iter()
            .map(|c| proto::CandidateScores { predictions: c.predictions, score: c.score })
            .collect(),
        precision: r.precision,
    }
}

#[tonic::async_trait]
impl proto::ranker_server::Ranker for GrpcRanker {
    async fn score(&self, request: Request<proto::ScoreRequest>) -> Result<Response<proto::ScoreResponse>, Status> {
        let t = std::time::Instant::now();
        let req = match from_proto(request.into_inner(), &self.service.limits) {
            Ok(r) => r,
            Err(e) => {
                self.service.record_rejected(Protocol::Grpc, &e, t);
                return Err(e.grpc_status());
            }
        };
        match self.service.score(req, Protocol::Grpc).await {
            Ok(r) => Ok(Response::new(to_proto(r))),
            Err(e) => Err(e.grpc_status()),
        }
    }
}
