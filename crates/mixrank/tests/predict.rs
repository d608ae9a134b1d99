//! `mixrank predict` as a real process on simulated data: its scores equal `mixrank
//! eval`'s on the same rows (bit for bit at f32 and at bf16), the request ids and kept
//! columns are the input's, row for row; bad paths fail naming them, and a failed run
//! leaves no output file; the written score column serves as a logged teacher column for
//! distillation.

mod common;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, Int64Type};
use common::mixrank;
use mixrank_engine::CpuOps;
use mixrank_train::CheckpointScorer;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::path::{Path, PathBuf};

const TASKS: [&str; 4] = ["click", "save", "dwell", "conversion"];

/// Three simulated days of 600 requests × 10 ads (6,000 rows a day: the test split is
/// two of eval's 4096-row batches) and a small MMoE trained for a few steps.
fn trained(dir: &Path) -> (PathBuf, PathBuf) {
    let sim = dir.join("sim");
    let (ok, _, err) = mixrank(&[
        "simulate",
        "--out",
        sim.to_str().unwrap(),
        "--days",
        "3",
        "--requests-per-day",
        "600",
        "--users",
        "400",
        "--initial-ads",
        "300",
    ]);
    assert!(ok, "{err}");
    let model = dir.join("m.toml");
    std::fs::write(
        &model,
        "[model]\narchitecture = \"mmoe\"\nexpert_dim = 8\n[[model.experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [8]\n\
         [[model.experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nhidden = [8]\n[train]\nthreads = 2\n",
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
        "3",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    (sim, run)
}

fn read(path: &Path) -> RecordBatch {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let r = ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
    let batches: Vec<RecordBatch> = r.map(|b| b.unwrap()).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> &'a ArrayRef {
    b.column_by_name(name).unwrap_or_else(|| panic!("no column {name} in {:?}", b.schema()))
}

fn f32s(b: &RecordBatch, name: &str) -> Vec<f32> {
    col(b, name).as_primitive::<Float32Type>().values().to_vec()
}

/// `mixrank eval`'s scores `[task][row]` of `split`, through the library it calls.
fn eval_scores(run: &Path, split: &str, bf16: bool) -> Vec<Vec<f32>> {
    let ops = CpuOps::new();
    let mut s = CheckpointScorer::open(run, &ops, None).unwrap();
    if bf16 {
        s.loaded.model.use_bf16(&ops.with_bf16_kernel(mixrank_engine::bf16::Bf16Kernel::detect())).unwrap();
    }
    s.score(&ops, split).unwrap().preds
}

fn day_file(sim: &Path, day: &str) -> PathBuf {
    sim.join(format!("day={day}")).join("part-00000.parquet")
}

/// Names of the entries of `dir`.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn predictions_equal_eval_with_the_inputs_request_ids_and_kept_columns() {
    let d = tempfile::tempdir().unwrap();
    let (sim, run) = trained(d.path());
    let (r, out_dir) = (run.to_str().unwrap(), d.path().join("out"));
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("preds.parquet");
    let o = out.to_str().unwrap();
    let (ok, stdout, err) = mixrank(&[
        "predict",
        r,
        "--split",
        "test",
        "--out",
        o,
        "--keep",
        "surface,user_interests,ad_hist_ctr,request_id",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("scored 6000 rows of split `test` (1 file)"), "{stdout}");
    let p = read(&out);
    let names: Vec<String> = p.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(
        names,
        [
            "request_id",
            "surface",
            "user_interests",
            "ad_hist_ctr",
            "pred_click",
            "pred_save",
            "pred_dwell",
            "pred_conversion"
        ],
        "the request id once, kept columns in order, one score column per task"
    );
    assert_eq!(entries(&out_dir), ["preds.parquet"], "no temporary file left");

    // Row for row the input: the test split is the last day's file, read in file order.
    let input = read(&day_file(&sim, "2026-01-03"));
    assert_eq!(p.num_rows(), input.num_rows());
    for c in ["request_id", "surface", "user_interests", "ad_hist_ctr"] {
        assert_eq!(col(&p, c).to_data(), col(&input, c).to_data(), "column {c}");
        assert_eq!(col(&p, c).data_type(), col(&input, c).data_type(), "column {c}");
    }
    assert!(col(&p, "ad_hist_ctr").null_count() > 0, "nulls carried as nulls");

    // The scores are eval's, bit for bit.
    let eval = eval_scores(&run, "test", false);
    for (t, task) in TASKS.iter().enumerate() {
        let got = f32s(&p, &format!("pred_{task}"));
        assert_eq!(got.len(), eval[t].len());
        let differ = got.iter().zip(&eval[t]).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "task {task}: {differ} rows differ from eval");
    }
    let clicks = f32s(&p, "pred_click");
    assert!(clicks.iter().all(|&x| x > 0.0 && x < 1.0), "probabilities");

    // bf16: eval's bf16 scores bit for bit (same batches), and close to f32.
    let b = out_dir.join("bf16.parquet");
    let (ok, stdout, err) =
        mixrank(&["predict", r, "--split", "test", "--out", b.to_str().unwrap(), "--precision", "bf16"]);
    assert!(ok, "{err}");
    assert!(stdout.contains("bf16"), "{stdout}");
    let pb = read(&b);
    let eval_b = eval_scores(&run, "test", true);
    let mut changed = 0;
    for (t, task) in TASKS.iter().enumerate() {
        let got = f32s(&pb, &format!("pred_{task}"));
        assert!(
            got.iter().zip(&eval_b[t]).all(|(a, b)| a.to_bits() == b.to_bits()),
            "task {task}: bf16 differs from eval's"
        );
        let f = f32s(&p, &format!("pred_{task}"));
        let worst = got.iter().zip(&f).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // Probabilities within 1e-2, log1p dwell within 2% of its scale.
        let tol = if *task == "dwell" { 2e-2 * f.iter().map(|x| x.abs()).fold(1f32, f32::max) } else { 1e-2 };
        assert!(worst <= tol, "task {task}: bf16 is {worst} from f32");
        changed += got.iter().zip(&f).filter(|(a, b)| a != b).count();
    }
    assert!(changed > 0, "bf16 scores are all equal to f32's: was bf16 used?");
    assert_eq!(col(&pb, "request_id").to_data(), col(&input, "request_id").to_data());

    // --data: files instead of a split; every day, in file order.
    let all = out_dir.join("all.parquet");
    let glob = format!("{}/day=*/*.parquet", sim.display());
    let (ok, stdout, err) = mixrank(&["predict", r, "--data", &glob, "--out", all.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(stdout.contains("scored 18000 rows") && stdout.contains("(3 files)"), "{stdout}");
    let pa = read(&all);
    let ids: Vec<i64> = ["2026-01-01", "2026-01-02", "2026-01-03"]
        .iter()
        .flat_map(|day| col(&read(&day_file(&sim, day)), "request_id").as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(col(&pa, "request_id").as_primitive::<Int64Type>().values().to_vec(), ids);
    // The last day's rows score as in the test split (rows batch at other offsets, so
    // f32 agrees to the last bits, not necessarily in them).
    let tail = f32s(&pa, "pred_click")[12000..].to_vec();
    assert!(tail.iter().zip(&clicks).all(|(a, b)| (a - b).abs() <= 1e-5), "--data scores the same rows alike");

    // An existing output is refused, then replaced with --overwrite.
    let (ok, _, err) = mixrank(&["predict", r, "--split", "validation", "--out", o]);
    assert!(!ok && err.contains("preds.parquet") && err.contains("--overwrite"), "{err}");
    assert_eq!(read(&out).num_rows(), 6000, "untouched");
    let (ok, _, err) = mixrank(&["predict", r, "--split", "validation", "--out", o, "--overwrite"]);
    assert!(ok, "{err}");
    let v = read(&out);
    assert_eq!(v.num_rows(), 6000);
    assert_eq!(
        col(&v, "request_id").to_data(),
        col(&read(&day_file(&sim, "2026-01-02")), "request_id").to_data(),
        "replaced by the validation day's rows"
    );
    assert_eq!(entries(&out_dir), ["all.parquet", "bf16.parquet", "preds.parquet"]);
}

#[test]
fn bad_paths_fail_naming_them_and_leave_no_output() {
    let d = tempfile::tempdir().unwrap();
    let (sim, run) = trained(d.path());
    let r = run.to_str().unwrap();
    let out_dir = d.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let o = out_dir.join("p.parquet");
    let o = o.to_str().unwrap();
    let fails = |args: &[&str]| {
        let (ok, out, err) = mixrank(args);
        assert!(!ok, "mixrank {args:?} succeeded: {out}");
        assert!(entries(&out_dir).is_empty(), "mixrank {args:?} left {:?}", entries(&out_dir));
        err
    };
    // A missing run directory.
    let missing = d.path().join("no-run");
    let err = fails(&["predict", missing.to_str().unwrap(), "--split", "test", "--out", o]);
    assert!(err.contains(&format!("{}: no such run directory", missing.display())), "{err}");
    // A glob matching nothing.
    let glob = format!("{}/nothing/*.parquet", d.path().display());
    let err = fails(&["predict", r, "--data", &glob, "--out", o]);
    assert!(err.contains("no files match") && err.contains(&glob), "{err}");
    // A kept column no file has: found in the first file's footer, before writing.
    let err = fails(&["predict", r, "--split", "test", "--out", o, "--keep", "surface,no_such_column"]);
    assert!(err.contains("missing column `no_such_column`") && err.contains("day=2026-01-03"), "{err}");
    // A kept column named like a score column.
    let err = fails(&["predict", r, "--split", "test", "--out", o, "--keep", "pred_click"]);
    assert!(err.contains("missing column `pred_click`"), "{err}");
    // An output directory that does not exist.
    let nodir = d.path().join("no-dir/p.parquet");
    let err = fails(&["predict", r, "--split", "test", "--out", nodir.to_str().unwrap()]);
    assert!(err.contains("the output directory") && err.contains("no-dir") && err.contains("does not exist"), "{err}");
    assert!(!d.path().join("no-dir").exists());
    // An unknown split.
    let err = fails(&["predict", r, "--split", "nope", "--out", o]);
    assert!(err.contains("data.splits.nope"), "{err}");

    // A failure in the middle of the stream: the first file's rows are scored and
    // written (6000 rows: one full batch), the second file lacks a feature column. The
    // temporary file is removed and no output appears.
    let mixed = d.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    std::fs::copy(day_file(&sim, "2026-01-01"), mixed.join("a.parquet")).unwrap();
    let whole = read(&day_file(&sim, "2026-01-02"));
    let keep: Vec<usize> = (0..whole.num_columns()).filter(|&i| whole.schema().field(i).name() != "user_id").collect();
    let without_user = whole.project(&keep).unwrap();
    let f = std::fs::File::create(mixed.join("b.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, without_user.schema(), None).unwrap();
    w.write(&without_user).unwrap();
    w.close().unwrap();
    let glob = format!("{}/*.parquet", mixed.display());
    let err = fails(&["predict", r, "--data", &glob, "--out", o, "--keep", "surface"]);
    assert!(err.contains("b.parquet") && err.contains("missing column `user_id`"), "{err}");
    // And the same with the output beside the inputs: only the inputs remain.
    let beside = mixed.join("p.parquet");
    let (ok, _, err) = mixrank(&["predict", r, "--data", &glob, "--out", beside.to_str().unwrap()]);
    assert!(!ok, "{err}");
    assert_eq!(entries(&mixed), ["a.parquet", "b.parquet"]);
}

/// The score column as a logged teacher: `predict` over every day, keeping every source
/// column, gives a file a config can train on with `[distill] source = "columns"` and
/// `teacher = { column = "pred_click", kind = "probability" }` (binary tasks write
/// probabilities; a regression task's value would be `kind = "logit"`).
#[test]
fn predict_output_trains_as_a_logged_teacher_column() {
    let d = tempfile::tempdir().unwrap();
    let (sim, run) = trained(d.path());
    let teacher = sim.join("teacher.parquet");
    let input = read(&day_file(&sim, "2026-01-01"));
    let all: Vec<String> = input.schema().fields().iter().map(|f| f.name().clone()).collect();
    let (ok, _, err) = mixrank(&[
        "predict",
        run.to_str().unwrap(),
        "--data",
        &format!("{}/day=*/*.parquet", sim.display()),
        "--out",
        teacher.to_str().unwrap(),
        "--keep",
        &all.join(","),
    ]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(sim.join("mixrank.toml")).unwrap();
    // Every split reads the scored file; click is distilled from its score column.
    let text = regex::Regex::new(r#"paths = \["day=\*/\*\.parquet"\]\ndays = \{[^}]*\}"#)
        .unwrap()
        .replace_all(&text, "paths = [\"teacher.parquet\"]")
        .into_owned();
    let click = "[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"click\"\n";
    assert!(text.contains(click), "the simulator's config changed");
    let text = text.replace(
        click,
        &format!("{click}teacher = {{ column = \"pred_click\", kind = \"probability\" }}\n"),
    ) + "\n[distill]\nsource = \"columns\"\n[[distill.tasks]]\ntask = \"click\"\nloss = \"pointwise_bce\"\nweight = 1.0\n";
    let cfg = sim.join("distill.toml");
    std::fs::write(&cfg, text).unwrap();
    let student = d.path().join("student");
    let (ok, out, err) = mixrank(&[
        "train",
        cfg.to_str().unwrap(),
        "--out",
        student.to_str().unwrap(),
        "--max-steps",
        "3",
        "--log-every",
        "1",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("stopped: max_steps = 3 reached"), "{out}");
    let log = std::fs::read_to_string(student.join("train_log.jsonl")).unwrap();
    let train: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "train")
        .collect();
    assert!(!train.is_empty(), "{log}");
    for v in &train {
        assert_eq!(v["distill_loss"][0][0], "click", "{v}");
        let dl = v["distill_loss"][0][1].as_f64().unwrap_or(f64::NAN);
        assert!(dl.is_finite() && dl > 0.0, "{v}");
    }
}

/// With `[calibration]` (isotonic per surface): `train` prints the layer's table,
/// `eval` reports before/after on the split, and `predict` writes eval's calibrated
/// scores bit for bit (not the model's own).
#[test]
fn a_calibrated_run_predicts_evals_calibrated_scores() {
    let d = tempfile::tempdir().unwrap();
    let (sim, _) = trained(d.path());
    let cfg = sim.join("mixrank.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[calibration]\nmethod = \"isotonic\"\nper = \"surface\"\n");
    std::fs::write(&cfg, text).unwrap();
    let run = d.path().join("calibrated");
    let (ok, stdout, err) =
        mixrank(&["train", cfg.to_str().unwrap(), "--max-steps", "5", "--out", run.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(stdout.contains("calibration (isotonic, per surface, fitted on `validation`"), "{stdout}");
    let r = run.to_str().unwrap();
    let (ok, stdout, err) = mixrank(&["eval", r, "--split", "test"]);
    assert!(ok, "{err}");
    assert!(stdout.contains("f32 (calibrated):") && stdout.contains("before → after"), "{stdout}");
    let out = d.path().join("preds.parquet");
    let (ok, _, err) = mixrank(&["predict", r, "--split", "test", "--out", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    let p = read(&out);
    let ops = CpuOps::new();
    let scored = CheckpointScorer::open(&run, &ops, None).unwrap().score(&ops, "test").unwrap();
    let raw = scored.uncalibrated.expect("a calibration layer");
    for (t, task) in ["click", "save", "dwell", "conversion"].iter().enumerate() {
        assert_eq!(f32s(&p, &format!("pred_{task}")), scored.preds[t], "{task}");
    }
    assert_ne!(scored.preds[0], raw[0], "the click scores are calibrated");
}
