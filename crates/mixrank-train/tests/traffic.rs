//! What a training step moves between host and device, counted on the real trainer.
//!
//! The trainer runs on `Counting<CpuOps>` (every op forwarded to the CPU backend; every
//! allocation, upload and readback counted; buffers of an opaque type, so the trainer
//! reaches their contents only through counted reads and writes) and trains the demo's kind of model — an
//! MMoE with DCNv2, MaskNet, FinalMLP and MLP experts, dropout in the shared layer and
//! the experts, top-2 gates, per-surface towers (`[model.tower] per_surface`, the
//! simulator's 3 surfaces), a global-norm gradient clip — with distillation from teacher
//! columns of every task, one of each distillation loss: soft-label BCE on `click`, logit
//! MSE on `save`, pairwise RankNet within requests on `dwell`, listwise softmax
//! cross-entropy within requests on `conversion`. After each step the test reads the
//! counters.
//!
//! The budget, exactly, for every step after the first:
//! - **allocations: 0** (every buffer, the embedding ids' and the distillation's pairs
//!   and groups included, is reused);
//! - **uploads**: the batch's inputs only — one write per single-valued categorical
//!   feature (its ids), two per multi-valued one (offsets and ids), one for the dense
//!   block, two per task (labels, label mask), one for the sample weights, and per
//!   distilled task the teacher's targets (one write each) plus what the ranking losses
//!   compare, built on the host from the request ids: the pairs (one id write) for the
//!   pairwise loss, the request groups (offsets and members, two id writes) for the
//!   listwise one — 7 for the four distilled tasks — and, for the per-surface towers, the
//!   rows' one-hot surfaces (`[rows, 3]`, one write, built from the batch's segment ids:
//!   the towers pick each row's logit on the device). With the simulator's 8 single- and
//!   1 multi-valued features and 4 tasks: 10 + 1 + 8 + 1 + 7 + 1 = 28;
//! - **readbacks: one scalar per task and one per distilled task** (the losses' values:
//!   4 + 4 = 8); no student logit comes back — every distillation loss is a backend op;
//!   dropout and top-k masks are made by backend ops, not uploaded.
//!
//! The optimizers are backend ops too (`mixrank_engine::optim`): the dense step's
//! gradient-norm clip is read from an accumulator in backend memory, and the sparse
//! optimizers' merge buffers are sized for a whole batch up front, so they add neither
//! readbacks nor allocations.

use mixrank_data::simulate::{simulate_engagement, EngagementParams};
use mixrank_data::ExperimentConfig;
use mixrank_engine::counting::{Counting, Traffic};
use mixrank_engine::CpuOps;
use mixrank_train::{train, TrainOptions};
use std::sync::{Arc, Mutex, OnceLock};

const DISTILL: &str = r#"
[distill]
source = "columns"

[[distill.tasks]]
task = "click"
loss = "pointwise_bce"
temperature = 2.0

[[distill.tasks]]
task = "save"
loss = "logit_mse"
weight = 0.5

[[distill.tasks]]
task = "dwell"
loss = "pairwise"
pairs_per_row = 3

[[distill.tasks]]
task = "conversion"
loss = "listwise"
temperature = 2.0
"#;

const MODEL: &str = r#"
[model]
architecture = "mmoe"
expert_dim = 8
shared = { hidden = [16], dropout = 0.2 }

[[model.experts]]
kind = "dcnv2"
cross_layers = 2
low_rank = 4
hidden = [16]
dropout = 0.1

[[model.experts]]
kind = "masknet"
blocks = 2
block_dim = 8
structure = "parallel"
hidden = [8]
dropout = 0.1

[[model.experts]]
kind = "finalmlp"
hidden = [16]
stream2 = [8]
heads = 2
dropout = 0.1

[[model.experts]]
kind = "mlp"
count = 2
hidden = [16]
dropout = 0.1

[model.gate]
top_k = 2

[model.tower]
hidden = [8]
per_surface = true

[train]
epochs = 1
lr = 0.01
grad_clip = 0.5
sparse_optimizer = "rowwise_adagrad"
sparse_lr = 0.05

"#;

static OPS: OnceLock<Counting<CpuOps>> = OnceLock::new();
static SEEN: Mutex<Vec<(u64, Traffic)>> = Mutex::new(Vec::new());

fn record(step: u64) {
    SEEN.lock().unwrap().push((step, OPS.get().unwrap().traffic()));
}

#[test]
fn a_training_step_allocates_nothing_uploads_only_the_batch_and_reads_back_the_losses() {
    let d = tempfile::tempdir().unwrap();
    let p = EngagementParams {
        days: 3,
        requests_per_day: 200,
        users: 200,
        initial_ads: 100,
        new_ads_per_day: 10,
        ..Default::default()
    };
    let sim = simulate_engagement(&p, &d.path().join("data")).unwrap();
    // The simulator's true probabilities stand in for a production model's scores.
    let text = std::fs::read_to_string(&sim.config).unwrap();
    let text = text
        .replace(
            "name = \"click\"\nkind = \"binary\"\nlabel = \"click\"\n",
            "name = \"click\"\nkind = \"binary\"\nlabel = \"click\"\nteacher = { column = \"p_click_true\", kind = \"probability\" }\n",
        )
        .replace(
            "name = \"save\"\nkind = \"binary\"\nlabel = \"save\"\n",
            "name = \"save\"\nkind = \"binary\"\nlabel = \"save\"\nteacher = { column = \"p_save_true\", kind = \"probability\" }\n",
        )
        .replace(
            "label = \"dwell_time\"\n",
            "label = \"dwell_time\"\nteacher = { column = \"p_save_true\", kind = \"logit\" }\n",
        )
        .replace(
            "label = \"conversion\"\n",
            "label = \"conversion\"\nteacher = { column = \"p_click_true\", kind = \"probability\" }\n",
        );
    assert_eq!(text.matches("teacher = {").count(), 4, "teacher columns added");
    let text = text + DISTILL;
    let data_cfg = d.path().join("data/teacher.toml");
    std::fs::write(&data_cfg, text).unwrap();
    let model = d.path().join("model.toml");
    std::fs::write(&model, MODEL).unwrap();
    let mut cfg = ExperimentConfig::load(&data_cfg).unwrap().with_model_file(&model).unwrap();
    cfg.data.batch_size = 256;
    let rows = cfg.data.batch_size as u64;
    let cfg = Arc::new(cfg);

    let ops = OPS.get_or_init(|| Counting::new(CpuOps::new()));
    let mut o = TrainOptions::new(d.path().join("run"));
    o.max_steps = Some(6);
    o.after_step = Some(record);
    let s = train(cfg.clone(), &o, ops).unwrap();
    assert_eq!(s.steps, 6);
    let seen = SEEN.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|x| x.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);

    // The batch's inputs, from the config.
    let singles = cfg.categorical.iter().filter(|f| f.pooling.is_none()).count() as u64;
    let multis = cfg.categorical.len() as u64 - singles;
    assert!(singles > 0 && multis > 0, "the simulator has both kinds of features");
    let tasks = cfg.tasks.len() as u64;
    let distilled = 4;
    assert_eq!(cfg.distill.as_ref().unwrap().tasks.len() as u64, distilled);
    let dense_width = cfg.dense_width() as u64;
    // One teacher write per distilled task, the pairs (1) and the request groups (2);
    // the per-surface towers' one-hot surfaces (1).
    let surfaces = cfg.segment_names().len() as u64;
    assert_eq!(surfaces, 3);
    let uploads = singles + 2 * multis + 1 + 2 * tasks + 1 + distilled + 1 + 2 + 1;
    assert_eq!((uploads, tasks + distilled), (28, 8), "the budget the module docs state");
    // Every upload but the bags' ids, the pairs and the groups has a fixed length.
    let fixed_elems = singles * rows
        + multis * (rows + 1)
        + rows * dense_width
        + 2 * tasks * rows
        + rows
        + distilled * rows
        + surfaces * rows;
    // At most 3 partners per row (two ids each); at most one group per row (offsets
    // `groups + 1`, members one per row).
    let ranking_elems = 2 * 3 * rows + (rows + 1) + rows;

    for w in seen.windows(2) {
        let ((_, before), (step, after)) = (w[0], w[1]);
        let t = after - before;
        eprintln!("step {step}: {t:?}");
        assert_eq!(t.allocs, 0, "step {step} allocated {} buffers ({} elements)", t.allocs, t.alloc_elems);
        assert_eq!(t.uploads, uploads, "step {step}: uploads (the batch's inputs)");
        assert!(t.upload_elems > fixed_elems, "step {step}: {} elements up, plus the bags' ids", t.upload_elems);
        // The bags: at most one id per (row, possible value) — the user's interests.
        assert!(
            t.upload_elems <= fixed_elems + multis * rows * 16 + ranking_elems,
            "step {step}: {} elements up",
            t.upload_elems
        );
        assert_eq!(t.readbacks, tasks + distilled, "step {step}: readbacks (one loss scalar each)");
        assert_eq!(t.readback_elems, tasks + distilled, "step {step}: scalars only");
    }
}
