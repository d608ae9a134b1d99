//! What every model with embedding tables does first: the tables the config describes,
//! and each batch's ids written into backend buffers reused from batch to batch.

use crate::error::{Context, ModelError, Result};
use mixrank_data::config::{ExperimentConfig, Pooling as CfgPooling};
use mixrank_data::Batch;
use mixrank_engine::{Backend, Pooling};
use mixrank_nn::{EmbeddingCollection, EmbeddingCollectionConfig, FeatureConfig, FeatureInput, TableConfig};
use rand::Rng;

/// The embedding tables and features of `cfg` (none without categorical features),
/// initialised from `rng`; pooled features get bag-list workspaces of `8 · max_batch`.
pub fn build_embeddings<B: Backend, R: Rng + ?Sized>(
    cfg: &ExperimentConfig,
    ops: &B,
    max_batch: usize,
    rng: &mut R,
) -> Result<Option<EmbeddingCollection<B>>> {
    if cfg.categorical.is_empty() {
        return Ok(None);
    }
    let ec = EmbeddingCollectionConfig {
        tables: cfg.tables.iter().map(|t| TableConfig::new(t.rows() as usize, t.dim)).collect(),
        features: cfg
            .categorical
            .iter()
            .map(|f| match f.pooling {
                None => FeatureConfig::single(f.table),
                Some(p) => FeatureConfig::pooled(
                    f.table,
                    match p {
                        CfgPooling::Sum => Pooling::Sum,
                        CfgPooling::Mean => Pooling::Mean,
                    },
                    max_batch * 8,
                ),
            })
            .collect(),
    };
    Ok(Some(ec.init(ops, max_batch, rng).at(|| "embeddings".into())?))
}

/// Ids of one feature for the current batch, in backend memory.
enum FeatureIds<B: Backend> {
    Single(B::Ids),
    Multi { offsets: B::Ids, ids: B::Ids },
}

/// A batch's categorical ids in backend buffers, one per feature (two for a bag
/// feature: offsets and ids).
pub struct BatchIds<B: Backend> {
    ids: Vec<FeatureIds<B>>,
    /// Host scratch for fixed ids.
    fixed_host: Vec<u32>,
    max_batch: usize,
}

impl<B: Backend> BatchIds<B> {
    pub fn new(max_batch: usize) -> Self {
        BatchIds { ids: Vec::new(), fixed_host: Vec::new(), max_batch }
    }

    /// Writes the batch's ids into the buffers of the previous batch, allocating only
    /// on the first batch or when a bag list outgrows its buffer (ops read only the
    /// prefix the batch names, so a longer buffer is fine). Single-valued feature `i`
    /// of a pair `(i, row)` in `fixed` takes table row `row` for every example instead
    /// of the batch's ids.
    pub fn upload(&mut self, ops: &B, b: &Batch, fixed: &[(usize, u32)]) -> Result<()> {
        let at = || "uploading ids".to_string();
        let put = |host: &[u32], buf: &mut B::Ids, min: usize| -> Result<()> {
            if ops.ids_len(buf) < host.len() {
                *buf = ops.alloc_ids(host.len().max(min).max(2 * ops.ids_len(buf))).at(at)?;
            }
            ops.write_ids(host, buf).at(at)
        };
        if self.ids.len() != b.cat.len() {
            self.ids.clear();
            for c in &b.cat {
                self.ids.push(match &c.offsets {
                    None => FeatureIds::Single(ops.alloc_ids(self.max_batch).at(at)?),
                    Some(_) => FeatureIds::Multi {
                        offsets: ops.alloc_ids(self.max_batch + 1).at(at)?,
                        ids: ops.alloc_ids(self.max_batch).at(at)?,
                    },
                });
            }
        }
        for (i, (c, f)) in b.cat.iter().zip(&mut self.ids).enumerate() {
            match (&c.offsets, f) {
                (None, FeatureIds::Single(ids)) => match fixed.iter().find(|(j, _)| *j == i) {
                    Some(&(_, row)) => {
                        self.fixed_host.clear();
                        self.fixed_host.resize(b.rows, row);
                        put(&self.fixed_host, ids, self.max_batch)?
                    }
                    None => put(&c.ids, ids, self.max_batch)?,
                },
                (Some(off), FeatureIds::Multi { offsets, ids }) => {
                    put(off, offsets, self.max_batch + 1)?;
                    // An empty bag list still writes one (unread) id.
                    put(if c.ids.is_empty() { &[0] } else { &c.ids }, ids, self.max_batch)?;
                }
                _ => return Err(ModelError::Mismatch("a feature changed between single- and multi-valued".into())),
            }
        }
        Ok(())
    }

    /// The uploaded ids as the embedding collection's inputs.
    pub fn inputs(&self) -> Vec<FeatureInput<'_, B>> {
        self.ids
            .iter()
            .map(|f| match f {
                FeatureIds::Single(ids) => FeatureInput::Single(ids),
                FeatureIds::Multi { offsets, ids } => FeatureInput::Multi { offsets, ids },
            })
            .collect()
    }
}
