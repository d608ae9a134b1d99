//! The `mixrank` command-line tool: a thin layer over the library crates.

mod backend;
mod bench_cmd;
mod bench_items;
mod bench_train;
mod compare_cmd;
mod demo;
mod embed_items_cmd;
mod eval_cmd;
mod experiment_cmd;
mod predict_cmd;
mod report_cmd;
mod serve_cmd;
mod stats_cmd;
mod train_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Train, distill, evaluate and serve multi-task engagement-ranking models.
#[derive(Parser)]
#[command(name = "mixrank", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the embedded default data (deterministic from a seed) and its config.
    Simulate(SimulateArgs),
    /// Inspect data described by a config.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Train the model a config describes and validate it after every epoch.
    Train(train_cmd::TrainArgs),
    /// Score a split with a trained checkpoint: per-task, per-surface metrics.
    Eval(eval_cmd::EvalArgs),
    /// Score a split or files with a trained checkpoint into a Parquet file: one column per task.
    Predict(predict_cmd::PredictArgs),
    /// Compute a two-tower run's item embeddings for every item of a Parquet file (the table `serve --items` loads).
    EmbedItems(embed_items_cmd::EmbedItemsArgs),
    /// Compare two trained runs on the same rows: lifts with paired bootstrap intervals.
    Compare(compare_cmd::CompareArgs),
    /// Write a self-contained HTML report of a run: curves, metrics, gates, calibration.
    Report(report_cmd::ReportArgs),
    /// Run the main job end to end on the embedded default data.
    Demo(demo::DemoArgs),
    /// Serve a trained model over HTTP/JSON and gRPC.
    Serve(serve_cmd::ServeArgs),
    /// Speed figures: inference latency per batch size and precision, server load test.
    Bench {
        #[command(subcommand)]
        command: bench_cmd::BenchCommand,
    },
    /// End-to-end studies over the simulator (e.g. the data-retention experiment).
    Experiment {
        #[command(subcommand)]
        command: experiment_cmd::ExperimentCommand,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Per-column summaries, label rates per task and surface, bad-row counts.
    Stats(stats_cmd::StatsArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum SimKind {
    /// Ads engagement log: users, ads, three surfaces, position bias, four tasks, drift.
    Engagement,
    /// The MMoE paper's two-task synthetic regression data with task correlation p.
    MmoePaper,
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Output directory (created; existing files of the same names are replaced).
    #[arg(long)]
    out: PathBuf,
    /// Which data set to write.
    #[arg(long, value_enum, default_value = "engagement")]
    kind: SimKind,
    /// Random seed; the output depends only on the seed and the parameters.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Engagement: number of day partitions (at least 3).
    #[arg(long, default_value_t = 7)]
    days: usize,
    /// Engagement: first day, YYYY-MM-DD.
    #[arg(long, default_value = "2026-01-01")]
    start_day: String,
    /// Engagement: requests per day.
    #[arg(long, default_value_t = 10_000)]
    requests_per_day: usize,
    /// Engagement: candidate ads per request (positions 1..=K).
    #[arg(long, default_value_t = 10)]
    candidates: usize,
    /// Engagement: number of users.
    #[arg(long, default_value_t = 20_000)]
    users: usize,
    /// Engagement: ads live on the first day.
    #[arg(long, default_value_t = 5_000)]
    initial_ads: usize,
    /// Engagement: new ads per day (drift).
    #[arg(long, default_value_t = 500)]
    new_ads_per_day: usize,
    /// Engagement: correlation ρ between the save and click affinities.
    #[arg(long, default_value_t = 0.5)]
    save_click_correlation: f64,
    /// Engagement: order each request's candidates by a production ranker's noisy
    /// estimate of their click logit (`z + σ·N(0,1)`, best first) with this σ, so better
    /// ads are shown higher (selection bias); absent: random order.
    #[arg(long)]
    logged_ranking_noise: Option<f64>,
    /// Engagement: write only this surface's rows (home_feed, related_pins or search) of
    /// the same simulation (every request is still drawn, so the rows are those the full
    /// simulation writes for that surface): data for a model of one surface.
    #[arg(long)]
    only_surface: Option<String>,
    /// MMoE paper: task correlation p in [-1, 1].
    #[arg(long, default_value_t = 0.5)]
    correlation: f64,
    /// MMoE paper: training rows (validation and test get a tenth each).
    #[arg(long, default_value_t = 10_000)]
    rows: usize,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Simulate(a) => simulate(&a),
        Command::Data { command: DataCommand::Stats(a) } => stats_cmd::run(&a),
        Command::Train(a) => train_cmd::run(&a),
        Command::Eval(a) => eval_cmd::run(&a),
        Command::Predict(a) => predict_cmd::run(&a),
        Command::EmbedItems(a) => embed_items_cmd::run(&a),
        Command::Compare(a) => compare_cmd::run(&a),
        Command::Report(a) => report_cmd::run(&a),
        Command::Demo(a) => demo::run(&a),
        Command::Serve(a) => serve_cmd::run(&a),
        Command::Bench { command } => bench_cmd::run(&command),
        Command::Experiment { command } => experiment_cmd::run(&command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-joined, leaving out a cause whose text the message
/// already carries (library errors often embed their source in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

/// Prints to stdout; a closed pipe (`mixrank … | head`) ends the process quietly
/// instead of panicking.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`emit`].
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => { $crate::emit(&format!("{}\n", format_args!($($t)*))) };
}

fn simulate(a: &SimulateArgs) -> Result<()> {
    use mixrank_data::simulate::*;
    let t = std::time::Instant::now();
    let s = match a.kind {
        SimKind::Engagement => {
            let p = EngagementParams {
                seed: a.seed,
                days: a.days,
                start_day: a.start_day.clone(),
                requests_per_day: a.requests_per_day,
                candidates: a.candidates,
                users: a.users,
                initial_ads: a.initial_ads,
                new_ads_per_day: a.new_ads_per_day,
                save_click_correlation: a.save_click_correlation,
                logged_ranking_noise: a.logged_ranking_noise,
                only_surface: a.only_surface.clone(),
                ..Default::default()
            };
            simulate_engagement(&p, &a.out)?
        }
        SimKind::MmoePaper => {
            let p = MmoePaperParams {
                seed: a.seed,
                correlation: a.correlation,
                train_rows: a.rows,
                validation_rows: a.rows / 10,
                test_rows: a.rows / 10,
                ..Default::default()
            };
            simulate_mmoe_paper(&p, &a.out)?
        }
    };
    let secs = t.elapsed().as_secs_f64();
    say!(
        "wrote {} rows in {} files to {} in {:.2} s ({:.0} rows/s)",
        s.rows,
        s.files.len(),
        a.out.display(),
        secs,
        s.rows as f64 / secs
    );
    say!("config: {}", s.config.display());
    Ok(())
}
