//! Additive logit sources: small networks outside the head whose logit is added to
//! chosen tasks' logits in training mode only (YouTube's shallow position-bias tower:
//! trained jointly so the head does not learn the position effect, dropped at serving).
//!
//! ```text
//! training:    logit_t = head_t(x) + Σ_{s : mask_s[t]} source_s(batch)
//! evaluation:  logit_t = head_t(x) + Σ_{s : mask_s[t], s runs in evaluation} source_s(batch)
//! ```
//! A source runs in evaluation only when it says so ([`LogitSource::runs_in_evaluation`]:
//! the position tower with `serve_position`, at a fixed position).
//! Backward hands the head every task's logit gradient unchanged (∂logit_t/∂head_t = 1)
//! and each source the sum of the gradients of the tasks it feeds.
//!
//! A source reads a [`SourceInput`]: the [`Batch`] (positions, devices, its own
//! columns) and the model's embedding output and dense features, from which it may
//! assemble its own feature groups (the position tower does); it adds its gradient
//! w.r.t. the embeddings into the model's, so the tables it reads train with it.

use crate::error::{Context, ModelError, Result};
use crate::head::Head;
use mixrank_data::Batch;
use mixrank_engine::{Backend, ColCopy};
use mixrank_nn::{ParamVisitor, Parameters};

/// What a logit source reads: the batch, and the model's features for it.
pub struct SourceInput<'a, B: Backend> {
    pub batch: &'a Batch,
    /// The embedding collection's output, `[rows, d_emb]`; `None` without categorical
    /// features.
    pub emb: Option<&'a B::Buf>,
    /// The dense features, `[rows, dense_width]` (values, then missing indicators).
    pub dense: &'a B::Buf,
}

/// A network whose `[rows, 1]` logit is added to the logits of the tasks in
/// [`LogitSource::tasks`], in training mode only.
pub trait LogitSource<B: Backend>: Parameters<B> + Send {
    /// Per task: whether this source's logit is added to it (one entry per task).
    fn tasks(&self) -> &[bool];
    /// Runs on the first `input.batch.rows` rows and returns their logits, `[rows, 1]`.
    fn forward(&mut self, ops: &B, input: &SourceInput<'_, B>) -> Result<&B::Buf>;
    /// Given the same input and the gradient w.r.t. the last forward's logit
    /// (`[rows, 1]`, summed over its tasks), accumulates parameter gradients and, when
    /// it reads embeddings, adds its gradient w.r.t. `input.emb` into `d_emb`
    /// (`[rows, d_emb]`; `None` without embeddings).
    fn backward(
        &mut self,
        ops: &B,
        input: &SourceInput<'_, B>,
        d_logit: &B::Buf,
        d_emb: Option<&mut B::Buf>,
    ) -> Result<()>;
    /// Dropout mask streams continue from `step` (see `Head::set_dropout_step`).
    /// Default: no-op for sources without dropout.
    fn set_dropout_step(&mut self, _step: u64) {}

    fn set_dropout_rows(&mut self, _first_row: u64) {}
    /// Whether it also runs (and is added) in evaluation mode. Default: no.
    fn runs_in_evaluation(&self) -> bool {
        false
    }
    /// Training mode (the default) or evaluation mode (e.g. dropout off).
    fn set_training(&mut self, _training: bool) {}
    /// The feature groups it reads (none for sources that read only the batch).
    fn input_groups(&self) -> &[crate::inputs::InputGroup] {
        &[]
    }
}

/// The sources a model adds, and the sums they make. Without sources, or outside
/// training, [`LogitSources::logits`] is the head's own buffer (no copy).
pub struct LogitSources<B: Backend> {
    sources: Vec<Box<dyn LogitSource<B>>>,
    /// Each source's task mask, copied when it was added.
    masks: Vec<Vec<bool>>,
    n_tasks: usize,
    max_batch: usize,
    /// Per task: head logit + the sources' logits, `[max_batch]`; allocated for the
    /// tasks some source feeds.
    sums: Vec<Option<B::Buf>>,
    /// A source's logit gradient: the sum over its tasks, `[max_batch]`.
    d_source: B::Buf,
    /// Whether the last forward added some source.
    added: bool,
    /// Per source: whether the last forward ran it.
    ran: Vec<bool>,
}

impl<B: Backend> LogitSources<B> {
    pub fn new(ops: &B, n_tasks: usize, max_batch: usize) -> Result<Self> {
        Ok(LogitSources {
            sources: Vec::new(),
            masks: Vec::new(),
            n_tasks,
            max_batch,
            sums: (0..n_tasks).map(|_| None).collect(),
            d_source: ops.alloc(0).at(|| "logit source workspaces".into())?,
            added: false,
            ran: Vec::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Adds `source`; its task mask must have one entry per task.
    pub fn add(&mut self, ops: &B, source: Box<dyn LogitSource<B>>) -> Result<()> {
        let mask = source.tasks().to_vec();
        if mask.len() != self.n_tasks {
            return Err(ModelError::Mismatch(format!(
                "a logit source's task mask has {} entries for {} tasks",
                mask.len(),
                self.n_tasks
            )));
        }
        let at = || "logit source workspaces".to_string();
        for (t, _) in mask.iter().enumerate().filter(|(_, &on)| on) {
            if self.sums[t].is_none() {
                self.sums[t] = Some(ops.alloc(self.max_batch).at(at)?);
            }
        }
        if self.sources.is_empty() {
            self.d_source = ops.alloc(self.max_batch).at(at)?;
        }
        self.sources.push(source);
        self.masks.push(mask);
        self.ran.push(false);
        Ok(())
    }

    /// After the head's forward on `batch`: in training mode, adds every source's logit
    /// to its tasks' logits; in evaluation mode, those of the sources that run in
    /// evaluation; with none, the head's logits stand.
    pub fn forward(&mut self, ops: &B, head: &dyn Head<B>, input: &SourceInput<'_, B>, training: bool) -> Result<()> {
        for (ran, source) in self.ran.iter_mut().zip(&self.sources) {
            *ran = training || source.runs_in_evaluation();
        }
        self.added = self.ran.iter().any(|&r| r);
        if !self.added {
            return Ok(());
        }
        let n = input.batch.rows;
        let copy = ColCopy { rows: n, cols: 1, src_ld: 1, src_col: 0, dst_ld: 1, dst_col: 0, accumulate: false };
        for (t, sum) in self.sums.iter_mut().enumerate() {
            if let Some(sum) = sum {
                ops.copy_cols(&copy, head.logits(t), sum).at(|| format!("task {t} logits"))?;
            }
        }
        for (s, (source, mask)) in self.sources.iter_mut().zip(&self.masks).enumerate() {
            if !self.ran[s] {
                continue;
            }
            let y = source.forward(ops, input)?;
            for (t, sum) in self.sums.iter_mut().enumerate().filter(|(t, _)| mask[*t]) {
                let sum = sum.as_mut().expect("allocated for every task a source feeds");
                ops.axpy(n, 1.0, y, sum).at(|| format!("logit source {s} into task {t}"))?;
            }
        }
        Ok(())
    }

    /// Task `t`'s logits from the last forward, `[batch, 1]`.
    pub fn logits<'a>(&'a self, head: &'a dyn Head<B>, t: usize) -> &'a B::Buf {
        match &self.sums[t] {
            Some(sum) if self.added => sum,
            _ => head.logits(t),
        }
    }

    /// After the head's backward: hands each source added by the last forward the sum
    /// of its tasks' logit gradients; sources that read embeddings add their gradient
    /// into `d_emb`.
    pub fn backward(
        &mut self,
        ops: &B,
        input: &SourceInput<'_, B>,
        d_logits: &[&B::Buf],
        mut d_emb: Option<&mut B::Buf>,
    ) -> Result<()> {
        if !self.added {
            return Ok(());
        }
        let n = input.batch.rows;
        for (s, (source, mask)) in self.sources.iter_mut().zip(&self.masks).enumerate() {
            if !self.ran[s] {
                continue;
            }
            ops.fill(n, 0.0, &mut self.d_source).at(|| format!("logit source {s} gradient"))?;
            for (t, d) in d_logits.iter().enumerate().filter(|(t, _)| mask[*t]) {
                ops.axpy(n, 1.0, d, &mut self.d_source).at(|| format!("logit source {s} from task {t}"))?;
            }
            source.backward(ops, input, &self.d_source, d_emb.as_deref_mut())?;
        }
        Ok(())
    }

    pub fn set_dropout_step(&mut self, step: u64) {
        for s in &mut self.sources {
            s.set_dropout_step(step);
        }
    }

    pub fn set_dropout_rows(&mut self, first_row: u64) {
        for s in &mut self.sources {
            s.set_dropout_rows(first_row);
        }
    }

    pub fn set_training(&mut self, training: bool) {
        for s in &mut self.sources {
            s.set_training(training);
        }
    }

    /// The sources, in the order their parameters are visited.
    pub fn sources(&self) -> &[Box<dyn LogitSource<B>>] {
        &self.sources
    }
}

impl<B: Backend> Parameters<B> for LogitSources<B> {
    /// `logit_sources.<s>.*`; nothing without sources.
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        for (s, source) in self.sources.iter_mut().enumerate() {
            v.scope_indexed("logit_sources", s, |v| source.visit_params(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RankingModel;
    use mixrank_data::ExperimentConfig;
    use mixrank_nn::testing::{check_grads, RefOpsF64};
    use mixrank_nn::Param;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    type F = RefOpsF64;
    const ROWS: usize = 5;

    /// A per-position bias (1-based positions): the smallest logit source, added to the
    /// tasks `mask` names.
    struct PositionBias {
        w: Param<F>,
        out: Vec<f64>,
        mask: Vec<bool>,
    }

    impl PositionBias {
        fn new(ops: &F, w: &[f32], mask: &[bool]) -> Box<Self> {
            let w = Param::new(ops, w, &[w.len()], &[mixrank_nn::Axis::Own], false, "position bias").unwrap();
            Box::new(PositionBias { w, out: vec![0.0; ROWS], mask: mask.to_vec() })
        }
    }

    impl Parameters<F> for PositionBias {
        fn visit_params(&mut self, v: &mut ParamVisitor<'_, F>) {
            v.param("w", &mut self.w);
        }
    }

    impl LogitSource<F> for PositionBias {
        fn tasks(&self) -> &[bool] {
            &self.mask
        }

        fn forward(&mut self, _ops: &F, input: &SourceInput<'_, F>) -> Result<&Vec<f64>> {
            let batch = input.batch;
            for (o, &p) in self.out.iter_mut().zip(&batch.position[..batch.rows]) {
                *o = self.w.value[p as usize - 1];
            }
            Ok(&self.out)
        }

        fn backward(
            &mut self,
            _ops: &F,
            input: &SourceInput<'_, F>,
            d_logit: &Vec<f64>,
            _d_emb: Option<&mut Vec<f64>>,
        ) -> Result<()> {
            let batch = input.batch;
            for (&d, &p) in d_logit.iter().zip(&batch.position[..batch.rows]) {
                self.w.grad[p as usize - 1] += d;
            }
            Ok(())
        }
    }

    /// Two tasks over three dense features, MMoE with two experts, no dropout.
    fn model(ops: &F) -> RankingModel<F> {
        let cfg = ExperimentConfig::parse(
            "[data]\nformat = \"parquet\"\n[data.splits.train]\npaths = [\"x\"]\n\
             [[features.dense]]\nname = \"a\"\n[[features.dense]]\nname = \"b\"\n[[features.dense]]\nname = \"c\"\n\
             [[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"y\"\n\
             [[tasks]]\nname = \"save\"\nkind = \"binary\"\nlabel = \"z\"\n\
             [model]\narchitecture = \"mmoe\"\nexpert_dim = 3\ntower = { hidden = [2], activation = \"tanh\" }\n\
             [[model.experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [4]\nactivation = \"tanh\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        RankingModel::new(&cfg, ops, ROWS, &mut StdRng::seed_from_u64(5)).unwrap()
    }

    fn batch(model: &RankingModel<F>) -> Batch {
        let mut rng = StdRng::seed_from_u64(6);
        let width = model.d_in();
        Batch {
            rows: ROWS,
            dense: (0..ROWS * width).map(|_| rng.random_range(-1.0..1.0)).collect(),
            dense_width: width,
            n_tasks: 2,
            position: vec![1, 3, 2, 1, 3],
            ..Default::default()
        }
    }

    fn logits(model: &mut RankingModel<F>, ops: &F, b: &Batch) -> [Vec<f64>; 2] {
        model.forward(ops, b).unwrap();
        [0, 1].map(|t| model.logits(t)[..ROWS].to_vec())
    }

    fn names(model: &mut RankingModel<F>) -> Vec<String> {
        let mut names = Vec::new();
        model.params(&mut |n, _| names.push(n.to_string()));
        names
    }

    #[test]
    fn source_logit_is_added_to_chosen_tasks_in_training_only() {
        let ops = F::new();
        let mut m = model(&ops);
        let b = batch(&m);
        let [click, save] = logits(&mut m, &ops, &b);
        let head_names = names(&mut m);

        let w = [0.5f32, -1.25, 2.0];
        m.add_logit_source(&ops, PositionBias::new(&ops, &w, &[true, false])).unwrap();
        let biased: Vec<f64> = click.iter().zip(&b.position).map(|(l, &p)| l + w[p as usize - 1] as f64).collect();
        assert_eq!(logits(&mut m, &ops, &b), [biased.clone(), save.clone()], "training: click + bias, save alone");
        m.set_training(false);
        assert_eq!(logits(&mut m, &ops, &b), [click.clone(), save.clone()], "evaluation: the head's logits");
        m.set_training(true);
        assert_eq!(logits(&mut m, &ops, &b), [biased, save]);

        // The source's parameters come after the head's, whose names do not change.
        let all = names(&mut m);
        assert_eq!(all[..head_names.len()], head_names[..]);
        assert_eq!(all[head_names.len()..], ["logit_sources.0.w".to_string()]);

        let e = m.add_logit_source(&ops, PositionBias::new(&ops, &w, &[true; 3])).err().unwrap().to_string();
        assert!(e.contains("3 entries for 2 tasks"), "{e}");
    }

    #[test]
    fn source_and_head_gradients_match_finite_differences() {
        let ops = F::new();
        let mut m = model(&ops);
        let b = batch(&m);
        // Two sources: one on the second task, one on both.
        m.add_logit_source(&ops, PositionBias::new(&ops, &[0.3, -0.7, 1.1], &[false, true])).unwrap();
        m.add_logit_source(&ops, PositionBias::new(&ops, &[-0.4, 0.9, 0.2], &[true, true])).unwrap();
        let forward = |m: &mut RankingModel<F>, _: &[Vec<f64>]| -> Vec<f64> { logits(m, &ops, &b).concat() };
        let backward = |m: &mut RankingModel<F>, _: &[Vec<f64>], r: &[f64]| -> Vec<Vec<f64>> {
            m.forward(&ops, &b).unwrap();
            let (d0, d1) = r.split_at(ROWS);
            let (d0, d1) = (d0.to_vec(), d1.to_vec());
            m.backward(&ops, &b, &[&d0, &d1]).unwrap();
            // The first source's gradient is the second task's alone, per position.
            let mut want = [0.0; 3];
            for (&d, &p) in d1.iter().zip(&b.position) {
                want[p as usize - 1] += d;
            }
            let mut got = Vec::new();
            m.params(&mut |n, p| {
                if n == "logit_sources.0.w" {
                    got = p.grad[..3].to_vec();
                }
            });
            assert_eq!(got, want);
            Vec::new()
        };
        check_grads("mmoe + logit sources", &mut m, &[], forward, backward, 7);
    }
}
