//! `mixrank demo`: the main job on the embedded default data — simulate, summarise,
//! train the shared-bottom DCNv2 baseline and a heterogeneous MMoE, both with YouTube's
//! shallow position tower (off at evaluation: neither scores with the logged position),
//! then compare them per task and surface with paired bootstrap intervals, against the
//! simulator's true probabilities and in a replayed auction, and write an HTML report of
//! each run; last, train the two-tower light ranker distilled from that MMoE and compare
//! it with its teacher.

use crate::train_cmd::render_reports;
use anyhow::{Context, Result};
use mixrank_data::simulate::{simulate_engagement, EngagementParams};
use mixrank_data::ExperimentConfig;
use mixrank_metrics::BootstrapConfig;
use mixrank_train::eval_section::section_comparison;
use mixrank_train::{train, TrainOptions, TrainSummary};
use std::path::PathBuf;
use std::sync::Arc;

/// The two architectures the demo compares (the same files as configs/models/), each
/// with the shallow position tower.
const BASELINE: (&str, &str) =
    ("shared_bottom_position_tower", include_str!("../../../configs/models/shared_bottom_position_tower.toml"));
const CANDIDATE: (&str, &str) =
    ("mmoe_position_tower", include_str!("../../../configs/models/mmoe_position_tower.toml"));
/// The light ranker, distilled from the candidate (configs/models/two_tower.toml).
const LIGHT: (&str, &str) = ("two_tower_distilled", include_str!("../../../configs/models/two_tower.toml"));

/// The light ranker's teacher: the candidate's run, pointwise on the binary tasks.
const DISTILL: &str = "\n[distill]\nsource = \"checkpoint\"\ncheckpoint = \"{teacher}\"\n\
    [[distill.tasks]]\ntask = \"click\"\nloss = \"pointwise_bce\"\n\
    [[distill.tasks]]\ntask = \"save\"\nloss = \"pointwise_bce\"\n";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Working directory for the data and outputs.
    #[arg(long, default_value = "mixrank-demo")]
    pub out: PathBuf,
    /// Random seed for the simulator.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Requests per simulated day (10 candidates each).
    #[arg(long, default_value_t = 10_000)]
    pub requests_per_day: usize,
    /// Bootstrap resamples for the comparison.
    #[arg(long, default_value_t = 200)]
    pub resamples: usize,
}

fn progress(line: &str) {
    eprintln!("      {line}");
}

pub fn run(a: &DemoArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let data_dir = a.out.join("data");
    crate::say!("[1/7] simulating the default engagement data into {}", data_dir.display());
    let p = EngagementParams { seed: a.seed, requests_per_day: a.requests_per_day, ..Default::default() };
    let s = simulate_engagement(&p, &data_dir)?;
    crate::say!("      {} rows, {} day partitions", s.rows, s.files.len());
    let cfg = ExperimentConfig::load(&s.config)?;
    crate::say!("[2/7] summarising the training split");
    let st = mixrank_data::stats::split_stats(Arc::new(cfg.clone()), cfg.split("train")?, None)?;
    crate::emit(&crate::stats_cmd::render(&st));

    let mut runs: Vec<TrainSummary> = Vec::new();
    for (i, (name, text)) in [BASELINE, CANDIDATE].into_iter().enumerate() {
        crate::say!("[{}/7] training {name}", i + 3);
        runs.push(train_one(a, &cfg, name, text)?);
    }
    crate::say!("[5/7] writing the HTML reports");
    let mut pages = Vec::new();
    for (name, _) in [BASELINE, CANDIDATE] {
        let run_dir = a.out.join("runs").join(name);
        let page = run_dir.join("report.html");
        let html = crate::report_cmd::build(&run_dir, "validation")?;
        crate::stats_cmd::write_atomic(&page, &html).with_context(|| format!("writing {}", page.display()))?;
        pages.push(page);
    }
    crate::say!("[6/7] comparing {} (B) against {} (A) on the validation day", CANDIDATE.0, BASELINE.0);
    let (a_pred, b_pred) = match (&runs[0].predictions, &runs[1].predictions) {
        (Some(x), Some(y)) => (x, y),
        _ => anyhow::bail!("no validation predictions to compare"),
    };
    crate::emit(&b_pred.render_gates(&cfg));
    let boot = BootstrapConfig { resamples: a.resamples, ..Default::default() };
    crate::emit(&crate::compare_cmd::render_comparison(&cfg, a_pred, b_pred, &boot));
    if let Some(section) = section_comparison(&cfg, a_pred, b_pred, &boot).context("the [eval] metrics")? {
        crate::emit(&crate::compare_cmd::render_section_comparison(&cfg, &section));
    }
    // Absolute: the distillation config is parsed relative to the data directory, so a
    // relative `--out` (the default, `mixrank-demo`) would otherwise be joined twice.
    let teacher = std::path::absolute(a.out.join("runs").join(CANDIDATE.0)).context("resolving --out")?;
    crate::say!("[7/7] training the light ranker {} distilled from {}", LIGHT.0, CANDIDATE.0);
    let text = std::fs::read_to_string(&s.config).with_context(|| format!("reading {}", s.config.display()))?;
    let teacher_path = teacher.to_str().context("the output path is not UTF-8")?.replace('\\', "/");
    let distill_cfg = ExperimentConfig::parse(&(text + &DISTILL.replace("{teacher}", &teacher_path)), &s.config)?;
    let light = train_one(a, &distill_cfg, LIGHT.0, LIGHT.1)?;
    crate::say!(
        "      {} (B) against its teacher {} (A) on the validation day (neither scores with position):",
        LIGHT.0,
        CANDIDATE.0
    );
    let light_pred = light.predictions.as_ref().context("no validation predictions to compare")?;
    crate::emit(&crate::compare_cmd::render_comparison(&cfg, b_pred, light_pred, &boot));
    crate::say!(
        "done in {:.0} s: data in {}, runs in {}",
        t0.elapsed().as_secs_f64(),
        data_dir.display(),
        a.out.join("runs").display()
    );
    for page in &pages {
        crate::say!("report: {}", page.display());
    }
    Ok(())
}

/// Trains `name` (model file `text`, written beside the runs) on `cfg` into
/// `OUT/runs/<name>` and prints its validation table.
fn train_one(a: &DemoArgs, cfg: &ExperimentConfig, name: &str, text: &str) -> Result<TrainSummary> {
    let model_file = a.out.join("models").join(format!("{name}.toml"));
    std::fs::create_dir_all(model_file.parent().expect("has a parent"))?;
    crate::stats_cmd::write_atomic(&model_file, text).with_context(|| format!("writing {}", model_file.display()))?;
    let run_cfg = cfg.with_model_file(&model_file)?;
    let mut opts = TrainOptions::new(a.out.join("runs").join(name));
    // The demo owns its output directory: a second `mixrank demo` replaces its runs.
    opts.overwrite = true;
    opts.log_every = 25;
    opts.progress = Some(progress);
    let r = train(Arc::new(run_cfg), &opts, &crate::backend::ops())?;
    crate::say!("      {} steps in {:.1} s ({:.0} examples/s); validation:", r.steps, r.seconds, r.examples_per_second);
    crate::emit(&render_reports(&r.validation));
    Ok(r)
}
