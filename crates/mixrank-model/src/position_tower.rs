//! YouTube's shallow position-bias tower (Zhao et al. 2019, seed 003): a small MLP
//! over bias features (position, device) whose logit is added to chosen tasks' logits
//! in training only. Trained jointly with the head, it explains the part of a click
//! that comes from being seen (position 1 is examined more), so the head learns appeal;
//! at evaluation and serving it is not run, i.e. position is treated as missing —
//! unless `serve_position = N` is set: then it runs there too, without dropout, with its
//! position features set to N for every row (by the model, which swaps their ids for
//! N's table row), and its logit is added.
//!
//! ```text
//! emb, dense ─► assemble [feature_groups] ─► feature dropout ─► MLP ─► logit [rows, 1]
//! ```
//! Feature dropout zeroes a whole feature (all its columns: an embedding, or a dense
//! value and its missing indicator) of a row with probability `p`, so the tower also
//! learns to score a row whose position is missing and does not lean on position
//! alone (YouTube drops 10%). A dropped feature reads as missing (zeros) and the kept
//! ones are not rescaled: the tower never runs without dropout, so there is no
//! train/eval scale to match. The mask is a function of (seed, step, row, feature),
//! like every dropout mask, and made by the backend (`Backend::feature_dropout_mask`).

use crate::error::{Context, Result};
use crate::expert::activation;
use crate::inputs::{InputGroup, InputLayout};
use crate::logit_source::{LogitSource, SourceInput};
use mixrank_data::config::groups::PositionTowerInputs;
use mixrank_data::config::model::PositionTowerSection;
use mixrank_data::ExperimentConfig;
use mixrank_engine::Backend;
use mixrank_nn::{Layer, ParamVisitor, Parameters, Part, Tower, TowerConfig};
use rand::Rng;

/// The position tower; a [`LogitSource`] (parameters `logit_sources.<s>.*`, the MLP's
/// `blocks.<i>.linear.*` and `output.*`).
///
/// # Shapes
/// - input: its feature groups, `[rows, width]`
/// - output: `[rows, 1]`
pub struct PositionTower<B: Backend> {
    layout: InputLayout,
    tasks: Vec<bool>,
    mlp: Tower<B>,
    /// Feature dropout rate.
    p: f64,
    seed: u64,
    /// Index of the next mask (advances after every forward).
    step: u64,
    /// Global row of the batch's first row (data-parallel: the rank's offset).
    first_row: u64,
    max_batch: usize,
    /// Each input column's feature slot (for the backend's feature dropout mask).
    slot_of: B::Ids,
    /// `[max_batch, width]`: 1 where a feature is kept, 0 where dropped.
    mask: B::Buf,
    /// The assembled input, then (with dropout) the masked input the MLP reads.
    x: B::Buf,
    x_drop: B::Buf,
    d_x: B::Buf,
    /// Rows of the last forward.
    rows: Option<usize>,
    /// Whether the last forward applied feature dropout.
    dropped: bool,
    /// Training mode (feature dropout on).
    training: bool,
    /// `serve_position`: the tower also runs in evaluation mode (the model sets its
    /// position features to the fixed position there).
    in_evaluation: bool,
}

/// Column `c`'s feature slot of `layout` (`u32::MAX` for a column in none).
fn slot_of(layout: &InputLayout) -> Vec<u32> {
    let mut of = vec![u32::MAX; layout.width()];
    for (s, cols) in layout.slots().iter().enumerate() {
        for &(first, n) in cols {
            of[first..first + n].fill(s as u32);
        }
    }
    of
}

impl<B: Backend> PositionTower<B> {
    /// Builds the tower `section` describes over the inputs the config resolved for it;
    /// draws its initial weights, then its mask seed, from `rng`.
    pub fn new<R: Rng + ?Sized>(
        cfg: &ExperimentConfig,
        section: &PositionTowerSection,
        inputs: &PositionTowerInputs,
        ops: &B,
        max_batch: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let at = || "model.position_tower".to_string();
        let layout = InputLayout::new(cfg, &inputs.input);
        let width = layout.width();
        let mut tc = TowerConfig::new(width, &section.hidden);
        tc.activation = activation(section.activation);
        let mlp = tc.init(ops, max_batch, rng).at(at)?;
        let n = max_batch * width;
        let buf = |n: usize| ops.alloc(n).at(at);
        Ok(PositionTower {
            tasks: inputs.tasks.clone(),
            mlp,
            p: section.dropout,
            seed: rng.random(),
            step: 0,
            first_row: 0,
            max_batch,
            slot_of: ops.upload_ids(&slot_of(&layout)).at(at)?,
            mask: buf(if section.dropout > 0.0 { n } else { 0 })?,
            x: buf(n)?,
            x_drop: buf(if section.dropout > 0.0 { n } else { 0 })?,
            d_x: buf(n)?,
            rows: None,
            dropped: false,
            training: true,
            in_evaluation: inputs.serve_position.is_some(),
            layout,
        })
    }

    /// Input width.
    pub fn width(&self) -> usize {
        self.layout.width()
    }

    /// Feature dropout mask for `rows` rows at the current step, made by the backend.
    fn fill_mask(&mut self, ops: &B, rows: usize) -> Result<()> {
        let slots = self.layout.slots().len();
        ops.feature_dropout_mask(
            rows,
            &self.slot_of,
            slots,
            self.p as f32,
            self.seed,
            self.step,
            self.first_row,
            &mut self.mask,
        )
        .at(|| "position tower feature dropout".to_string())
    }
}

impl<B: Backend> Parameters<B> for PositionTower<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        v.within(&[Part::Input("position_tower")], &[Part::Own], |v| self.mlp.visit_params(v));
    }
}

impl<B: Backend> LogitSource<B> for PositionTower<B> {
    fn tasks(&self) -> &[bool] {
        &self.tasks
    }

    fn forward(&mut self, ops: &B, input: &SourceInput<'_, B>) -> Result<&B::Buf> {
        let rows = input.batch.rows;
        crate::head::check_batch(rows, self.max_batch)?;
        let n = rows * self.layout.width();
        self.layout.assemble(ops, rows, input.emb, input.dense, &mut self.x)?;
        self.dropped = self.p > 0.0 && self.training;
        let x = if self.dropped {
            self.fill_mask(ops, rows)?;
            let at = || "position tower feature dropout".to_string();
            ops.mul(n, &self.x, &self.mask, &mut self.x_drop).at(at)?;
            self.step += 1;
            &self.x_drop
        } else {
            &self.x
        };
        self.rows = Some(rows);
        self.mlp.forward(ops, x, rows).at(|| "position tower forward".into())
    }

    fn backward(
        &mut self,
        ops: &B,
        _input: &SourceInput<'_, B>,
        d_logit: &B::Buf,
        d_emb: Option<&mut B::Buf>,
    ) -> Result<()> {
        let rows = self.rows.ok_or_else(|| crate::ModelError::Mismatch("backward called before forward".into()))?;
        let n = rows * self.layout.width();
        let x = if self.dropped { &self.x_drop } else { &self.x };
        let dx = self.mlp.backward(ops, x, d_logit).at(|| "position tower backward".into())?;
        let Some(d_emb) = d_emb else { return Ok(()) };
        // Through the mask: a dropped feature gets no gradient.
        let dx = if self.dropped {
            ops.mul(n, dx, &self.mask, &mut self.d_x).at(|| "position tower feature dropout".into())?;
            &self.d_x
        } else {
            dx
        };
        self.layout.add_emb_grad(ops, rows, dx, d_emb)
    }

    fn set_dropout_step(&mut self, step: u64) {
        self.step = step;
    }

    fn set_dropout_rows(&mut self, first_row: u64) {
        self.first_row = first_row;
    }

    fn runs_in_evaluation(&self) -> bool {
        self.in_evaluation
    }

    /// Feature dropout only in training mode (evaluation runs the tower only with
    /// `serve_position`).
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn input_groups(&self) -> &[InputGroup] {
        self.layout.groups()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixrank_engine::RefOps;
    use rand::SeedableRng;

    /// Feature dropout drops whole features (an embedding's columns; a dense value with
    /// its indicator), at rate p, differently per step, the same for a repeated step.
    #[test]
    fn feature_dropout_drops_whole_features_at_its_rate() {
        let cfg = ExperimentConfig::parse(
            "[data]\nformat = \"parquet\"\n[data.splits.train]\npaths = [\"x\"]\n\
             [[features.categorical]]\nname = \"position\"\nbuckets = 4\ndim = 3\n\
             [[features.categorical]]\nname = \"user\"\nbuckets = 4\ndim = 2\n\
             [[features.dense]]\nname = \"a\"\nmissing_indicator = true\n\
             [[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"y\"\n\
             [feature_groups]\nbias = [\"position\", \"a\"]\n\
             [model]\narchitecture = \"single_task\"\nposition_tower = { dropout = 0.25 }\n\
             [[model.experts]]\nkind = \"mlp\"\nhidden = [2]\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let section = cfg.model.as_ref().unwrap().position_tower.clone().unwrap();
        let inputs = cfg.inputs.as_ref().unwrap().position_tower.clone().unwrap();
        let rows = 2000;
        let mut t =
            PositionTower::new(&cfg, &section, &inputs, &RefOps, rows, &mut rand::rngs::StdRng::seed_from_u64(1))
                .unwrap();
        assert_eq!(t.width(), 3 + 1 + 1);
        let mask = |t: &mut PositionTower<RefOps>| {
            t.fill_mask(&RefOps, rows).unwrap();
            t.mask[..rows * 5].to_vec()
        };
        let first = mask(&mut t);
        let mut dropped = [0usize; 2];
        for row in first.chunks(5) {
            // Position: columns 0..3 together; `a`: its value (3) and indicator (4) together.
            assert!(row[..3].iter().all(|&m| m == row[0]) && row[3] == row[4], "{row:?}");
            assert!(row.iter().all(|&m| m == 0.0 || m == 1.0), "not rescaled: {row:?}");
            dropped[0] += (row[0] == 0.0) as usize;
            dropped[1] += (row[3] == 0.0) as usize;
        }
        // Binomial(2000, 0.25): sd ≈ 19, so ±100 is a ~5σ band.
        for d in dropped {
            assert!((400..=600).contains(&d), "{dropped:?}");
        }
        t.step = 1;
        assert_ne!(mask(&mut t), first, "the next step draws another mask");
        t.set_dropout_step(0);
        assert_eq!(mask(&mut t), first, "a step repeats its mask");
    }

    /// Two tasks; `user` feeds the head, `position` only the tower, `device` both; the
    /// tower feeds `click` only.
    fn serve_model(serve_position: &str, dropout: f64) -> (ExperimentConfig, crate::RankingModel<RefOps>) {
        let cfg = ExperimentConfig::parse(
            &format!(
                "[data]\nformat = \"parquet\"\n[data.splits.train]\npaths = [\"x\"]\n\
                 [[features.categorical]]\nname = \"user\"\nbuckets = 8\ndim = 3\n\
                 [[features.categorical]]\nname = \"position\"\nbuckets = 16\ndim = 3\n\
                 [[features.categorical]]\nname = \"device\"\nbuckets = 4\ndim = 2\n\
                 [[features.dense]]\nname = \"a\"\n\
                 [[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"y\"\n\
                 [[tasks]]\nname = \"save\"\nkind = \"binary\"\nlabel = \"z\"\n\
                 [columns]\nposition = {{ column = \"position\", max = 10 }}\n\
                 [feature_groups]\nbias = [\"position\", \"device\"]\ncontext = [\"device\"]\n\
                 [model]\narchitecture = \"shared_bottom\"\nexpert_dim = 4\n\
                 position_tower = {{ hidden = [3], dropout = {dropout}, tasks = [\"click\"]{serve_position} }}\n\
                 [[model.experts]]\nkind = \"mlp\"\nhidden = [5]\n"
            ),
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let m = crate::RankingModel::new(&cfg, &RefOps, 6, &mut rand::rngs::StdRng::seed_from_u64(3)).unwrap();
        (cfg, m)
    }

    fn serve_batch() -> mixrank_data::Batch {
        let col = |ids: &[u32]| mixrank_data::CatColumn { ids: ids.to_vec(), offsets: None };
        mixrank_data::Batch {
            rows: 6,
            cat: vec![col(&[1, 5, 2, 7, 0, 3]), col(&[4, 9, 1, 12, 4, 6]), col(&[0, 1, 2, 3, 1, 0])],
            dense: vec![0.5, -1.0, 0.25, 2.0, -0.5, 0.0],
            dense_width: 1,
            n_tasks: 2,
            position: vec![1, 2, 3, 4, 5, 6],
            ..Default::default()
        }
    }

    fn logits(m: &mut crate::RankingModel<RefOps>, b: &mixrank_data::Batch) -> [Vec<f32>; 2] {
        m.forward(&RefOps, b).unwrap();
        [0, 1].map(|t| m.logits(t)[..b.rows].to_vec())
    }

    /// `serve_position = N`: evaluation adds the tower's logit (scores differ from a
    /// tower that is off, on its tasks only), does not read the logged position, and
    /// equals training mode (tower dropout off) on the batch whose position feature
    /// holds N's table row; dropout does not run in evaluation.
    #[test]
    fn serve_position_runs_the_tower_at_evaluation_at_a_fixed_position() {
        let (cfg, mut served) = serve_model(", serve_position = 3", 0.0);
        let (_, mut off) = serve_model("", 0.0);
        let b = serve_batch();
        served.set_training(false);
        off.set_training(false);
        let eval = logits(&mut served, &b);
        let [off_click, off_save] = logits(&mut off, &b);
        assert!(eval[0].iter().zip(&off_click).all(|(a, b)| a != b), "click: the tower's logit is added");
        assert_eq!(eval[1], off_save, "save: not a tower task");

        // The logged position (its feature's ids and the batch's positions) is not read.
        let mut moved = b.clone();
        moved.cat[1].ids.iter_mut().for_each(|i| *i = (*i + 5) % 16);
        moved.position.iter_mut().for_each(|p| *p = *p % 10 + 1);
        assert_eq!(logits(&mut served, &moved), eval);

        // Training mode with position 3 written into the batch: the same logits.
        let kind = &cfg.tables[cfg.categorical[1].table].kind;
        let row3 = mixrank_data::encode::table_row(kind, &mixrank_data::column::Key::Int(3));
        let mut at3 = b.clone();
        at3.cat[1].ids.iter_mut().for_each(|i| *i = row3);
        served.set_training(true);
        assert_eq!(logits(&mut served, &at3), eval);
        // ... and not with the logged positions (a position that matters).
        assert_ne!(logits(&mut served, &b)[0], eval[0]);
        // A different N gives different scores.
        let (_, mut at5) = serve_model(", serve_position = 5", 0.0);
        at5.set_training(false);
        assert_ne!(logits(&mut at5, &b)[0], eval[0]);

        // With feature dropout: evaluation is deterministic and equals the no-dropout
        // tower's (same weights: dropout draws nothing at initialisation).
        let (_, mut dropped) = serve_model(", serve_position = 3", 0.5);
        dropped.set_training(false);
        assert_eq!(logits(&mut dropped, &b), eval);
        assert_eq!(logits(&mut dropped, &b), eval);
    }
}
