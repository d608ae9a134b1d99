//! Data-parallel training under real MPI: `mpirun -n 2` and `-n 3` (oversubscribed,
//! loopback) start `mixrank train` processes that train like one process on the same
//! global batches, with every replica's weights checked equal; a job one of whose rank
//! processes is SIGKILLed stops (no hang); row-wise sharded tables give the replicated
//! tables' checkpoint bytes and `--resume` under `mpirun -n 3` finishes it
//! with every row trained on once and one process's weights; distillation (pairwise,
//! listwise, pointwise) with the overlapped all-reduce and a mixed table placement
//! trains like one process; `--device cuda` under `mpirun` asks for NCCL, and without it
//! the job stops with the reason. Built only with the
//! `mpi` feature (needs Open MPI or MPICH and libclang):
//! `cargo test --workspace --locked --features mixrank/mpi --test distributed_mpi`.
#![cfg(feature = "mpi")]

mod common;

use common::{bin, read_trace, Step};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

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

/// `mpirun` on loopback, as CI (root) runs it, with `n` ranks (oversubscribed).
fn mpirun(n: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-n", &n.to_string(), "--oversubscribe", "--bind-to", "none"])
        // CI runs as root; Open MPI refuses that without both variables.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Loopback only: no network interfaces probed beyond `lo`.
        .env("OMPI_MCA_btl", "self,tcp")
        .env("OMPI_MCA_btl_tcp_if_include", "lo")
        .env("OMPI_MCA_oob_tcp_if_include", "lo")
        .arg(bin());
    c
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

/// Asserts every weight of `got` within 1e-3 relative of `want`'s (the tolerance and
/// its reason: `mixrank-train/tests/distributed.rs`); returns the largest difference.
fn assert_close(got: &BTreeMap<String, Vec<f32>>, want: &BTreeMap<String, Vec<f32>>, what: &str) -> f32 {
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{what}");
    let mut worst = 0f32;
    for (name, a) in got {
        for (x, y) in a.iter().zip(&want[name]) {
            let rel = (x - y).abs() / y.abs().max(1e-3);
            worst = worst.max(rel);
            assert!(rel <= 1e-3, "{what}, {name}: {x} vs {y}");
        }
    }
    worst
}

fn metrics(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap()
}

#[test]
fn mpirun_2_and_3_ranks_train_like_one_process() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, model) = setup(d.path());
    let sharded = d.path().join("sharded.toml");
    let text = std::fs::read_to_string(&model).unwrap();
    std::fs::write(&sharded, text.replace("[train]\n", "[train]\nembedding_sharding = \"rows\"\n")).unwrap();
    let one = d.path().join("one");
    check(Command::new(bin()).args(train_args(&cfg, &model, &one)).output().unwrap(), "one process");
    let w1 = weights(&one.join("checkpoint"));
    let m1 = metrics(&one);
    for n in [2, 3] {
        let out = d.path().join(format!("mpi{n}"));
        let run = mpirun(n).args(train_args(&cfg, &model, &out)).output().unwrap();
        check(run, &format!("mpirun -n {n}"));
        let m = metrics(&out);
        assert_eq!(m["replicas"]["ranks"], n);
        assert_eq!(m["replicas"]["transport"], "mpi");
        assert_eq!((&m["steps"], &m["examples"]), (&m1["steps"], &m1["examples"]), "{n} ranks");
        // Same tolerance and reason as the in-process test (`mixrank-train/tests/distributed.rs`).
        let worst = assert_close(&weights(&out.join("checkpoint")), &w1, &format!("{n} ranks"));
        eprintln!("mpirun -n {n}: largest relative weight difference from one process {worst:e}");
        // Row-wise sharded tables (lookups and gradients by MPI all-to-all): the same
        // bytes as the replicated run (`mixrank-train/src/sharded_tables.rs`).
        let out_s = d.path().join(format!("mpi{n}-sharded"));
        let run = mpirun(n).args(train_args(&cfg, &sharded, &out_s)).output().unwrap();
        check(run, &format!("mpirun -n {n}, sharded tables"));
        for f in ["weights.safetensors", "optimizer.safetensors"] {
            let (a, b) =
                (std::fs::read(out.join("checkpoint").join(f)), std::fs::read(out_s.join("checkpoint").join(f)));
            assert!(a.unwrap() == b.unwrap(), "mpirun -n {n}: sharded tables' {f} differs from replicated ones'");
        }
        // Periodic checkpoints: each rank process wrote its rows into its own file.
        for (step, dir) in mixrank_train::periodic::list(&out_s) {
            let v = mixrank_train::checkpoint::read_verified(&dir).unwrap();
            assert_eq!(v.manifest.table_shards, Some(n), "mpirun -n {n}, step {step}");
            let whole = std::fs::read(out.join(format!("checkpoints/step-{step}/weights.safetensors"))).unwrap();
            assert!(v.weights == whole, "mpirun -n {n}, step {step}: the shards put together differ");
        }
    }
}

/// The pid of the process of MPI rank `rank` whose command line names `out`.
fn rank_pid(rank: usize, out: &Path) -> Option<u32> {
    let want_env = format!("OMPI_COMM_WORLD_RANK={rank}");
    let want_arg = out.display().to_string();
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).find(|pid| {
        let read = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
        let has = |bytes: Vec<u8>, want: &str| bytes.split(|&b| b == 0).any(|p| p == want.as_bytes());
        has(read("cmdline"), &want_arg) && has(read("environ"), &want_env)
    })
}

#[test]
fn a_killed_rank_stops_the_job_and_resume_on_3_ranks_finishes_it() {
    use std::time::{Duration, Instant};
    let d = tempfile::tempdir().unwrap();
    let (cfg, model) = setup(d.path());
    // Two epochs of 14 steps, a checkpoint every 4.
    let text = std::fs::read_to_string(&model).unwrap();
    std::fs::write(&model, text.replace("epochs = 1", "epochs = 2")).unwrap();
    let one = d.path().join("one");
    let trace_one = d.path().join("one.jsonl");
    let mut args = train_args(&cfg, &model, &one);
    args.extend(["--trace-rows".into(), trace_one.display().to_string()]);
    check(Command::new(bin()).args(&args).output().unwrap(), "one process");
    let (steps_one, _) = read_trace(&trace_one);
    assert_eq!(steps_one.len(), 28);

    // mpirun -n 2, slowed down; rank 1 is SIGKILLed once a checkpoint at step 8 or later
    // exists.
    let out = d.path().join("job");
    let trace = d.path().join("job.jsonl");
    let mut args = train_args(&cfg, &model, &out);
    args.extend(["--trace-rows".into(), trace.display().to_string(), "--debug-step-delay-ms".into(), "100".into()]);
    let mut job =
        mpirun(2).args(&args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let latest = out.join("checkpoints/LATEST");
    let t0 = Instant::now();
    loop {
        let step = std::fs::read_to_string(&latest)
            .ok()
            .and_then(|t| t.trim().strip_prefix("step-").and_then(|n| n.parse::<u64>().ok()));
        if step.is_some_and(|s| s >= 8) {
            break;
        }
        assert!(job.try_wait().unwrap().is_none(), "the job ended before a rank could be killed");
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint at step 8 after 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = rank_pid(1, &out).expect("rank 1's process");
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    // The job stops (mpirun notices the dead rank and ends the others), it does not hang.
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = job.kill();
            panic!("the job still runs 60 s after rank 1 was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "a job with a killed rank fails");
    // mpirun may return before the other ranks' processes are gone; rank 0 holds the run
    // directory's lock until it is, so the resumed job would be refused until then.
    while rank_pid(0, &out).is_some() {
        assert!(t0.elapsed() < Duration::from_secs(60), "rank 0 still runs 60 s after rank 1 was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!out.join("checkpoint").exists(), "no final checkpoint from the killed job");
    eprintln!("rank 1 killed; mpirun and every rank ended in {:.2} s", t0.elapsed().as_secs_f64());

    // Resumed with 3 ranks.
    let mut args = train_args(&cfg, &model, &out);
    args.extend(["--trace-rows".into(), trace.display().to_string(), "--resume".into()]);
    let run = mpirun(3).args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    check(run, "mpirun -n 3 --resume");
    assert!(stderr.contains("resuming from"), "{stderr}");
    let m = metrics(&one);
    let mr = metrics(&out);
    assert_eq!(mr["replicas"]["ranks"], 3);
    assert_eq!((&mr["steps"], &mr["examples"]), (&m["steps"], &m["examples"]));

    // Rows: the killed job's steps up to the checkpoint resumed from, then the resumed
    // job's, are exactly one process's steps: no row lost or repeated.
    // The resumed job's lines are the last `28 - from` ones (`from` the step of the
    // checkpoint it resumed from, in its log); the killed job's, the ones before (it may
    // have traced steps past that checkpoint, which the resumed job trained again).
    let (lines, _) = read_trace(&trace); // a SIGKILL may cut the last line short
    let resumed: Vec<serde_json::Value> = std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "resume")
        .collect();
    assert_eq!(resumed.len(), 1);
    let from = resumed[0]["step"].as_u64().unwrap();
    assert!(from >= 8 && from.is_multiple_of(4), "resumed from step {from}");
    let split = lines.len() - (steps_one.len() - from as usize);
    assert!(split as u64 >= from, "the killed job traced {split} steps, resumed from {from}");
    assert_eq!(lines[split].0, from + 1, "the resumed job starts right after its checkpoint");
    let used: Vec<&Step> = lines[..from as usize].iter().chain(&lines[split..]).collect();
    assert_eq!(used.len(), steps_one.len());
    for (i, (a, b)) in used.iter().zip(&steps_one).enumerate() {
        assert_eq!(*a, b, "step {}: other rows than one process", i + 1);
    }
    let (w1, wn) = (weights(&one.join("checkpoint")), weights(&out.join("checkpoint")));
    assert_eq!(wn.keys().collect::<Vec<_>>(), w1.keys().collect::<Vec<_>>());
    let mut worst = 0f32;
    for (name, a) in &wn {
        for (x, y) in a.iter().zip(&w1[name]) {
            worst = worst.max((x - y).abs() / y.abs().max(1e-3));
        }
    }
    eprintln!("killed at step >= 8 on 2 ranks, resumed on 3: largest relative difference {worst:e}");
    assert!(worst <= 1e-3, "{worst}");
}

/// Distillation from a checkpoint teacher (pairwise within requests, listwise,
/// soft-label BCE) under `mpirun -n 2`, with the head's all-reduce overlapped with the
/// embeddings' backward on a communication thread beside MPI (`MPI_THREAD_SERIALIZED`)
/// and the shared `category` table whole on every rank while the others are sharded:
/// the job trains like one process (same tolerance as above).
#[test]
fn mpirun_distills_with_overlap_and_mixed_tables_like_one_process() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, model) = setup(d.path());
    let teacher = d.path().join("teacher");
    check(Command::new(bin()).args(train_args(&cfg, &model, &teacher)).output().unwrap(), "the teacher");
    let student = cfg.with_file_name("student.toml");
    let distill = format!(
        "\n[distill]\nsource = \"checkpoint\"\ncheckpoint = {:?}\n\
         [[distill.tasks]]\ntask = \"click\"\nloss = \"pairwise\"\npairs = \"request\"\npairs_per_row = 3\n\
         [[distill.tasks]]\ntask = \"save\"\nloss = \"listwise\"\n\
         [[distill.tasks]]\ntask = \"conversion\"\nloss = \"pointwise_bce\"\n",
        teacher.display().to_string()
    );
    std::fs::write(&student, std::fs::read_to_string(&cfg).unwrap() + &distill).unwrap();
    let model2 = d.path().join("model2.toml");
    let keys =
        "[train]\noverlap_all_reduce = true\nembedding_sharding = \"rows\"\nreplicated_tables = [\"category\"]\n";
    std::fs::write(&model2, std::fs::read_to_string(&model).unwrap().replace("[train]\n", keys)).unwrap();
    let one = d.path().join("one");
    check(Command::new(bin()).args(train_args(&student, &model2, &one)).output().unwrap(), "one process");
    let out = d.path().join("mpi2");
    check(mpirun(2).args(train_args(&student, &model2, &out)).output().unwrap(), "mpirun -n 2");
    let (m1, m) = (metrics(&one), metrics(&out));
    assert_eq!((&m["steps"], &m["examples"]), (&m1["steps"], &m1["examples"]));
    assert_eq!(m["replicas"]["transport"], "mpi");
    let worst = assert_close(&weights(&out.join("checkpoint")), &weights(&one.join("checkpoint")), "distilled");
    eprintln!("mpirun -n 2 distilled: largest relative weight difference from one process {worst:e}");
}

#[test]
fn mpirun_with_device_cuda_asks_for_nccl_and_stops_cleanly_without_it() {
    if mixrank_dist::Nccl::available() {
        eprintln!("NCCL and a CUDA driver load here: bench/gpu_check.sh runs the NCCL tests");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (cfg, model) = setup(d.path());
    let out = d.path().join("cuda");
    let mut args = train_args(&cfg, &model, &out);
    args.extend(["--device", "cuda"].map(String::from));
    let t0 = std::time::Instant::now();
    let run = mpirun(2).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "trained without NCCL: {err}");
    // Each rank says why before it ends the job (MPI_Abort): nobody waits for it.
    assert!(err.contains("NCCL was asked for") && err.contains("libnccl.so"), "{err}");
    assert!(err.contains("rank 0 of 2") || err.contains("rank 1 of 2"), "{err}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(60), "the job took {:?} to stop", t0.elapsed());
    assert!(!out.join("checkpoint").exists(), "nothing trained");
}
