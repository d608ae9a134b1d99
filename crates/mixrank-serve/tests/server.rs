//! A real server on 127.0.0.1:0 around a small trained model: HTTP and gRPC results
//! equal to `mixrank eval`'s, malformed requests, back-pressure, limits, timeouts,
//! reload under load, refused checkpoints, the watcher and graceful shutdown.

mod common;

use common::*;
use mixrank_engine::CpuOps;
use mixrank_serve::grpc::request_to_proto;
use mixrank_serve::proto::ranker_client::RankerClient;
use mixrank_serve::replay::{requests_from_parquet, split_files, Grouping};
use mixrank_serve::request::ScoreRequest;
use mixrank_serve::{Precision, ServeOptions};
use mixrank_train::CheckpointScorer;
use std::time::{Duration, Instant};

/// Requests rebuilt from the first `rows` rows of the test split, grouped by request id.
fn test_requests(rows: usize) -> Vec<ScoreRequest> {
    let f = fixture();
    let files = split_files(&f.config, "test").unwrap();
    requests_from_parquet(&files[0], &f.config, Grouping::RequestId, rows).unwrap()
}

/// `mixrank eval`'s predictions `[task][row]` of the test split at `precision`: with
/// its own batching (`batch_rows = None`, 4096 rows) or in batches of `batch_rows`.
fn eval_predictions(precision: Precision, batch_rows: Option<usize>) -> Vec<Vec<f32>> {
    let f = fixture();
    let ops = CpuOps::new();
    let mut s = CheckpointScorer::open(&f.run, &ops, None).unwrap();
    if precision == Precision::Bf16 {
        s.loaded.model.use_bf16(&ops.with_bf16_kernel(mixrank_engine::bf16::Bf16Kernel::detect())).unwrap();
    }
    match batch_rows {
        None => s.score(&ops, "test").unwrap().preds,
        Some(n) => {
            let mut cfg = (*s.config).clone();
            cfg.data.batch_size = n;
            let stats = std::sync::Arc::new(s.loaded.manifest.dense_stats.clone());
            let cfg = std::sync::Arc::new(cfg);
            let enc = mixrank_data::Encoder::new(cfg.clone(), mixrank_data::DenseMode::Fitted(stats)).unwrap();
            mixrank_train::evaluate(&mut *s.loaded.model, &ops, std::sync::Arc::new(enc), cfg.split("test").unwrap())
                .unwrap()
                .preds
        }
    }
}

#[test]
fn http_and_grpc_scores_equal_eval_on_the_same_rows() {
    let f = fixture();
    let reqs = test_requests(400);
    let n_rows: usize = reqs.iter().map(|r| r.candidates.len()).sum();
    assert!(reqs.len() >= 20 && reqs.iter().any(|r| !r.context.is_empty()), "replay groups requests with a context");
    let rt = runtime();
    for precision in [Precision::F32, Precision::Bf16] {
        // The simulator's requests have 10 candidates each, in file order, and are
        // sent one at a time: eval in batches of 10 runs the very same forwards.
        assert!(reqs.iter().all(|r| r.candidates.len() == 10));
        let same_batches = eval_predictions(precision, Some(10));
        let eval_default = eval_predictions(precision, None);
        let mut opts = ServeOptions::new(&f.run, engine());
        opts.precision = precision;
        let server = start(&rt, opts);
        let mut grpc = rt.block_on(RankerClient::connect(format!("http://{}", server.grpc_addr.unwrap()))).unwrap();
        let mut row = 0;
        let (mut max_diff, mut max_diff_default) = (0f32, 0f32);
        for req in &reqs {
            let http = post_json(server.http_addr, "/v1/score", &req.to_json().to_string());
            assert_eq!(http.status, 200, "{}", http.body);
            let h = http.json();
            let g = rt.block_on(grpc.score(request_to_proto(req))).unwrap().into_inner();
            assert_eq!(h["model_version"], g.model_version.as_str());
            assert_eq!(g.precision, precision.name());
            assert_eq!(g.tasks, ["click", "save", "dwell", "conversion"]);
            assert_eq!(g.candidates.len(), req.candidates.len());
            for (i, gc) in g.candidates.iter().enumerate() {
                let hc: Vec<f32> = h["candidates"][i]["predictions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                // HTTP and gRPC: the same bits.
                assert_eq!(hc, gc.predictions, "request {} candidate {i}", req.request_id);
                // (serde_json's default float parser may be 1 ulp off on the client side.)
                let hs = h["candidates"][i]["score"].as_f64().unwrap();
                assert!((hs - gc.score).abs() <= 2.0 * f64::EPSILON * gc.score.abs(), "{hs} vs {}", gc.score);
                for (t, &p) in gc.predictions.iter().enumerate() {
                    max_diff = max_diff.max((p - same_batches[t][row]).abs());
                    max_diff_default = max_diff_default.max((p - eval_default[t][row]).abs());
                }
                // Default score: product of the binary tasks' probabilities.
                let prod = gc.predictions[0] as f64 * gc.predictions[1] as f64 * gc.predictions[3] as f64;
                assert!((gc.score - prod).abs() <= 1e-12 * prod.max(1.0), "{} vs {prod}", gc.score);
                row += 1;
            }
        }
        assert_eq!(row, n_rows);
        // Same rows, same batches, same precision: bit-identical to evaluate().
        assert_eq!(max_diff, 0.0, "{precision:?}: served predictions differ from eval's by up to {max_diff}");
        // Against eval's 4096-row batches a row can land in a different GEMM block
        // (f32: the reduction is blocked differently; bf16: an AMX tile instead of the
        // AVX512-BF16 edge kernel), which changes the last f32 bit of an accumulation.
        // f32 keeps that at a few ulps; bf16 re-rounds every activation to 8 bits, so
        // one flipped rounding can carry a bf16 ulp (2^-8 relative) to the output.
        let bound = if precision == Precision::F32 { 1e-6 } else { 2f32.powi(-8) };
        assert!(max_diff_default <= bound, "{precision:?}: {max_diff_default}");
        eprintln!("{precision:?}: max |served - eval(4096-row batches)| = {max_diff_default:e}");
        server.shutdown();
        rt.block_on(server.wait()).unwrap();
    }
}

/// A deterministic generator of malformed and odd requests from a valid one.
fn mutations(valid: &serde_json::Value, n: usize) -> Vec<Vec<u8>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let text = valid.to_string();
    let cands = valid["candidates"].as_array().unwrap();
    let cand_keys: Vec<String> = cands[0].as_object().unwrap().keys().cloned().collect();
    let ctx_keys: Vec<String> = valid["context"].as_object().unwrap().keys().cloned().collect();
    let odd_values = [
        serde_json::json!({"a": 1}),
        serde_json::json!([[1, 2]]),
        serde_json::json!([1, "x"]),
        serde_json::json!(true),
        serde_json::json!(1e308),
        serde_json::json!(-1.5),
        serde_json::json!(""),
        serde_json::json!("not a number"),
        serde_json::json!(null),
        serde_json::json!(u64::MAX),
        serde_json::json!(i64::MIN),
        serde_json::json!([]),
        serde_json::json!(vec!["x"; 2000]),
        serde_json::json!(0),
    ];
    let mut out = Vec::new();
    for i in 0..n {
        let mut v = valid.clone();
        let body = match i % 10 {
            0 => text.as_bytes()[..rng.random_range(0..text.len())].to_vec(),
            1 => (0..rng.random_range(0..64)).map(|_| rng.random::<u8>()).collect(),
            2 => {
                let k = &cand_keys[rng.random_range(0..cand_keys.len())];
                let c = rng.random_range(0..cands.len());
                v["candidates"][c].as_object_mut().unwrap().remove(k);
                v.to_string().into_bytes()
            }
            3 => {
                let c = rng.random_range(0..cands.len());
                v["candidates"][c]["no_such_feature"] = serde_json::json!(1);
                v.to_string().into_bytes()
            }
            4 => {
                let k = &cand_keys[rng.random_range(0..cand_keys.len())];
                let c = rng.random_range(0..cands.len());
                v["candidates"][c][k] = odd_values[rng.random_range(0..odd_values.len())].clone();
                v.to_string().into_bytes()
            }
            5 if !ctx_keys.is_empty() => {
                let k = &ctx_keys[rng.random_range(0..ctx_keys.len())];
                v["context"][k] = odd_values[rng.random_range(0..odd_values.len())].clone();
                v.to_string().into_bytes()
            }
            6 => match rng.random_range(0..6) {
                0 => br#"{"candidates": []}"#.to_vec(),
                1 => br#"{"candidates": [{"x": NaN}]}"#.to_vec(),
                2 => format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
                3 => b"null".to_vec(),
                4 => br#"{"candidates": null}"#.to_vec(),
                _ => text.replace("candidates", "kandidates").into_bytes(),
            },
            7 => {
                // Context and candidate both give a feature.
                let k = &cand_keys[rng.random_range(0..cand_keys.len())];
                v["context"][k] = cands[0][k].clone();
                v.to_string().into_bytes()
            }
            8 => {
                let many: Vec<serde_json::Value> = (0..2000).map(|_| cands[0].clone()).collect();
                v["candidates"] = many.into();
                v.to_string().into_bytes()
            }
            _ => {
                // Flip a few bytes.
                let mut b = text.clone().into_bytes();
                for _ in 0..3 {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random_range(32..127);
                }
                b
            }
        };
        out.push(body);
    }
    out
}

#[test]
fn malformed_requests_are_rejected_and_never_take_the_server_down() {
    let f = fixture();
    let valid = test_requests(40).remove(0).to_json();
    let rt = runtime();
    let server = start(&rt, ServeOptions::new(&f.run, engine()));
    let mut statuses = std::collections::BTreeMap::new();
    for body in mutations(&valid, 400) {
        let r = http(server.http_addr, "POST", "/v1/score", &[("Content-Type", "application/json")], &body);
        assert!(
            matches!(r.status, 200 | 400 | 413),
            "status {} for {}: {}",
            r.status,
            String::from_utf8_lossy(&body[..body.len().min(300)]),
            r.body
        );
        if r.status == 400 {
            let e = r.json();
            assert_eq!(e["error"]["code"], "bad_request", "{}", r.body);
            assert!(!e["error"]["message"].as_str().unwrap().is_empty());
        }
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    assert!(statuses.get(&400).copied().unwrap_or(0) > 100, "{statuses:?}");
    assert!(statuses.get(&413).copied().unwrap_or(0) > 0, "{statuses:?}");
    // Field names in errors.
    let mut v = valid.clone();
    let key = v["candidates"][1].as_object().unwrap().keys().next().unwrap().clone();
    v["candidates"][1].as_object_mut().unwrap().remove(&key);
    let r = post_json(server.http_addr, "/v1/score", &v.to_string());
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str().unwrap()),
        (400, format!("candidates[1].{key}").as_str())
    );
    let mut v = valid.clone();
    v["context"]["surface"] = "moon".into();
    v["candidates"].as_array_mut().unwrap().iter_mut().for_each(|c| {
        c.as_object_mut().unwrap().remove("surface");
    });
    let r = post_json(server.http_addr, "/v1/score", &v.to_string());
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["field"], "context.surface", "{}", r.body);
    assert!(r.body.contains("home_feed"), "{}", r.body);
    // An empty candidate list is a valid, empty answer.
    let r = post_json(server.http_addr, "/v1/score", r#"{"context": {}, "candidates": []}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["candidates"].as_array().unwrap().len(), 0);
    // gRPC: NaN, a missing value kind and a wrong kind are INVALID_ARGUMENT.
    let mut grpc = rt.block_on(RankerClient::connect(format!("http://{}", server.grpc_addr.unwrap()))).unwrap();
    let req = test_requests(40).remove(0);
    let dense_col = f.config.dense[0].column.clone();
    for bad in [
        mixrank_serve::proto::value::Kind::DoubleValue(f64::NAN),
        mixrank_serve::proto::value::Kind::StringValue("abc".into()),
        mixrank_serve::proto::value::Kind::IntList(mixrank_serve::proto::IntList { values: vec![1, 2] }),
    ] {
        let mut p = request_to_proto(&req);
        let target = if p.context.as_ref().unwrap().values.contains_key(&dense_col) {
            p.context.as_mut().unwrap()
        } else {
            &mut p.candidates[0]
        };
        target.values.insert(dense_col.clone(), mixrank_serve::proto::Value { kind: Some(bad) });
        let e = rt.block_on(grpc.score(p)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(&dense_col), "{}", e.message());
    }
    // Still serving, and every rejection was counted.
    let ok = post_json(server.http_addr, "/v1/score", &valid.to_string());
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(get(server.http_addr, "/healthz").status, 200);
    let m = get(server.http_addr, "/metrics").body;
    assert!(m.contains("outcome=\"bad_request\""), "{m}");
    server.shutdown();
    rt.block_on(server.wait()).unwrap();
}

#[test]
fn backpressure_timeouts_and_size_limits() {
    let f = fixture();
    let req = test_requests(40).remove(0);
    let body = req.to_json().to_string();
    let rt = runtime();
    let mut opts = ServeOptions::new(&f.run, engine());
    opts.batcher.queue_capacity = 1;
    opts.timeout = Duration::from_secs(20);
    opts.limits.max_candidates = 50;
    opts.max_body_bytes = 64 << 10;
    let server = start(&rt, opts);
    let addr = server.http_addr;
    {
        // With the worker paused, at most two requests fit (one taken, one queued).
        let _pause = server.service.batcher.pause();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = body.clone();
                std::thread::spawn(move || post_json(addr, "/v1/score", &b))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.service.metrics.requests_with("overloaded") < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(_pause);
        let replies: Vec<Reply> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let n429 = replies.iter().filter(|r| r.status == 429).count();
        let n200 = replies.iter().filter(|r| r.status == 200).count();
        // One request taken by the paused worker and one queued, or (when the worker
        // had not taken the first yet) just one queued; the rest are turned away.
        assert!(n429 + n200 == 4 && (n200 == 1 || n200 == 2), "{replies:?}");
        let over = replies.iter().find(|r| r.status == 429).unwrap();
        assert_eq!(over.json()["error"]["code"], "overloaded");
    }
    // Too many candidates and too large a body: 413.
    let mut big = req.clone();
    while big.candidates.len() <= 50 {
        big.candidates.extend(req.candidates.clone());
    }
    let r = post_json(addr, "/v1/score", &big.to_json().to_string());
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("limit of 50"), "{}", r.body);
    let huge = format!(r#"{{"candidates": [{{"x": "{}"}}]}}"#, "y".repeat(100 << 10));
    assert_eq!(post_json(addr, "/v1/score", &huge).status, 413);
    let mut grpc = rt.block_on(RankerClient::connect(format!("http://{}", server.grpc_addr.unwrap()))).unwrap();
    let e = rt.block_on(grpc.score(request_to_proto(&big))).unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    server.shutdown();
    rt.block_on(server.wait()).unwrap();

    // A request that cannot be scored in time: 504 / DEADLINE_EXCEEDED.
    let mut opts = ServeOptions::new(&f.run, engine());
    opts.timeout = Duration::from_millis(200);
    let server = start(&rt, opts);
    {
        let _pause = server.service.batcher.pause();
        let r = post_json(server.http_addr, "/v1/score", &body);
        assert_eq!(r.status, 504, "{}", r.body);
        let mut grpc = rt.block_on(RankerClient::connect(format!("http://{}", server.grpc_addr.unwrap()))).unwrap();
        let e = rt.block_on(grpc.score(request_to_proto(&req))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    }
    assert_eq!(post_json(server.http_addr, "/v1/score", &body).status, 200);
    server.shutdown();
    rt.block_on(server.wait()).unwrap();
}

#[test]
fn reload_under_load_fails_no_request_and_refuses_a_corrupt_checkpoint() {
    let f = fixture();
    let run_b = f.dir.join("run-b");
    copy_run(&f.run, &run_b);
    let bad = f.dir.join("run-bad");
    copy_run(&f.run, &bad);
    let w = bad.join("checkpoint/weights.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0xff;
    std::fs::write(&w, bytes).unwrap();

    let bodies: Vec<String> = test_requests(200).iter().map(|r| r.to_json().to_string()).collect();
    let rt = runtime();
    let mut opts = ServeOptions::new(&f.run, engine());
    opts.admin_token = Some("s3cret".into());
    let server = start(&rt, opts);
    let addr = server.http_addr;
    let v0 = get(addr, "/v1/model").json()["version"].as_str().unwrap().to_string();
    let auth = [("Authorization", "Bearer s3cret")];
    assert_eq!(http(addr, "POST", "/admin/reload", &[], b"").status, 401);
    assert_eq!(http(addr, "POST", "/admin/reload", &[("Authorization", "Bearer nope")], b"").status, 401);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let bodies = bodies.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                let mut failures = Vec::new();
                let mut n = 0;
                // Bounded: at most 400 requests per client.
                while n < 400 && !(stop.load(std::sync::atomic::Ordering::SeqCst) && n >= 20) {
                    let r = post_json(addr, "/v1/score", &bodies[(c * 7 + n) % bodies.len()]);
                    if r.status == 200 {
                        seen.insert(r.json()["model_version"].as_str().unwrap().to_string());
                    } else {
                        failures.push((r.status, r.body));
                    }
                    n += 1;
                }
                (n, seen, failures)
            })
        })
        .collect();
    // Alternate between two checkpoints, with a corrupt one refused in between.
    for i in 0..6 {
        let target = if i % 2 == 0 { &run_b } else { &f.run };
        let body = format!(r#"{{"model": "{}"}}"#, target.display());
        let r = http(addr, "POST", "/admin/reload", &auth, body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.body);
        let body = format!(r#"{{"model": "{}"}}"#, bad.display());
        let r = http(addr, "POST", "/admin/reload", &auth, body.as_bytes());
        assert_eq!(r.status, 422, "{}", r.body);
        assert!(r.body.contains("corrupt or partial"), "{}", r.body);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    let mut versions = std::collections::BTreeSet::new();
    for c in clients {
        let (n, seen, failures) = c.join().unwrap();
        assert!(failures.is_empty(), "failed requests during reload: {failures:?}");
        total += n;
        versions.extend(seen);
    }
    assert!(total >= 80, "{total}");
    let v_end = get(addr, "/v1/model").json()["version"].as_str().unwrap().to_string();
    assert_eq!(v_end, v0, "six reloads end on the first run");
    assert!(versions.iter().all(|v| v.starts_with("run@") || v.starts_with("run-b@")), "{versions:?}");
    let m = get(addr, "/metrics").body;
    assert!(m.contains("mixrank_reloads_total{outcome=\"ok\"} 6"), "{m}");
    assert!(m.contains("mixrank_reloads_total{outcome=\"refused\"} 6"), "{m}");
    assert!(!m.contains("outcome=\"internal\""), "{m}");
    server.shutdown();
    rt.block_on(server.wait()).unwrap();
}

#[test]
fn a_changed_manifest_is_picked_up_by_the_watcher() {
    let f = fixture();
    let run = f.dir.join("run-watch");
    copy_run(&f.run, &run);
    let rt = runtime();
    let mut opts = ServeOptions::new(&run, engine());
    opts.watch = Some(Duration::from_millis(50));
    let server = start(&rt, opts);
    let v0 = get(server.http_addr, "/v1/model").json()["version"].as_str().unwrap().to_string();
    // A new checkpoint with the same weights at a later step.
    let mpath = run.join("checkpoint/manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    let step = m["step"].as_u64().unwrap();
    m["step"] = (step + 100).into();
    let text = m.to_string();
    mixrank_data::atomic::write_atomic(&mpath, text.as_bytes()).unwrap();
    // The manifest's own checksum is written last, as the trainer does.
    let sum = mixrank_train::checkpoint::xxh3(text.as_bytes());
    mixrank_data::atomic::write_atomic(&run.join("checkpoint/manifest.xxh3"), sum.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut v = v0.clone();
    while v == v0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        v = get(server.http_addr, "/v1/model").json()["version"].as_str().unwrap().to_string();
    }
    assert!(v.starts_with(&format!("run-watch@{}#", step + 100)), "{v0} -> {v}");
    server.shutdown();
    rt.block_on(server.wait()).unwrap();
}

#[test]
fn graceful_shutdown_answers_requests_in_flight() {
    let f = fixture();
    let body = test_requests(40).remove(0).to_json().to_string();
    let rt = runtime();
    let server = start(&rt, ServeOptions::new(&f.run, engine()));
    let addr = server.http_addr;
    let pause = server.service.batcher.pause();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let b = body.clone();
            std::thread::spawn(move || post_json(addr, "/v1/score", &b))
        })
        .collect();
    // Wait until all three are in flight: three queued, or two queued and the first
    // taken by the paused worker. Two queued alone may also be the first two before the
    // worker woke up, with the third not yet connected, so two must hold for 500 ms (the
    // worker takes a request within microseconds of its arrival).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut two_since: Option<Instant> = None;
    while Instant::now() < deadline {
        match server.service.batcher.depth() {
            3 => break,
            2 if two_since.is_some_and(|t| t.elapsed() > Duration::from_millis(500)) => break,
            2 => two_since = two_since.or(Some(Instant::now())),
            _ => two_since = None,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!((2..=3).contains(&server.service.batcher.depth()), "{}", server.service.batcher.depth());
    server.shutdown();
    assert!(!server.service.is_ready());
    drop(pause);
    for t in threads {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    rt.block_on(server.wait()).unwrap();
    assert!(std::net::TcpStream::connect(addr).is_err(), "closed after shutdown");
}

/// `v` with `column` removed from the context and every candidate.
fn without(v: &serde_json::Value, column: &str) -> serde_json::Value {
    let mut v = v.clone();
    v["context"].as_object_mut().unwrap().remove(column);
    for c in v["candidates"].as_array_mut().unwrap() {
        c.as_object_mut().unwrap().remove(column);
    }
    v
}

/// Every candidate's predictions, as the JSON numbers the server wrote.
fn predictions(r: &Reply) -> Vec<serde_json::Value> {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["candidates"].as_array().unwrap().iter().map(|c| c["predictions"].clone()).collect()
}

fn ignored_position(addr: std::net::SocketAddr) -> Option<u64> {
    let m = get(addr, "/metrics").body;
    m.lines()
        .find_map(|l| l.strip_prefix("mixrank_ignored_fields_total{column=\"position\"} "))
        .map(|v| v.parse().unwrap())
}

/// A model whose position feeds only the position tower (off at serving) scores a
/// request without position; the same request with positions (logged, or all moved)
/// gets the same predictions bit for bit, over HTTP and gRPC, and each such request is
/// counted in /metrics.
#[test]
fn a_position_tower_model_needs_no_position_and_ignores_a_sent_one() {
    let f = tower_fixture();
    let files = split_files(&f.config, "test").unwrap();
    let reqs = requests_from_parquet(&files[0], &f.config, Grouping::RequestId, 40).unwrap();
    let logged = reqs[0].to_json();
    let sent = |v: &serde_json::Value| {
        v["context"].get("position").is_some()
            || v["candidates"].as_array().unwrap().iter().any(|c| c.get("position").is_some())
    };
    assert!(sent(&logged), "the replayed request carries the logged position: {logged}");
    let no_position = without(&logged, "position");
    assert!(!sent(&no_position));
    let mut moved = no_position.clone();
    for (i, c) in moved["candidates"].as_array_mut().unwrap().iter_mut().enumerate() {
        c["position"] = serde_json::json!((i * 7) % 10 + 1);
    }
    let rt = runtime();
    let server = start(&rt, ServeOptions::new(&f.run, engine()));
    let addr = server.http_addr;
    let model = get(addr, "/v1/model").json();
    assert_eq!(model["ignored"], serde_json::json!(["position"]), "{model}");
    assert!(!model["features"].as_array().unwrap().contains(&"position".into()), "{model}");
    assert!(model["features"].as_array().unwrap().contains(&"device".into()), "device feeds the head: {model}");

    let base = predictions(&post_json(addr, "/v1/score", &no_position.to_string()));
    assert_eq!(base.len(), reqs[0].candidates.len());
    assert_eq!(ignored_position(addr), None, "nothing ignored yet");
    assert_eq!(predictions(&post_json(addr, "/v1/score", &logged.to_string())), base, "logged positions ignored");
    assert_eq!(ignored_position(addr), Some(1));
    assert_eq!(predictions(&post_json(addr, "/v1/score", &moved.to_string())), base, "moved positions ignored");
    assert_eq!(ignored_position(addr), Some(2));
    // A position in the context is ignored too (not "given twice" with the candidates').
    let mut in_context = logged.clone();
    in_context["context"]["position"] = 3.into();
    assert_eq!(predictions(&post_json(addr, "/v1/score", &in_context.to_string())), base);
    assert_eq!(ignored_position(addr), Some(3));
    // gRPC: the same bits, with and without position.
    let mut grpc = rt.block_on(RankerClient::connect(format!("http://{}", server.grpc_addr.unwrap()))).unwrap();
    let mut stripped = reqs[0].clone();
    stripped.context.remove("position");
    stripped.candidates.iter_mut().for_each(|c| {
        c.remove("position");
    });
    for req in [&reqs[0], &stripped] {
        let g = rt.block_on(grpc.score(request_to_proto(req))).unwrap().into_inner();
        for (gc, h) in g.candidates.iter().zip(&base) {
            let h: Vec<f32> = h.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            assert_eq!(gc.predictions, h);
        }
    }
    assert_eq!(ignored_position(addr), Some(4), "the gRPC request with positions");
    // Other features are still required.
    let r = post_json(addr, "/v1/score", &without(&logged, "device").to_string());
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["field"], "candidates[0].device", "{}", r.body);
    server.shutdown();
    rt.block_on(server.wait()).unwrap();
}

/// Without a position tower, position is a head feature: a request without it is
/// refused as before, naming the field, and /v1/model lists nothing as ignored.
#[test]
fn a_model_without_a_tower_still_requires_position() {
    let f = fixture();
    let v = without(&test_requests(40).remove(0).to_json(), "position");
    let rt = runtime();
    let server = start(&rt, ServeOptions::new(&f.run, engine()));
    let r = post_json(server.http_addr, "/v1/score", &v.to_string());
    assert_eq!(r.status, 400, "{}", r.body);
    let e = r.json();
    assert_eq!(e["error"]["field"], "candidates[0].position", "{}", r.body);
    assert_eq!(
        e["error"]["message"],
        "missing feature (give it in the context or in every candidate; null for a missing value)",
        "{}",
        r.body
    );
    let model = get(server.http_addr, "/v1/model").json();
    assert_eq!(model["ignored"], serde_json::json!([]), "{model}");
    assert!(model["features"].as_array().unwrap().contains(&"position".into()), "{model}");
    assert_eq!(ignored_position(server.http_addr), None);
    server.shutdown();
    rt.block_on(server.wait()).unwrap();
}

/// `serve_position = 2`: the tower runs at serving with position 2 for every row. A
/// request needs no position (one sent is ignored and counted), and the served
/// predictions equal `mixrank eval`'s on the same rows (which run the tower the same way).
#[test]
fn serve_position_serves_like_eval_and_needs_no_position() {
    let f = tower_fixture_with("tower-serve-position", Some(2));
    let files = split_files(&f.config, "test").unwrap();
    let reqs = requests_from_parquet(&files[0], &f.config, Grouping::RequestId, 30).unwrap();
    // eval's predictions of the test split, in batches of one request (10 rows).
    let ops = CpuOps::new();
    let mut s = CheckpointScorer::open(&f.run, &ops, None).unwrap();
    let mut cfg = (*s.config).clone();
    cfg.data.batch_size = 10;
    let stats = std::sync::Arc::new(s.loaded.manifest.dense_stats.clone());
    let cfg = std::sync::Arc::new(cfg);
    let enc = mixrank_data::Encoder::new(cfg.clone(), mixrank_data::DenseMode::Fitted(stats)).unwrap();
    let eval =
        mixrank_train::evaluate(&mut *s.loaded.model, &ops, std::sync::Arc::new(enc), cfg.split("test").unwrap())
            .unwrap()
            .preds;
    let rt = runtime();
    let server = start(&rt, ServeOptions::new(&f.run, engine()));
    let addr = server.http_addr;
    assert_eq!(get(addr, "/v1/model").json()["ignored"], serde_json::json!(["position"]));
    let mut row = 0;
    for (k, req) in reqs.iter().enumerate() {
        let logged = req.to_json();
        let base = predictions(&post_json(addr, "/v1/score", &without(&logged, "position").to_string()));
        assert_eq!(predictions(&post_json(addr, "/v1/score", &logged.to_string())), base);
        assert_eq!(ignored_position(addr), Some(k as u64 + 1));
        for p in &base {
            for (t, v) in p.as_array().unwrap().iter().enumerate() {
                assert_eq!(v.as_f64().unwrap() as f32, eval[t][row], "request {k}, row {row}, task {t}");
            }
            row += 1;
        }
    }
    assert!(row >= 20);
    server.shutdown();
    rt.block_on(server.wait()).unwrap();
}

fn version(addr: std::net::SocketAddr) -> String {
    get(addr, "/v1/model").json()["version"].as_str().unwrap().to_string()
}

#[test]
fn the_admin_endpoint_is_off_without_a_token_and_absent_with_the_route_off() {
    let f = fixture();
    let run_b = f.dir.join("run-admin-off");
    copy_run(&f.run, &run_b);
    let rt = runtime();
    let server = start(&rt, ServeOptions::new(&f.run, engine()));
    let addr = server.http_addr;
    let v0 = version(addr);
    // No token configured: every reload is refused, whatever it carries.
    let body = format!(r#"{{"model": "{}"}}"#, run_b.display());
    for (headers, body) in [
        (vec![], ""),
        (vec![], body.as_str()),
        (vec![("Authorization", "Bearer anything")], body.as_str()),
        (vec![("Authorization", "Bearer ")], r#"{"force": true}"#),
    ] {
        let r = http(addr, "POST", "/admin/reload", &headers, body.as_bytes());
        assert_eq!(r.status, 403, "{}", r.body);
        let e = &r.json()["error"];
        assert_eq!(e["code"], "admin_disabled", "{}", r.body);
        assert!(e["message"].as_str().unwrap().contains("--admin-token"), "{}", r.body);
    }
    assert_eq!(version(addr), v0, "the served model did not change");
    let m = get(addr, "/metrics").body;
    assert!(!m.contains("mixrank_reloads_total{outcome=\"ok\"}"), "{m}");
    server.shutdown();
    rt.block_on(server.wait()).unwrap();

    // With the route off the path does not exist.
    let mut opts = ServeOptions::new(&f.run, engine());
    opts.admin_route = false;
    opts.admin_token = None;
    let server = start(&rt, opts);
    assert_eq!(http(server.http_addr, "POST", "/admin/reload", &[], b"").status, 404);
    assert_eq!(get(server.http_addr, "/healthz").status, 200);
    server.shutdown();
    rt.block_on(server.wait()).unwrap();
}

#[test]
fn a_reload_changing_the_request_schema_is_refused_with_409_unless_forced() {
    let f = fixture();
    let other = schema_fixture();
    let rt = runtime();
    let mut opts = ServeOptions::new(&f.run, engine());
    opts.admin_token = Some("s3cret".into());
    let server = start(&rt, opts);
    let addr = server.http_addr;
    let v0 = version(addr);
    let auth = [("Authorization", "Bearer s3cret")];
    let target = format!(r#"{{"model": "{}"}}"#, other.run.display());
    // A wrong token is 401 before anything is loaded.
    assert_eq!(http(addr, "POST", "/admin/reload", &[("Authorization", "Bearer nope")], target.as_bytes()).status, 401);
    // Unknown keys and wrong types are 400.
    assert_eq!(http(addr, "POST", "/admin/reload", &auth, br#"{"modle": "x"}"#).status, 400);
    assert_eq!(http(addr, "POST", "/admin/reload", &auth, br#"{"force": "yes"}"#).status, 400);

    let r = http(addr, "POST", "/admin/reload", &auth, target.as_bytes());
    assert_eq!(r.status, 409, "{}", r.body);
    let v = r.json();
    assert_eq!(v["error"]["code"], "schema_changed", "{}", r.body);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("feature columns removed: ad_age_days") && msg.contains("tasks removed: conversion"), "{msg}");
    let ch = &v["schema_changes"];
    assert_eq!(ch["features_removed"], serde_json::json!(["ad_age_days"]), "{}", r.body);
    assert_eq!(ch["features_added"], serde_json::json!([]), "{}", r.body);
    assert_eq!(ch["tasks_removed"], serde_json::json!(["conversion"]), "{}", r.body);
    assert_eq!(ch["tasks_added"], serde_json::json!([]), "{}", r.body);
    assert!(ch["tasks_reordered"].is_null(), "{}", r.body);
    // The old model still serves, with its four tasks.
    assert_eq!(version(addr), v0);
    let body = test_requests(40).remove(0).to_json().to_string();
    let s = post_json(addr, "/v1/score", &body);
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(s.json()["tasks"].as_array().unwrap().len(), 4, "{}", s.body);
    assert_eq!(s.json()["model_version"], v0.as_str());

    // Forced: swapped, and the answer says what changed.
    let forced = format!(r#"{{"model": "{}", "force": true}}"#, other.run.display());
    let r = http(addr, "POST", "/admin/reload", &auth, forced.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["previous"], v0.as_str());
    assert!(v["version"].as_str().unwrap().starts_with("run-schema@"), "{}", r.body);
    assert_eq!(v["schema_changes"]["tasks_removed"], serde_json::json!(["conversion"]), "{}", r.body);
    let model = get(addr, "/v1/model").json();
    assert_eq!(model["tasks"], serde_json::json!(["click", "save", "dwell"]), "{model}");
    // A reload that keeps the schema (the same run again) needs no force and reports no changes.
    let r = http(addr, "POST", "/admin/reload", &auth, b"");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["schema_changes"].is_null(), "{}", r.body);
    let m = get(addr, "/metrics").body;
    assert!(m.contains("mixrank_reloads_total{outcome=\"ok\"} 2"), "{m}");
    assert!(m.contains("mixrank_reloads_total{outcome=\"refused\"} 1"), "{m}");
    server.shutdown();
    rt.block_on(server.wait()).unwrap();
}

#[test]
fn a_non_loopback_address_without_a_token_is_refused_at_start() {
    let f = fixture();
    let rt = runtime();
    let mut opts = ServeOptions::new(&f.run, engine());
    opts.http_addr = "0.0.0.0:0".parse().unwrap();
    let e = rt.block_on(mixrank_serve::start(opts.clone())).err().expect("refused");
    assert!(matches!(e, mixrank_serve::ServeError::InsecureBind { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("0.0.0.0:0") && msg.contains("--admin-token") && msg.contains("--no-admin"), "{msg}");
    // The rule itself (checked without binding a public port): a token, or no admin
    // route, makes the address acceptable; loopback needs neither.
    opts.admin_token = Some("t".into());
    mixrank_serve::server::check_exposure(&opts).unwrap();
    opts.admin_token = None;
    opts.admin_route = false;
    mixrank_serve::server::check_exposure(&opts).unwrap();
    opts.admin_route = true;
    opts.http_addr = "[::1]:0".parse().unwrap();
    mixrank_serve::server::check_exposure(&opts).unwrap();
    opts.http_addr = "192.168.1.10:8080".parse().unwrap();
    assert!(mixrank_serve::server::check_exposure(&opts).is_err());
}

/// A model with a per-surface isotonic calibration layer: the served predictions equal
/// `mixrank eval`'s calibrated ones on the same rows (eval's batches of one request,
/// then the checkpoint's layer, as `CheckpointScorer::score` applies it), and differ
/// from the model's own.
#[test]
fn a_calibrated_model_serves_evals_calibrated_scores() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("serve-calibrated-{}", std::process::id()));
    let (cfg, run) = calibrated_run(&dir, "isotonic", "surface");
    calibrated_serves_evals_scores(&cfg, &run);
}

/// A reload from a per-surface-calibrated model to a globally calibrated one (same
/// features and tasks) changes what a score means at each surface: refused with 409
/// `schema_changed` naming the calibrated surfaces unless forced; back to per surface
/// the same.
#[test]
fn a_reload_changing_the_calibrated_surfaces_is_refused_unless_forced() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("serve-calibration-reload-{}", std::process::id()));
    let (_, per_surface) = calibrated_run(&dir.join("surface"), "platt", "surface");
    let (_, global) = calibrated_run(&dir.join("global"), "platt", "global");
    let rt = runtime();
    let mut opts = ServeOptions::new(&per_surface, engine());
    opts.admin_token = Some("t".into());
    let server = start(&rt, opts);
    let (addr, auth) = (server.http_addr, [("Authorization", "Bearer t")]);
    let v0 = version(addr);
    let target = |run: &std::path::Path, force: bool| format!(r#"{{"model": "{}", "force": {force}}}"#, run.display());
    let r = http(addr, "POST", "/admin/reload", &auth, target(&global, false).as_bytes());
    assert_eq!(r.status, 409, "{}", r.body);
    let v = r.json();
    assert_eq!(v["error"]["code"], "schema_changed", "{}", r.body);
    let surfaces = serde_json::json!(["home_feed", "related_pins", "search"]);
    assert_eq!(v["schema_changes"]["calibration_surfaces"]["old"], surfaces, "{}", r.body);
    assert!(v["schema_changes"]["calibration_surfaces"]["new"].is_null(), "{}", r.body);
    assert_eq!(v["schema_changes"]["features_added"], serde_json::json!([]), "{}", r.body);
    assert!(v["error"]["message"].as_str().unwrap().contains("calibrated surfaces changed"), "{}", r.body);
    assert_eq!(version(addr), v0, "the per-surface model keeps serving");
    let r = http(addr, "POST", "/admin/reload", &auth, target(&global, true).as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["schema_changes"]["calibration_surfaces"]["old"], surfaces, "{}", r.body);
    // Global back to per surface: refused the same way.
    let r = http(addr, "POST", "/admin/reload", &auth, target(&per_surface, false).as_bytes());
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["schema_changes"]["calibration_surfaces"]["new"], surfaces, "{}", r.body);
    server.shutdown();
    rt.block_on(server.wait()).unwrap();
}

/// A small simulated run (10 steps) with a `[calibration]` layer of `method`, `per`.
fn calibrated_run(
    dir: &std::path::Path,
    method: &str,
    per: &str,
) -> (mixrank_data::ExperimentConfig, std::path::PathBuf) {
    let p = mixrank_data::simulate::EngagementParams {
        days: 3,
        requests_per_day: 300,
        users: 300,
        initial_ads: 200,
        new_ads_per_day: 20,
        ..Default::default()
    };
    let sim = mixrank_data::simulate::simulate_engagement(&p, &dir.join("data")).unwrap();
    let mut text = std::fs::read_to_string(&sim.config).unwrap();
    text.push_str(&format!("\n[calibration]\nmethod = \"{method}\"\nper = \"{per}\"\n"));
    std::fs::write(&sim.config, text).unwrap();
    let model = dir.join("model.toml");
    std::fs::write(
        &model,
        "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 8\n[[model.experts]]\nkind = \"mlp\"\nhidden = [8]\n\
         [train]\nthreads = 2\nlr = 0.01\n",
    )
    .unwrap();
    let cfg = mixrank_data::ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap();
    let run = dir.join("run");
    let mut opts = mixrank_train::TrainOptions::new(&run);
    opts.max_steps = Some(10);
    mixrank_train::train(std::sync::Arc::new(cfg.clone()), &opts, &CpuOps::new()).unwrap();
    (cfg, run)
}

fn calibrated_serves_evals_scores(cfg: &mixrank_data::ExperimentConfig, run: &std::path::Path) {
    let ops = CpuOps::new();
    let mut s = CheckpointScorer::open(run, &ops, None).unwrap();
    let cal = s.loaded.calibration.clone().expect("a calibration layer");
    let mut c = (*s.config).clone();
    c.data.batch_size = 10;
    let stats = std::sync::Arc::new(s.loaded.manifest.dense_stats.clone());
    let c = std::sync::Arc::new(c);
    let enc = mixrank_data::Encoder::new(c.clone(), mixrank_data::DenseMode::Fitted(stats)).unwrap();
    let p = mixrank_train::evaluate(&mut *s.loaded.model, &ops, std::sync::Arc::new(enc), c.split("test").unwrap())
        .unwrap();
    let mut eval = p.preds.clone();
    cal.apply_all(&p.segments, &mut eval);
    // eval's own path (4096-row batches) applies the same layer.
    let scored = s.score(&ops, "test").unwrap();
    assert!(scored.uncalibrated.is_some());

    let files = split_files(cfg, "test").unwrap();
    let reqs = requests_from_parquet(&files[0], cfg, Grouping::RequestId, 300).unwrap();
    let rt = runtime();
    let server = start(&rt, ServeOptions::new(run, engine()));
    let (mut row, mut changed) = (0, 0);
    for (k, req) in reqs.iter().enumerate() {
        let reply = post_json(server.http_addr, "/v1/score", &req.to_json().to_string());
        assert_eq!(reply.status, 200, "{}", reply.body);
        for cand in predictions(&reply) {
            for (t, v) in cand.as_array().unwrap().iter().enumerate() {
                assert_eq!(v.as_f64().unwrap() as f32, eval[t][row], "request {k}, row {row}, task {t}");
                changed += usize::from(eval[t][row] != p.preds[t][row]);
            }
            row += 1;
        }
    }
    assert!(row >= 100, "{row} rows");
    assert!(changed > row, "calibration changed {changed} predictions of {row} rows");
    server.shutdown();
    rt.block_on(server.wait()).unwrap();
}

/// `SchemaDiff::calibration_surfaces` compares these lists: per-surface layers over
/// other surfaces (or the same in another id order) differ, global and none are both
/// `None`.
#[test]
fn calibrated_surfaces_are_the_per_surface_layers_segments_in_id_order() {
    use mixrank_data::config::calibration::{CalibrationMethod, CalibrationScope};
    use mixrank_serve::reload::calibrated_surfaces;
    use mixrank_train::calibration::{CalibrationFile, MapWire, SurfaceMap, TaskMaps};
    let file = |per: CalibrationScope, surfaces: &[&str]| {
        let map = || MapWire::Platt { a: 1.0, b: 0.0 };
        let task = |t: &str| TaskMaps {
            task: t.into(),
            rows: 10,
            global: map(),
            surfaces: surfaces
                .iter()
                .map(|s| SurfaceMap { segment: s.to_string(), rows: 5, map: Some(map()), fallback: None })
                .collect(),
        };
        CalibrationFile {
            format_version: 1,
            method: CalibrationMethod::Platt,
            per,
            split: "validation".into(),
            tasks: vec![task("click"), task("save")],
        }
    };
    let three = file(CalibrationScope::Surface, &["home_feed", "related_pins", "search"]);
    let two = file(CalibrationScope::Surface, &["home_feed", "search"]);
    let swapped = file(CalibrationScope::Surface, &["search", "home_feed"]);
    let global = file(CalibrationScope::Global, &[]);
    let s = |f: Option<&CalibrationFile>| calibrated_surfaces(f);
    assert_eq!(s(Some(&three)), Some(vec!["home_feed".into(), "related_pins".into(), "search".into()]));
    assert_eq!(s(Some(&two)), Some(vec!["home_feed".to_string(), "search".into()]));
    assert_ne!(s(Some(&two)), s(Some(&swapped)));
    assert_eq!(s(Some(&global)), None);
    assert_eq!(s(None), None);
}

/// Per-surface towers with the surface not a feature (the simulator's `surface_id`
/// taken out): the only way a row's surface reaches the model is the segment column
/// the request carries, which picks its tower. Served scores equal `mixrank eval`'s bit
/// for bit; a request without its surface is refused naming the column and why; the
/// same candidates at another surface score differently.
#[test]
fn per_surface_towers_serve_each_row_with_its_surfaces_tower() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("serve-per-surface-towers-{}", std::process::id()));
    let p = mixrank_data::simulate::EngagementParams {
        days: 3,
        requests_per_day: 150,
        users: 300,
        initial_ads: 200,
        new_ads_per_day: 20,
        ..Default::default()
    };
    let sim = mixrank_data::simulate::simulate_engagement(&p, &dir.join("data")).unwrap();
    let text = std::fs::read_to_string(&sim.config).unwrap();
    let feature = "[[features.categorical]]\nname = \"surface_id\"\ncolumn = \"surface\"\n\
                   vocabulary = [\"home_feed\", \"related_pins\", \"search\"]\ndim = 4\n";
    assert!(text.contains(feature), "the simulator's config changed: no {feature:?}");
    std::fs::write(&sim.config, text.replace(feature, "")).unwrap();
    let model = dir.join("model.toml");
    std::fs::write(
        &model,
        "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 8\ntower = { hidden = [4], per_surface = true }\n\
         [[model.experts]]\nkind = \"mlp\"\nhidden = [8]\n[train]\nthreads = 2\nlr = 0.01\n",
    )
    .unwrap();
    let cfg = mixrank_data::ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap();
    assert!(!cfg.categorical.iter().any(|c| c.column == "surface"));
    let run = dir.join("run");
    let mut opts = mixrank_train::TrainOptions::new(&run);
    opts.max_steps = Some(5);
    mixrank_train::train(std::sync::Arc::new(cfg.clone()), &opts, &CpuOps::new()).unwrap();

    // eval's predictions in batches of 10 rows.
    let ops = CpuOps::new();
    let mut s = CheckpointScorer::open(&run, &ops, None).unwrap();
    let mut c = (*s.config).clone();
    c.data.batch_size = 10;
    let stats = std::sync::Arc::new(s.loaded.manifest.dense_stats.clone());
    let c = std::sync::Arc::new(c);
    let enc = mixrank_data::Encoder::new(c.clone(), mixrank_data::DenseMode::Fitted(stats)).unwrap();
    let p = mixrank_train::evaluate(&mut *s.loaded.model, &ops, std::sync::Arc::new(enc), c.split("test").unwrap())
        .unwrap();

    let files = split_files(&cfg, "test").unwrap();
    let reqs = requests_from_parquet(&files[0], &cfg, Grouping::RequestId, 300).unwrap();
    let rt = runtime();
    let server = start(&rt, ServeOptions::new(&run, engine()));
    let mut row = 0;
    for (k, req) in reqs.iter().enumerate() {
        let reply = post_json(server.http_addr, "/v1/score", &req.to_json().to_string());
        for cand in predictions(&reply) {
            for (t, v) in cand.as_array().unwrap().iter().enumerate() {
                assert_eq!(v.as_f64().unwrap() as f32, p.preds[t][row], "request {k}, row {row}, task {t}");
            }
            row += 1;
        }
    }
    assert!(row >= 100, "{row} rows");
    // Without its surface: refused, naming the column and the towers.
    let mut v = reqs[0].to_json();
    v["context"].as_object_mut().unwrap().remove("surface");
    v["candidates"].as_array_mut().unwrap().iter_mut().for_each(|c| {
        c.as_object_mut().unwrap().remove("surface");
    });
    let r = post_json(server.http_addr, "/v1/score", &v.to_string());
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["field"], "context.surface", "{}", r.body);
    assert!(r.body.contains("per_surface"), "{}", r.body);
    // The same candidates at each surface: three different answers.
    let mut answers = Vec::new();
    for surface in ["home_feed", "related_pins", "search"] {
        let mut w = v.clone();
        w["context"]["surface"] = surface.into();
        answers.push(predictions(&post_json(server.http_addr, "/v1/score", &w.to_string())));
    }
    assert_ne!(answers[0], answers[1]);
    assert_ne!(answers[1], answers[2]);
    assert_ne!(answers[0], answers[2]);
    server.shutdown();
    rt.block_on(server.wait()).unwrap();
}
