//! Data-parallel training end to end through `train` with in-process ranks (threads):
//! 2 and 3 ranks train the same run as one process, over an epoch whose batches split
//! unevenly and whose last batch is short; every rank ends with the same weights (the
//! trainer checks it at every checkpoint and at the end), only rank 0 writes the run
//! directory, and refused options are refused. The one-step gradient equality with its
//! derived bound is `mixrank-train`'s unit test `data_parallel_tests`.

use mixrank_data::ExperimentConfig;
use mixrank_dist::{Collective, InProcess};
use mixrank_engine::CpuOps;
use mixrank_train::{train, TrainError, TrainOptions, TrainSummary};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Simulated engagement data with a small MMoE without dropout; `batch_size` rows per
/// global batch.
fn config(dir: &Path, batch_size: usize, extra_train: &str) -> Arc<ExperimentConfig> {
    let p = mixrank_data::simulate::EngagementParams { requests_per_day: 30, days: 3, ..Default::default() };
    let sim = mixrank_data::simulate::simulate_engagement(&p, &dir.join("data")).unwrap();
    let model = dir.join("model.toml");
    std::fs::write(
        &model,
        format!(
            "[model]\narchitecture = \"mmoe\"\nexpert_dim = 8\ntower = {{ hidden = [4] }}\n\
             [[model.experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [16]\n\
             [train]\nepochs = 1\nlr = 0.001\nthreads = 1\ncheckpoint_every_steps = 4\n{extra_train}"
        ),
    )
    .unwrap();
    let mut cfg = ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap();
    cfg.data.batch_size = batch_size;
    Arc::new(cfg)
}

/// Trains `cfg` into `out` with `n` in-process ranks; every rank's result.
fn run(cfg: &Arc<ExperimentConfig>, out: &Path, n: usize) -> Vec<Result<TrainSummary, TrainError>> {
    std::thread::scope(|s| {
        let hs: Vec<_> = InProcess::group(n)
            .into_iter()
            .map(|c| {
                let mut o = TrainOptions::new(out);
                o.log_every = 1;
                o.collective = Some(Arc::new(c) as Arc<dyn Collective>);
                let cfg = cfg.clone();
                s.spawn(move || train(cfg, &o, &CpuOps::new()))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The dense weights and tables of a checkpoint, by name.
fn weights(ckpt: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(ckpt.join("weights.safetensors")).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    t.tensors()
        .into_iter()
        .map(|(name, v)| {
            let data = v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            (name, data)
        })
        .collect()
}

fn log_events(run: &Path, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == event)
        .collect()
}

#[test]
fn n_ranks_train_like_one_process_with_identical_replicas() {
    let d = tempfile::tempdir().unwrap();
    // 23 rows per global batch: 11 + 12 over 2 ranks, 7 + 8 + 8 over 3; the epoch's
    // last batch has 1 row, so some ranks have none.
    let cfg = config(d.path(), 23, "");
    let one_dir = d.path().join("one");
    let one = train(cfg.clone(), &TrainOptions::new(&one_dir), &CpuOps::new()).unwrap();
    assert_eq!(one.examples % 23, 1, "the epoch ends on a 1-row batch ({} rows)", one.examples);
    let w1 = weights(&one_dir.join("checkpoint"));
    for n in [2, 3] {
        let out = d.path().join(format!("ranks{n}"));
        let res = run(&cfg, &out, n);
        let sums: Vec<TrainSummary> = res.into_iter().map(|r| r.unwrap()).collect();
        let lead = &sums[0];
        assert_eq!((lead.steps, lead.examples), (one.steps, one.examples), "{n} ranks: same steps and rows");
        let rep = lead.replicas.expect("a data-parallel summary names its replicas");
        assert_eq!((rep.ranks, rep.transport), (n, "in-process"));
        for (r, s) in sums.iter().enumerate() {
            assert_eq!(s.replicas.map(|x| x.checksum), Some(rep.checksum), "{n} ranks: rank {r}'s weights");
            // Only rank 0 validates.
            assert_eq!(s.validation.is_empty(), r != 0, "{n} ranks, rank {r}");
        }
        // Rank 0 wrote the run: one log with a replica check per checkpoint (every 4
        // steps) and at the end, the final checkpoint, metrics.json with the replicas.
        let checks = log_events(&out, "replicas");
        assert_eq!(checks.len() as u64, lead.steps / 4 + 1, "{n} ranks: replica checks");
        assert_eq!(log_events(&out, "train").len() as u64, lead.steps, "{n} ranks: one train line per step");
        let metrics: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
        assert_eq!(metrics["replicas"]["ranks"], n);
        assert_eq!(metrics["replicas"]["checksum"], format!("{:016x}", rep.checksum));
        // The weights: the same run up to summation order (see the module docs of
        // `data_parallel`); over a whole epoch of Adam steps the rounding differences of
        // each step are carried on, so this compares with a fixed relative tolerance.
        let wn = weights(&out.join("checkpoint"));
        assert_eq!(wn.keys().collect::<Vec<_>>(), w1.keys().collect::<Vec<_>>());
        let mut worst = 0f32;
        let mut differ = 0;
        for (name, a) in &wn {
            for (x, y) in a.iter().zip(&w1[name]) {
                let rel = (x - y).abs() / y.abs().max(1e-3);
                worst = worst.max(rel);
                differ += usize::from(x != y);
                assert!(rel <= 1e-3, "{n} ranks, {name}: {x} vs {y}");
            }
        }
        eprintln!("{n} ranks: {differ} weights differ from one process's, largest relative difference {worst:e}");
    }
}

#[test]
fn a_failing_rank_stops_the_others_and_unsupported_options_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), 25, "early_stopping_patience = 2\n");
    for r in run(&cfg, &d.path().join("es"), 2) {
        let e = r.unwrap_err().to_string();
        assert!(e.contains("early stopping") && e.contains("not supported with 2 ranks"), "{e}");
    }
    // Rank 1 refuses (--resume is only given to it); rank 0 must stop, not hang.
    let cfg = config(d.path(), 25, "");
    let out = d.path().join("gone");
    let res: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = InProcess::group(2)
            .into_iter()
            .map(|c| {
                let mut o = TrainOptions::new(&out);
                o.resume = c.rank() == 1;
                o.collective = Some(Arc::new(c) as Arc<dyn Collective>);
                let cfg = cfg.clone();
                s.spawn(move || train(cfg, &o, &CpuOps::new()))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(res[1].as_ref().unwrap_err().to_string().contains("--resume"));
    let e = res[0].as_ref().unwrap_err().to_string();
    assert!(e.contains("rank 1 left the group"), "{e}");
}
