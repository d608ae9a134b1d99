//! The towers: one `[model.tower]` MLP per task from an `expert_dim`-wide input to the
//! task's logit (or, in a two-tower model's towers, the task's `d_out`-wide embedding).
//! Every head ends in them.
//!
//! Per-surface towers (`[model.tower] per_surface`, [`HeadShape::surfaces`] > 1): each
//! task has one tower per `[columns] segment` value, every one run on the whole batch,
//! and a row's logit is its surface's tower's:
//!
//! ```text
//! input ─┬─► tower_{t,0} ─┐
//!        ├─► …            ├─► MoeMix(one-hot of the row's surface) ─► logit_t
//!        └─► tower_{t,S-1}┘
//! ```
//! The selection is the mixture op of the gates ([`MoeMix`]) with a one-hot weight row
//! per example (`[batch, S]`, written once per batch by [`Towers::select_surfaces`] from
//! the batch's segment ids: the one upload it adds), so it stays in the backend:
//! `1·x + 0·y` is `x` exactly, so a row's logit is its own tower's bit for bit (another
//! surface's tower only matters if it produces a non-finite value). Backward: the
//! mixture hands tower `s` the logit gradient scaled by the one-hot column `s` (zero on
//! the rows of other surfaces), and the towers' input gradients are summed. Costs `S×`
//! the towers' FLOPs (every tower sees every row), which are small next to the experts'.
//! A segment id outside `0..S` is refused (the encoder never produces one: a value not
//! in `[columns] segment.values` fails its row, or skips it under `max_bad_rows`).

use crate::error::{Context, ModelError, Result};
use crate::expert::activation;
use crate::head::HeadShape;
use mixrank_data::config::model::ModelSection;
use mixrank_engine::Backend;
use mixrank_nn::{Layer, MoeMix, ParamVisitor, Parameters, Part, ReducedSite, Tower, TowerConfig};
use rand::Rng;

/// A tower per task (per task and surface with per-surface towers); parameters under
/// `towers.<t>.*` (`towers.<t>.surface.<s>.*`).
///
/// # Shapes
/// - input of task `t`'s towers: `[batch, expert_dim]`
/// - output of task `t` (its logits): `[batch, d_out]` (`d_out = 1` but in a two-tower
///   model's towers)
pub struct Towers<B: Backend> {
    /// `towers[t][s]`: task `t`'s tower of surface `s` (one per task without per-surface
    /// towers).
    towers: Vec<Vec<Tower<B>>>,
    /// Per-surface towers' selection; `None` without.
    select: Option<Select<B>>,
}

/// The per-row choice of a surface's tower (see the module docs).
struct Select<B: Backend> {
    surfaces: usize,
    max_batch: usize,
    /// Width of the towers' input.
    d_in: usize,
    /// Rows of the last forward (what backward runs on).
    batch: Option<usize>,
    /// `[batch, surfaces]`: 1 at each row's surface, 0 elsewhere.
    one_hot: B::Buf,
    /// Host scratch of the one-hot rows.
    host: Vec<f32>,
    /// Rows of the last [`Towers::select_surfaces`] (a forward must match it).
    rows: Option<usize>,
    /// One mixture per task.
    mixes: Vec<MoeMix<B>>,
    /// Task `t`'s input gradient, summed over its surfaces' towers.
    d_input: Vec<B::Buf>,
}

impl<B: Backend> Towers<B> {
    /// `shape.n_tasks` towers of `shape.d_out` outputs over `m.expert_dim` inputs, times
    /// `shape.surfaces` with `[model.tower] per_surface` (which needs `surfaces >= 2`).
    pub fn new<R: Rng + ?Sized>(
        m: &ModelSection,
        shape: HeadShape,
        ops: &B,
        max_batch: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let HeadShape { n_tasks, d_out, surfaces, .. } = shape;
        match (m.tower.per_surface, surfaces) {
            (true, s) if s < 2 => {
                return Err(ModelError::Unsupported {
                    key: "tower.per_surface".into(),
                    message: format!(
                        "needs a [columns] segment with at least two values, this head is built for {s} surface(s)"
                    ),
                })
            }
            (false, s) if s != 1 => {
                return Err(ModelError::Mismatch(format!(
                    "a head for {s} surfaces without [model.tower] per_surface (its towers are shared)"
                )))
            }
            _ => {}
        }
        let mut towers = Vec::with_capacity(n_tasks);
        for t in 0..n_tasks {
            let mut task = Vec::with_capacity(surfaces);
            for s in 0..surfaces {
                let mut c = TowerConfig::new(m.expert_dim, &m.tower.hidden);
                c.activation = activation(m.tower.activation);
                c.d_out = d_out;
                let at = || match m.tower.per_surface {
                    true => format!("model.tower (task {t}, surface {s})"),
                    false => format!("model.tower (task {t})"),
                };
                task.push(c.init(ops, max_batch, rng).at(at)?);
            }
            towers.push(task);
        }
        let select = if m.tower.per_surface {
            let at = || "per-surface towers".to_string();
            Some(Select {
                surfaces,
                max_batch,
                d_in: m.expert_dim,
                batch: None,
                one_hot: ops.alloc(max_batch * surfaces).at(at)?,
                host: Vec::with_capacity(max_batch * surfaces),
                rows: None,
                mixes: (0..n_tasks)
                    .map(|_| MoeMix::new(ops, surfaces, d_out, max_batch).at(at))
                    .collect::<Result<_>>()?,
                d_input: (0..n_tasks).map(|_| ops.alloc(max_batch * m.expert_dim).at(at)).collect::<Result<_>>()?,
            })
        } else {
            None
        };
        Ok(Towers { towers, select })
    }

    pub fn len(&self) -> usize {
        self.towers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.towers.is_empty()
    }

    /// Towers per task: the number of surfaces with per-surface towers, else 1.
    pub fn surfaces(&self) -> usize {
        self.select.as_ref().map_or(1, |s| s.surfaces)
    }

    /// Per-surface towers: writes the one-hot selection of each row's surface
    /// (`segment[r]`, the batch's `[columns] segment` ids) for the next forwards, which
    /// must run on `segment.len()` rows. A no-op without per-surface towers (nothing is
    /// uploaded). Refuses an id outside `0..surfaces`.
    pub fn select_surfaces(&mut self, ops: &B, segment: &[u32]) -> Result<()> {
        let Some(sel) = &mut self.select else { return Ok(()) };
        let rows = segment.len();
        if rows > sel.max_batch {
            return Err(ModelError::Mismatch(format!("{rows} rows exceed max_batch {}", sel.max_batch)));
        }
        let s_n = sel.surfaces;
        if let Some((r, &id)) = segment.iter().enumerate().find(|(_, &id)| id as usize >= s_n) {
            return Err(ModelError::Mismatch(format!(
                "row {r} has segment id {id}, but the per-surface towers were built for {s_n} surfaces \
                 ([columns] segment values)"
            )));
        }
        sel.host.clear();
        sel.host.resize(rows * s_n, 0.0);
        for (r, &id) in segment.iter().enumerate() {
            sel.host[r * s_n + id as usize] = 1.0;
        }
        ops.write(&sel.host, &mut sel.one_hot).at(|| "uploading surfaces".into())?;
        sel.rows = Some(rows);
        Ok(())
    }

    /// Runs task `t`'s tower(s) on the first `batch` rows of `input` (per-surface
    /// towers: every surface's, then the selection of [`Towers::select_surfaces`], which
    /// must have been given `batch` rows).
    pub fn forward(&mut self, ops: &B, t: usize, input: &B::Buf, batch: usize) -> Result<()> {
        let Some(sel) = &mut self.select else {
            self.towers[t][0].forward(ops, input, batch).at(|| format!("tower {t} forward"))?;
            return Ok(());
        };
        if sel.rows != Some(batch) {
            return Err(ModelError::Mismatch(format!(
                "per-surface towers: a forward of {batch} rows, but the surfaces of {:?} rows were selected \
                 (select_surfaces before every forward)",
                sel.rows
            )));
        }
        for (s, tw) in self.towers[t].iter_mut().enumerate() {
            tw.forward(ops, input, batch).at(|| format!("tower {t} surface {s} forward"))?;
        }
        let outs: Vec<&B::Buf> = self.towers[t].iter().map(|tw| tw.output()).collect();
        sel.mixes[t].forward(ops, &outs, &sel.one_hot, batch).at(|| format!("tower {t} surface selection"))?;
        sel.batch = Some(batch);
        Ok(())
    }

    /// Task `t`'s logits from the last forward, `[batch, d_out]`.
    pub fn logits(&self, t: usize) -> &B::Buf {
        match &self.select {
            Some(sel) => sel.mixes[t].output(),
            None => self.towers[t][0].output(),
        }
    }

    /// Back-propagates `d_logit` through task `t`'s tower(s) (whose forward read
    /// `input`) and returns the gradient w.r.t. that input, `[batch, expert_dim]`.
    pub fn backward(&mut self, ops: &B, t: usize, input: &B::Buf, d_logit: &B::Buf) -> Result<&B::Buf> {
        let Some(sel) = &mut self.select else {
            return self.towers[t][0].backward(ops, input, d_logit).at(|| format!("tower {t} backward"));
        };
        let outs: Vec<&B::Buf> = self.towers[t].iter().map(|tw| tw.output()).collect();
        let mix = &mut sel.mixes[t];
        mix.backward(ops, &outs, &sel.one_hot, d_logit).at(|| format!("tower {t} surface selection backward"))?;
        let n = sel.batch.ok_or_else(|| ModelError::Mismatch("backward called before forward".into()))? * sel.d_in;
        let d_in = &mut sel.d_input[t];
        ops.fill(n, 0.0, d_in).at(|| format!("tower {t} input gradient"))?;
        for (s, tw) in self.towers[t].iter_mut().enumerate() {
            let d = tw.backward(ops, input, mix.d_expert(s)).at(|| format!("tower {t} surface {s} backward"))?;
            ops.axpy(n, 1.0, d, d_in).at(|| format!("tower {t} surface {s} input gradient"))?;
        }
        Ok(&sel.d_input[t])
    }

    /// Task `t`'s input gradient from its last backward.
    pub fn d_input(&self, t: usize) -> &B::Buf {
        match &self.select {
            Some(sel) => &sel.d_input[t],
            None => self.towers[t][0].d_input(),
        }
    }

    pub fn visit_layers(&mut self, f: &mut dyn FnMut(&mut dyn Layer<B>)) {
        for t in self.towers.iter_mut().flatten() {
            f(t);
        }
    }

    pub fn visit_reduced(&mut self, f: &mut dyn FnMut(ReducedSite<'_, B>)) {
        for t in self.towers.iter_mut().flatten() {
            t.visit_reduced(f);
        }
    }
}

impl<B: Backend> Parameters<B> for Towers<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        let per_surface = self.select.is_some();
        for (t, task) in self.towers.iter_mut().enumerate() {
            v.scope_indexed("towers", t, |v| {
                v.within(&[Part::In], &[Part::Own], |v| {
                    if per_surface {
                        for (s, tw) in task.iter_mut().enumerate() {
                            v.scope_indexed("surface", s, |v| tw.visit_params(v));
                        }
                    } else {
                        task[0].visit_params(v);
                    }
                })
            });
        }
    }
}
