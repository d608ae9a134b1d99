//! `mixrank predict RUN_DIR (--split S | --data GLOB) --out FILE`: offline batch scoring
//! to Parquet (request id, kept columns, `pred_<task>` per task).

use anyhow::{Context, Result};
use mixrank_data::config::Split;
use mixrank_train::{CheckpointScorer, PredictOptions};
use std::path::PathBuf;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// f32 weights and activations (the scores `mixrank eval` reports).
    F32,
    /// bf16 weights and activations with f32 accumulation, as `eval --precision bf16`
    /// (AMX / AVX512-BF16 when the CPU has them).
    Bf16,
}

#[derive(clap::Args)]
pub struct PredictArgs {
    /// Run directory written by `mixrank train` (its checkpoint/ is loaded and verified).
    pub run_dir: PathBuf,
    /// Split of the run's stored config to score.
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
    pub split: Option<String>,
    /// Files to score instead of a split: a glob (quote it), read with the run's config
    /// (its format and columns; no day or row filter).
    #[arg(long)]
    pub data: Option<String>,
    /// Output Parquet file (its directory must exist; written under a temporary name and
    /// renamed at the end, so a failed run leaves no file).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing --out.
    #[arg(long)]
    pub overwrite: bool,
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
    /// Source columns copied unchanged into the output, after the request id column
    /// (comma-separated; each must exist in every file).
    #[arg(long, value_delimiter = ',')]
    pub keep: Vec<String>,
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Where to score: `cpu` or `cuda[:N]` (f32 only on CUDA).
    #[arg(long, default_value = "cpu")]
    pub device: crate::backend::Device,
}

pub fn run(a: &PredictArgs) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.threads).build()?;
    pool.install(|| run_in_pool(a))
}

/// `--data GLOB` as a split: the glob made absolute against the working directory.
fn data_split(glob: &str) -> Result<Split> {
    let p = std::path::Path::new(glob);
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) };
    Ok(Split { name: "--data".into(), patterns: vec![abs.to_string_lossy().into_owned()], days: None, rows: None })
}

fn run_in_pool(a: &PredictArgs) -> Result<()> {
    use crate::backend::Device;
    match (a.device, a.precision) {
        (Device::Cpu, Precision::F32) => predict_on(a, &crate::backend::ops(), None),
        (Device::Cpu, Precision::Bf16) => {
            let k = mixrank_engine::bf16::Bf16Kernel::select()?;
            let ops = crate::backend::ops();
            predict_on(a, &ops, Some((&ops.with_bf16_kernel(k), k.name())))
        }
        (Device::Cuda(n), Precision::F32) => predict_on(a, &crate::backend::cuda(n)?, None),
        (Device::Cuda(_), Precision::Bf16) => {
            anyhow::bail!("--precision bf16 runs on the CPU only: bf16 on CUDA is not built yet")
        }
    }
}

/// Scores on the backend `ops`; with `bf16`, the model's GEMM weights packed by that
/// backend (and its kernel's name).
fn predict_on<B: mixrank_engine::Backend + 'static>(a: &PredictArgs, ops: &B, bf16: Option<(&B, &str)>) -> Result<()> {
    let t = std::time::Instant::now();
    if a.out.exists() && !a.overwrite {
        anyhow::bail!("{}: already exists; pass --overwrite to replace it", a.out.display());
    }
    let mut scorer = CheckpointScorer::open_run(&a.run_dir, ops)
        .with_context(|| format!("loading the checkpoint in {}", a.run_dir.display()))?;
    let split = match (&a.split, &a.data) {
        (Some(s), _) => scorer.config.split(s)?.clone(),
        (None, Some(g)) => data_split(g)?,
        (None, None) => unreachable!("clap requires --split or --data"),
    };
    let kernel = match bf16 {
        None => None,
        Some((packing, name)) => {
            scorer.loaded.model.use_bf16(packing)?;
            Some(name)
        }
    };
    let opts = PredictOptions { keep: a.keep.clone(), overwrite: a.overwrite };
    let s = scorer.predict(ops, &split, &a.out, &opts)?;
    crate::say!(
        "scored {} rows of {} ({} file{}) with checkpoint step {} at {} in {:.2} s",
        s.rows,
        if a.split.is_some() { format!("split `{}`", split.name) } else { format!("{:?}", split.patterns[0]) },
        s.files,
        if s.files == 1 { "" } else { "s" },
        scorer.loaded.manifest.step,
        kernel.map(|k| format!("bf16 ({k} kernel)")).unwrap_or_else(|| "f32".into()),
        t.elapsed().as_secs_f64()
    );
    if s.bad_rows > 0 {
        crate::say!("skipped {} bad rows (max_bad_rows)", s.bad_rows);
    }
    crate::say!("wrote {} — columns: {}", s.out.display(), s.columns.join(", "));
    Ok(())
}
