//! `mixrank embed-items RUN --items ITEMS.parquet --out DIR`: a two-tower run's item
//! embeddings for every item of a Parquet file, into the table `mixrank serve --items`
//! loads (docs/embed-items.md).

use anyhow::{Context, Result};
use mixrank_serve::embed_items::{embed_items, EmbedOptions};
use mixrank_serve::Precision;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct EmbedItemsArgs {
    /// Run directory of a two-tower model (`architecture = "two_tower"`); its
    /// checkpoint/ is loaded and verified.
    pub run_dir: PathBuf,
    /// Parquet file with one row per item: the item tower's feature columns and the id column.
    #[arg(long)]
    pub items: PathBuf,
    /// Output directory (written to a temporary directory beside it and renamed at the
    /// end, so a failed run leaves none).
    #[arg(long)]
    pub out: PathBuf,
    /// Column of the item ids (integers or strings, unique). Default: the column of
    /// the item tower's first categorical feature (the simulator's `ad_id`).
    #[arg(long)]
    pub id_column: Option<String>,
    /// Rows per batch read and per item-tower forward (memory is bounded by one batch).
    #[arg(long, default_value_t = 4096)]
    pub batch: usize,
    /// Replace an existing --out.
    #[arg(long)]
    pub overwrite: bool,
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn run(a: &EmbedItemsArgs) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.threads).build()?;
    pool.install(|| run_in_pool(a))
}

fn run_in_pool(a: &EmbedItemsArgs) -> Result<()> {
    if a.out.exists() && !a.overwrite {
        anyhow::bail!("{}: already exists; pass --overwrite to replace it", a.out.display());
    }
    let batch = a.batch.max(1);
    let session = crate::backend::engine()
        .open(&a.run_dir, Precision::F32, batch)
        .with_context(|| format!("loading the checkpoint in {}", a.run_dir.display()))?;
    let opts = EmbedOptions { batch, id_column: a.id_column.clone(), overwrite: a.overwrite };
    let t = Instant::now();
    let mut last = 0.0;
    let mut progress = |done: usize, total: usize| {
        let s = t.elapsed().as_secs_f64();
        if s - last >= 1.0 || done == total {
            last = s;
            let bar = mixrank_train::progress::bar(done as u64, Some((total as u64, true)), (done as u64, s));
            eprintln!("{bar} items, {:.0} items/s", done as f64 / s.max(1e-9));
        }
    };
    let s = embed_items(&session, &a.items, &a.out, &opts, &mut progress)?;
    let m = &s.manifest;
    crate::say!(
        "embedded {} items ({} tasks × dim {}) with checkpoint {} in {:.2} s ({:.0} items/s)",
        m.items,
        m.tasks.len(),
        m.dim,
        m.checkpoint,
        s.seconds,
        m.items as f64 / s.seconds.max(1e-9)
    );
    crate::say!("wrote {} (ids from column {})", s.out.display(), m.id_column);
    Ok(())
}
