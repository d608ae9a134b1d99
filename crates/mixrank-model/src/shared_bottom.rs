//! Single-task and shared-bottom heads: one expert (the bottom) that every tower reads,
//! no gate (Caruana, 1997; the DCNv2 production baseline).
//!
//! ```text
//! x ─► [shared MLP] ─► trunk ─► bottom ─┬─► tower_0 ─► logit_0
//!                                       └─► tower_T ─► logit_T
//! ```
//! Backward sums the towers' input gradients into the bottom's output gradient.

use crate::error::{Context, ModelError, Result};
use crate::expert::{expanded, Expert};
use crate::gates::GateInfo;
use crate::head::{check_backward, check_batch, Head, HeadShape};
use crate::towers::Towers;
use crate::trunk::Trunk;
use mixrank_data::config::model::ModelSection;
use mixrank_engine::{Backend, ColCopy};
use mixrank_nn::{Layer, ParamVisitor, Parameters, Part, ReducedSite};
use rand::Rng;

/// One bottom expert under a tower per task. Parameters: `shared.*`, `experts.0.*`,
/// `towers.<t>.*`.
pub struct SharedBottom<B: Backend> {
    trunk: Trunk<B>,
    bottom: Expert<B>,
    towers: Towers<B>,
    expert_dim: usize,
    max_batch: usize,
    /// The bottom's output, copied out of the expert so the towers' backward can read it.
    bottom_out: B::Buf,
    /// Gradient w.r.t. the bottom's output, summed over the towers.
    d_bottom: B::Buf,
    batch: Option<usize>,
}

impl<B: Backend + 'static> SharedBottom<B>
where
    B::Buf: Send,
{
    /// Builds the head; `m.experts` must expand to exactly one expert.
    pub fn new<R: Rng + ?Sized>(
        m: &ModelSection,
        shape: HeadShape,
        ops: &B,
        max_batch: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let d_in = shape.d_in;
        let trunk = Trunk::new(m, d_in, ops, max_batch, rng)?;
        let [bottom] = expanded(m)[..] else {
            return Err(ModelError::Unsupported {
                key: "experts".into(),
                message: format!("{:?} takes exactly one expert (the bottom)", m.architecture),
            });
        };
        let bottom = Expert::new(bottom, trunk.d_out(), m.expert_dim, ops, max_batch, rng)?;
        let towers = Towers::new(m, shape, ops, max_batch, rng)?;
        let buf = |n: usize| ops.alloc(n).at(|| "head workspaces".into());
        let wide = max_batch * m.expert_dim;
        Ok(SharedBottom {
            trunk,
            bottom,
            towers,
            expert_dim: m.expert_dim,
            max_batch,
            bottom_out: buf(wide)?,
            d_bottom: buf(wide)?,
            batch: None,
        })
    }
}

impl<B: Backend + 'static> Head<B> for SharedBottom<B>
where
    B::Buf: Send,
{
    fn d_in(&self) -> usize {
        self.trunk.d_in()
    }

    fn n_tasks(&self) -> usize {
        self.towers.len()
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn forward(&mut self, ops: &B, x: &B::Buf, batch: usize) -> Result<()> {
        check_batch(batch, self.max_batch)?;
        self.trunk.forward(ops, x, batch)?;
        let d = self.expert_dim;
        let y = self.bottom.forward(ops, self.trunk.output(x), batch)?;
        let copy = ColCopy { rows: batch, cols: d, src_ld: d, src_col: 0, dst_ld: d, dst_col: 0, accumulate: false };
        ops.copy_cols(&copy, y, &mut self.bottom_out).at(|| "expert 0 output".into())?;
        for t in 0..self.towers.len() {
            self.towers.forward(ops, t, &self.bottom_out, batch)?;
        }
        self.batch = Some(batch);
        Ok(())
    }

    fn logits(&self, t: usize) -> &B::Buf {
        self.towers.logits(t)
    }

    fn backward(&mut self, ops: &B, x: &B::Buf, d_logits: &[&B::Buf]) -> Result<&B::Buf> {
        let batch = check_backward(self.batch, d_logits.len(), self.towers.len())?;
        let wide = batch * self.expert_dim;
        ops.fill(wide, 0.0, &mut self.d_bottom).at(|| "zeroing head gradients".into())?;
        for (t, d_logit) in d_logits.iter().enumerate() {
            let d = self.towers.backward(ops, t, &self.bottom_out, d_logit)?;
            ops.axpy(wide, 1.0, d, &mut self.d_bottom).at(|| format!("tower {t}"))?;
        }
        let d_trunk = self.bottom.backward(ops, self.trunk.output(x), &self.d_bottom)?;
        self.trunk.backward(ops, x, d_trunk)
    }

    fn select_surfaces(&mut self, ops: &B, segment: &[u32]) -> Result<()> {
        self.towers.select_surfaces(ops, segment)
    }

    fn visit_layers(&mut self, f: &mut dyn FnMut(&mut dyn Layer<B>)) {
        self.trunk.visit_layers(f);
        self.bottom.visit_net(f);
        self.towers.visit_layers(f);
    }

    fn visit_reduced(&mut self, f: &mut dyn FnMut(ReducedSite<'_, B>)) {
        self.trunk.visit_reduced(f);
        self.bottom.visit_reduced(f);
        self.towers.visit_reduced(f);
    }

    fn gates(&self) -> Vec<GateInfo> {
        Vec::new()
    }

    fn n_gates(&self) -> usize {
        0
    }

    fn gate_weights(&self, _g: usize) -> Option<&B::Buf> {
        None
    }
}

impl<B: Backend> Parameters<B> for SharedBottom<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        let trunk = self.trunk.output_parts(&[Part::In]);
        self.trunk.visit_params(v);
        v.scope_indexed("experts", 0, |v| v.within(&trunk, &[Part::Own], |v| self.bottom.visit_params(v)));
        let bottom = crate::expert::mixture_parts([&self.bottom], &trunk);
        v.within(&bottom, &[Part::Own], |v| self.towers.visit_params(v));
    }
}
