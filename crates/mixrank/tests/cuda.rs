//! `--device` on the real binary. Without an NVIDIA driver, `--device cuda` is a clear
//! error that leaves nothing behind (this runs everywhere). With one — a GPU, or the host
//! emulation of the driver (`crates/mixrank-cuda/emu/run.sh`, which CI runs) — the
//! end-to-end test trains on CUDA, resumes from a periodic checkpoint to the same bytes,
//! continues the CUDA checkpoint on the CPU, and scores with `eval`, `predict` and
//! `serve` on both devices, checking the CUDA scores against the CPU's.

mod common;

use common::mixrank;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Small simulated engagement data and a small MMoE (MLP and DCNv2 experts), 12 steps of
/// 64 rows with a periodic checkpoint every 4; returns (config, model file).
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let sim = dir.join("sim");
    let (ok, _, err) = mixrank(&[
        "simulate",
        "--out",
        s(&sim),
        "--days",
        "3",
        "--requests-per-day",
        "60",
        "--users",
        "200",
        "--initial-ads",
        "100",
    ]);
    assert!(ok, "{err}");
    let cfg = sim.join("mixrank.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("batch_size = 2048", "batch_size = 64")).unwrap();
    let model = dir.join("m.toml");
    std::fs::write(
        &model,
        "[model]\narchitecture = \"mmoe\"\nexpert_dim = 8\ntower = { hidden = [8] }\n\
         [[model.experts]]\nkind = \"mlp\"\nhidden = [16]\n\
         [[model.experts]]\nkind = \"dcnv2\"\ncross_layers = 2\nhidden = [16]\n\
         [train]\nepochs = 3\nthreads = 1\nmax_steps = 12\ncheckpoint_every_steps = 4\nsparse_optimizer = \"lazy_adam\"\n",
    )
    .unwrap();
    (cfg, model)
}

fn train(cfg: &Path, model: &Path, out: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["train", s(cfg), "--model", s(model), "--out", s(out)];
    args.extend(extra);
    mixrank(&args)
}

#[test]
fn cuda_without_a_driver_is_a_clear_error_and_a_bad_device_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, model) = setup(d.path());
    let run = d.path().join("run");
    let (ok, _, err) = train(&cfg, &model, &run, &["--device", "gpu"]);
    assert!(!ok && err.contains("`gpu` is not a device"), "{err}");
    // A GPU number no machine has: refused whether or not a driver is present.
    let (ok, _, err) = train(&cfg, &model, &run, &["--device", "cuda:4096"]);
    assert!(!ok && err.contains("--device cuda:4096"), "{err}");
    assert!(!run.join("checkpoint").exists(), "nothing trained");
    let (ok, _, err) = train(&cfg, &model, &run, &["--device", "cuda", "--ranks-in-process", "2"]);
    assert!(!ok && err.contains("--ranks-in-process trains on the CPU only") && err.contains("mpirun"), "{err}");
    if mixrank_cuda::driver_present() {
        return;
    }
    // No driver here: every command says so and names the device.
    let (ok, _, err) = train(&cfg, &model, &run, &["--device", "cuda"]);
    assert!(!ok && err.contains("--device cuda:0") && err.contains("no NVIDIA driver was found"), "{err}");
    assert!(!run.join("checkpoint").exists(), "nothing trained");
    let (ok, _, err) = train(&cfg, &model, &run, &["--max-steps", "1"]);
    assert!(ok, "the CPU trains: {err}");
    for args in [
        vec!["eval", s(&run), "--device", "cuda"],
        vec!["predict", s(&run), "--split", "test", "--out", "/nonexistent/p.parquet", "--device", "cuda"],
        vec!["serve", "--model", s(&run), "--device", "cuda", "--addr", "127.0.0.1:0", "--no-grpc"],
        vec!["bench", "infer", "--device", "cuda", "--batches", "1"],
    ] {
        let (ok, _, err) = mixrank(&args);
        assert!(!ok && err.contains("no NVIDIA driver was found"), "{args:?}: {err}");
    }
}

fn eval_json(run: &Path, device: &str, dir: &Path) -> serde_json::Value {
    let json = dir.join(format!("eval-{}.json", device.replace(':', "-")));
    let (ok, _, err) = mixrank(&["eval", s(run), "--split", "test", "--device", device, "--json", s(&json)]);
    assert!(ok, "eval on {device}: {err}");
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

fn http(addr: &str, body: &str) -> (u16, String) {
    let mut st = std::net::TcpStream::connect(addr).unwrap();
    write!(
        st,
        "POST /v1/score HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    st.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default())
}

/// Serves `run` on `device`, scores one request, stops the server; the predictions.
fn serve_scores(run: &Path, device: &str) -> Vec<f64> {
    let mut child = Command::new(common::bin())
        .args(["serve", "--model", s(run), "--device", device, "--addr", "127.0.0.1:0", "--no-grpc"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("serving ") && line.contains("(f32)"), "{device}: {line}");
    let addr = line.split("http://").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let body = r#"{"context": {"user_id": 1, "surface": "search", "device": "web", "context_category": 2,
        "user_interests": [1, 2], "user_activity": 3.0},
      "candidates": [{"ad_id": 5, "advertiser_id": 1, "ad_category": 2, "position": 1, "ad_age_days": 1.0, "bid": 1.0, "ad_hist_ctr": null},
                     {"ad_id": 6, "advertiser_id": 2, "ad_category": 3, "position": 1, "ad_age_days": 9.0, "bid": 2.0, "ad_hist_ctr": 0.1}]}"#;
    let (status, text) = http(&addr, body);
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    assert_eq!(status, 200, "{device}: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["predictions"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()))
        .collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU (or the emulated driver: crates/mixrank-cuda/emu/run.sh)"]
fn train_resume_eval_predict_and_serve_on_cuda() {
    assert!(mixrank_cuda::driver_present(), "no NVIDIA driver (libcuda.so) on the loader path");
    let d = tempfile::tempdir().unwrap();
    let (cfg, model) = setup(d.path());
    // Train 12 steps on CUDA.
    let run = d.path().join("cuda");
    let (ok, out, err) = train(&cfg, &model, &run, &["--device", "cuda"]);
    assert!(ok, "train on cuda: {err}");
    assert!(out.contains("trained 12 steps"), "{out}");
    let weights = |r: &Path| std::fs::read(r.join("checkpoint/weights.safetensors")).unwrap();
    // Resume from the periodic checkpoint of step 8 (the final one removed): the same
    // bytes on the same device (the backend is deterministic: no float atomics).
    let resumed = d.path().join("resumed");
    copy_dir(&run, &resumed);
    std::fs::remove_dir_all(resumed.join("checkpoint")).unwrap();
    std::fs::remove_dir_all(resumed.join("checkpoints/step-12")).ok();
    std::fs::write(resumed.join("checkpoints/LATEST"), "step-8\n").unwrap();
    let (ok, _, err) = train(&cfg, &model, &resumed, &["--device", "cuda", "--resume"]);
    assert!(ok, "resume on cuda: {err}");
    assert!(weights(&resumed) == weights(&run), "resumed on CUDA from step 8: other weights");
    // The same checkpoint continues on the CPU (checkpoints move between devices).
    let on_cpu = d.path().join("on-cpu");
    copy_dir(&run, &on_cpu);
    std::fs::remove_dir_all(on_cpu.join("checkpoint")).unwrap();
    std::fs::remove_dir_all(on_cpu.join("checkpoints/step-12")).ok();
    std::fs::write(on_cpu.join("checkpoints/LATEST"), "step-8\n").unwrap();
    let (ok, _, err) = train(&cfg, &model, &on_cpu, &["--resume"]);
    assert!(ok, "resume on the CPU: {err}");
    // And a CPU run of the same config, for the scores.
    let cpu = d.path().join("cpu");
    let (ok, _, err) = train(&cfg, &model, &cpu, &[]);
    assert!(ok, "train on the cpu: {err}");

    // The CUDA-trained model scored on both devices: the same metrics up to rounding.
    let (a, b) = (eval_json(&run, "cuda", d.path()), eval_json(&run, "cpu", d.path()));
    let auc = |v: &serde_json::Value| v["f32"][0]["overall"]["auc"].as_f64().unwrap();
    assert!((auc(&a) - auc(&b)).abs() < 1e-4, "AUC on cuda {} vs cpu {}", auc(&a), auc(&b));
    // CUDA training against CPU training of the same run: the same steps, close weights.
    let rel = largest_relative_difference(&weights(&run), &weights(&cpu));
    eprintln!("CUDA vs CPU training, 12 steps: largest relative weight difference {rel:e}");
    assert!(rel < 1e-2, "{rel}");
    // predict on CUDA writes the file; serve on CUDA answers as the CPU does.
    let p = d.path().join("p.parquet");
    let (ok, _, err) = mixrank(&["predict", s(&run), "--split", "test", "--out", s(&p), "--device", "cuda"]);
    assert!(ok && p.is_file(), "predict on cuda: {err}");
    let (gpu, cpu_scores) = (serve_scores(&run, "cuda"), serve_scores(&run, "cpu"));
    assert_eq!(gpu.len(), cpu_scores.len());
    for (g, c) in gpu.iter().zip(&cpu_scores) {
        assert!((g - c).abs() <= 1e-5 * c.abs().max(1e-3), "serve: cuda {g} vs cpu {c}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// The largest relative difference between two safetensors files' f32 values.
fn largest_relative_difference(a: &[u8], b: &[u8]) -> f32 {
    let (a, b) = (safetensors::SafeTensors::deserialize(a).unwrap(), safetensors::SafeTensors::deserialize(b).unwrap());
    let mut worst = 0f32;
    for (name, t) in a.tensors() {
        let u = b.tensor(&name).unwrap();
        for (x, y) in t.data().chunks_exact(4).zip(u.data().chunks_exact(4)) {
            let (x, y) = (f32::from_le_bytes(x.try_into().unwrap()), f32::from_le_bytes(y.try_into().unwrap()));
            worst = worst.max((x - y).abs() / y.abs().max(1e-3));
        }
    }
    worst
}
