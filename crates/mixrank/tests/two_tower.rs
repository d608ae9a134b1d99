//! The two-tower light ranker through the CLI on simulated data: `train --model
//! configs/models/two_tower.toml` on the simulator's config, `eval` (f32 and bf16) and
//! `predict` of the run, and a two-tower student distilled from a full ranker trained
//! just before (the MMoE with a position tower, `configs/models/mmoe_position_tower.toml`).

mod common;

use common::mixrank;
use std::path::{Path, PathBuf};

fn model_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/models").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_two_tower_model_trains_evaluates_predicts_and_distils_from_a_full_ranker() {
    let d = tempfile::tempdir().unwrap();
    let sim = d.path().join("sim");
    let (ok, _, err) = mixrank(&[
        "simulate",
        "--out",
        s(&sim),
        "--days",
        "3",
        "--requests-per-day",
        "300",
        "--users",
        "500",
        "--initial-ads",
        "300",
    ]);
    assert!(ok, "{err}");
    let cfg = sim.join("mixrank.toml");
    let tt = d.path().join("tt");
    let tt_model = model_file("two_tower.toml");
    let (ok, out, err) = mixrank(&["train", s(&cfg), "--model", s(&tt_model), "--max-steps", "2", "--out", s(&tt)]);
    assert!(ok, "{err}");
    assert!(out.contains("trained 2 steps"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("click        all")), "{out}");
    let manifest = std::fs::read_to_string(tt.join("checkpoint/manifest.json")).unwrap();
    assert!(manifest.contains("two_tower"), "the checkpoint records the architecture");

    // Eval in f32 and bf16 (both towers' GEMMs in bf16), and predict the test split.
    let (ok, out, err) = mixrank(&["eval", s(&tt), "--split", "test", "--precision", "bf16"]);
    assert!(ok, "{err}");
    assert!(out.contains("ΔAUC") && out.lines().any(|l| l.starts_with("save         all")), "{out}");
    // The user tower's MMoE gates are reported by tower and task (the ad tower has none).
    let json = d.path().join("eval.json");
    let (ok, _, err) = mixrank(&["eval", s(&tt), "--split", "test", "--json", s(&json)]);
    assert!(ok, "{err}");
    let e: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let gates: Vec<&str> = e["gates"].as_array().unwrap().iter().map(|g| g["gate"].as_str().unwrap()).collect();
    assert_eq!(gates, ["user click", "user save", "user dwell", "user conversion"], "{}", e["gates"]);
    for g in e["gates"].as_array().unwrap() {
        assert_eq!(g["experts"], serde_json::json!(["0:dcnv2", "1:mlp"]));
        let ratio = g["entropy_ratio"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ratio), "{g}");
    }
    let preds = d.path().join("preds.parquet");
    let (ok, _, err) = mixrank(&["predict", s(&tt), "--split", "test", "--out", s(&preds)]);
    assert!(ok, "{err}");
    assert!(std::fs::metadata(&preds).unwrap().len() > 0);

    // embed-items: a request log repeats its ads, so it is refused naming the id, and
    // leaves no output; the log's first row per ad is embedded into a table.
    let day3 = sim.join("day=2026-01-03/part-00000.parquet");
    let table = d.path().join("table");
    let (ok, _, err) = mixrank(&["embed-items", s(&tt), "--items", s(&day3), "--out", s(&table)]);
    assert!(!ok && err.contains("appears twice"), "{err}");
    assert!(
        !table.exists()
            && std::fs::read_dir(d.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("table"))
    );
    let items = d.path().join("items.parquet");
    let n = first_row_per_ad(&day3, &items);
    let (ok, out, err) = mixrank(&["embed-items", s(&tt), "--items", s(&items), "--out", s(&table), "--batch", "64"]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("embedded {n} items (4 tasks × dim 32)")), "{out}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(table.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["items"], n);
    assert_eq!(manifest["id_column"], "ad_id");
    assert!(err.contains("100%"), "a progress line: {err}");

    // A full ranker, then a two-tower student distilled from it.
    let teacher = d.path().join("teacher");
    let (ok, _, err) = mixrank(&[
        "train",
        s(&cfg),
        "--model",
        s(&model_file("mmoe_position_tower.toml")),
        "--max-steps",
        "2",
        "--out",
        s(&teacher),
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = mixrank(&["embed-items", s(&teacher), "--items", s(&items), "--out", s(&d.path().join("t2"))]);
    assert!(!ok && err.contains("is not a two-tower model"), "{err}");
    let distill_cfg = sim.join("distill.toml");
    let text = std::fs::read_to_string(&cfg).unwrap()
        + &format!(
            "\n[distill]\nsource = \"checkpoint\"\ncheckpoint = \"{}\"\n\
             [[distill.tasks]]\ntask = \"click\"\nloss = \"pointwise_bce\"\n\
             [[distill.tasks]]\ntask = \"save\"\nloss = \"pointwise_bce\"\n",
            s(&teacher)
        );
    std::fs::write(&distill_cfg, text).unwrap();
    let student = d.path().join("student");
    let (ok, out, err) = mixrank(&[
        "train",
        s(&distill_cfg),
        "--model",
        s(&tt_model),
        "--max-steps",
        "2",
        "--log-every",
        "1",
        "--out",
        s(&student),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("trained 2 steps"), "{out}");
    // Every step's log line carries a positive distillation loss for click and save.
    let log = std::fs::read_to_string(student.join("train_log.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "train")
        .collect();
    assert_eq!(steps.len(), 2, "{log}");
    for v in &steps {
        for (k, task) in ["click", "save"].into_iter().enumerate() {
            assert_eq!(v["distill_loss"][k][0], task, "{v}");
            let loss = v["distill_loss"][k][1].as_f64().unwrap_or(f64::NAN);
            assert!(loss.is_finite() && loss > 0.0, "{v}");
        }
    }
}

/// Writes the first row of every `ad_id` of `log` to `out`; returns how many.
fn first_row_per_ad(log: &Path, out: &Path) -> usize {
    use arrow::array::AsArray;
    let f = std::fs::File::open(log).unwrap();
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
    let batches: Vec<_> = r.map(|b| b.unwrap()).collect();
    let rb = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let ad = rb.column_by_name("ad_id").unwrap().as_primitive::<arrow::datatypes::Int64Type>().clone();
    let mut seen = std::collections::HashSet::new();
    let rows: Vec<u32> = (0..rb.num_rows()).filter(|&i| seen.insert(ad.value(i))).map(|i| i as u32).collect();
    let rb = arrow::compute::take_record_batch(&rb, &arrow::array::UInt32Array::from(rows.clone())).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(out).unwrap(), rb.schema(), None).unwrap();
    w.write(&rb).unwrap();
    w.close().unwrap();
    rows.len()
}
