//! The towers: one `[model.tower]` MLP per task from an `expert_dim`-wide input to the
//! task's logit (or, in a two-tower model's towers, the task's `d_out`-wide embedding).
//! Every head ends in them.

use crate::error::{Context, Result};
use crate::expert::activation;
use mixrank_data::config::model::ModelSection;
use mixrank_engine::Backend;
use mixrank_nn::{Layer, ParamVisitor, Parameters, Part, ReducedSite, Tower, TowerConfig};
use rand::Rng;

/// A tower per task; parameters under `towers.<t>.*`.
///
/// # Shapes
/// - input of tower `t`: `[batch, expert_dim]`
/// - output of tower `t` (its logits): `[batch, d_out]` (`d_out = 1` but in a two-tower
///   model's towers)
pub struct Towers<B: Backend> {
    towers: Vec<Tower<B>>,
}

impl<B: Backend> Towers<B> {
    pub fn new<R: Rng + ?Sized>(
        m: &ModelSection,
        n_tasks: usize,
        d_out: usize,
        ops: &B,
        max_batch: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let mut towers = Vec::with_capacity(n_tasks);
        for t in 0..n_tasks {
            let mut c = TowerConfig::new(m.expert_dim, &m.tower.hidden);
            c.activation = activation(m.tower.activation);
            c.d_out = d_out;
            towers.push(c.init(ops, max_batch, rng).at(|| format!("model.tower (task {t})"))?);
        }
        Ok(Towers { towers })
    }

    pub fn len(&self) -> usize {
        self.towers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.towers.is_empty()
    }

    /// Runs tower `t` on the first `batch` rows of `input`.
    pub fn forward(&mut self, ops: &B, t: usize, input: &B::Buf, batch: usize) -> Result<()> {
        self.towers[t].forward(ops, input, batch).at(|| format!("tower {t} forward"))?;
        Ok(())
    }

    /// Task `t`'s logits from the last forward, `[batch, d_out]`.
    pub fn logits(&self, t: usize) -> &B::Buf {
        self.towers[t].output()
    }

    /// Back-propagates `d_logit` through tower `t` (whose forward read `input`) and
    /// returns the gradient w.r.t. that input, `[batch, expert_dim]`.
    pub fn backward(&mut self, ops: &B, t: usize, input: &B::Buf, d_logit: &B::Buf) -> Result<&B::Buf> {
        self.towers[t].backward(ops, input, d_logit).at(|| format!("tower {t} backward"))
    }

    /// Tower `t`'s input gradient from its last backward.
    pub fn d_input(&self, t: usize) -> &B::Buf {
        self.towers[t].d_input()
    }

    pub fn visit_layers(&mut self, f: &mut dyn FnMut(&mut dyn Layer<B>)) {
        for t in &mut self.towers {
            f(t);
        }
    }

    pub fn visit_reduced(&mut self, f: &mut dyn FnMut(ReducedSite<'_, B>)) {
        for t in &mut self.towers {
            t.visit_reduced(f);
        }
    }
}

impl<B: Backend> Parameters<B> for Towers<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        for (t, tw) in self.towers.iter_mut().enumerate() {
            v.scope_indexed("towers", t, |v| v.within(&[Part::In], &[Part::Own], |v| tw.visit_params(v)));
        }
    }
}
