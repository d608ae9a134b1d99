//! A model part's input assembled from feature groups: column copies out of the
//! embedding collection's output and the batch's dense matrix (forward), and the
//! reverse accumulation into the embedding output's gradient (backward).
//!
//! ```text
//! emb   [batch, d_emb]        ─┐  copy_cols per run of contiguous columns
//! dense [batch, dense_width]  ─┴─► x [batch, width] = group 1 | group 2 | …
//! ```
//! The layout (which columns, in which order) is the config's
//! ([`InputSpec::blocks`]): the same function places the columns here and keys them for
//! warm starts.

use crate::error::{Context, Result};
use mixrank_data::config::groups::{BlockSource, InputSpec};
use mixrank_data::ExperimentConfig;
use mixrank_engine::{Backend, ColCopy};

/// One group of an input, for descriptions (`mixrank` output, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputGroup {
    pub name: String,
    /// Columns it contributes.
    pub width: usize,
    /// Its features' config names, in layout order.
    pub features: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Emb,
    Dense,
}

/// Contiguous columns copied from one source: `src[:, src_col..src_col+cols]` →
/// `x[:, dst_col..dst_col+cols]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    source: Source,
    src_col: usize,
    dst_col: usize,
    cols: usize,
}

/// The column layout of one input over `[emb | dense]`.
///
/// # Shapes
/// - emb: `[batch, d_emb]`, dense: `[batch, dense_width]` (the model's buffers)
/// - output: `[batch, width]`
#[derive(Debug, Clone)]
pub struct InputLayout {
    groups: Vec<InputGroup>,
    runs: Vec<Run>,
    /// Per feature of the input (its slot): the output columns `(first, count)` it fills.
    slots: Vec<Vec<(usize, usize)>>,
    width: usize,
    d_emb: usize,
    dense_width: usize,
    /// Whether the runs are exactly `[emb | dense]` (decided once: the model asks every
    /// step).
    identity: bool,
}

impl InputLayout {
    /// The layout of `spec` over `cfg`'s embeddings (features in config order, each its
    /// table's `dim` columns) and dense matrix (values, then missing indicators).
    pub fn new(cfg: &ExperimentConfig, spec: &InputSpec) -> Self {
        let dims: Vec<usize> = cfg.categorical.iter().map(|f| cfg.tables[f.table].dim).collect();
        let emb_offset: Vec<usize> = dims.iter().scan(0, |acc, &d| Some(std::mem::replace(acc, *acc + d))).collect();
        let d_emb = dims.iter().sum();
        let mut indicator_col = vec![0; cfg.dense.len()];
        let mut next = cfg.dense.len();
        for (j, d) in cfg.dense.iter().enumerate() {
            if d.missing_indicator {
                indicator_col[j] = next;
                next += 1;
            }
        }
        let features = spec.features();
        let mut groups: Vec<InputGroup> = spec
            .groups
            .iter()
            .map(|g| InputGroup {
                name: g.name.clone(),
                width: 0,
                features: g.features.iter().map(|&f| cfg.feature_name(f).to_string()).collect(),
            })
            .collect();
        let mut runs: Vec<Run> = Vec::new();
        let mut slots = vec![Vec::new(); features.len()];
        let mut width = 0;
        for block in spec.blocks(&cfg.dense) {
            let (source, src_col, cols) = match block.source {
                BlockSource::Embedding(i) => (Source::Emb, emb_offset[i], dims[i]),
                BlockSource::DenseValue(j) => (Source::Dense, j, 1),
                BlockSource::MissingIndicator(j) => (Source::Dense, indicator_col[j], 1),
            };
            slots[block.slot].push((width, cols));
            groups[block.group].width += cols;
            match runs.last_mut() {
                Some(r) if r.source == source && r.src_col + r.cols == src_col => r.cols += cols,
                _ => runs.push(Run { source, src_col, dst_col: width, cols }),
            }
            width += cols;
        }
        let dense_width = cfg.dense_width();
        let mut identity = Vec::new();
        if d_emb > 0 {
            identity.push(Run { source: Source::Emb, src_col: 0, dst_col: 0, cols: d_emb });
        }
        if dense_width > 0 {
            identity.push(Run { source: Source::Dense, src_col: 0, dst_col: d_emb, cols: dense_width });
        }
        let identity = runs == identity;
        InputLayout { groups, runs, slots, width, d_emb, dense_width, identity }
    }

    /// Columns of the assembled input.
    pub fn width(&self) -> usize {
        self.width
    }

    pub fn groups(&self) -> &[InputGroup] {
        &self.groups
    }

    /// Per feature (in layout order): the output columns `(first, count)` it fills (a
    /// dense feature with a missing indicator has two).
    pub fn slots(&self) -> &[Vec<(usize, usize)>] {
        &self.slots
    }

    /// Whether the input is exactly `[emb | dense]` (every feature in config order): the
    /// model then concatenates as it did before feature groups, op for op.
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    fn spec(&self, r: &Run, rows: usize, to_x: bool, accumulate: bool) -> ColCopy {
        let src_ld = match r.source {
            Source::Emb => self.d_emb,
            Source::Dense => self.dense_width,
        };
        let (src_ld, src_col, dst_ld, dst_col) =
            if to_x { (src_ld, r.src_col, self.width, r.dst_col) } else { (self.width, r.dst_col, src_ld, r.src_col) };
        ColCopy { rows, cols: r.cols, src_ld, src_col, dst_ld, dst_col, accumulate }
    }

    /// Writes the first `rows` rows of the input into `x` (`[rows, width]`).
    pub fn assemble<B: Backend>(
        &self,
        ops: &B,
        rows: usize,
        emb: Option<&B::Buf>,
        dense: &B::Buf,
        x: &mut B::Buf,
    ) -> Result<()> {
        for r in &self.runs {
            let src = match r.source {
                Source::Emb => emb.expect("an input with embedding columns has embeddings"),
                Source::Dense => dense,
            };
            ops.copy_cols(&self.spec(r, rows, true, false), src, x).at(|| "assembling an input".into())?;
        }
        Ok(())
    }

    /// Adds the embedding columns of `d_x` (`[rows, width]`, the input's gradient) into
    /// `d_emb` (`[rows, d_emb]`); dense columns have no parameters behind them.
    pub fn add_emb_grad<B: Backend>(&self, ops: &B, rows: usize, d_x: &B::Buf, d_emb: &mut B::Buf) -> Result<()> {
        for r in self.runs.iter().filter(|r| r.source == Source::Emb) {
            ops.copy_cols(&self.spec(r, rows, false, true), d_x, d_emb).at(|| "input gradient".into())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixrank_data::config::groups::{FeatureGroup, FeatureRef};
    use mixrank_engine::RefOps;

    fn cfg() -> ExperimentConfig {
        ExperimentConfig::parse(
            "[data]\nformat = \"parquet\"\n[data.splits.train]\npaths = [\"x\"]\n\
             [[features.categorical]]\nname = \"u\"\nbuckets = 4\ndim = 3\n\
             [[features.categorical]]\nname = \"v\"\nbuckets = 4\ndim = 2\n\
             [[features.dense]]\nname = \"a\"\nmissing_indicator = true\n[[features.dense]]\nname = \"b\"\n\
             [[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"y\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    }

    fn spec(groups: &[(&str, &[FeatureRef])]) -> InputSpec {
        InputSpec {
            groups: groups.iter().map(|(n, f)| FeatureGroup { name: n.to_string(), features: f.to_vec() }).collect(),
        }
    }

    const ROWS: usize = 3;

    /// `emb` `[3, 5]` and `dense` `[3, 3]` (a, b, a's indicator) with distinct values.
    fn sources() -> (Vec<f32>, Vec<f32>) {
        ((0..15).map(|i| i as f32).collect(), (0..9).map(|i| 100.0 + i as f32).collect())
    }

    #[test]
    fn every_feature_in_config_order_is_the_identity_and_assembles_as_emb_then_dense() {
        let c = cfg();
        let all = c.head_input();
        let l = InputLayout::new(&c, &all);
        assert!(l.is_identity());
        assert_eq!(l.width(), 8);
        let (emb, dense) = sources();
        let mut x = vec![0f32; ROWS * 8];
        l.assemble(&RefOps, ROWS, Some(&emb), &dense, &mut x).unwrap();
        // The model's identity path: the embedding row, then the dense row.
        let want: Vec<f32> =
            (0..ROWS).flat_map(|r| emb[r * 5..r * 5 + 5].iter().chain(&dense[r * 3..r * 3 + 3]).copied()).collect();
        assert_eq!(x, want);
        // Backward: the embedding columns of d_x, as the identity path splits them.
        let mut d_emb = vec![0f32; ROWS * 5];
        l.add_emb_grad(&RefOps, ROWS, &x, &mut d_emb).unwrap();
        assert_eq!(d_emb, emb);
    }

    #[test]
    fn groups_reorder_columns_and_gradients_go_back_to_their_features() {
        use FeatureRef::*;
        let c = cfg();
        // g1 = [a, v] (a's value, v's 2 columns, a's indicator), g2 = [u].
        let l = InputLayout::new(&c, &spec(&[("g1", &[Dense(0), Categorical(1)]), ("g2", &[Categorical(0)])]));
        assert!(!l.is_identity());
        assert_eq!(l.width(), 1 + 2 + 1 + 3);
        assert_eq!(l.slots(), [vec![(0, 1), (3, 1)], vec![(1, 2)], vec![(4, 3)]]);
        let names: Vec<(&str, usize)> = l.groups().iter().map(|g| (g.name.as_str(), g.width)).collect();
        assert_eq!(names, [("g1", 4), ("g2", 3)]);
        let (emb, dense) = sources();
        let mut x = vec![0f32; ROWS * 7];
        l.assemble(&RefOps, ROWS, Some(&emb), &dense, &mut x).unwrap();
        assert_eq!(&x[..7], [100.0, 3.0, 4.0, 102.0, 0.0, 1.0, 2.0]);
        assert_eq!(&x[7..14], [103.0, 8.0, 9.0, 105.0, 5.0, 6.0, 7.0]);
        // Gradients accumulate into the embedding columns they came from.
        let mut d_emb = vec![1f32; ROWS * 5];
        l.add_emb_grad(&RefOps, ROWS, &x, &mut d_emb).unwrap();
        let want: Vec<f32> = emb.iter().map(|v| v + 1.0).collect();
        assert_eq!(d_emb, want);
    }
}
