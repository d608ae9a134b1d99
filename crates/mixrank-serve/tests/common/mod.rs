//! Shared fixtures: a small trained engagement model (trained once per test binary),
//! a server on loopback, and a minimal blocking HTTP/1.1 client.
#![allow(dead_code)]

use mixrank_data::simulate::{simulate_engagement, EngagementParams};
use mixrank_data::ExperimentConfig;
use mixrank_engine::CpuOps;
use mixrank_serve::{RunningServer, ServeOptions};
use mixrank_train::{train, TrainOptions};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Root of this binary's fixtures (under the target dir; removed at the next run).
fn root() -> PathBuf {
    let r = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "serve-{}-{}",
        std::env::current_exe().unwrap().file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    std::fs::create_dir_all(&r).unwrap();
    r
}

pub struct Fixture {
    pub dir: PathBuf,
    /// Run directory of the trained model.
    pub run: PathBuf,
    pub config: ExperimentConfig,
}

/// Simulates a small engagement log and trains `mixrank demo`'s heterogeneous MMoE on
/// it for a step (so bf16 reaches the Linear layers of every expert kind).
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = root();
        let p = EngagementParams {
            days: 3,
            requests_per_day: 150,
            users: 300,
            initial_ads: 200,
            new_ads_per_day: 20,
            ..Default::default()
        };
        let sim = simulate_engagement(&p, &dir.join("data")).unwrap();
        // The demo's candidate model: DCNv2, MaskNet, FinalMLP and MLP experts.
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/models/mmoe_heterogeneous.toml");
        let cfg = ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap();
        let run = dir.join("run");
        let mut opts = TrainOptions::new(&run);
        opts.max_steps = Some(3);
        train(Arc::new(cfg.clone()), &opts, &CpuOps::new()).unwrap();
        Fixture { dir, run, config: cfg }
    })
}

/// A small shared-bottom model with the position-bias tower over `bias = [position_id,
/// device_id]` (device also feeds the head through `context`), trained for a few steps
/// on its own simulated log: position feeds only the tower. `serve_position`, when
/// given, is written as `[model.position_tower] serve_position`.
pub fn tower_fixture_with(name: &str, serve_position: Option<u32>) -> Fixture {
    let dir = root().join(name);
    let p = EngagementParams {
        days: 3,
        requests_per_day: 150,
        users: 300,
        initial_ads: 200,
        new_ads_per_day: 20,
        ..Default::default()
    };
    let sim = simulate_engagement(&p, &dir.join("data")).unwrap();
    let mut text = std::fs::read_to_string(&sim.config).unwrap();
    text.push_str("\n[feature_groups]\nbias = [\"position_id\", \"device_id\"]\ncontext = [\"device_id\"]\n");
    std::fs::write(&sim.config, text).unwrap();
    let model = dir.join("model.toml");
    let serve = serve_position.map(|n| format!(", serve_position = {n}")).unwrap_or_default();
    std::fs::write(
        &model,
        format!(
            "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 8\n\
             position_tower = {{ hidden = [4], tasks = [\"click\", \"save\"]{serve} }}\n\
             [[model.experts]]\nkind = \"mlp\"\nhidden = [8]\n[train]\nthreads = 2\nlr = 0.01\n"
        ),
    )
    .unwrap();
    let cfg = ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap();
    let run = dir.join("run");
    let mut opts = TrainOptions::new(&run);
    opts.max_steps = Some(3);
    train(Arc::new(cfg.clone()), &opts, &CpuOps::new()).unwrap();
    Fixture { dir, run, config: cfg }
}

/// [`tower_fixture_with`] without `serve_position` (the tower is off at serving),
/// trained once per test binary.
pub fn tower_fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| tower_fixture_with("tower", None))
}

/// A copy of `run` (checkpoint only) at `to`.
pub fn copy_run(run: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("checkpoint")).unwrap();
    for e in std::fs::read_dir(run.join("checkpoint")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join("checkpoint").join(e.file_name())).unwrap();
    }
}

/// A multi-thread runtime for one test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

pub fn start(rt: &tokio::runtime::Runtime, opts: ServeOptions) -> RunningServer {
    rt.block_on(mixrank_serve::start(opts)).unwrap()
}

/// A response: status and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body; ignore a reset write.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Reply { status, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn post_json(addr: SocketAddr, path: &str, body: &str) -> Reply {
    http(addr, "POST", path, &[("Content-Type", "application/json")], body.as_bytes())
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, &[], b"")
}

/// The serving engine of the tests: the CPU backend.
pub fn engine() -> mixrank_serve::Engine {
    mixrank_serve::Engine::new(CpuOps::new())
}

/// A model whose request schema differs from [`fixture`]'s: its own small simulated log
/// with the `conversion` task and the `ad_age_days` feature taken out of the config, a
/// shared-bottom model trained for a few steps. Trained once per test binary.
pub fn schema_fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = root().join("schema");
        let p = EngagementParams {
            days: 3,
            requests_per_day: 100,
            users: 300,
            initial_ads: 200,
            new_ads_per_day: 20,
            ..Default::default()
        };
        let sim = simulate_engagement(&p, &dir.join("data")).unwrap();
        let text = std::fs::read_to_string(&sim.config).unwrap();
        let cut = |text: String, block: &str| {
            assert!(text.contains(block), "the simulator's config changed: no {block:?}");
            text.replace(block, "")
        };
        let text = cut(text, "[[tasks]]\nname = \"conversion\"\nkind = \"binary\"\nlabel = \"conversion\"\nmask = \"click\"\n");
        let text = cut(text, "[[features.dense]]\nname = \"ad_age_days\"\nlog1p = true\nstandardize = true\n");
        std::fs::write(&sim.config, text).unwrap();
        let model = dir.join("model.toml");
        std::fs::write(
            &model,
            "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 8\n[[model.experts]]\nkind = \"mlp\"\nhidden = [8]\n\
             [train]\nthreads = 2\n",
        )
        .unwrap();
        let cfg = ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap();
        let run = dir.join("run-schema");
        let mut opts = TrainOptions::new(&run);
        opts.max_steps = Some(2);
        train(Arc::new(cfg.clone()), &opts, &CpuOps::new()).unwrap();
        Fixture { dir, run, config: cfg }
    })
}
