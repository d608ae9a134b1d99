//! Mixture-of-experts heads: experts over the trunk, softmax gates (Linear + softmax,
//! optionally keeping their `top_k` largest weights per row) and mixtures the towers
//! read.
//!
//! ```text
//! x ─► [shared MLP] ─► trunk ─┬─► expert_0 ─┐
//!                             ├─► …         ├─► mix_g (gate_g(trunk)) ─► tower_t ─► logit_t
//!                             └─► expert_E ─┘
//! ```
//! - OMoE ([`Gating::Shared`]): one gate and one mixture, read by every tower;
//! - MMoE ([`Gating::PerTask`]; Ma et al., KDD 2018): a gate and a mixture per task.
//!
//! Surface-aware gating (`[model.gate] inputs`, [`HeadShape::d_gate`]): the input is
//! `[main | extra]`; the trunk and experts read `main`, the gates `[trunk | extra]` (or
//! `extra` alone with `expert_input = false`), and the gates' gradient w.r.t. `extra`
//! becomes those columns of `d_x`.
//!
//! Backward hands each mixture the gradient of the towers that read it (summed when
//! several do), sums the mixtures' expert gradients per expert, and the gates' and
//! experts' input gradients into the trunk's.

use crate::error::{Context, Result};
use crate::expert::{expanded, Expert};
use crate::gates::{ExpertOwner, ExpertRef, GateInfo, GateRole};
use crate::head::{check_backward, check_batch, Head, HeadShape};
use crate::towers::Towers;
use crate::trunk::Trunk;
use mixrank_data::config::model::ActivationName;
use mixrank_data::config::model::ModelSection;
use mixrank_engine::{Backend, ColCopy};
use mixrank_nn::{Gate, GateConfig, Layer, MoeMix, ParamVisitor, Parameters, Part, ReducedSite};
use rand::Rng;

/// How many gates a [`Moe`] has and which tower reads which mixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gating {
    /// OMoE: one gate, one mixture, every tower reads it.
    Shared,
    /// MMoE: task `t`'s tower reads mixture `t`, weighted by gate `t`.
    PerTask,
}

/// Experts, gates, mixtures and towers. Parameters: `shared.*`, `experts.<e>.*`,
/// `gates.<g>.*`, `towers.<t>.*`.
pub struct Moe<B: Backend> {
    gating: Gating,
    trunk: Trunk<B>,
    experts: Vec<Expert<B>>,
    gates: Vec<Gate<B>>,
    mixes: Vec<MoeMix<B>>,
    towers: Towers<B>,
    expert_dim: usize,
    max_batch: usize,
    /// Expert outputs side by side, `[batch, n_experts·expert_dim]` (expert `e` in
    /// columns `e·expert_dim ..`), copied once out of the experts; every mixture reads it.
    expert_out: B::Buf,
    /// Its gradient, summed over the mixtures (the same layout).
    d_fused: B::Buf,
    /// Gradient w.r.t. each expert's output, `[batch, expert_dim]`: its columns of
    /// `d_fused`, the experts' backward input.
    d_expert_out: Vec<B::Buf>,
    /// OMoE: gradient w.r.t. the one mixture, summed over the towers (empty for MMoE,
    /// whose mixtures take their tower's input gradient as it is).
    d_mix: B::Buf,
    /// Gradient w.r.t. the trunk (the experts' and gates' input).
    d_trunk: B::Buf,
    /// Surface-aware gating: the widths, and the buffers below (empty without).
    gate_extra: Option<GateExtra>,
    /// `x[:, ..d_main]`, the trunk's input.
    x_main: B::Buf,
    /// The gates' input, `[batch, GateExtra::width]`.
    gate_in: B::Buf,
    /// Its gradient, summed over the gates.
    d_gate_in: B::Buf,
    /// The gradient w.r.t. the whole input `[main | extra]`.
    d_x: B::Buf,
    batch: Option<usize>,
}

/// Widths of surface-aware gating's input split (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GateExtra {
    /// Columns the trunk reads (the first ones of the input).
    d_main: usize,
    /// Columns only the gates read (the last ones).
    d_extra: usize,
    /// Trunk columns at the front of the gates' input (0 with `expert_input = false`).
    d_trunk: usize,
}

impl GateExtra {
    fn width(&self) -> usize {
        self.d_trunk + self.d_extra
    }

    fn d_in(&self) -> usize {
        self.d_main + self.d_extra
    }
}

/// Copies `cols` columns of a `[rows, src_ld]` matrix from `src_col` to `dst_col` of a
/// `[rows, dst_ld]` one.
fn cols(rows: usize, cols: usize, (src_ld, src_col): (usize, usize), (dst_ld, dst_col): (usize, usize)) -> ColCopy {
    ColCopy { rows, cols, src_ld, src_col, dst_ld, dst_col, accumulate: false }
}

impl<B: Backend + 'static> Moe<B>
where
    B::Buf: Send,
{
    /// Builds the `[[model.experts]]` list (expanded by `count`), one gate and mixture
    /// (OMoE) or one per task (MMoE), and the towers.
    pub fn new<R: Rng + ?Sized>(
        m: &ModelSection,
        gating: Gating,
        shape: HeadShape,
        ops: &B,
        max_batch: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let HeadShape { d_in, n_tasks, d_gate, .. } = shape;
        if d_gate >= d_in {
            return Err(crate::ModelError::Mismatch(format!(
                "{d_gate} gate-only columns leave none of the {d_in} input columns to the experts"
            )));
        }
        let trunk = Trunk::new(m, d_in - d_gate, ops, max_batch, rng)?;
        let d_trunk = trunk.d_out();
        let gate_extra = (d_gate > 0).then_some(GateExtra {
            d_main: d_in - d_gate,
            d_extra: d_gate,
            d_trunk: if m.gate.expert_input { d_trunk } else { 0 },
        });
        let d_gate_in = gate_extra.map_or(d_trunk, |g| g.width());
        let mut experts = Vec::new();
        for s in expanded(m) {
            experts.push(Expert::new(s, d_trunk, m.expert_dim, ops, max_batch, rng)?);
        }
        let n_exp = experts.len();
        let n_mix = match gating {
            Gating::Shared => 1,
            Gating::PerTask => n_tasks,
        };
        let mut gates = Vec::with_capacity(n_mix);
        let mut mixes = Vec::with_capacity(n_mix);
        for t in 0..n_mix {
            let mut g = GateConfig::new(d_gate_in, n_exp)
                .with_temperature(m.gate.temperature as f32)
                .with_hidden(
                    &m.gate.hidden,
                    crate::expert::activation(m.gate.activation.unwrap_or(ActivationName::Relu)),
                )
                .with_dropout(m.gate.dropout as f32);
            if m.gate.top_k > 0 && m.gate.top_k < n_exp {
                g = g.with_top_k(m.gate.top_k);
            }
            gates.push(g.init(ops, max_batch, rng).at(|| format!("model.gate (task {t})"))?);
            mixes.push(MoeMix::shared(ops, n_exp, m.expert_dim, max_batch).at(|| format!("mixture (task {t})"))?);
        }
        let towers = Towers::new(m, shape, ops, max_batch, rng)?;
        let buf = |n: usize| ops.alloc(n).at(|| "head workspaces".into());
        let wide = max_batch * m.expert_dim;
        let extra = |n: usize| buf(if gate_extra.is_some() { max_batch * n } else { 0 });
        Ok(Moe {
            x_main: extra(d_in - d_gate)?,
            gate_in: extra(d_gate_in)?,
            d_gate_in: extra(d_gate_in)?,
            d_x: extra(d_in)?,
            gate_extra,
            gating,
            trunk,
            expert_out: buf(n_exp * wide)?,
            d_fused: buf(n_exp * wide)?,
            d_expert_out: (0..n_exp).map(|_| buf(wide)).collect::<Result<_>>()?,
            d_mix: buf(if gating == Gating::Shared { wide } else { 0 })?,
            d_trunk: buf(max_batch * d_trunk)?,
            experts,
            gates,
            mixes,
            towers,
            expert_dim: m.expert_dim,
            max_batch,
            batch: None,
        })
    }

    /// The mixture task `t`'s tower reads.
    fn mixture_of(&self, t: usize) -> usize {
        match self.gating {
            Gating::Shared => 0,
            Gating::PerTask => t,
        }
    }

    /// Copy of expert `e`'s `[batch, expert_dim]` block to (`into_fused`) or from the
    /// side-by-side layout of `expert_out` / `d_fused`.
    fn block(&self, batch: usize, e: usize, into_fused: bool) -> ColCopy {
        let (d, wide) = (self.expert_dim, self.experts.len() * self.expert_dim);
        match into_fused {
            true => cols(batch, d, (d, 0), (wide, e * d)),
            false => cols(batch, d, (wide, e * d), (d, 0)),
        }
    }

    /// Back-propagates mixture `g` from its output gradient (the gate's weights are
    /// the forward's): the experts' gradient into `d_fused` (written by the first
    /// mixture, added by the others), the gate's input gradient added into `d_gate_in`
    /// (the trunk's gradient without surface-aware gating).
    #[allow(clippy::too_many_arguments)]
    fn mixture_backward(
        ops: &B,
        g: usize,
        mix: &mut MoeMix<B>,
        gate: &mut Gate<B>,
        expert_out: &B::Buf,
        gate_in: &B::Buf,
        d_mix: &B::Buf,
        d_fused: &mut B::Buf,
        d_gate_in: &mut B::Buf,
        batch: usize,
    ) -> Result<()> {
        let w = gate.output();
        mix.backward_fused(ops, expert_out, w, d_mix, d_fused, g > 0).at(|| format!("mixture {g} backward"))?;
        gate.backward_acc(ops, gate_in, mix.d_gates(), batch, d_gate_in).at(|| format!("gate {g} backward"))
    }
}

impl<B: Backend + 'static> Head<B> for Moe<B>
where
    B::Buf: Send,
{
    fn d_in(&self) -> usize {
        self.gate_extra.map_or(self.trunk.d_in(), |g| g.d_in())
    }

    fn n_tasks(&self) -> usize {
        self.towers.len()
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn forward(&mut self, ops: &B, x: &B::Buf, batch: usize) -> Result<()> {
        check_batch(batch, self.max_batch)?;
        let x_main = match self.gate_extra {
            Some(g) => {
                let spec = cols(batch, g.d_main, (g.d_in(), 0), (g.d_main, 0));
                ops.copy_cols(&spec, x, &mut self.x_main).at(|| "experts' input".into())?;
                &self.x_main
            }
            None => x,
        };
        self.trunk.forward(ops, x_main, batch)?;
        let trunk = self.trunk.output(x_main);
        for e in 0..self.experts.len() {
            let copy = self.block(batch, e, true);
            let y = self.experts[e].forward(ops, trunk, batch)?;
            ops.copy_cols(&copy, y, &mut self.expert_out).at(|| format!("expert {e} output"))?;
        }
        let gate_in = match self.gate_extra {
            Some(g) => {
                let d_t = self.trunk.d_out();
                if g.d_trunk > 0 {
                    let spec = cols(batch, d_t, (d_t, 0), (g.width(), 0));
                    ops.copy_cols(&spec, trunk, &mut self.gate_in).at(|| "gates' input".into())?;
                }
                let spec = cols(batch, g.d_extra, (g.d_in(), g.d_main), (g.width(), g.d_trunk));
                ops.copy_cols(&spec, x, &mut self.gate_in).at(|| "gates' input".into())?;
                &self.gate_in
            }
            None => trunk,
        };
        for (g, (gate, mix)) in self.gates.iter_mut().zip(&mut self.mixes).enumerate() {
            let w = gate.forward(ops, gate_in, batch).at(|| format!("gate {g} forward"))?;
            mix.forward_fused(ops, &self.expert_out, w, batch).at(|| format!("mixture {g} forward"))?;
        }
        for t in 0..self.towers.len() {
            let m = self.mixture_of(t);
            self.towers.forward(ops, t, self.mixes[m].output(), batch)?;
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
        let trunk_w = self.trunk.d_out();
        ops.fill(batch * trunk_w, 0.0, &mut self.d_trunk).at(|| "zeroing head gradients".into())?;
        let x_main = if self.gate_extra.is_some() { &self.x_main } else { x };
        let trunk = self.trunk.output(x_main);
        let (gate_in, d_gate_in) = match self.gate_extra {
            Some(g) => {
                ops.fill(batch * g.width(), 0.0, &mut self.d_gate_in).at(|| "zeroing head gradients".into())?;
                (&self.gate_in, &mut self.d_gate_in)
            }
            None => (trunk, &mut self.d_trunk),
        };
        let (outs, d_fused) = (&self.expert_out, &mut self.d_fused);
        match self.gating {
            Gating::PerTask => {
                for (t, d_logit) in d_logits.iter().enumerate() {
                    let d_mix = self.towers.backward(ops, t, self.mixes[t].output(), d_logit)?;
                    let (mix, gate) = (&mut self.mixes[t], &mut self.gates[t]);
                    Self::mixture_backward(ops, t, mix, gate, outs, gate_in, d_mix, d_fused, d_gate_in, batch)?;
                }
            }
            Gating::Shared => {
                ops.fill(wide, 0.0, &mut self.d_mix).at(|| "zeroing head gradients".into())?;
                for (t, d_logit) in d_logits.iter().enumerate() {
                    let d = self.towers.backward(ops, t, self.mixes[0].output(), d_logit)?;
                    ops.axpy(wide, 1.0, d, &mut self.d_mix).at(|| format!("tower {t}"))?;
                }
                let (mix, gate) = (&mut self.mixes[0], &mut self.gates[0]);
                Self::mixture_backward(ops, 0, mix, gate, outs, gate_in, &self.d_mix, d_fused, d_gate_in, batch)?;
            }
        }
        if let Some(g) = self.gate_extra {
            // The gates' input gradient: the trunk part joins the experts', the extra
            // columns are the input gradient's last ones (nothing else reads them).
            if g.d_trunk > 0 {
                let spec = ColCopy { accumulate: true, ..cols(batch, trunk_w, (g.width(), 0), (trunk_w, 0)) };
                ops.copy_cols(&spec, &self.d_gate_in, &mut self.d_trunk).at(|| "gates' input gradient".into())?;
            }
            let spec = cols(batch, g.d_extra, (g.width(), g.d_trunk), (g.d_in(), g.d_main));
            ops.copy_cols(&spec, &self.d_gate_in, &mut self.d_x).at(|| "gates' input gradient".into())?;
        }
        for e in 0..self.experts.len() {
            let copy = self.block(batch, e, false);
            ops.copy_cols(&copy, &self.d_fused, &mut self.d_expert_out[e]).at(|| format!("expert {e} gradient"))?;
            self.experts[e].backward_acc(ops, trunk, &self.d_expert_out[e], batch, &mut self.d_trunk)?;
        }
        let d_main = self.trunk.backward(ops, x_main, &self.d_trunk)?;
        match self.gate_extra {
            Some(g) => {
                let spec = cols(batch, g.d_main, (g.d_main, 0), (g.d_in(), 0));
                ops.copy_cols(&spec, d_main, &mut self.d_x).at(|| "input gradient".into())?;
                Ok(&self.d_x)
            }
            None => Ok(d_main),
        }
    }

    fn select_surfaces(&mut self, ops: &B, segment: &[u32]) -> Result<()> {
        self.towers.select_surfaces(ops, segment)
    }

    fn visit_layers(&mut self, f: &mut dyn FnMut(&mut dyn Layer<B>)) {
        self.trunk.visit_layers(f);
        for e in &mut self.experts {
            e.visit_net(f);
        }
        for g in &mut self.gates {
            f(g);
        }
        self.towers.visit_layers(f);
    }

    fn visit_reduced(&mut self, f: &mut dyn FnMut(ReducedSite<'_, B>)) {
        self.trunk.visit_reduced(f);
        for e in &mut self.experts {
            e.visit_reduced(f);
        }
        for g in &mut self.gates {
            g.visit_reduced(f);
        }
        self.towers.visit_reduced(f);
    }

    fn experts_mut(&mut self) -> Vec<&mut Expert<B>> {
        self.experts.iter_mut().collect()
    }

    fn exclude_experts(&mut self, ops: &B, experts: &[usize]) -> Result<()> {
        for (g, gate) in self.gates.iter_mut().enumerate() {
            gate.exclude_experts(ops, experts).at(|| format!("gate {g}"))?;
        }
        Ok(())
    }

    /// MMoE: a gate per task; OMoE: one gate for all tasks. Each mixes every expert.
    fn gates(&self) -> Vec<GateInfo> {
        let experts: Vec<ExpertRef> = self
            .experts
            .iter()
            .enumerate()
            .map(|(index, e)| ExpertRef { owner: ExpertOwner::Head, index, kind: e.kind_name() })
            .collect();
        let role = |g| match self.gating {
            Gating::PerTask => GateRole::Task(g),
            Gating::Shared => GateRole::AllTasks,
        };
        (0..self.gates.len()).map(|g| GateInfo { role: role(g), experts: experts.clone(), tower: None }).collect()
    }

    fn n_gates(&self) -> usize {
        self.gates.len()
    }

    fn gate_weights(&self, g: usize) -> Option<&B::Buf> {
        self.gates.get(g).map(|x| x.output())
    }
}

impl<B: Backend> Parameters<B> for Moe<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        // The input is `[main | gate-only groups]` with surface-aware gating (its parts 0
        // and 1, as the model declares them), `main` alone otherwise.
        let main = if self.gate_extra.is_some() { Part::InPart(0) } else { Part::In };
        let trunk = self.trunk.output_parts(&[main]);
        v.within(&[main], &[Part::Own], |v| self.trunk.visit_params(v));
        for (e, ex) in self.experts.iter_mut().enumerate() {
            v.scope_indexed("experts", e, |v| v.within(&trunk, &[Part::Own], |v| ex.visit_params(v)));
        }
        let gate_in = match self.gate_extra {
            Some(g) if g.d_trunk > 0 => [trunk.clone(), vec![Part::InPart(1)]].concat(),
            Some(_) => vec![Part::InPart(1)],
            None => trunk.clone(),
        };
        for (g, gate) in self.gates.iter_mut().enumerate() {
            v.scope_indexed("gates", g, |v| v.within(&gate_in, &[Part::Own], |v| gate.visit_params(v)));
        }
        let mixture = crate::expert::mixture_parts(&self.experts, &trunk);
        v.within(&mixture, &[Part::Own], |v| self.towers.visit_params(v));
    }
}
