//! The two-tower model's cached item table end to end: `embed-items` (library call)
//! over a catalogue of the simulator's ads, a real server on loopback with `--items`,
//! scores of the cached path against `mixrank predict` on the same rows, items scored
//! from features, missing items, top-k, another checkpoint's table refused at start and
//! on reload, reloads of model and table together under load, and embed-items' refusals
//! (missing column, non-two-tower run, duplicate id) leaving no output behind.

mod common;

use arrow::array::{ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::Int64Type;
use common::*;
use mixrank_data::config::Split;
use mixrank_data::simulate::{simulate_engagement, EngagementParams};
use mixrank_data::ExperimentConfig;
use mixrank_engine::CpuOps;
use mixrank_serve::embed_items::{embed_items, EmbedOptions};
use mixrank_serve::replay::{requests_from_parquet, Grouping};
use mixrank_serve::request::{Features, Value};
use mixrank_serve::session::TowerColumns;
use mixrank_serve::{Precision, ServeError, ServeOptions};
use mixrank_train::{train, CheckpointScorer, PredictOptions, TrainOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

struct Items {
    dir: PathBuf,
    cfg: ExperimentConfig,
    /// The simulator's data config (`cfg` before the model file).
    data_config: PathBuf,
    /// Two runs of the same two-tower config (other seeds: other weights, same schema).
    run_a: PathBuf,
    run_b: PathBuf,
    /// One row per ad of the test split (every column), and its first half.
    items: PathBuf,
    half: PathBuf,
    /// `items` with every user-tower column set to row 0's: one user, every ad.
    request: PathBuf,
    table_a: PathBuf,
    table_b: PathBuf,
    /// `run_a`'s table of `half` only, embedded in batches of 2 rows.
    table_a_half: PathBuf,
    n: usize,
}

fn write_parquet(path: &Path, rb: &RecordBatch) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, rb.schema(), None).unwrap();
    w.write(rb).unwrap();
    w.close().unwrap();
}

fn read_parquet(path: &Path) -> RecordBatch {
    let f = std::fs::File::open(path).unwrap();
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
    let batches: Vec<RecordBatch> = r.map(|b| b.unwrap()).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn take(rb: &RecordBatch, rows: &[u32]) -> RecordBatch {
    arrow::compute::take_record_batch(rb, &UInt32Array::from(rows.to_vec())).unwrap()
}

fn embed(run: &Path, items: &Path, out: &Path) -> Result<(), ServeError> {
    embed_in(run, items, out, 4096)
}

fn embed_in(run: &Path, items: &Path, out: &Path, batch: usize) -> Result<(), ServeError> {
    let s = engine().open(run, Precision::F32, batch)?;
    let opts = EmbedOptions { batch, id_column: None, overwrite: false };
    embed_items(&s, items, out, &opts, &mut |_, _| {}).map(|_| ())
}

fn items_fixture() -> &'static Items {
    static F: OnceLock<Items> = OnceLock::new();
    F.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("items-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = EngagementParams {
            days: 3,
            requests_per_day: 150,
            users: 300,
            initial_ads: 200,
            new_ads_per_day: 20,
            ..Default::default()
        };
        let sim = simulate_engagement(&p, &dir.join("data")).unwrap();
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/models/two_tower.toml");
        let cfg = ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap();
        let (run_a, run_b) = (dir.join("run-a"), dir.join("run-b"));
        for (run, seed) in [(&run_a, 7), (&run_b, 8)] {
            let mut c = cfg.clone();
            c.train.seed = seed;
            let mut opts = TrainOptions::new(run);
            opts.max_steps = Some(2);
            train(Arc::new(c), &opts, &CpuOps::new()).unwrap();
        }
        // The catalogue: the first row of every ad of the test split.
        let files = mixrank_serve::replay::split_files(&cfg, "test").unwrap();
        let all = read_parquet(&files[0]);
        let ad = all.column_by_name("ad_id").unwrap().as_primitive::<Int64Type>().clone();
        let mut seen = std::collections::HashSet::new();
        let mut rows: Vec<u32> = (0..all.num_rows()).filter(|&r| seen.insert(ad.value(r))).map(|r| r as u32).collect();
        // An even count, so batches of 2 rows cover it (see the bit-for-bit test).
        rows.truncate(rows.len() / 2 * 2);
        let n = rows.len();
        assert!(n >= 100, "{n} ads");
        let items_rb = take(&all, &rows);
        let items = dir.join("items.parquet");
        write_parquet(&items, &items_rb);
        let half = dir.join("half.parquet");
        write_parquet(&half, &items_rb.slice(0, n / 2));
        // One user (row 0's user and context columns) with every ad.
        let towers = TowerColumns::of(&cfg).unwrap();
        let zeros = UInt32Array::from(vec![0u32; n]);
        let cols: Vec<ArrayRef> = items_rb
            .schema()
            .fields()
            .iter()
            .zip(items_rb.columns())
            .map(|(f, c)| {
                if towers.user.contains(f.name()) {
                    arrow::compute::take(c, &zeros, None).unwrap()
                } else {
                    c.clone()
                }
            })
            .collect();
        let request = dir.join("request.parquet");
        write_parquet(&request, &RecordBatch::try_new(items_rb.schema(), cols).unwrap());
        let (table_a, table_b, table_a_half) = (dir.join("table-a"), dir.join("table-b"), dir.join("table-a-half"));
        embed(&run_a, &items, &table_a).unwrap();
        embed(&run_b, &items, &table_b).unwrap();
        embed_in(&run_a, &half, &table_a_half, 2).unwrap();
        let data_config = sim.config.clone();
        Items { dir, cfg, data_config, run_a, run_b, items, half, request, table_a, table_b, table_a_half, n }
    })
}

/// `mixrank predict` of `run` on `file` in batches of `batch` rows (None: the
/// config's): `[task][row]`.
fn predict(run: &Path, file: &Path, batch: Option<usize>) -> Vec<Vec<f32>> {
    let ops = CpuOps::new();
    let mut s = CheckpointScorer::open_run(run, &ops).unwrap();
    if let Some(b) = batch {
        let mut cfg = (*s.config).clone();
        cfg.data.batch_size = b;
        s.config = Arc::new(cfg);
    }
    let split =
        Split { name: "--data".into(), patterns: vec![file.to_string_lossy().into_owned()], days: None, rows: None };
    let out = file.with_extension(format!("pred-{}.parquet", run.file_name().unwrap().to_string_lossy()));
    s.predict(&ops, &split, &out, &PredictOptions { keep: vec![], overwrite: true }).unwrap();
    let rb = read_parquet(&out);
    s.config
        .tasks
        .iter()
        .map(|t| {
            let c = rb.column_by_name(&mixrank_train::predict::score_column(&t.name)).unwrap();
            c.as_primitive::<arrow::datatypes::Float32Type>().values().to_vec()
        })
        .collect()
}

/// The request file's user context, and every row's ad id and item features.
fn user_and_ads() -> (Features, Vec<i64>, Vec<Features>) {
    let f = items_fixture();
    let towers = TowerColumns::of(&f.cfg).unwrap();
    let req = requests_from_parquet(&f.request, &f.cfg, Grouping::Fixed(f.n), f.n).unwrap().remove(0);
    assert_eq!(req.candidates.len(), f.n);
    let mut all = req.context.clone();
    all.extend(req.candidates[0].clone());
    let context: Features = all.into_iter().filter(|(k, _)| towers.user.contains(k)).collect();
    assert_eq!(context.len(), towers.user.len(), "{context:?}");
    let ids = req
        .candidates
        .iter()
        .map(|c| match c.get("ad_id").or(req.context.get("ad_id")) {
            Some(Value::Int(v)) => *v,
            other => panic!("ad_id {other:?}"),
        })
        .collect();
    // Item features: every column a candidate carries but the user's.
    let feats = req
        .candidates
        .iter()
        .map(|c| {
            let mut m: Features = req
                .context
                .iter()
                .filter(|(k, _)| !towers.user.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            m.extend(c.iter().filter(|(k, _)| !towers.user.contains(*k)).map(|(k, v)| (k.clone(), v.clone())));
            m
        })
        .collect();
    (context, ids, feats)
}

fn body(context: &Features, ids: &[serde_json::Value], extra: serde_json::Value) -> String {
    let ctx: serde_json::Map<String, serde_json::Value> =
        context.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
    let mut v = serde_json::json!({"request_id": "r", "context": ctx, "item_ids": ids});
    if let serde_json::Value::Object(m) = extra {
        for (k, x) in m {
            v[k] = x;
        }
    }
    v.to_string()
}

fn predictions(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["predictions"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() as f32).collect())
        .collect()
}

fn server(run: &Path, items: &Path) -> (tokio::runtime::Runtime, mixrank_serve::RunningServer) {
    let rt = runtime();
    let mut opts = ServeOptions::new(run, engine());
    opts.items = Some(items.to_path_buf());
    opts.admin_token = Some("t".into());
    let s = start(&rt, opts);
    (rt, s)
}

fn max_diff(got: &[Vec<f32>], expected: &[Vec<f32>]) -> f32 {
    let mut m = 0f32;
    for (row, p) in got.iter().enumerate() {
        for (t, &v) in p.iter().enumerate() {
            m = m.max((v - expected[t][row]).abs());
        }
    }
    m
}

fn assert_bits(got: &[Vec<f32>], expected: &[Vec<f32>], what: &str) {
    assert_eq!(got.len(), expected[0].len(), "{what}");
    for (row, p) in got.iter().enumerate() {
        for (t, &v) in p.iter().enumerate() {
            assert_eq!(
                v.to_bits(),
                expected[t][row].to_bits(),
                "{what}: row {row} task {t}: {v} vs predict {} (max diff {:e})",
                expected[t][row],
                max_diff(got, expected)
            );
        }
    }
}

/// The cached path computes the model's own score: the user tower once (on two copies
/// of the context row), the item tower per item offline, and each task's dot product
/// summed in `block_dot`'s order, plus the bias and the same sigmoid. A GEMM's rounding
/// depends on the batch's row count (the `gemm` crate picks its blocking by shape), so
/// `predict` and the table are computed in batches of 2 rows, the row count of the
/// server's user-tower forward: then every score is `predict`'s bit for bit.
#[test]
fn cached_item_scores_equal_predict_bit_for_bit_and_missing_items_come_from_features() {
    let f = items_fixture();
    let table2 = f.dir.join("table-a-batch2");
    if !table2.exists() {
        embed_in(&f.run_a, &f.items, &table2, 2).unwrap();
    }
    let expected = predict(&f.run_a, &f.request, Some(2));
    let (context, ids, feats) = user_and_ads();
    let json_ids: Vec<serde_json::Value> = ids.iter().map(|&i| i.into()).collect();
    let (_rt, s) = server(&f.run_a, &table2);
    let r = post_json(s.http_addr, "/v1/score", &body(&context, &json_ids, serde_json::json!({})));
    assert_eq!(r.status, 200, "{}", r.body);
    let got = predictions(&r.json());
    assert_eq!(got.len(), f.n);
    assert_bits(&got, &expected, "cached path vs predict in batches of 2");
    // In predict's own batches (all rows in one) the GEMMs block differently: the last bits move.
    let default_batches = predict(&f.run_a, &f.request, None);
    eprintln!("cached path vs predict in its default batches: max |diff| {:e}", max_diff(&got, &default_batches));
    let returned: Vec<i64> =
        r.json()["candidates"].as_array().unwrap().iter().map(|c| c["id"].as_i64().unwrap()).collect();
    assert_eq!(returned, ids, "answers follow the request's ids");
    drop(s);

    // The half table lacks the second half: without features they are listed in a 400 …
    let (_rt2, s) = server(&f.run_a, &f.table_a_half);
    let mut with_unknown = json_ids.clone();
    with_unknown.push(987_654_321i64.into());
    let r = post_json(s.http_addr, "/v1/score", &body(&context, &with_unknown, serde_json::json!({})));
    assert_eq!(r.status, 400, "{}", r.body);
    let missing = f.n - f.n / 2 + 1;
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.starts_with(&format!("{missing} item(s) not in the item table")), "{msg}");
    for id in ids[f.n / 2..].iter().chain([&987_654_321]) {
        assert!(msg.contains(&id.to_string()), "{id} not listed: {msg}");
    }
    assert!(!msg.contains(&format!(" {},", ids[0])) && !msg.contains(&format!("[{},", ids[0])), "{msg}");
    // … and with their features they are scored through the model's ordinary path.
    let item_features: Vec<serde_json::Value> = feats[f.n / 2..]
        .iter()
        .map(|m| serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()))
        .collect();
    let r = post_json(
        s.http_addr,
        "/v1/score",
        &body(&context, &json_ids, serde_json::json!({"item_features": item_features})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let got = predictions(&r.json());
    // The table's half (embedded in batches of 2) against predict in batches of 2; the
    // featured half is one forward of its rows, as predict scores a file of just them.
    let (first, second) = got.split_at(f.n / 2);
    let half_request = f.dir.join("request-half2.parquet");
    let rb = read_parquet(&f.request);
    write_parquet(&half_request, &rb.slice(f.n / 2, f.n - f.n / 2));
    assert_bits(second, &predict(&f.run_a, &half_request, None), "items scored from their features");
    let first_request = f.dir.join("request-half1.parquet");
    write_parquet(&first_request, &rb.slice(0, f.n / 2));
    assert_bits(first, &predict(&f.run_a, &first_request, Some(2)), "items of the half table");
}

/// A cosine-score model (`score = "cosine"`, `temperature = 0.1`) through the same
/// path: the table holds unit-length item embeddings, the server normalises the user
/// embedding and multiplies each dot product by `1/τ` before the bias as the model's
/// forward does, so its scores are `predict`'s bit for bit (batches of 2, as above).
#[test]
fn cosine_item_scores_equal_predict_bit_for_bit() {
    let f = items_fixture();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/models/two_tower.toml");
    let text = std::fs::read_to_string(&model).unwrap().replace(
        "[model.two_tower]\ndim = 32\n",
        "[model.two_tower]\ndim = 32\nscore = \"cosine\"\ntemperature = 0.1\n",
    );
    assert!(text.contains("cosine"), "configs/models/two_tower.toml changed shape");
    let model = f.dir.join("two_tower_cosine.toml");
    std::fs::write(&model, text).unwrap();
    let run = f.dir.join("run-cosine");
    let table = f.dir.join("table-cosine");
    if !table.exists() {
        let mut cfg = ExperimentConfig::load(&f.data_config).unwrap().with_model_file(&model).unwrap();
        cfg.train.seed = 9;
        let mut opts = TrainOptions::new(&run);
        opts.max_steps = Some(2);
        train(Arc::new(cfg), &opts, &CpuOps::new()).unwrap();
        embed_in(&run, &f.items, &table, 2).unwrap();
    }
    let t = mixrank_serve::item_table::ItemTable::load(&table).unwrap();
    for row in 0..t.len() as u32 {
        for task in 0..f.cfg.tasks.len() {
            let norm = t.embedding(row, task).iter().map(|v| (v * v) as f64).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "row {row} task {task}: |v| = {norm}");
        }
    }
    let expected = predict(&run, &f.request, Some(2));
    let (context, ids, _) = user_and_ads();
    let json_ids: Vec<serde_json::Value> = ids.iter().map(|&i| i.into()).collect();
    let (_rt, s) = server(&run, &table);
    let r = post_json(s.http_addr, "/v1/score", &body(&context, &json_ids, serde_json::json!({})));
    assert_eq!(r.status, 200, "{}", r.body);
    let got = predictions(&r.json());
    assert_bits(&got, &expected, "cosine: cached path vs predict in batches of 2");
    // The dot-score run's predictions differ: the cosine score is really in play.
    assert!(max_diff(&got, &predict(&f.run_a, &f.request, Some(2))) > 1e-4);
}

#[test]
fn top_k_returns_the_best_k_in_order() {
    let f = items_fixture();
    let (context, ids, _) = user_and_ads();
    let json_ids: Vec<serde_json::Value> = ids.iter().map(|&i| i.into()).collect();
    let (_rt, s) = server(&f.run_a, &f.table_a);
    let all = post_json(s.http_addr, "/v1/score", &body(&context, &json_ids, serde_json::json!({})));
    let all = predictions(&all.json());
    let tasks: Vec<String> = get(s.http_addr, "/v1/model").json()["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    for (t, rank_by) in [(0, None), (1, Some(tasks[1].clone()))] {
        let extra = match &rank_by {
            None => serde_json::json!({"top_k": 7}),
            Some(name) => serde_json::json!({"top_k": 7, "rank_by": name}),
        };
        let r = post_json(s.http_addr, "/v1/score", &body(&context, &json_ids, extra));
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        let got: Vec<i64> = v["candidates"].as_array().unwrap().iter().map(|c| c["id"].as_i64().unwrap()).collect();
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by(|&a, &b| all[b][t].total_cmp(&all[a][t]).then(a.cmp(&b)));
        let want: Vec<i64> = order[..7].iter().map(|&i| ids[i]).collect();
        assert_eq!(got, want, "top 7 by task {t}");
        let scores: Vec<f32> = predictions(&v).iter().map(|p| p[t]).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    }
    let r = post_json(
        s.http_addr,
        "/v1/score",
        &body(&context, &json_ids, serde_json::json!({"top_k": 3, "rank_by": "nope"})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("rank_by") && r.body.contains("nope"), "{}", r.body);
    // top_k also applies to an ordinary request, answering each candidate's index.
    let (_, _, feats) = user_and_ads();
    let cands: Vec<serde_json::Value> = feats[..20]
        .iter()
        .map(|m| serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()))
        .collect();
    let ctx: serde_json::Map<String, serde_json::Value> =
        context.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
    let b = serde_json::json!({"context": ctx, "candidates": cands, "top_k": 3}).to_string();
    let r = post_json(s.http_addr, "/v1/score", &b);
    assert_eq!(r.status, 200, "{}", r.body);
    let idx: Vec<u64> =
        r.json()["candidates"].as_array().unwrap().iter().map(|c| c["index"].as_u64().unwrap()).collect();
    let mut order: Vec<usize> = (0..20).collect();
    order.sort_by(|&a, &b| all[b][0].total_cmp(&all[a][0]).then(a.cmp(&b)));
    assert_eq!(idx, order[..3].iter().map(|&i| i as u64).collect::<Vec<_>>());
}

#[test]
fn a_table_of_another_checkpoint_is_refused_at_start_and_on_reload_naming_both() {
    let f = items_fixture();
    let rt = runtime();
    let mut opts = ServeOptions::new(&f.run_a, engine());
    opts.items = Some(f.table_b.clone());
    let err = match rt.block_on(mixrank_serve::start(opts)) {
        Ok(_) => panic!("a table of run-b served beside run-a"),
        Err(e) => e.to_string(),
    };
    let hash = |run: &Path| {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("checkpoint/manifest.json")).unwrap()).unwrap();
        m["files"]["weights.safetensors"]["xxh3"].as_str().unwrap().to_string()
    };
    let (ha, hb) = (hash(&f.run_a), hash(&f.run_b));
    assert_ne!(ha, hb);
    assert!(err.contains(&ha) && err.contains(&hb) && err.contains("run-a") && err.contains("run-b"), "{err}");

    let (_rt, s) = server(&f.run_a, &f.table_a);
    let auth = [("Authorization", "Bearer t")];
    let v0 = get(s.http_addr, "/v1/model").json()["version"].clone();
    // The new model with the served (run-a) table: refused, naming both.
    let r = http(
        s.http_addr,
        "POST",
        "/admin/reload",
        &auth,
        format!(r#"{{"model": "{}"}}"#, f.run_b.display()).as_bytes(),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains(&ha) && r.body.contains(&hb), "{}", r.body);
    assert_eq!(get(s.http_addr, "/v1/model").json()["version"], v0, "the old model keeps serving");
    // A table that is not a table, and a damaged one, are refused too.
    let r = http(
        s.http_addr,
        "POST",
        "/admin/reload",
        &auth,
        format!(r#"{{"items": "{}"}}"#, f.run_b.display()).as_bytes(),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    // Model and table together: accepted.
    let body = format!(r#"{{"model": "{}", "items": "{}"}}"#, f.run_b.display(), f.table_b.display());
    let r = http(s.http_addr, "POST", "/admin/reload", &auth, body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let m = get(s.http_addr, "/v1/model").json();
    assert!(m["version"].as_str().unwrap().starts_with("run-b@"), "{m}");
    assert_eq!(m["items"]["checkpoint"]["weights_xxh3"], hb.as_str());
}

#[test]
fn reloads_swap_model_and_table_together_under_load_with_no_failed_request() {
    let f = items_fixture();
    let (context, ids, _) = user_and_ads();
    let json_ids: Vec<serde_json::Value> = ids.iter().map(|&i| i.into()).collect();
    let b = body(&context, &json_ids, serde_json::json!({}));
    let (_rt, s) = server(&f.run_a, &f.table_a);
    let addr = s.http_addr;
    // Each version's answer, from a quiet server.
    let mut reference = std::collections::BTreeMap::new();
    let auth = [("Authorization", "Bearer t")];
    let reload = |run: &Path, table: &Path| {
        let body = format!(r#"{{"model": "{}", "items": "{}"}}"#, run.display(), table.display());
        let r = http(addr, "POST", "/admin/reload", &auth, body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.body);
    };
    for (run, table) in [(&f.run_b, &f.table_b), (&f.run_a, &f.table_a)] {
        reload(run, table);
        let v = post_json(addr, "/v1/score", &b).json();
        reference.insert(v["model_version"].as_str().unwrap().to_string(), predictions(&v));
    }
    assert_eq!(reference.len(), 2);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (b, stop) = (b.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failures) = (Vec::new(), Vec::new());
                let mut n = 0;
                while n < 300 && !(stop.load(std::sync::atomic::Ordering::SeqCst) && n >= 10) {
                    let r = post_json(addr, "/v1/score", &b);
                    if r.status == 200 {
                        let v = r.json();
                        ok.push((v["model_version"].as_str().unwrap().to_string(), predictions(&v)));
                    } else {
                        failures.push((r.status, r.body));
                    }
                    n += 1;
                }
                (ok, failures)
            })
        })
        .collect();
    for i in 0..6 {
        if i % 2 == 0 {
            reload(&f.run_b, &f.table_b);
        } else {
            reload(&f.run_a, &f.table_a);
        }
        // A mismatched pair in between: refused, the served pair untouched.
        let body = format!(r#"{{"model": "{}", "items": "{}"}}"#, f.run_a.display(), f.table_b.display());
        assert_eq!(http(addr, "POST", "/admin/reload", &auth, body.as_bytes()).status, 422);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0;
    for c in clients {
        let (ok, failures) = c.join().unwrap();
        assert!(failures.is_empty(), "failed requests during reloads: {failures:?}");
        for (version, p) in ok {
            let want = reference.get(&version).unwrap_or_else(|| panic!("unknown version {version}"));
            assert!(p == *want, "an answer of {version} differs from that version's scores");
            seen.insert(version);
            total += 1;
        }
    }
    assert!(total >= 30, "{total}");
    assert_eq!(seen.len(), 2, "both versions answered under load: {seen:?}");
}

#[test]
fn embed_items_refuses_bad_inputs_and_leaves_no_output() {
    let f = items_fixture();
    let out = f.dir.join("refused");
    let leftovers = || {
        std::fs::read_dir(&f.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("refused"))
            .collect::<Vec<_>>()
    };
    // A column the item tower reads is missing.
    let items = read_parquet(&f.items);
    let keep: Vec<usize> =
        (0..items.num_columns()).filter(|&i| items.schema().field(i).name() != "ad_category").collect();
    let no_cat = f.dir.join("no-category.parquet");
    write_parquet(&no_cat, &items.project(&keep).unwrap());
    let e = embed(&f.run_a, &no_cat, &out).unwrap_err().to_string();
    assert!(
        e.contains("no column \"ad_category\"") && e.contains("item tower") && e.contains("no-category.parquet"),
        "{e}"
    );
    assert!(leftovers().is_empty(), "{:?}", leftovers());
    // A duplicate id, found after the first batch was written.
    let n = items.num_rows() as u32;
    let mut rows: Vec<u32> = (0..n).collect();
    rows.push(3);
    let dup = f.dir.join("dup.parquet");
    write_parquet(&dup, &take(&items, &rows));
    let s = engine().open(&f.run_a, Precision::F32, 64).unwrap();
    let opts = EmbedOptions { batch: 64, id_column: None, overwrite: false };
    let e = embed_items(&s, &dup, &out, &opts, &mut |_, _| {}).unwrap_err().to_string();
    let id = items.column_by_name("ad_id").unwrap().as_primitive::<Int64Type>().value(3);
    assert!(e.contains(&format!("item id {id} appears twice (rows 3 and {n})")), "{e}");
    assert!(leftovers().is_empty(), "{:?}", leftovers());
    // An id column that is not there.
    let opts = EmbedOptions { batch: 64, id_column: Some("item_key".into()), overwrite: false };
    let e = embed_items(&s, &f.items, &out, &opts, &mut |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("no column \"item_key\" (the item ids)"), "{e}");
    // A model that is not two-tower.
    let full = fixture();
    let e = embed(&full.run, &f.items, &out).unwrap_err().to_string();
    assert!(e.contains("is not a two-tower model") && e.contains("mmoe"), "{e}");
    assert!(leftovers().is_empty(), "{:?}", leftovers());
    // An existing output is kept unless --overwrite.
    let e = embed(&f.run_a, &f.half, &f.table_a).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    let t = mixrank_serve::item_table::ItemTable::load(&f.table_a).unwrap();
    assert_eq!(t.len(), f.n, "the existing table is untouched");
    // A damaged table is refused at load, naming the file.
    let bad = f.dir.join("damaged");
    std::fs::create_dir_all(&bad).unwrap();
    for e in std::fs::read_dir(&f.table_a).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), bad.join(e.file_name())).unwrap();
    }
    let w = bad.join("embeddings.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 0x40;
    std::fs::write(&w, bytes).unwrap();
    let e = mixrank_serve::item_table::ItemTable::load(&bad).unwrap_err().to_string();
    assert!(e.contains("embeddings.safetensors") && e.contains("checksum"), "{e}");
}
