//! The multi-task head: everything between the input features and the task logits.
//!
//! ```text
//! x ─► [shared MLP] ─► trunk ─┬─► expert_0 ─┐
//!                             ├─► …         ├─► mix_t (gate_t(trunk)) ─► tower_t ─► logit_t
//!                             └─► expert_E ─┘
//! ```
//! - single-task / shared-bottom: one expert (the bottom), no gate; every tower reads it;
//! - OMoE: one gate and one mixture shared by every tower;
//! - MMoE: a gate and a mixture per task (gates are lightweight: Linear + softmax);
//! - PLE: levels of task-specific and shared experts with per-task and shared gates
//!   ([`crate::ple`]); the towers read the last level's task outputs.
//!
//! Gates may keep only their `top_k` largest weights per row (`[model.gate] top_k`).

use crate::error::{Context, ModelError, Result};
use crate::expert::{activation, expanded, Expert};
use crate::ple::Ple;
use mixrank_data::config::model::{Architecture, ModelSection};
use mixrank_engine::{Backend, ColCopy};
use mixrank_nn::{Gate, GateConfig, Layer, Mlp, MlpConfig, MoeMix, ParamVisitor, Parameters, Tower, TowerConfig};
use rand::Rng;

/// Logits for every task from `[batch, d_in]` input features.
///
/// # Shapes
/// - input: `[batch, d_in]`
/// - output: one `[batch, 1]` logit buffer per task ([`MultiTaskHead::logits`])
pub struct MultiTaskHead<B: Backend> {
    arch: Architecture,
    d_in: usize,
    expert_dim: usize,
    max_batch: usize,
    shared: Option<Mlp<B>>,
    experts: Vec<Expert<B>>,
    gates: Vec<Gate<B>>,
    mixes: Vec<MoeMix<B>>,
    towers: Vec<Tower<B>>,
    /// PLE's levels (architecture = "ple"; `experts`, `gates` and `mixes` are then empty).
    ple: Option<Ple<B>>,
    /// PLE: each tower's input gradient, copied out so the levels can read all at once.
    d_tower_in: Vec<B::Buf>,
    /// Expert outputs, copied out of the experts so the mixtures can read all at once.
    expert_out: Vec<B::Buf>,
    /// Gradient w.r.t. each expert's output, summed over the tasks.
    d_expert_out: Vec<B::Buf>,
    /// OMoE: gradient w.r.t. the one mixture, summed over the towers.
    d_mix: B::Buf,
    /// Gradient w.r.t. the trunk (the experts' and gates' input).
    d_trunk: B::Buf,
    batch: Option<usize>,
}

impl<B: Backend + 'static> MultiTaskHead<B>
where
    B::Buf: Send,
{
    /// Builds the head for `n_tasks` tasks over `d_in` input features.
    pub fn new<R: Rng + ?Sized>(
        m: &ModelSection,
        d_in: usize,
        n_tasks: usize,
        ops: &B,
        max_batch: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let shared = match &m.shared {
            Some(s) => Some(
                MlpConfig::new(d_in, &s.hidden)
                    .with_activation(activation(s.activation))
                    .with_dropout(s.dropout as f32)
                    .with_layer_norm(s.layer_norm)
                    .init(ops, max_batch, rng)
                    .at(|| "model.shared".into())?,
            ),
            None => None,
        };
        let d_trunk = shared.as_ref().map_or(d_in, |s| s.d_out());
        let ple = match (&m.ple, m.architecture) {
            (Some(p), Architecture::Ple) => Some(Ple::new(m, p, d_trunk, n_tasks, ops, max_batch, rng)?),
            (None, Architecture::Ple) => {
                return Err(ModelError::Unsupported { key: "ple".into(), message: "required for PLE".into() })
            }
            _ => None,
        };
        let mut experts = Vec::new();
        for s in expanded(m).into_iter().filter(|_| ple.is_none()) {
            experts.push(Expert::new(s, d_trunk, m.expert_dim, ops, max_batch, rng)?);
        }
        let n_exp = experts.len();
        let n_mix = match m.architecture {
            Architecture::Mmoe => n_tasks,
            Architecture::Omoe => 1,
            _ => 0,
        };
        let mut gates = Vec::new();
        let mut mixes = Vec::new();
        for t in 0..n_mix {
            let mut g = GateConfig::new(d_trunk, n_exp).with_temperature(m.gate.temperature as f32);
            if m.gate.top_k > 0 && m.gate.top_k < n_exp {
                g = g.with_top_k(m.gate.top_k);
            }
            gates.push(g.init(ops, max_batch, rng).at(|| format!("model.gate (task {t})"))?);
            mixes.push(MoeMix::new(ops, n_exp, m.expert_dim, max_batch).at(|| format!("mixture (task {t})"))?);
        }
        let mut towers = Vec::new();
        for t in 0..n_tasks {
            let mut c = TowerConfig::new(m.expert_dim, &m.tower.hidden);
            c.activation = activation(m.tower.activation);
            towers.push(c.init(ops, max_batch, rng).at(|| format!("model.tower (task {t})"))?);
        }
        let buf = |n: usize| ops.alloc(n).at(|| "head workspaces".into());
        let wide = max_batch * m.expert_dim;
        Ok(MultiTaskHead {
            arch: m.architecture,
            d_in,
            expert_dim: m.expert_dim,
            max_batch,
            shared,
            expert_out: (0..n_exp).map(|_| buf(wide)).collect::<Result<_>>()?,
            d_expert_out: (0..n_exp).map(|_| buf(wide)).collect::<Result<_>>()?,
            d_mix: buf(if n_mix == 1 && m.architecture == Architecture::Omoe { wide } else { 0 })?,
            d_trunk: buf(max_batch * d_trunk)?,
            experts,
            gates,
            mixes,
            towers,
            d_tower_in: (0..if ple.is_some() { n_tasks } else { 0 }).map(|_| buf(wide)).collect::<Result<_>>()?,
            ple,
            batch: None,
        })
    }

    pub fn n_tasks(&self) -> usize {
        self.towers.len()
    }

    /// Calls `f` on every part of the head that may hold dropout: the shared layer, each
    /// expert's network (PLE's too) and the towers.
    fn visit_dropout_layers(&mut self, f: &mut dyn FnMut(&mut dyn Layer<B>)) {
        if let Some(s) = &mut self.shared {
            f(s);
        }
        let ple_experts = self.ple.iter_mut().flat_map(|p| p.experts_mut());
        for e in self.experts.iter_mut().chain(ple_experts) {
            e.visit_net(f);
        }
        for t in &mut self.towers {
            f(t);
        }
    }

    /// Dropout mask streams of every layer continue from `step`: masks are a function of
    /// (seed, step), and each training forward advances the step by one, so setting
    /// the trainer's step on resume reproduces an uninterrupted run's masks.
    pub fn set_dropout_step(&mut self, step: u64) {
        self.visit_dropout_layers(&mut |l| l.set_dropout_step(step));
    }

    /// Training mode (dropout on, the default) or evaluation mode (dropout off) for
    /// every layer of the head. Scoring code switches to evaluation and back.
    pub fn set_training(&mut self, training: bool) {
        self.visit_dropout_layers(&mut |l| l.set_training(training));
    }

    pub fn n_experts(&self) -> usize {
        self.experts.len()
    }

    /// Every gate and the experts it mixes (MMoE: one per task; OMoE: one; PLE: per
    /// level, one per task plus the shared gate of inner levels; otherwise none), in
    /// the order [`MultiTaskHead::gate_weights`] indexes them.
    pub fn gates(&self) -> Vec<crate::GateInfo> {
        use crate::{ExpertOwner, ExpertRef, GateInfo, GateRole};
        if let Some(p) = &self.ple {
            return p.gates();
        }
        let experts: Vec<ExpertRef> = self
            .experts
            .iter()
            .enumerate()
            .map(|(index, e)| ExpertRef { owner: ExpertOwner::Head, index, kind: e.kind_name() })
            .collect();
        let role = |g| if self.arch == Architecture::Mmoe { GateRole::Task(g) } else { GateRole::AllTasks };
        (0..self.gates.len()).map(|g| GateInfo { role: role(g), experts: experts.clone() }).collect()
    }

    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Task `t`'s logits from the last forward, `[batch, 1]`.
    pub fn logits(&self, t: usize) -> &B::Buf {
        self.towers[t].output()
    }

    /// Weights of gate `g` (numbered as [`MultiTaskHead::gates`] lists them) from the
    /// last forward, `[batch, experts of that gate]`.
    pub fn gate_weights(&self, g: usize) -> Option<&B::Buf> {
        match &self.ple {
            Some(p) => p.gate_weights(g),
            None => self.gates.get(g).map(|x| x.output()),
        }
    }

    /// Which mixture (if any) feeds task `t`'s tower.
    fn mixture_of(&self, t: usize) -> Option<usize> {
        match self.arch {
            Architecture::Mmoe => Some(t),
            Architecture::Omoe => Some(0),
            _ => None,
        }
    }

    /// Runs the head on the first `batch` rows of `x`.
    pub fn forward(&mut self, ops: &B, x: &B::Buf, batch: usize) -> Result<()> {
        if batch > self.max_batch {
            return Err(ModelError::Mismatch(format!("batch {batch} exceeds max_batch {}", self.max_batch)));
        }
        if let Some(s) = &mut self.shared {
            s.forward(ops, x, batch).at(|| "model.shared forward".into())?;
        }
        let trunk: &B::Buf = match &self.shared {
            Some(s) => s.output(),
            None => x,
        };
        let d = self.expert_dim;
        for (e, (ex, out)) in self.experts.iter_mut().zip(&mut self.expert_out).enumerate() {
            let y = ex.forward(ops, trunk, batch)?;
            let copy =
                ColCopy { rows: batch, cols: d, src_ld: d, src_col: 0, dst_ld: d, dst_col: 0, accumulate: false };
            ops.copy_cols(&copy, y, out).at(|| format!("expert {e} output"))?;
        }
        let outs: Vec<&B::Buf> = self.expert_out.iter().collect();
        for (t, (g, mix)) in self.gates.iter_mut().zip(&mut self.mixes).enumerate() {
            let w = g.forward(ops, trunk, batch).at(|| format!("gate {t} forward"))?;
            mix.forward(ops, &outs, w, batch).at(|| format!("mixture {t} forward"))?;
        }
        if let Some(p) = &mut self.ple {
            p.forward(ops, trunk, batch)?;
        }
        for t in 0..self.towers.len() {
            let input = match (&self.ple, self.mixture_of(t)) {
                (Some(p), _) => p.output(t),
                (None, Some(m)) => self.mixes[m].output(),
                (None, None) => &self.expert_out[0],
            };
            self.towers[t].forward(ops, input, batch).at(|| format!("tower {t} forward"))?;
        }
        self.batch = Some(batch);
        Ok(())
    }

    /// Back-propagates `d_logits[t]` (`[batch, 1]` per task) through the head,
    /// accumulating parameter gradients, and returns `d_x` (`[batch, d_in]`).
    pub fn backward(&mut self, ops: &B, x: &B::Buf, d_logits: &[&B::Buf]) -> Result<&B::Buf> {
        let batch = self.batch.ok_or_else(|| ModelError::Mismatch("backward called before forward".into()))?;
        if d_logits.len() != self.towers.len() {
            return Err(ModelError::Mismatch(format!(
                "{} logit gradients for {} tasks",
                d_logits.len(),
                self.towers.len()
            )));
        }
        let wide = batch * self.expert_dim;
        let trunk_w = self.shared.as_ref().map_or(self.d_in, |s| s.d_out());
        for b in self.d_expert_out.iter_mut() {
            ops.fill(wide, 0.0, b).at(|| "zeroing head gradients".into())?;
        }
        ops.fill(batch * trunk_w, 0.0, &mut self.d_trunk).at(|| "zeroing head gradients".into())?;
        if self.arch == Architecture::Omoe {
            ops.fill(wide, 0.0, &mut self.d_mix).at(|| "zeroing head gradients".into())?;
        }
        let trunk: &B::Buf = match &self.shared {
            Some(s) => s.output(),
            None => x,
        };
        if let Some(p) = &mut self.ple {
            let copy = ColCopy {
                rows: batch,
                cols: self.expert_dim,
                src_ld: self.expert_dim,
                src_col: 0,
                dst_ld: self.expert_dim,
                dst_col: 0,
                accumulate: false,
            };
            for (t, d_logit) in d_logits.iter().enumerate() {
                let d = self.towers[t].backward(ops, p.output(t), d_logit).at(|| format!("tower {t} backward"))?;
                ops.copy_cols(&copy, d, &mut self.d_tower_in[t]).at(|| format!("tower {t} backward"))?;
            }
            let refs: Vec<&B::Buf> = self.d_tower_in.iter().collect();
            let dt = p.backward(ops, trunk, &refs)?;
            ops.axpy(batch * trunk_w, 1.0, dt, &mut self.d_trunk).at(|| "PLE".into())?;
        }
        let outs: Vec<&B::Buf> = self.expert_out.iter().collect();
        // Towers, then mixtures and gates (MMoE), or accumulate (shared-bottom, OMoE).
        for (t, d_logit) in d_logits.iter().enumerate().filter(|_| self.ple.is_none()) {
            let input = match self.arch {
                Architecture::Mmoe => self.mixes[t].output(),
                Architecture::Omoe => self.mixes[0].output(),
                _ => &self.expert_out[0],
            };
            let d_in = self.towers[t].backward(ops, input, d_logit).at(|| format!("tower {t} backward"))?;
            match self.arch {
                Architecture::Mmoe => {
                    let mix = &mut self.mixes[t];
                    mix.backward(ops, &outs, self.gates[t].output(), d_in).at(|| format!("mixture {t} backward"))?;
                    for (e, d) in self.d_expert_out.iter_mut().enumerate() {
                        ops.axpy(wide, 1.0, mix.d_expert(e), d).at(|| format!("mixture {t} expert {e}"))?;
                    }
                    let dt = self.gates[t].backward(ops, trunk, mix.d_gates()).at(|| format!("gate {t} backward"))?;
                    ops.axpy(batch * trunk_w, 1.0, dt, &mut self.d_trunk).at(|| format!("gate {t}"))?;
                }
                Architecture::Omoe => ops.axpy(wide, 1.0, d_in, &mut self.d_mix).at(|| format!("tower {t}"))?,
                _ => ops.axpy(wide, 1.0, d_in, &mut self.d_expert_out[0]).at(|| format!("tower {t}"))?,
            }
        }
        if self.arch == Architecture::Omoe {
            let mix = &mut self.mixes[0];
            mix.backward(ops, &outs, self.gates[0].output(), &self.d_mix).at(|| "mixture backward".into())?;
            for (e, d) in self.d_expert_out.iter_mut().enumerate() {
                ops.axpy(wide, 1.0, mix.d_expert(e), d).at(|| format!("mixture expert {e}"))?;
            }
            let dt = self.gates[0].backward(ops, trunk, mix.d_gates()).at(|| "gate backward".into())?;
            ops.axpy(batch * trunk_w, 1.0, dt, &mut self.d_trunk).at(|| "gate".into())?;
        }
        for (e, ex) in self.experts.iter_mut().enumerate() {
            let dt = ex.backward(ops, trunk, &self.d_expert_out[e])?;
            ops.axpy(batch * trunk_w, 1.0, dt, &mut self.d_trunk).at(|| format!("expert {e}"))?;
        }
        match &mut self.shared {
            Some(s) => s.backward(ops, x, &self.d_trunk).at(|| "model.shared backward".into()),
            None => Ok(&self.d_trunk),
        }
    }
}

impl<B: mixrank_nn::HostBackend + 'static> MultiTaskHead<B> {
    /// Switches inference to bf16 weights and activations with f32 accumulation for
    /// every GEMM the head's layers expose through `Layer::visit_reduced`: the shared
    /// layer, gates, towers, projections, MLP experts, DCNv2's full-rank cross layers
    /// and deep MLP, MaskNet's block Linears, FinalMLP's streams, gates and fusion
    /// terms. Low-rank and mixture cross layers, layer norms, softmax and mixtures stay
    /// f32. Returns how many GEMMs were converted. Inference only: `backward` then
    /// refuses.
    pub fn use_bf16(&mut self, kernel: mixrank_engine::bf16::Bf16Kernel) -> Result<usize> {
        let mut n = 0;
        let mut err = None;
        let mut convert = |site: mixrank_nn::ReducedSite<'_, B>| {
            if err.is_some() {
                return;
            }
            match mixrank_nn::HostBf16::new(kernel, site.k, site.n, &site.dense_weight(), site.max_batch) {
                Ok(r) => {
                    *site.slot = Some(Box::new(r));
                    n += 1;
                }
                Err(e) => err = Some(e),
            }
        };
        if let Some(s) = &mut self.shared {
            s.visit_reduced(&mut convert);
        }
        for e in &mut self.experts {
            e.visit_reduced(&mut convert);
        }
        for g in &mut self.gates {
            g.visit_reduced(&mut convert);
        }
        if let Some(p) = &mut self.ple {
            p.visit_reduced(&mut convert);
        }
        for t in &mut self.towers {
            t.visit_reduced(&mut convert);
        }
        match err {
            Some(e) => Err(e).at(|| "bf16 packing".into()),
            None => Ok(n),
        }
    }
}

impl<B: Backend> Parameters<B> for MultiTaskHead<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        if let Some(s) = &mut self.shared {
            v.scope("shared", |v| s.visit_params(v));
        }
        for (e, ex) in self.experts.iter_mut().enumerate() {
            v.scope_indexed("experts", e, |v| ex.visit_params(v));
        }
        for (g, gate) in self.gates.iter_mut().enumerate() {
            v.scope_indexed("gates", g, |v| gate.visit_params(v));
        }
        if let Some(p) = &mut self.ple {
            v.scope("ple", |v| p.visit_params(v));
        }
        for (t, tw) in self.towers.iter_mut().enumerate() {
            v.scope_indexed("towers", t, |v| tw.visit_params(v));
        }
    }
}
