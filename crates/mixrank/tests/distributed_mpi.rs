//! Data-parallel training under real MPI: `mpirun -n 2` and `-n 3` (oversubscribed,
//! loopback) start `mixrank train` processes that train like one process on the same
//! global batches, with every replica's weights checked equal. Built only with the
//! `mpi` feature (needs Open MPI or MPICH and libclang):
//! `cargo test --workspace --locked --features mixrank/mpi --test distributed_mpi`.
#![cfg(feature = "mpi")]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mixrank")
}

/// Simulated engagement data, its config with 23-row global batches (uneven over 2 and
/// 3 ranks, a 1-row last batch), and a small MMoE without dropout.
fn setup(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let p = mixrank_data::simulate::EngagementParams { requests_per_day: 30, days: 3, ..Default::default() };
    let sim = mixrank_data::simulate::simulate_engagement(&p, &dir.join("data")).unwrap();
    let text = std::fs::read_to_string(&sim.config).unwrap();
    assert!(text.contains("batch_size = 2048"), "the simulator's config names its batch size");
    std::fs::write(&sim.config, text.replace("batch_size = 2048", "batch_size = 23")).unwrap();
    let model = dir.join("model.toml");
    std::fs::write(
        &model,
        "[model]\narchitecture = \"mmoe\"\nexpert_dim = 8\ntower = { hidden = [4] }\n\
         [[model.experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [16]\n\
         [train]\nepochs = 1\nlr = 0.001\nthreads = 1\ncheckpoint_every_steps = 4\n",
    )
    .unwrap();
    (sim.config, model)
}

fn train_args(cfg: &Path, model: &Path, out: &Path) -> Vec<String> {
    ["train", &cfg.display().to_string(), "--model", &model.display().to_string(), "--out", &out.display().to_string()]
        .map(String::from)
        .to_vec()
}

fn check(out: std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn weights(ckpt: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(ckpt.join("weights.safetensors")).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    t.tensors()
        .into_iter()
        .map(|(name, v)| (name, v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()))
        .collect()
}

fn metrics(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap()
}

#[test]
fn mpirun_2_and_3_ranks_train_like_one_process() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, model) = setup(d.path());
    let one = d.path().join("one");
    check(Command::new(bin()).args(train_args(&cfg, &model, &one)).output().unwrap(), "one process");
    let w1 = weights(&one.join("checkpoint"));
    let m1 = metrics(&one);
    for n in [2, 3] {
        let out = d.path().join(format!("mpi{n}"));
        let run = Command::new("mpirun")
            .args(["-n", &n.to_string(), "--oversubscribe", "--bind-to", "none"])
            // CI runs as root; Open MPI refuses that without both variables.
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            // Loopback only: no network interfaces probed beyond `lo`.
            .env("OMPI_MCA_btl", "self,tcp")
            .env("OMPI_MCA_btl_tcp_if_include", "lo")
            .env("OMPI_MCA_oob_tcp_if_include", "lo")
            .arg(bin())
            .args(train_args(&cfg, &model, &out))
            .output()
            .unwrap();
        check(run, &format!("mpirun -n {n}"));
        let m = metrics(&out);
        assert_eq!(m["replicas"]["ranks"], n);
        assert_eq!(m["replicas"]["transport"], "mpi");
        assert_eq!((&m["steps"], &m["examples"]), (&m1["steps"], &m1["examples"]), "{n} ranks");
        // Same tolerance and reason as the in-process test (`mixrank-train/tests/distributed.rs`).
        let wn = weights(&out.join("checkpoint"));
        assert_eq!(wn.keys().collect::<Vec<_>>(), w1.keys().collect::<Vec<_>>());
        let mut worst = 0f32;
        for (name, a) in &wn {
            for (x, y) in a.iter().zip(&w1[name]) {
                let rel = (x - y).abs() / y.abs().max(1e-3);
                worst = worst.max(rel);
                assert!(rel <= 1e-3, "{n} ranks, {name}: {x} vs {y}");
            }
        }
        eprintln!("mpirun -n {n}: largest relative weight difference from one process {worst:e}");
    }
}
