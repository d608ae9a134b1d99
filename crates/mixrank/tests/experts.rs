//! `mixrank experiment experts` end to end on a tiny heterogeneous MMoE run trained with
//! gate dropout: the table, the JSON and the plot are written and hold what they claim;
//! `eval --json` reports each gate's entropy; a run without gates over one expert list
//! is refused.

mod common;

use common::mixrank;
use std::path::Path;

#[test]
fn expert_report_of_a_gate_dropout_mmoe_run() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let (ok, _, err) =
        mixrank(&["simulate", "--out", data.to_str().unwrap(), "--days", "3", "--requests-per-day", "300"]);
    assert!(ok, "{err}");
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/models/mmoe_heterogeneous.toml");
    let model = d.path().join("mmoe_gate_dropout.toml");
    let text = std::fs::read_to_string(&base)
        .unwrap()
        .replace("[model.tower]", "[model.gate]\ndropout = 0.1\n\n[model.tower]");
    std::fs::write(&model, text).unwrap();
    let run = d.path().join("run");
    let cfg = data.join("mixrank.toml");
    let (ok, _, err) =
        mixrank(&["train", cfg.to_str().unwrap(), "--model", model.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    assert!(ok, "{err}");

    // eval: the entropy columns and the gates in the JSON.
    let json_path = d.path().join("eval.json");
    let (ok, out, err) = mixrank(&["eval", run.to_str().unwrap(), "--json", json_path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("entropy") && out.contains("/ln E"), "{out}");
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let gates = j["gates"].as_array().unwrap();
    assert_eq!(gates.len(), 4, "one gate per task");
    for g in gates {
        let (h, r) = (g["entropy"].as_f64().unwrap(), g["entropy_ratio"].as_f64().unwrap());
        assert!(h > 0.0 && (h / 5f64.ln() - r).abs() < 1e-9 && r <= 1.0 + 1e-9, "{g}");
        assert_eq!(g["segments"].as_object().unwrap().len(), 3, "per surface");
    }

    let out_dir = d.path().join("experts");
    let (ok, out, err) = mixrank(&[
        "experiment",
        "experts",
        run.to_str().unwrap(),
        "--split",
        "test",
        "--reps",
        "2",
        "--resamples",
        "50",
        "--out",
        out_dir.to_str().unwrap(),
        "--retrain",
        d.path().join("retrained").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let md = std::fs::read_to_string(out_dir.join("experts.md")).unwrap();
    assert_eq!(out.trim_end().lines().next(), md.lines().next(), "the table is printed too");
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ") && l.contains(':')).collect();
    let kinds: Vec<&str> = rows.iter().map(|l| l[2..].split(' ').next().unwrap()).collect();
    assert_eq!(kinds, ["0:dcnv2", "1:masknet", "2:finalmlp", "3:mlp", "4:mlp"], "{md}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("experts.json")).unwrap()).unwrap();
    let experts = j["experts"].as_array().unwrap();
    assert_eq!(experts.len(), 5);
    let mut any_change = false;
    for e in experts {
        assert!(e["params"].as_u64().unwrap() > 1000 && e["flops_per_example"].as_u64().unwrap() > 1000, "{e}");
        for k in ["f32_ms", "bf16_ms", "f32_share", "bf16_share"] {
            assert!(e[k].as_f64().unwrap() > 0.0, "{k}: {e}");
        }
        let masked = e["masked"].as_array().unwrap();
        assert_eq!(masked.len(), 4, "a comparison per task");
        for lift in masked[0]["overall"].as_array().unwrap() {
            let (a, b) = (lift["a"].as_f64().unwrap(), lift["b"].as_f64().unwrap());
            any_change |= a != b;
            assert!(lift["ci_low"].as_f64().unwrap() <= lift["ci_high"].as_f64().unwrap());
        }
    }
    assert!(any_change, "masking experts changes the metrics");
    // --retrain: one run per expert, trained without it, compared with the same full model.
    assert!(md.contains("click ΔAUC retrained") && md.contains("retrain s"), "{md}");
    for (i, e) in experts.iter().enumerate() {
        let r = &e["retrained"];
        let run = Path::new(r["run_dir"].as_str().unwrap());
        assert_eq!(
            run,
            d.path().join("retrained").join(format!("without_{i}_{}", kinds[i].split(':').nth(1).unwrap()))
        );
        assert!(r["train_seconds"].as_f64().unwrap() > 0.0, "{r}");
        let manifest = std::fs::read_to_string(run.join("checkpoint/manifest.json")).unwrap();
        assert!(manifest.contains("\"step\""), "a finished checkpoint: {manifest}");
        let (full, retrained) = (&e["masked"][0]["overall"][0], &r["comparisons"][0]["overall"][0]);
        assert_eq!(full["metric"], retrained["metric"]);
        assert_eq!(full["a"], retrained["a"], "A is the same full model in both comparisons");
        assert_ne!(full["b"], retrained["b"], "a retrained model is not the masked one");
    }
    // The retrained runs' configs have that expert removed: the DCNv2 gone, the two MLP
    // copies down to one.
    let config_of = |run: &str| -> String {
        let m = std::fs::read_to_string(d.path().join("retrained").join(run).join("checkpoint/manifest.json")).unwrap();
        let m: serde_json::Value = serde_json::from_str(&m).unwrap();
        m["config_toml"].as_str().unwrap().to_string()
    };
    let (no_mlp3, no_dcn, one_mlp) =
        (config_of("without_3_mlp"), config_of("without_0_dcnv2"), config_of("without_4_mlp"));
    assert_eq!(no_mlp3, one_mlp, "removing either MLP copy gives the same config");
    assert!(!no_dcn.contains("kind = \"dcnv2\"") && no_dcn.contains("count = 2"), "{no_dcn}");
    assert!(one_mlp.contains("kind = \"dcnv2\"") && !one_mlp.contains("count = 2"), "{one_mlp}");
    // The two MLP experts share a config: same parameters and FLOPs.
    assert_eq!(experts[3]["params"], experts[4]["params"]);
    assert_eq!(experts[3]["flops_per_example"], experts[4]["flops_per_example"]);
    let svg = std::fs::read_to_string(out_dir.join("experts.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>") && svg.contains("MFLOPs per example"));

    // A shared-bottom run has no gates to mask experts from.
    let sb = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/models/shared_bottom_dcnv2.toml");
    let sb_run = d.path().join("sb");
    let (ok, _, err) =
        mixrank(&["train", cfg.to_str().unwrap(), "--model", sb.to_str().unwrap(), "--out", sb_run.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, _, err) = mixrank(&["experiment", "experts", sb_run.to_str().unwrap()]);
    assert!(!ok && err.contains("mmoe or omoe"), "{err}");
}
