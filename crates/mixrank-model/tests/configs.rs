//! Every committed model file builds a model over every committed data config (or, for a
//! single-task model over multi-task data, or a model file whose feature groups name the
//! simulator's features over another data set, is refused naming the key): changing the
//! architecture is a config change, not a code change.

use mixrank_data::ExperimentConfig;
use mixrank_engine::CpuOps;
use mixrank_model::{build_model, RankingModel};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::path::PathBuf;

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

fn toml_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_model_file_builds_over_every_data_config() {
    let models = toml_files(&configs_dir().join("models"));
    assert!(models.len() >= 5, "{models:?}");
    let data = toml_files(&configs_dir());
    assert!(data.len() >= 5, "{data:?}");
    let ops = CpuOps::new();
    let (mut built, mut refused) = (0, 0);
    for d in &data {
        let base = ExperimentConfig::load(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for m in &models {
            let cfg = match base.with_model_file(m) {
                Ok(c) => c,
                // A single-task model file over a multi-task data config is refused,
                // naming the key: a correct answer, not a build.
                Err(e) if base.tasks.len() > 1 && e.to_string().contains("single_task needs exactly one task") => {
                    refused += 1;
                    continue;
                }
                // A model file whose feature groups name the simulator's features, over
                // another data set: refused naming the group and the feature.
                Err(e)
                    if std::fs::read_to_string(m).is_ok_and(|t| t.contains("[feature_groups]"))
                        && e.to_string().contains("at `feature_groups.")
                        && e.to_string().contains("no feature `") =>
                {
                    refused += 1;
                    continue;
                }
                Err(e) => panic!("{} + {}: {e}", d.display(), m.display()),
            };
            let mut rng = StdRng::seed_from_u64(0);
            let mut model = build_model(&cfg, &ops, 4, &mut rng)
                .unwrap_or_else(|e| panic!("{} + {}: {e}", d.display(), m.display()));
            assert_eq!(model.io().tasks.len(), cfg.tasks.len());
            let mut n = 0;
            model.params(&mut |_, p| n += p.len());
            assert!(n > 0);
            built += 1;
        }
    }
    assert_eq!(built + refused, models.len() * data.len());
    assert!(built > refused, "{built} built, {refused} refused");
    // The position-tower file builds over the simulator's config, with its tower.
    let sim = ExperimentConfig::load(&configs_dir().join("engagement.toml")).unwrap();
    let cfg = sim.with_model_file(&configs_dir().join("models/shared_bottom_position_tower.toml")).unwrap();
    let model = RankingModel::new(&cfg, &ops, 4, &mut StdRng::seed_from_u64(0)).unwrap();
    let inputs = model.describe_inputs();
    assert_eq!(inputs[1].0, "logit_sources.0");
    assert_eq!(inputs[1].1[0].features, ["position_id", "device_id"]);
    assert!(!inputs[0].1[0].features.iter().any(|f| f == "position_id"));
}

#[test]
fn the_two_tower_file_builds_over_the_simulator_config() {
    let ops = CpuOps::new();
    let sim = ExperimentConfig::load(&configs_dir().join("engagement.toml")).unwrap();
    let cfg = sim.with_model_file(&configs_dir().join("models/two_tower.toml")).unwrap();
    let model = build_model(&cfg, &ops, 4, &mut StdRng::seed_from_u64(0)).unwrap();
    let io = model.io();
    let features = |part: usize| -> Vec<&str> {
        io.inputs[part].1.iter().flat_map(|g| g.features.iter().map(String::as_str)).collect()
    };
    assert_eq!(io.inputs[0].0, "user");
    assert_eq!(io.inputs[1].0, "item");
    assert_eq!(features(1), ["ad_id", "advertiser_id", "ad_category", "ad_age_days", "bid", "ad_hist_ctr"]);
    assert!(!features(0).contains(&"position_id") && !features(1).contains(&"position_id"));
    assert_eq!(cfg.request_free_columns(), ["position"]);
}

#[test]
fn the_surface_experiment_files_build_over_the_simulator_config() {
    let sim = ExperimentConfig::load(&configs_dir().join("engagement.toml")).unwrap();
    let ops = CpuOps::new();
    let dir = configs_dir().join("experiments/surfaces");
    let files = toml_files(&dir);
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        let cfg = sim.with_model_file(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let model = RankingModel::new(&cfg, &ops, 4, &mut StdRng::seed_from_u64(0)).unwrap();
        let gates: Vec<(String, Vec<String>)> = model
            .describe_inputs()
            .into_iter()
            .filter(|(part, _)| part == "gates")
            .map(|(part, g)| (part, g.iter().map(|g| g.name.clone()).collect()))
            .collect();
        // gated.toml's gates read the surface group; unified.toml's read the experts' input only.
        let want: Vec<(String, Vec<String>)> = match f.file_name().unwrap().to_str().unwrap() {
            "gated.toml" => vec![("gates".into(), vec!["surface".into()])],
            _ => vec![],
        };
        assert_eq!(gates, want, "{}", f.display());
        // per_surface_towers.toml: a tower per task and surface (3 simulated surfaces);
        // the others one per task.
        let mut model = model;
        let mut towers = std::collections::BTreeSet::new();
        mixrank_nn::Parameters::params(&mut model, &mut |name, _| {
            let parts: Vec<&str> = name.split('.').collect();
            match parts[..] {
                ["towers", t, "surface", s, ..] => towers.insert(format!("{t}.{s}")),
                ["towers", t, ..] => towers.insert(t.to_string()),
                _ => false,
            };
        });
        let per_surface = f.file_name().unwrap() == "per_surface_towers.toml";
        let want = if per_surface { cfg.tasks.len() * 3 } else { cfg.tasks.len() };
        assert_eq!(towers.len(), want, "{}: {towers:?}", f.display());
    }
}
