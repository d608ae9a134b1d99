//! Embedding tables and the lookup of many sparse features into one dense matrix.

use mixrank_engine::{Backend, GatherSpec, Pooling, SparseGrad};
use rand::Rng;

use crate::error::{batch_fits, positive, same_dim, Ctx, NnError, Result};
use crate::param::Init;

const LAYER: &str = "EmbeddingCollection";

/// One embedding table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableConfig {
    /// Number of rows (the hashed id space).
    pub rows: usize,
    /// Embedding width.
    pub dim: usize,
    /// Initial values. Default `N(0, 0.01²)`: small, so a fresh row barely moves the
    /// model before it has been trained.
    pub init: Init,
}

impl TableConfig {
    pub fn new(rows: usize, dim: usize) -> Self {
        TableConfig { rows, dim, init: Init::Normal { std: 0.01 } }
    }
}

/// One sparse feature looked up in a table.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureConfig {
    /// Index into [`EmbeddingCollectionConfig::tables`]; several features may share a
    /// table.
    pub table: usize,
    /// `None`: single-valued (one id per example). `Some(p)`: multi-valued, a bag of ids
    /// per example in CSR form pooled by `p`.
    pub pooling: Option<Pooling>,
    /// Multi-valued only: the most ids one batch holds, to size the sparse gradient
    /// (it grows once if exceeded). Ignored for single-valued features.
    pub max_ids: usize,
}

impl FeatureConfig {
    pub fn single(table: usize) -> Self {
        FeatureConfig { table, pooling: None, max_ids: 0 }
    }

    pub fn pooled(table: usize, pooling: Pooling, max_ids: usize) -> Self {
        FeatureConfig { table, pooling: Some(pooling), max_ids }
    }
}

/// Configuration of an [`EmbeddingCollection`].
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingCollectionConfig {
    pub tables: Vec<TableConfig>,
    /// Features in output order: feature `f` fills columns `Σ_{g<f} dim_g … + dim_f`.
    pub features: Vec<FeatureConfig>,
}

impl EmbeddingCollectionConfig {
    /// Width of the concatenated output.
    pub fn output_dim(&self) -> usize {
        self.features.iter().map(|f| self.tables.get(f.table).map_or(0, |t| t.dim)).sum()
    }

    pub fn init<B: Backend, R: Rng + ?Sized>(
        &self,
        ops: &B,
        max_batch: usize,
        rng: &mut R,
    ) -> Result<EmbeddingCollection<B>> {
        positive(LAYER, "max_batch", max_batch)?;
        positive(LAYER, "features", self.features.len())?;
        let mut tables = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            positive(LAYER, "rows", t.rows)?;
            positive(LAYER, "dim", t.dim)?;
            let value = ops.upload(&t.init.sample(t.rows, t.dim, rng)).ctx(LAYER)?;
            tables.push(EmbeddingTable { value, rows: t.rows, dim: t.dim });
        }
        let mut grads = Vec::with_capacity(self.features.len());
        let mut col_offsets = Vec::with_capacity(self.features.len());
        let mut col = 0;
        for f in &self.features {
            let Some(t) = self.tables.get(f.table) else {
                return Err(NnError::InvalidConfig {
                    layer: LAYER,
                    field: "features.table",
                    reason: format!("table {} does not exist ({} tables)", f.table, self.tables.len()),
                });
            };
            let capacity = if f.pooling.is_some() { f.max_ids.max(1) } else { max_batch };
            grads.push(SparseGrad::new(ops, t.dim, capacity).ctx(LAYER)?);
            col_offsets.push(col);
            col += t.dim;
        }
        Ok(EmbeddingCollection {
            config: self.clone(),
            max_batch,
            tables,
            grads,
            col_offsets,
            out: ops.alloc(max_batch * col).ctx(LAYER)?,
            batch: None,
        })
    }
}

/// An embedding table `[rows, dim]`. Its gradient is sparse (see
/// [`EmbeddingCollection::grad`]), so it is not a dense [`crate::Param`].
pub struct EmbeddingTable<B: Backend> {
    pub value: B::Buf,
    pub rows: usize,
    pub dim: usize,
}

impl<B: Backend> EmbeddingTable<B> {
    /// A host copy of the `[rows, dim]` table (a readback on a device backend).
    pub fn read_value(&self, ops: &B) -> Result<Vec<f32>> {
        let mut host = vec![0f32; self.rows * self.dim];
        ops.read(&self.value, &mut host).ctx("EmbeddingTable::read_value")?;
        Ok(host)
    }
}

/// The ids of one feature for one batch.
pub enum FeatureInput<'a, B: Backend> {
    /// `[batch]` ids.
    Single(&'a B::Ids),
    /// CSR bags: example `b` owns `ids[offsets[b] .. offsets[b + 1]]`; `offsets` is
    /// `[batch + 1]`.
    Multi { offsets: &'a B::Ids, ids: &'a B::Ids },
}

/// Looks up every sparse feature and concatenates the results:
/// `out[b, off_f + j] = table_f[id_{b,f}, j]` (single-valued) or
/// `pool_{i ∈ bag(b,f)} table_f[i, j]` (multi-valued, sum or mean; empty bag → 0).
///
/// Backward scatters `dout`'s column block of each feature into that feature's
/// [`SparseGrad`] (touched rows only, ascending ids, summed over repeats). A sparse
/// optimizer then updates only those rows; features sharing a table contribute
/// separate gradients that the optimizer sums per row.
///
/// # Shapes
/// - inputs: one [`FeatureInput`] per feature, `batch` examples each
/// - output: `[batch, Σ_f dim_f]`
pub struct EmbeddingCollection<B: Backend> {
    config: EmbeddingCollectionConfig,
    max_batch: usize,
    tables: Vec<EmbeddingTable<B>>,
    grads: Vec<SparseGrad<B>>,
    col_offsets: Vec<usize>,
    out: B::Buf,
    batch: Option<usize>,
}

impl<B: Backend> EmbeddingCollection<B> {
    pub fn config(&self) -> &EmbeddingCollectionConfig {
        &self.config
    }

    pub fn output_dim(&self) -> usize {
        self.config.output_dim()
    }

    pub fn tables(&self) -> &[EmbeddingTable<B>] {
        &self.tables
    }

    pub fn tables_mut(&mut self) -> &mut [EmbeddingTable<B>] {
        &mut self.tables
    }

    /// Feature `f`'s sparse gradient from the last backward.
    pub fn grad(&self, f: usize) -> &SparseGrad<B> {
        &self.grads[f]
    }

    /// Table `t` (mutable) beside the last backward's sparse gradients of the features
    /// that read it, for a sparse optimizer.
    pub fn table_and_grads(&mut self, t: usize) -> (&mut EmbeddingTable<B>, impl Iterator<Item = &SparseGrad<B>> + '_) {
        let grads = self.config.features.iter().zip(&self.grads).filter(move |(f, _)| f.table == t).map(|(_, g)| g);
        (&mut self.tables[t], grads)
    }

    /// Feature `f`'s sparse gradient, to replace (data-parallel training merges every
    /// rank's into it before the sparse optimizer step).
    pub fn grad_mut(&mut self, f: usize) -> &mut SparseGrad<B> {
        &mut self.grads[f]
    }

    /// Indices of the features that read table `t`.
    pub fn features_of_table(&self, t: usize) -> impl Iterator<Item = usize> + '_ {
        self.config.features.iter().enumerate().filter(move |(_, f)| f.table == t).map(|(i, _)| i)
    }

    /// Visits every table by name (`tables.{t}`), for checkpointing.
    pub fn visit_tables(&mut self, f: &mut dyn FnMut(&str, &mut EmbeddingTable<B>)) {
        let mut name = String::new();
        for (t, table) in self.tables.iter_mut().enumerate() {
            name.clear();
            name.push_str("tables.");
            name.push_str(&t.to_string());
            f(&name, table);
        }
    }

    fn spec(&self, f: usize, batch: usize) -> GatherSpec {
        let t = &self.tables[self.config.features[f].table];
        GatherSpec {
            batch,
            dim: t.dim,
            table_rows: t.rows,
            out_cols: self.config.output_dim(),
            col_offset: self.col_offsets[f],
        }
    }

    fn check_inputs(&self, inputs: &[FeatureInput<'_, B>]) -> Result<()> {
        same_dim(LAYER, "inputs", inputs.len(), "features", self.config.features.len())?;
        for (f, (input, cfg)) in inputs.iter().zip(&self.config.features).enumerate() {
            let multi = matches!(input, FeatureInput::Multi { .. });
            if multi != cfg.pooling.is_some() {
                return Err(NnError::InvalidConfig {
                    layer: LAYER,
                    field: "inputs",
                    reason: format!(
                        "feature {f} is {} but got {} input",
                        if cfg.pooling.is_some() { "multi-valued" } else { "single-valued" },
                        if multi { "a multi-valued" } else { "a single-valued" }
                    ),
                });
            }
        }
        Ok(())
    }

    /// Looks up the first `batch` examples; returns `[batch, output_dim]`.
    pub fn forward(&mut self, ops: &B, inputs: &[FeatureInput<'_, B>], batch: usize) -> Result<&B::Buf> {
        batch_fits(LAYER, batch, self.max_batch)?;
        self.check_inputs(inputs)?;
        for (f, input) in inputs.iter().enumerate() {
            let spec = self.spec(f, batch);
            let table = &self.tables[self.config.features[f].table].value;
            match (input, self.config.features[f].pooling) {
                (FeatureInput::Single(ids), _) => ops.gather_rows(&spec, ids, table, &mut self.out).ctx(LAYER)?,
                (FeatureInput::Multi { offsets, ids }, Some(p)) => {
                    ops.gather_pooled(&spec, p, offsets, ids, table, &mut self.out).ctx(LAYER)?
                }
                (FeatureInput::Multi { .. }, None) => unreachable!("checked by check_inputs"),
            }
        }
        self.batch = Some(batch);
        Ok(&self.out)
    }

    /// Scatters `d_output` (`[batch, output_dim]`) into each feature's sparse gradient
    /// (overwritten).
    pub fn backward(&mut self, ops: &B, inputs: &[FeatureInput<'_, B>], d_output: &B::Buf) -> Result<()> {
        let batch = self.batch.ok_or(NnError::NoForward { layer: LAYER })?;
        self.check_inputs(inputs)?;
        for (f, input) in inputs.iter().enumerate() {
            let spec = self.spec(f, batch);
            let grad = &mut self.grads[f];
            match (input, self.config.features[f].pooling) {
                (FeatureInput::Single(ids), _) => ops.scatter_rows_grad(&spec, ids, d_output, grad).ctx(LAYER)?,
                (FeatureInput::Multi { offsets, ids }, Some(p)) => {
                    ops.scatter_pooled_grad(&spec, p, offsets, ids, d_output, grad).ctx(LAYER)?
                }
                (FeatureInput::Multi { .. }, None) => unreachable!("checked by check_inputs"),
            }
        }
        Ok(())
    }

    /// The last forward's output.
    pub fn output(&self) -> &B::Buf {
        &self.out
    }
}
