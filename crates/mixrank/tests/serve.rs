//! `mixrank serve` and `mixrank bench` as real processes: a small trained run is served,
//! scored over HTTP, stopped with SIGTERM (in-flight work finished, exit 0); the bench
//! commands run bounded smoke loads.

mod common;

use common::mixrank;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// Simulates a small engagement log and trains a small MMoE for a few steps.
fn trained_run(dir: &Path) -> std::path::PathBuf {
    let sim = dir.join("sim");
    let s = sim.to_str().unwrap();
    let (ok, _, err) = mixrank(&[
        "simulate",
        "--out",
        s,
        "--days",
        "3",
        "--requests-per-day",
        "150",
        "--users",
        "300",
        "--initial-ads",
        "200",
    ]);
    assert!(ok, "{err}");
    let model = dir.join("m.toml");
    std::fs::write(
        &model,
        "[model]\narchitecture = \"mmoe\"\nexpert_dim = 16\n[[model.experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [16]\n[train]\nthreads = 2\n",
    )
    .unwrap();
    let run = dir.join("run");
    let cfg = sim.join("mixrank.toml");
    let (ok, _, err) = mixrank(&[
        "train",
        cfg.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--max-steps",
        "2",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    run
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default())
}

#[test]
fn serve_scores_over_http_and_stops_cleanly_on_sigterm() {
    let d = tempfile::tempdir().unwrap();
    let run = trained_run(d.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_mixrank"))
        .args([
            "serve",
            "--model",
            run.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--precision",
            "bf16",
            "--threads",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("serving run@") && line.contains("bf16"), "{line}");
    let addr = line.split("http://").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    assert_eq!(http(&addr, "GET", "/readyz", "").0, 200);
    let body = r#"{"context": {"user_id": 1, "surface": "search", "device": "web", "context_category": 2,
        "user_interests": [1, 2], "user_activity": 3.0},
      "candidates": [{"ad_id": 5, "advertiser_id": 1, "ad_category": 2, "position": 1, "ad_age_days": 1.0, "bid": 1.0, "ad_hist_ctr": null},
                     {"ad_id": 6, "advertiser_id": 2, "ad_category": 3, "position": 1, "ad_age_days": 9.0, "bid": 2.0, "ad_hist_ctr": 0.1}]}"#;
    let (status, text) = http(&addr, "POST", "/v1/score", body);
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["precision"], "bf16");
    assert_eq!(v["candidates"].as_array().unwrap().len(), 2);
    let p = v["candidates"][0]["predictions"][0].as_f64().unwrap();
    assert!(p > 0.0 && p < 1.0, "{p}");
    let (status, text) = http(&addr, "POST", "/v1/score", &body.replace("\"search\"", "\"moon\""));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("context.surface"), "{text}");
    let (_, metrics) = http(&addr, "GET", "/metrics", "");
    assert!(metrics.contains("mixrank_requests_total{protocol=\"http\",outcome=\"ok\"} 1"), "{metrics}");
    // SIGTERM: a clean exit.
    let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "exit {status:?}; stdout {rest}");
    assert!(rest.contains("shutting down") && rest.contains("stopped"), "{rest}");
}

#[test]
fn bench_commands_run_bounded_smoke_loads() {
    let d = tempfile::tempdir().unwrap();
    let run = trained_run(d.path());
    let r = run.to_str().unwrap();
    let (ok, out, err) = mixrank(&["bench", "infer", "--model", r, "--batches", "1,8", "--reps", "3"]);
    assert!(ok, "{err}");
    assert!(out.contains("f32") && out.contains("bf16") && out.contains("batch     8"), "{out}");
    let json = d.path().join("load.json");
    let (ok, out, err) = mixrank(&[
        "bench",
        "serve",
        "--model",
        r,
        "--candidates",
        "10",
        "--precisions",
        "f32",
        "--clients",
        "2",
        "--requests",
        "40",
        "--max-seconds",
        "20",
        "--reload-every-ms",
        "20",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v[0]["failed"], 0, "{out}");
    assert_eq!(v[0]["reloads_failed"], 0, "{out}");
    assert!(v[0]["ok"].as_u64().unwrap() > 0, "{out}");
}

#[test]
fn serve_refuses_a_non_loopback_address_without_an_admin_token() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("no-run");
    let serve = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mixrank"))
            .args(["serve", "--model", run.to_str().unwrap(), "--no-grpc"])
            .args(extra)
            .env_remove("MIXRANK_ADMIN_TOKEN")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // Refused before anything is loaded or bound, saying how to proceed.
    let (ok, err) = serve(&["--addr", "0.0.0.0:0"]);
    assert!(!ok);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0")
            && err.contains("--admin-token")
            && err.contains("--no-admin")
            && !err.contains("no-run"),
        "{err}"
    );
    // A token and --no-admin are exclusive.
    let (ok, err) = serve(&["--addr", "127.0.0.1:0", "--no-admin", "--admin-token", "t"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    // On loopback without a token the rule passes and the missing run is what fails.
    let (ok, err) = serve(&["--addr", "127.0.0.1:0"]);
    assert!(!ok && err.contains("no-run") && !err.contains("refusing to listen"), "{err}");
}

/// `bench train` on the simulator's config with a small MMoE: throughput, FLOPs, peak and
/// phases in its JSON; the FLOPs per example do not depend on the batch size (every
/// matrix product is linear in the rows); `MIXRANK_BF16_KERNEL` picks the bf16 kernel
/// of the peak measurement, and a name that is no kernel is refused.
#[test]
fn bench_train_reports_throughput_flops_peak_and_phases() {
    let d = tempfile::tempdir().unwrap();
    let run = trained_run(d.path());
    let cfg = d.path().join("sim").join("mixrank.toml");
    let model = d.path().join("m.toml");
    assert!(run.exists());
    let bench = |batch: &str, kernel: &str| {
        let json = d.path().join(format!("train-{batch}.json"));
        let out = Command::new(env!("CARGO_BIN_EXE_mixrank"))
            .args(["bench", "train", cfg.to_str().unwrap(), "--model", model.to_str().unwrap()])
            .args(["--batch", batch, "--steps", "3", "--warmup", "1", "--json", json.to_str().unwrap()])
            .env("MIXRANK_BF16_KERNEL", kernel)
            .output()
            .unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        let v = out
            .status
            .success()
            .then(|| serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&json).unwrap()).unwrap());
        (v, stdout, stderr)
    };
    let (v8, out, err) = bench("8", "portable");
    let v8 = v8.unwrap_or_else(|| panic!("{err}"));
    assert!(out.contains("examples/s") && out.contains("where a step's time goes"), "{out}");
    assert_eq!(v8["batch"], 8);
    assert_eq!(v8["bf16_kernel"], "portable");
    let f8 = v8["flops_per_example"].as_f64().unwrap();
    assert!(f8 > 0.0, "{v8}");
    let step_ms = v8["median_step_ms"].as_f64().unwrap();
    let ex_s = v8["examples_per_s"].as_f64().unwrap();
    assert!((ex_s * step_ms / 1e3 - 8.0).abs() < 1e-6, "{v8}");
    let phases = v8["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 4, "{v8}");
    assert!(phases.iter().all(|p| p["median_ms"].as_f64().unwrap() >= 0.0));
    assert!(v8["f32_gemm_peak_gflops"].as_f64().unwrap() > 0.0 && v8["bf16_gemm_peak_gflops"].as_f64().unwrap() > 0.0);

    let (v16, _, err) = bench("16", "auto");
    let v16 = v16.unwrap_or_else(|| panic!("{err}"));
    assert_eq!(v16["flops_per_example"].as_f64().unwrap(), f8, "FLOPs per example depend on the batch");

    let (v, _, err) = bench("8", "avx9000");
    assert!(v.is_none() && err.contains("MIXRANK_BF16_KERNEL must be one of"), "{err}");
}
