//! Progressive Layered Extraction (PLE; Tang et al., RecSys 2020): a stack of
//! Customized Gate Control (CGC) levels with task-specific and shared experts.
//!
//! ```text
//! level l (inputs h_t^{l-1} per task, h_s^{l-1} shared; at l = 1 all are the trunk):
//!   task experts  E_t,j = expert_t,j(h_t^{l-1})        j < task_experts
//!   shared experts S_k  = shared_k(h_s^{l-1})           k < shared_experts
//!   h_t^l = Σ_i g_t,i · [E_t,· ; S_·]_i,   g_t = gate_t(h_t^{l-1})     (per task)
//!   h_s^l = Σ_i g_s,i · [E_·,· ; S_·]_i,   g_s = gate_s(h_s^{l-1})     (not at the last level)
//! towers read h_t^L.
//! ```
//!
//! Expert kinds come from the `[[model.experts]]` list expanded by `count` and taken in
//! order, cycling: the shared experts of a level draw from the list starting at its
//! first entry, and so do each task's experts — `experts = [dcnv2, mlp]` with
//! `shared_experts = 2, task_experts = 1` gives shared {dcnv2, mlp} and one dcnv2 per
//! task. Every expert projects to `expert_dim`, so levels after the first read
//! `expert_dim`-wide inputs.
//!
//! Backward runs the levels in reverse: each mixture hands its expert gradients to the
//! experts it mixed (a shared expert collects from every task mixture and the shared
//! mixture), gates and experts hand input gradients to `d h^{l-1}`; at the first level
//! all of them flow into the trunk.

use crate::error::{Context, Result};
use crate::expert::{expanded, Expert};
use crate::gates::{ExpertOwner, ExpertRef, GateInfo, GateRole};
use crate::head::{check_backward, check_batch, Head, HeadShape};
use crate::towers::Towers;
use crate::trunk::Trunk;
use mixrank_data::config::model::ActivationName;
use mixrank_data::config::model::{ModelSection, PleSection};
use mixrank_engine::{Backend, ColCopy};
use mixrank_nn::{Gate, GateConfig, Layer, MoeMix, ParamVisitor, Parameters, Part, ReducedSite};
use rand::Rng;

/// The PLE head: trunk, levels, towers. Parameters: `shared.*`, `ple.levels.<l>.*`,
/// `towers.<t>.*`.
pub struct Ple<B: Backend> {
    trunk: Trunk<B>,
    levels: Levels<B>,
    towers: Towers<B>,
    max_batch: usize,
}

impl<B: Backend + 'static> Ple<B>
where
    B::Buf: Send,
{
    /// Builds the trunk, `p.levels` CGC levels over it and the towers.
    pub fn new<R: Rng + ?Sized>(
        m: &ModelSection,
        p: &PleSection,
        shape: HeadShape,
        ops: &B,
        max_batch: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let HeadShape { d_in, n_tasks, .. } = shape;
        let trunk = Trunk::new(m, d_in, ops, max_batch, rng)?;
        let levels = Levels::new(m, p, trunk.d_out(), n_tasks, ops, max_batch, rng)?;
        let towers = Towers::new(m, shape, ops, max_batch, rng)?;
        Ok(Ple { trunk, levels, towers, max_batch })
    }
}

impl<B: Backend + 'static> Head<B> for Ple<B>
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
        self.levels.forward(ops, self.trunk.output(x), batch)?;
        for t in 0..self.towers.len() {
            self.towers.forward(ops, t, self.levels.output(t), batch)?;
        }
        Ok(())
    }

    fn logits(&self, t: usize) -> &B::Buf {
        self.towers.logits(t)
    }

    fn backward(&mut self, ops: &B, x: &B::Buf, d_logits: &[&B::Buf]) -> Result<&B::Buf> {
        check_backward(self.levels.batch, d_logits.len(), self.towers.len())?;
        for (t, d_logit) in d_logits.iter().enumerate() {
            self.towers.backward(ops, t, self.levels.output(t), d_logit)?;
        }
        // Each tower keeps its input gradient: the levels read them all at once.
        let d_out: Vec<&B::Buf> = (0..self.towers.len()).map(|t| self.towers.d_input(t)).collect();
        let d_trunk = self.levels.backward(ops, self.trunk.output(x), &d_out)?;
        self.trunk.backward(ops, x, d_trunk)
    }

    fn select_surfaces(&mut self, ops: &B, segment: &[u32]) -> Result<()> {
        self.towers.select_surfaces(ops, segment)
    }

    fn visit_layers(&mut self, f: &mut dyn FnMut(&mut dyn Layer<B>)) {
        self.trunk.visit_layers(f);
        for e in self.levels.experts_mut() {
            e.visit_net(f);
        }
        for g in self.levels.gates_mut() {
            f(g);
        }
        self.towers.visit_layers(f);
    }

    fn visit_reduced(&mut self, f: &mut dyn FnMut(ReducedSite<'_, B>)) {
        self.trunk.visit_reduced(f);
        self.levels.visit_reduced(f);
        self.towers.visit_reduced(f);
    }

    /// Per level: each task's gate (its own experts, then the shared ones), then the
    /// shared gate of inner levels (every task's experts, then the shared ones).
    fn gates(&self) -> Vec<GateInfo> {
        self.levels.gates()
    }

    fn gate_weights(&self, g: usize) -> Option<&B::Buf> {
        self.levels.gate_weights(g)
    }
}

impl<B: Backend> Parameters<B> for Ple<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        let trunk = self.trunk.output_parts(&[Part::In]);
        self.trunk.visit_params(v);
        v.within(&trunk, &[Part::Own], |v| v.scope("ple", |v| self.levels.visit_params(v)));
        // The towers read the last level's task mixtures.
        let last = self.levels.output_parts(&trunk);
        v.within(&last, &[Part::Own], |v| self.towers.visit_params(v));
    }
}

/// One CGC level.
struct Level<B: Backend> {
    d_in: usize,
    /// `[task][j]`.
    task_experts: Vec<Vec<Expert<B>>>,
    shared_experts: Vec<Expert<B>>,
    task_gates: Vec<Gate<B>>,
    task_mixes: Vec<MoeMix<B>>,
    /// Gate and mixture over every expert of the level; absent at the last level.
    shared: Option<(Gate<B>, MoeMix<B>)>,
    /// Expert outputs copied out of the experts, `[task][j]` and `[k]`, `[batch, d]` each.
    task_out: Vec<Vec<B::Buf>>,
    shared_out: Vec<B::Buf>,
    /// Gradients w.r.t. those outputs, summed over the mixtures that read them.
    d_task_out: Vec<Vec<B::Buf>>,
    d_shared_out: Vec<B::Buf>,
    /// Gradients w.r.t. this level's inputs: per task, and shared.
    d_task_in: Vec<B::Buf>,
    d_shared_in: B::Buf,
}

/// The CGC levels between the trunk and the towers; parameters under `levels.<l>.*`.
struct Levels<B: Backend> {
    levels: Vec<Level<B>>,
    expert_dim: usize,
    d_trunk: usize,
    /// Gradient w.r.t. the trunk.
    d_trunk_buf: B::Buf,
    batch: Option<usize>,
}

impl<B: Backend + 'static> Levels<B>
where
    B::Buf: Send,
{
    fn new<R: Rng + ?Sized>(
        m: &ModelSection,
        p: &PleSection,
        d_trunk: usize,
        n_tasks: usize,
        ops: &B,
        max_batch: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let kinds = expanded(m);
        let d = m.expert_dim;
        let buf = |n: usize| ops.alloc(n).at(|| "PLE workspaces".into());
        let wide = max_batch * d;
        let mut levels = Vec::with_capacity(p.levels);
        for l in 0..p.levels {
            let d_in = if l == 0 { d_trunk } else { d };
            let last = l + 1 == p.levels;
            let mut task_experts = Vec::with_capacity(n_tasks);
            for _ in 0..n_tasks {
                let mut v = Vec::with_capacity(p.task_experts);
                for j in 0..p.task_experts {
                    v.push(Expert::new(kinds[j % kinds.len()], d_in, d, ops, max_batch, rng)?);
                }
                task_experts.push(v);
            }
            let mut shared_experts = Vec::with_capacity(p.shared_experts);
            for k in 0..p.shared_experts {
                shared_experts.push(Expert::new(kinds[k % kinds.len()], d_in, d, ops, max_batch, rng)?);
            }
            let per_task = p.task_experts + p.shared_experts;
            let all = n_tasks * p.task_experts + p.shared_experts;
            let gate = |n_exp: usize, what: String, rng: &mut R| -> Result<(Gate<B>, MoeMix<B>)> {
                let mut g = GateConfig::new(d_in, n_exp)
                    .with_temperature(m.gate.temperature as f32)
                    .with_hidden(
                        &m.gate.hidden,
                        crate::expert::activation(m.gate.activation.unwrap_or(ActivationName::Relu)),
                    )
                    .with_dropout(m.gate.dropout as f32);
                if m.gate.top_k > 0 && m.gate.top_k < n_exp {
                    g = g.with_top_k(m.gate.top_k);
                }
                let g = g.init(ops, max_batch, rng).at(|| format!("model.ple level {l} {what} gate"))?;
                let mix = MoeMix::new(ops, n_exp, d, max_batch).at(|| format!("model.ple level {l} {what} mixture"))?;
                Ok((g, mix))
            };
            let (mut task_gates, mut task_mixes) = (Vec::new(), Vec::new());
            for t in 0..n_tasks {
                let (g, mix) = gate(per_task, format!("task {t}"), rng)?;
                task_gates.push(g);
                task_mixes.push(mix);
            }
            let shared = if last { None } else { Some(gate(all, "shared".into(), rng)?) };
            let outs = |n: usize| (0..n).map(|_| buf(wide)).collect::<Result<Vec<_>>>();
            levels.push(Level {
                d_in,
                task_out: (0..n_tasks).map(|_| outs(p.task_experts)).collect::<Result<_>>()?,
                shared_out: outs(p.shared_experts)?,
                d_task_out: (0..n_tasks).map(|_| outs(p.task_experts)).collect::<Result<_>>()?,
                d_shared_out: outs(p.shared_experts)?,
                d_task_in: (0..n_tasks).map(|_| buf(max_batch * d_in)).collect::<Result<_>>()?,
                d_shared_in: buf(max_batch * d_in)?,
                task_experts,
                shared_experts,
                task_gates,
                task_mixes,
                shared,
            });
        }
        Ok(Levels { levels, expert_dim: d, d_trunk, d_trunk_buf: buf(max_batch * d_trunk)?, batch: None })
    }

    /// Per level: each task's gate (its own experts, then the shared ones), then the
    /// shared gate of inner levels (every task's experts, then the shared ones).
    fn gates(&self) -> Vec<GateInfo> {
        let mut out = Vec::new();
        for (level, lv) in self.levels.iter().enumerate() {
            let of = |owner: ExpertOwner, list: &[Expert<B>]| -> Vec<ExpertRef> {
                list.iter().enumerate().map(|(index, e)| ExpertRef { owner, index, kind: e.kind_name() }).collect()
            };
            let shared = of(ExpertOwner::PleShared, &lv.shared_experts);
            for (task, own) in lv.task_experts.iter().enumerate() {
                let experts = [of(ExpertOwner::PleTask(task), own), shared.clone()].concat();
                out.push(GateInfo { role: GateRole::PleTask { level, task }, experts, tower: None });
            }
            if lv.shared.is_some() {
                let mut experts: Vec<ExpertRef> =
                    lv.task_experts.iter().enumerate().flat_map(|(t, own)| of(ExpertOwner::PleTask(t), own)).collect();
                experts.extend(shared);
                out.push(GateInfo { role: GateRole::PleShared { level }, experts, tower: None });
            }
        }
        out
    }

    /// Weights of gate `g` in [`Levels::gates`]'s order, from the last forward.
    fn gate_weights(&self, g: usize) -> Option<&B::Buf> {
        let mut i = g;
        for lv in &self.levels {
            if i < lv.task_gates.len() {
                return Some(lv.task_gates[i].output());
            }
            i -= lv.task_gates.len();
            if let Some((gate, _)) = &lv.shared {
                if i == 0 {
                    return Some(gate.output());
                }
                i -= 1;
            }
        }
        None
    }

    /// Task `t`'s output of the last level, `[batch, expert_dim]`.
    fn output(&self, t: usize) -> &B::Buf {
        self.levels.last().expect("at least one level").task_mixes[t].output()
    }

    fn forward(&mut self, ops: &B, trunk: &B::Buf, batch: usize) -> Result<()> {
        let d = self.expert_dim;
        let copy = ColCopy { rows: batch, cols: d, src_ld: d, src_col: 0, dst_ld: d, dst_col: 0, accumulate: false };
        for l in 0..self.levels.len() {
            let (done, rest) = self.levels.split_at_mut(l);
            let prev = done.last();
            let lv = &mut rest[0];
            let task_in = |t: usize| prev.map_or(trunk, |p| p.task_mixes[t].output());
            let shared_in = prev.map_or(trunk, |p| p.shared.as_ref().expect("inner levels have one").1.output());
            for (t, experts) in lv.task_experts.iter_mut().enumerate() {
                for (j, ex) in experts.iter_mut().enumerate() {
                    let y = ex.forward(ops, task_in(t), batch)?;
                    ops.copy_cols(&copy, y, &mut lv.task_out[t][j])
                        .at(|| format!("PLE level {l} task {t} expert {j}"))?;
                }
            }
            for (k, ex) in lv.shared_experts.iter_mut().enumerate() {
                let y = ex.forward(ops, shared_in, batch)?;
                ops.copy_cols(&copy, y, &mut lv.shared_out[k]).at(|| format!("PLE level {l} shared expert {k}"))?;
            }
            for t in 0..lv.task_gates.len() {
                let w = lv.task_gates[t].forward(ops, task_in(t), batch).at(|| format!("PLE level {l} gate {t}"))?;
                let outs: Vec<&B::Buf> = lv.task_out[t].iter().chain(&lv.shared_out).collect();
                lv.task_mixes[t].forward(ops, &outs, w, batch).at(|| format!("PLE level {l} mixture {t}"))?;
            }
            if let Some((g, mix)) = &mut lv.shared {
                let w = g.forward(ops, shared_in, batch).at(|| format!("PLE level {l} shared gate"))?;
                let outs: Vec<&B::Buf> = lv.task_out.iter().flatten().chain(&lv.shared_out).collect();
                mix.forward(ops, &outs, w, batch).at(|| format!("PLE level {l} shared mixture"))?;
            }
        }
        self.batch = Some(batch);
        Ok(())
    }

    /// Back-propagates `d_out[t]` (`[batch, expert_dim]`, w.r.t. [`Levels::output`]) and
    /// returns the gradient w.r.t. the trunk, `[batch, d_trunk]`.
    fn backward(&mut self, ops: &B, trunk: &B::Buf, d_out: &[&B::Buf]) -> Result<&B::Buf> {
        let batch = self.batch.ok_or_else(|| crate::ModelError::Mismatch("PLE backward before forward".into()))?;
        let wide = batch * self.expert_dim;
        for l in (0..self.levels.len()).rev() {
            let (done, rest) = self.levels.split_at_mut(l);
            let (lv, next) = rest.split_first_mut().expect("level l exists");
            let prev = done.last();
            let task_in = |t: usize| prev.map_or(trunk, |p| p.task_mixes[t].output());
            let shared_in = prev.map_or(trunk, |p| p.shared.as_ref().expect("inner levels have one").1.output());
            // Gradients w.r.t. this level's outputs: from the towers at the last level,
            // else from the next level's input gradients.
            let d_task = |t: usize| match next.first() {
                None => d_out[t],
                Some(n) => &n.d_task_in[t],
            };
            let n_in = batch * lv.d_in;
            for b in lv.d_task_out.iter_mut().flatten().chain(&mut lv.d_shared_out) {
                ops.fill(wide, 0.0, b).at(|| "zeroing PLE gradients".into())?;
            }
            for b in lv.d_task_in.iter_mut().chain(std::iter::once(&mut lv.d_shared_in)) {
                ops.fill(n_in, 0.0, b).at(|| "zeroing PLE gradients".into())?;
            }
            let n_te = lv.task_out.first().map_or(0, Vec::len);
            for t in 0..lv.task_mixes.len() {
                let outs: Vec<&B::Buf> = lv.task_out[t].iter().chain(&lv.shared_out).collect();
                let mix = &mut lv.task_mixes[t];
                mix.backward(ops, &outs, lv.task_gates[t].output(), d_task(t))
                    .at(|| format!("PLE level {l} mixture {t} backward"))?;
                for (i, d) in lv.d_task_out[t].iter_mut().chain(&mut lv.d_shared_out).enumerate() {
                    ops.axpy(wide, 1.0, mix.d_expert(i), d).at(|| format!("PLE level {l} mixture {t}"))?;
                }
                let dx = lv.task_gates[t]
                    .backward(ops, task_in(t), mix.d_gates())
                    .at(|| format!("PLE level {l} gate {t} backward"))?;
                ops.axpy(n_in, 1.0, dx, &mut lv.d_task_in[t]).at(|| format!("PLE level {l} gate {t}"))?;
            }
            if let Some((g, mix)) = &mut lv.shared {
                let d_shared = &next.first().expect("inner levels have a next level").d_shared_in;
                let outs: Vec<&B::Buf> = lv.task_out.iter().flatten().chain(&lv.shared_out).collect();
                mix.backward(ops, &outs, g.output(), d_shared)
                    .at(|| format!("PLE level {l} shared mixture backward"))?;
                for (i, d) in lv.d_task_out.iter_mut().flatten().chain(&mut lv.d_shared_out).enumerate() {
                    ops.axpy(wide, 1.0, mix.d_expert(i), d).at(|| format!("PLE level {l} shared mixture"))?;
                }
                let dx =
                    g.backward(ops, shared_in, mix.d_gates()).at(|| format!("PLE level {l} shared gate backward"))?;
                ops.axpy(n_in, 1.0, dx, &mut lv.d_shared_in).at(|| format!("PLE level {l} shared gate"))?;
            }
            debug_assert!(lv.task_out.iter().all(|v| v.len() == n_te));
            for (t, experts) in lv.task_experts.iter_mut().enumerate() {
                for (j, ex) in experts.iter_mut().enumerate() {
                    let dx = ex.backward(ops, task_in(t), &lv.d_task_out[t][j])?;
                    ops.axpy(n_in, 1.0, dx, &mut lv.d_task_in[t])
                        .at(|| format!("PLE level {l} task {t} expert {j}"))?;
                }
            }
            for (k, ex) in lv.shared_experts.iter_mut().enumerate() {
                let dx = ex.backward(ops, shared_in, &lv.d_shared_out[k])?;
                ops.axpy(n_in, 1.0, dx, &mut lv.d_shared_in).at(|| format!("PLE level {l} shared expert {k}"))?;
            }
        }
        // The first level read the trunk everywhere.
        let first = &self.levels[0];
        let n = batch * self.d_trunk;
        ops.fill(n, 0.0, &mut self.d_trunk_buf).at(|| "zeroing PLE gradients".into())?;
        for d in first.d_task_in.iter().chain(std::iter::once(&first.d_shared_in)) {
            ops.axpy(n, 1.0, d, &mut self.d_trunk_buf).at(|| "PLE trunk gradient".into())?;
        }
        Ok(&self.d_trunk_buf)
    }

    /// Every expert of every level, task-specific and shared.
    fn experts_mut(&mut self) -> impl Iterator<Item = &mut Expert<B>> {
        self.levels.iter_mut().flat_map(|lv| lv.task_experts.iter_mut().flatten().chain(&mut lv.shared_experts))
    }

    /// Every Linear of every expert and gate (for bf16 inference).
    fn visit_reduced(&mut self, f: &mut dyn FnMut(ReducedSite<'_, B>)) {
        for ex in self.experts_mut() {
            ex.visit_reduced(f);
        }
        for g in self.gates_mut() {
            g.visit_reduced(f);
        }
    }

    /// Every gate of every level (task gates, then the shared one).
    fn gates_mut(&mut self) -> impl Iterator<Item = &mut Gate<B>> {
        self.levels.iter_mut().flat_map(|lv| lv.task_gates.iter_mut().chain(lv.shared.as_mut().map(|s| &mut s.0)))
    }
}

impl<B: Backend> Levels<B> {
    /// The columns of a level's mixtures, given what the level reads (`input`): its
    /// experts' common output parts (every mixture of a level mixes experts of the
    /// same reading), or [`Part::Mixed`] when they differ.
    fn level_output_parts(lv: &Level<B>, input: &[Part]) -> Vec<Part> {
        crate::expert::mixture_parts(lv.task_experts.iter().flatten().chain(&lv.shared_experts), input)
    }

    /// The columns of the last level's task mixtures (what the towers read), given what
    /// the first level reads.
    fn output_parts(&self, input: &[Part]) -> Vec<Part> {
        let mut parts = input.to_vec();
        for lv in &self.levels {
            parts = Self::level_output_parts(lv, &parts);
        }
        parts
    }
}

impl<B: Backend> Parameters<B> for Levels<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        // Level 0 reads the levels' input (the trunk); level l > 0 reads level l-1's
        // mixtures, whose columns are the experts' common output columns.
        let mut input = vec![Part::In];
        for (l, lv) in self.levels.iter_mut().enumerate() {
            let next = Self::level_output_parts(lv, &input);
            v.scope_indexed("levels", l, |v| {
                for (t, (experts, gate)) in lv.task_experts.iter_mut().zip(&mut lv.task_gates).enumerate() {
                    v.scope_indexed("tasks", t, |v| {
                        for (j, ex) in experts.iter_mut().enumerate() {
                            v.scope_indexed("experts", j, |v| v.within(&input, &[Part::Own], |v| ex.visit_params(v)));
                        }
                        v.scope("gate", |v| v.within(&input, &[Part::Own], |v| gate.visit_params(v)));
                    });
                }
                for (k, ex) in lv.shared_experts.iter_mut().enumerate() {
                    v.scope_indexed("shared_experts", k, |v| v.within(&input, &[Part::Own], |v| ex.visit_params(v)));
                }
                if let Some((g, _)) = &mut lv.shared {
                    v.scope("shared_gate", |v| v.within(&input, &[Part::Own], |v| g.visit_params(v)));
                }
            });
            input = next;
        }
    }
}
