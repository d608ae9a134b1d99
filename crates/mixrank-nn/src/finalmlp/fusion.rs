//! FinalMLP's multi-head bilinear fusion of two streams.

use mixrank_engine::{Backend, BlockShape, ColCopy, GemmSpec, Transpose};
use rand::Rng;

use crate::dense::{Linear, LinearConfig, ReducedGemm, ReducedSite, WeightLayout};
use crate::error::{batch_fits, positive, Ctx, NnError, Result};
use crate::layer::Layer;
use crate::param::{Init, Param, ParamVisitor, Parameters};

const LAYER: &str = "BilinearFusion";

/// Configuration of a [`BilinearFusion`].
#[derive(Debug, Clone, PartialEq)]
pub struct BilinearFusionConfig {
    /// Width of the first stream's output.
    pub d_x: usize,
    /// Width of the second stream's output.
    pub d_y: usize,
    /// Number of heads; must divide both `d_x` and `d_y`.
    pub heads: usize,
    /// Output width (1 for a logit).
    pub d_out: usize,
    /// Initialisation of the linear terms and the bilinear tensor. Default Xavier uniform.
    pub init: Init,
}

impl BilinearFusionConfig {
    pub fn new(d_x: usize, d_y: usize, heads: usize, d_out: usize) -> Self {
        BilinearFusionConfig { d_x, d_y, heads, d_out, init: Init::XavierUniform }
    }

    pub fn init<B: Backend, R: Rng + ?Sized>(
        &self,
        ops: &B,
        max_batch: usize,
        rng: &mut R,
    ) -> Result<BilinearFusion<B>> {
        for (field, v) in [("d_x", self.d_x), ("d_y", self.d_y), ("heads", self.heads), ("d_out", self.d_out)] {
            positive(LAYER, field, v)?;
        }
        for (name, d) in [("d_x", self.d_x), ("d_y", self.d_y)] {
            if d % self.heads != 0 {
                return Err(NnError::InvalidConfig {
                    layer: LAYER,
                    field: "heads",
                    reason: format!("{} heads do not divide {name} = {d}", self.heads),
                });
            }
        }
        let (hx, hy) = (self.d_x / self.heads, self.d_y / self.heads);
        let w_x = LinearConfig::new(self.d_x, self.d_out).with_init(self.init).init(ops, max_batch, rng)?;
        let w_y =
            LinearConfig::new(self.d_y, self.d_out).with_bias(false).with_init(self.init).init(ops, max_batch, rng)?;
        // One [hx, d_out·hy] slice per head, stacked: [heads·hx, d_out·hy].
        let w_xy = Param::new(
            ops,
            &self.init.sample(self.heads * hx, self.d_out * hy, rng),
            &[self.heads * hx, self.d_out * hy],
            true,
            LAYER,
        )?;
        let alloc = |n: usize| ops.alloc(n).ctx(LAYER);
        Ok(BilinearFusion {
            config: self.clone(),
            max_batch,
            w_x,
            w_y,
            w_xy,
            t: (0..self.heads).map(|_| alloc(max_batch * self.d_out * hy)).collect::<Result<_>>()?,
            y_head: alloc(max_batch * hy)?,
            dt: alloc(max_batch * self.d_out * hy)?,
            dy_head: alloc(max_batch * hy)?,
            out: alloc(max_batch * self.d_out)?,
            d_x: alloc(max_batch * self.d_x)?,
            d_y: alloc(max_batch * self.d_y)?,
            reduced: (0..self.heads).map(|_| None).collect(),
            reduced_ws: None,
            batch: None,
        })
    }
}

/// Multi-head bilinear fusion (FinalMLP, Mao et al. 2023):
///
/// `out[b, o] = w_xᵀ x_b + b_x + w_yᵀ y_b + Σ_h Σ_{i,j} x_{b,h,i} · W_h[i, o, j] · y_{b,h,j}`
///
/// where head `h` takes columns `h·hx … (h+1)·hx` of `x` and `h·hy …` of `y`
/// (`hx = d_x / heads`, `hy = d_y / heads`). Per head, `T_h = x_h · W_h`
/// (`[batch, d_out·hy]`, one GEMM) is kept, then every row's `[d_out, hy]` block of
/// `T_h` times its `y_h` is added to the output (`Backend::block_dot`).
///
/// At inference the bilinear term can instead run as `(x_h ⊗ y_h) · W'_h` (`block_outer`
/// then one GEMM with `k = hx·hy`, `n = d_out`; [`WeightLayout::BilinearHead`]), the
/// form a reduced-precision GEMM takes ([`BilinearFusion::visit_reduced`]).
///
/// Backward per head: `dT_h[b, o·hy + j] = dout[b, o] · y_h[b, j]` (`block_outer`),
/// `dy_h[b, j] = Σ_o dout[b, o] · T_h[b, o·hy + j]` (`block_dot_t`); then
/// `dW_h += x_hᵀ · dT_h`, `dx_h += dT_h · W_hᵀ` (GEMMs).
///
/// # Shapes
/// - x: `[batch, d_x]`, y: `[batch, d_y]`
/// - output: `[batch, d_out]`
/// - `w_xy`: `[heads·hx, d_out·hy]` (head `h`'s `W_h` is rows `h·hx …`)
pub struct BilinearFusion<B: Backend> {
    config: BilinearFusionConfig,
    max_batch: usize,
    pub w_x: Linear<B>,
    pub w_y: Linear<B>,
    pub w_xy: Param<B>,
    /// `T_h` per head, `[max_batch, d_out·hy]` each.
    t: Vec<B::Buf>,
    y_head: B::Buf,
    dt: B::Buf,
    dy_head: B::Buf,
    out: B::Buf,
    d_x: B::Buf,
    d_y: B::Buf,
    /// Per head, `(x_h ⊗ y_h) · W'_h` in reduced precision, when set.
    reduced: Vec<Option<Box<dyn ReducedGemm<B>>>>,
    /// Workspaces of the reduced path (`x_h`, `x_h ⊗ y_h`, the head's GEMM output),
    /// allocated by its first forward so training never holds them.
    reduced_ws: Option<[B::Buf; 3]>,
    batch: Option<usize>,
}

impl<B: Backend> BilinearFusion<B> {
    pub fn config(&self) -> &BilinearFusionConfig {
        &self.config
    }

    fn dims(&self) -> (usize, usize, usize, usize) {
        let c = &self.config;
        (c.heads, c.d_x / c.heads, c.d_y / c.heads, c.d_out)
    }

    /// Copies column block `[col, col + cols)` of a `[batch, ld]` matrix into a dense
    /// `[batch, cols]` one (or back, accumulating, when `back`).
    fn block(batch: usize, cols: usize, ld: usize, col: usize, back: bool) -> ColCopy {
        if back {
            ColCopy { rows: batch, cols, src_ld: cols, src_col: 0, dst_ld: ld, dst_col: col, accumulate: true }
        } else {
            ColCopy { rows: batch, cols, src_ld: ld, src_col: col, dst_ld: cols, dst_col: 0, accumulate: false }
        }
    }

    /// Computes the fused output for the first `batch` rows.
    pub fn forward(&mut self, ops: &B, x: &B::Buf, y: &B::Buf, batch: usize) -> Result<&B::Buf> {
        batch_fits(LAYER, batch, self.max_batch)?;
        let (heads, hx, hy, d_out) = self.dims();
        let (d_x, d_y) = (self.config.d_x, self.config.d_y);
        let n_out = batch * d_out;
        let lx = self.w_x.forward(ops, x, batch)?;
        ops.copy_cols(&Self::block(batch, d_out, d_out, 0, false), lx, &mut self.out).ctx(LAYER)?;
        let ly = self.w_y.forward(ops, y, batch)?;
        ops.axpy(n_out, 1.0, ly, &mut self.out).ctx(LAYER)?;
        for h in 0..heads {
            ops.copy_cols(&Self::block(batch, hy, d_y, h * hy, false), y, &mut self.y_head).ctx(LAYER)?;
            if let Some(r) = &mut self.reduced[h] {
                let ws = match &mut self.reduced_ws {
                    Some(ws) => ws,
                    None => {
                        let m = self.max_batch;
                        let alloc = |n: usize| ops.alloc(n).ctx(LAYER);
                        self.reduced_ws.insert([alloc(m * hx)?, alloc(m * hx * hy)?, alloc(m * d_out)?])
                    }
                };
                let [x_head, z, zo] = ws;
                ops.copy_cols(&Self::block(batch, hx, d_x, h * hx, false), x, x_head).ctx(LAYER)?;
                // z[b, i·hy + j] = x_h[b, i] · y_h[b, j]; out += z · W'_h
                let bs = BlockShape { rows: batch, blocks: hx, width: hy };
                ops.block_outer(bs, x_head, &self.y_head, z).ctx(LAYER)?;
                r.gemm(batch, z, zo)?;
                ops.axpy(n_out, 1.0, zo, &mut self.out).ctx(LAYER)?;
                continue;
            }
            // T_h = x_h · W_h: [batch, hx] · [hx, d_out·hy]
            let spec =
                GemmSpec::nn(batch, d_out * hy, hx).a_layout(h * hx, d_x).b_layout(h * hx * d_out * hy, d_out * hy);
            ops.gemm(&spec, x, &self.w_xy.value, &mut self.t[h]).ctx(LAYER)?;
            // out[b, o] += Σ_j T_h[b, o·hy + j] · y_h[b, j]
            let bs = BlockShape { rows: batch, blocks: d_out, width: hy };
            ops.block_dot(bs, &self.t[h], &self.y_head, &mut self.out, true).ctx(LAYER)?;
        }
        self.batch = Some(batch);
        Ok(&self.out)
    }

    /// Accumulates parameter gradients; afterwards [`BilinearFusion::d_x`] and
    /// [`BilinearFusion::d_y`] hold the input gradients (overwritten).
    pub fn backward(&mut self, ops: &B, x: &B::Buf, y: &B::Buf, d_output: &B::Buf) -> Result<()> {
        let batch = self.batch.ok_or(NnError::NoForward { layer: LAYER })?;
        if self.reduced.iter().any(Option::is_some) {
            return Err(NnError::InvalidConfig {
                layer: LAYER,
                field: "reduced",
                reason: "reduced precision is for inference only; backward needs f32".into(),
            });
        }
        let (heads, hx, hy, d_out) = self.dims();
        let (d_x, d_y) = (self.config.d_x, self.config.d_y);
        let gx = self.w_x.backward(ops, x, d_output)?;
        ops.copy_cols(&Self::block(batch, d_x, d_x, 0, false), gx, &mut self.d_x).ctx(LAYER)?;
        let gy = self.w_y.backward(ops, y, d_output)?;
        ops.copy_cols(&Self::block(batch, d_y, d_y, 0, false), gy, &mut self.d_y).ctx(LAYER)?;
        for h in 0..heads {
            ops.copy_cols(&Self::block(batch, hy, d_y, h * hy, false), y, &mut self.y_head).ctx(LAYER)?;
            let bs = BlockShape { rows: batch, blocks: d_out, width: hy };
            ops.block_outer(bs, d_output, &self.y_head, &mut self.dt).ctx(LAYER)?;
            ops.block_dot_t(bs, d_output, &self.t[h], &mut self.dy_head).ctx(LAYER)?;
            ops.copy_cols(&Self::block(batch, hy, d_y, h * hy, true), &self.dy_head, &mut self.d_y).ctx(LAYER)?;
            // dW_h += x_hᵀ · dT_h: [hx, batch] · [batch, d_out·hy]
            let dw = GemmSpec::new(Transpose::Yes, Transpose::No, hx, d_out * hy, batch)
                .a_layout(h * hx, d_x)
                .c_layout(h * hx * d_out * hy, d_out * hy)
                .beta(1.0);
            ops.gemm(&dw, x, &self.dt, &mut self.w_xy.grad).ctx(LAYER)?;
            // dx_h += dT_h · W_hᵀ: [batch, d_out·hy] · [d_out·hy, hx]
            let dx = GemmSpec::new(Transpose::No, Transpose::Yes, batch, hx, d_out * hy)
                .b_layout(h * hx * d_out * hy, d_out * hy)
                .c_layout(h * hx, d_x)
                .beta(1.0);
            ops.gemm(&dx, &self.dt, &self.w_xy.value, &mut self.d_x).ctx(LAYER)?;
        }
        Ok(())
    }

    pub fn output(&self) -> &B::Buf {
        &self.out
    }

    /// The GEMMs that may run in reduced precision at inference: the two linear terms
    /// and, per head, the bilinear term as `(x_h ⊗ y_h) · W'_h`.
    pub fn visit_reduced(&mut self, f: &mut dyn FnMut(ReducedSite<'_, B>)) {
        self.w_x.visit_reduced(f);
        self.w_y.visit_reduced(f);
        let (_, hx, hy, d_out) = self.dims();
        for (head, slot) in self.reduced.iter_mut().enumerate() {
            let layout = WeightLayout::BilinearHead { head, hx, hy };
            f(ReducedSite { k: hx * hy, n: d_out, max_batch: self.max_batch, weight: &self.w_xy.value, layout, slot });
        }
    }

    pub fn d_x(&self) -> &B::Buf {
        &self.d_x
    }

    pub fn d_y(&self) -> &B::Buf {
        &self.d_y
    }
}

impl<B: Backend> Parameters<B> for BilinearFusion<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        v.scope("w_x", |v| self.w_x.visit_params(v));
        v.scope("w_y", |v| self.w_y.visit_params(v));
        v.param("w_xy", &mut self.w_xy);
    }
}
