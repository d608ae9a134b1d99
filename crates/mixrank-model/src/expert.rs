//! One expert of a mixture (or the bottom of a shared-bottom model): a DCNv2, MaskNet,
//! FinalMLP or MLP network, followed by a linear projection to `expert_dim` when its natural
//! output width differs, so heterogeneous experts can be mixed.

use crate::error::{Context, Result};
use mixrank_data::config::model::{ActivationName, ExpertKind, ExpertSection, ModelSection, Structure};
use mixrank_engine::{Activation, Backend, ColCopy};
use mixrank_nn::cross::{CrossNetV2Config, CrossRank, DcnConfig, DcnStructure};
use mixrank_nn::mask::{MaskNetConfig, MaskNetStructure};
use mixrank_nn::{substitute_parts, Layer, Linear, LinearConfig, MlpConfig, ParamVisitor, Parameters, Part};
use mixrank_nn::{CrossConfig, FinalMlpConfig, GateContext};
use rand::Rng;

/// The engine activation for a config name.
pub fn activation(a: ActivationName) -> Activation {
    match a {
        ActivationName::Relu => Activation::Relu,
        ActivationName::Gelu => Activation::GeluTanh,
        ActivationName::Silu => Activation::Silu,
        ActivationName::Tanh => Activation::Tanh,
        ActivationName::Sigmoid => Activation::Sigmoid,
        ActivationName::Identity => Activation::Identity,
    }
}

/// What a mixture of `experts` (each reading `input`, in the mixing module's terms) is
/// made of: the experts' common output parts, or [`Part::Mixed`] when their columns
/// differ (an expert whose output carries its input's columns mixed with one whose
/// output is its own units: no per-column map exists).
pub fn mixture_parts<'a, B: Backend + 'a>(
    experts: impl IntoIterator<Item = &'a Expert<B>>,
    input: &[Part],
) -> Vec<Part> {
    let mut common: Option<Vec<Part>> = None;
    for e in experts {
        let mut parts = substitute_parts(&e.output_parts(), input, &[Part::Own]);
        parts.dedup_by(|a, b| *a == Part::Own && *b == Part::Own);
        match &common {
            None => common = Some(parts),
            Some(c) if *c == parts => {}
            Some(_) => return vec![Part::Mixed],
        }
    }
    common.unwrap_or_else(|| vec![Part::Own])
}

/// The `[[model.experts]]` list with each entry repeated `count` times, in order: the
/// experts MMoE/OMoE/shared-bottom build, and the kinds PLE cycles through.
pub fn expanded(m: &ModelSection) -> Vec<&ExpertSection> {
    m.experts.iter().flat_map(|e| std::iter::repeat_n(e, e.count())).collect()
}

/// An expert network with an optional projection to the common width.
///
/// # Shapes
/// - input: `[batch, d_in]`
/// - output: `[batch, expert_dim]`
pub struct Expert<B: Backend> {
    kind: ExpertKind,
    net: Box<dyn Layer<B> + Send>,
    /// `Some` when the network's width differs from `expert_dim`.
    proj: Option<Linear<B>>,
    /// Copy of the network's output, the projection's input (kept for its backward).
    net_out: B::Buf,
    max_batch: usize,
}

impl<B: Backend + 'static> Expert<B>
where
    B::Buf: Send,
{
    /// Builds an expert from its config section.
    pub fn new<R: Rng + ?Sized>(
        s: &ExpertSection,
        d_in: usize,
        expert_dim: usize,
        ops: &B,
        max_batch: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let kind = s.kind();
        let at = || format!("expert ({kind})");
        let net: Box<dyn Layer<B> + Send> = match s {
            ExpertSection::Mlp(s) => {
                let c = MlpConfig::new(d_in, &s.hidden)
                    .with_activation(activation(s.activation))
                    .with_dropout(s.dropout as f32);
                Box::new(c.init(ops, max_batch, rng).at(at)?)
            }
            ExpertSection::Dcnv2(s) => {
                let rank = match s.low_rank {
                    Some(r) => CrossRank::LowRank { rank: r },
                    None => CrossRank::Full,
                };
                let hidden = if s.hidden.is_empty() { vec![expert_dim] } else { s.hidden.clone() };
                let c = DcnConfig {
                    cross: CrossConfig::V2(CrossNetV2Config::new(d_in, s.cross_layers.unwrap_or(3)).with_rank(rank)),
                    deep: MlpConfig::new(d_in, &hidden)
                        .with_activation(activation(s.activation))
                        .with_dropout(s.dropout as f32),
                    structure: match s.structure.unwrap_or(Structure::Stacked) {
                        Structure::Stacked => DcnStructure::Stacked,
                        Structure::Parallel => DcnStructure::Parallel,
                    },
                };
                Box::new(c.init(ops, max_batch, rng).at(at)?)
            }
            ExpertSection::Masknet(s) => {
                let ratio = s.reduction_ratio.unwrap_or(2.0);
                let d_mask = ((d_in as f64 * ratio).round() as usize).max(1);
                let structure = match s.structure.unwrap_or(Structure::Stacked) {
                    Structure::Stacked => MaskNetStructure::Serial,
                    Structure::Parallel => MaskNetStructure::Parallel,
                };
                // FuxiCTR's MaskNet: `activation` and `dropout` in every block (and in the
                // MLP), `hidden` the MLP after parallel blocks.
                let c = MaskNetConfig {
                    activation: activation(s.activation),
                    dropout: s.dropout as f32,
                    mlp_hidden: s.hidden.clone(),
                    ..MaskNetConfig::new(
                        d_in,
                        s.blocks.unwrap_or(2),
                        s.block_dim.unwrap_or(expert_dim),
                        d_mask,
                        structure,
                    )
                };
                Box::new(c.init(ops, max_batch, rng).at(at)?)
            }
            ExpertSection::Finalmlp(s) => {
                // Two MLP streams over the same input, each behind a feature-selection
                // gate conditioned on the input, fused by multi-head bilinear fusion
                // straight to `expert_dim` (so no projection is needed).
                let act = activation(s.activation);
                let stream2 = s.stream2.clone().unwrap_or_else(|| s.hidden.clone());
                let c = FinalMlpConfig {
                    d_in,
                    mlp1: MlpConfig::new(d_in, &s.hidden).with_activation(act).with_dropout(s.dropout as f32),
                    mlp2: MlpConfig::new(d_in, &stream2).with_activation(act).with_dropout(s.dropout as f32),
                    gate_hidden: vec![d_in.min(64)],
                    context: GateContext::Input,
                    heads: s.heads.unwrap_or(1),
                    d_out: expert_dim,
                };
                Box::new(c.init(ops, max_batch, rng).at(at)?)
            }
        };
        let d_net = net.d_out();
        let proj = if d_net == expert_dim {
            None
        } else {
            Some(LinearConfig::new(d_net, expert_dim).init(ops, max_batch, rng).at(|| format!("{} projection", at()))?)
        };
        let net_out = ops.alloc(if proj.is_some() { max_batch * d_net } else { 0 }).at(at)?;
        Ok(Expert { kind, net, proj, net_out, max_batch })
    }

    /// The kind in lower case (`dcnv2`, `masknet`, `finalmlp`, `mlp`), for reports.
    pub fn kind_name(&self) -> String {
        self.kind.name().to_string()
    }

    pub fn kind(&self) -> ExpertKind {
        self.kind
    }

    pub fn d_in(&self) -> usize {
        self.net.d_in()
    }

    pub fn d_out(&self) -> usize {
        self.proj.as_ref().map_or(self.net.d_out(), |p| p.d_out())
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// `[batch, expert_dim]`.
    pub fn forward(&mut self, ops: &B, x: &B::Buf, batch: usize) -> Result<&B::Buf> {
        let ctx = || format!("expert ({:?}) forward", self.kind).to_lowercase();
        let kind = self.kind;
        let d = self.net.d_out();
        let h = self.net.forward(ops, x, batch).at(|| format!("expert ({kind:?}) forward").to_lowercase())?;
        match &mut self.proj {
            None => Ok(h),
            Some(p) => {
                let copy =
                    ColCopy { rows: batch, cols: d, src_ld: d, src_col: 0, dst_ld: d, dst_col: 0, accumulate: false };
                ops.copy_cols(&copy, h, &mut self.net_out).at(ctx)?;
                p.forward(ops, &self.net_out, batch).at(|| format!("expert ({kind:?}) projection").to_lowercase())
            }
        }
    }

    /// Accumulates parameter gradients and adds `d_input` into `d_input_acc` (`[batch,
    /// d_in]`): [`Layer::backward_acc`] through the projection and the network.
    pub fn backward_acc(
        &mut self,
        ops: &B,
        x: &B::Buf,
        d_out: &B::Buf,
        batch: usize,
        d_input_acc: &mut B::Buf,
    ) -> Result<()> {
        let kind = self.kind;
        let ctx = move || format!("expert ({kind:?}) backward").to_lowercase();
        match &mut self.proj {
            None => self.net.backward_acc(ops, x, d_out, batch, d_input_acc).at(ctx),
            Some(p) => {
                let dh = p.backward(ops, &self.net_out, d_out).at(ctx)?;
                self.net.backward_acc(ops, x, dh, batch, d_input_acc).at(ctx)
            }
        }
    }

    /// Accumulates parameter gradients and returns `d_input` (`[batch, d_in]`).
    pub fn backward(&mut self, ops: &B, x: &B::Buf, d_out: &B::Buf) -> Result<&B::Buf> {
        let kind = self.kind;
        let ctx = move || format!("expert ({kind:?}) backward").to_lowercase();
        match &mut self.proj {
            None => self.net.backward(ops, x, d_out).at(ctx),
            Some(p) => {
                let dh = p.backward(ops, &self.net_out, d_out).at(ctx)?;
                self.net.backward(ops, x, dh).at(ctx)
            }
        }
    }
}

impl<B: Backend> Expert<B> {
    /// What the expert's output columns are, in its own terms (`Out`, or with no
    /// projection the network's: a parallel DCN's `[In, Own]`).
    pub fn output_parts(&self) -> Vec<Part> {
        match &self.proj {
            Some(_) => vec![Part::Out],
            None => self.net.output_parts(),
        }
    }

    /// Calls `f` on the expert's network (the projection has no dropout): how train/eval
    /// mode and dropout steps reach it.
    pub fn visit_net(&mut self, f: &mut dyn FnMut(&mut dyn Layer<B>)) {
        f(&mut *self.net);
    }

    /// Visits the GEMMs that may run in reduced precision (what the expert's network
    /// exposes, and the projection).
    pub fn visit_reduced(&mut self, f: &mut dyn FnMut(mixrank_nn::ReducedSite<'_, B>)) {
        self.net.visit_reduced(f);
        if let Some(p) = &mut self.proj {
            p.visit_reduced(f);
        }
    }
}

impl<B: Backend> Parameters<B> for Expert<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        match &mut self.proj {
            None => self.net.visit_params(v),
            Some(p) => {
                // The projection reads the network's output, whatever its columns are
                // (a parallel DCN's `[input | deep]`).
                let net_out = substitute_parts(&self.net.output_parts(), &[Part::In], &[Part::Own]);
                v.within(&[Part::In], &[Part::Own], |v| self.net.visit_params(v));
                v.scope("proj", |v| v.within(&net_out, &[Part::Out], |v| p.visit_params(v)));
            }
        }
    }
}
