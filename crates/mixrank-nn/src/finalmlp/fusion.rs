//! FinalMLP's multi-head bilinear fusion of two streams.

use mixrank_engine::{Backend, BlockShape, ColCopy, GatherSpec, GemmSpec, Transpose};
use rand::Rng;

use crate::dense::{Linear, LinearConfig, ReducedGemm, ReducedSite, WeightLayout};
use crate::error::{batch_fits, positive, Ctx, NnError, Result};
use crate::layer::Layer;
use crate::param::{Axis, Init, Param, ParamVisitor, Parameters, Part};

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
            &[Axis::In, Axis::Own],
            true,
            LAYER,
        )?;
        let alloc = |n: usize| ops.alloc(n).ctx(LAYER);
        // Element (r, o, j) of w_xy (r = h·hx + i < heads·hx) sits at r·d_out·hy + o·hy + j.
        // `w_t` = W'ᵀ ([d_out, heads·hx·hy]) holds it at o·heads·hx·hy + r·hy + j: the hy-wide
        // block (r, o) moves whole, from block r·d_out + o to block o·heads·hx + r.
        // `w_r` = the stacked W'_h ([heads·hx·hy, d_out]) holds it at (r·hy + j)·d_out + o.
        let (rows, d_out) = (self.heads * hx, self.d_out);
        let mut to_t = vec![0u32; rows * d_out];
        let mut from_t = vec![0u32; rows * d_out];
        let mut to_r = vec![0u32; rows * hy * d_out];
        for r in 0..rows {
            for o in 0..d_out {
                to_t[o * rows + r] = (r * d_out + o) as u32;
                from_t[r * d_out + o] = (o * rows + r) as u32;
                for j in 0..hy {
                    let (old, new) = w_prime_index(r, o, j, hy, d_out);
                    to_r[new] = old as u32;
                }
            }
        }
        let ids = |v: &[u32]| ops.upload_ids(v).ctx(LAYER);
        let k = hx * hy;
        Ok(BilinearFusion {
            config: self.clone(),
            max_batch,
            w_x,
            w_y,
            w_xy,
            training: true,
            w_t_current: false,
            w_r_current: false,
            to_t: ids(&to_t)?,
            from_t: ids(&from_t)?,
            to_r: ids(&to_r)?,
            w_t: alloc(rows * hy * d_out)?,
            w_r: alloc(rows * hy * d_out)?,
            dw_t: alloc(rows * hy * d_out)?,
            dw_back: alloc(rows * hy * d_out)?,
            z: (0..self.heads).map(|_| alloc(max_batch * k)).collect::<Result<_>>()?,
            dz: alloc(max_batch * k)?,
            x_head: alloc(max_batch * hx)?,
            dx_head: alloc(max_batch * hx)?,
            y_head: alloc(max_batch * hy)?,
            dy_head: alloc(max_batch * hy)?,
            zo: alloc(max_batch * d_out)?,
            out: alloc(max_batch * d_out)?,
            d_x: alloc(max_batch * self.d_x)?,
            d_y: alloc(max_batch * self.d_y)?,
            reduced: (0..self.heads).map(|_| None).collect(),
            batch: None,
        })
    }
}

/// Element `(r, o, j)` of `w_xy` (`[heads·hx, d_out·hy]`, `r = h·hx + i`): its index
/// there and in the stacked `W'_h` (`[heads·hx·hy, d_out]`, `W'_h[i·hy + j, o]`).
use mixrank_engine::reduced::w_prime_index;

/// Multi-head bilinear fusion (FinalMLP, Mao et al. 2023):
///
/// `out[b, o] = w_xᵀ x_b + b_x + w_yᵀ y_b + Σ_h Σ_{i,j} x_{b,h,i} · W_h[i, o, j] · y_{b,h,j}`
///
/// where head `h` takes columns `h·hx … (h+1)·hx` of `x` and `h·hy …` of `y`
/// (`hx = d_x / heads`, `hy = d_y / heads`). The bilinear term runs as
/// `Z_h · W'_h` with `Z_h[b, i·hy + j] = x_{b,h,i} · y_{b,h,j}` (`block_outer`,
/// `[batch, hx·hy]`) and `W'_h[i·hy + j, o] = W_h[i, o, j]`: one GEMM per head with
/// `k = hx·hy`, `n = d_out`. `w_xy` keeps FuxiCTR's storage (below) and is gathered
/// into a GEMM-friendly copy whenever it has changed: in training mode `w_t = W'ᵀ`
/// (`[d_out, heads·hx·hy]`; hy-wide blocks, a cheap gather, needed by backward anyway),
/// in evaluation mode `w_r` = the stacked `W'_h` (`[heads·hx·hy, d_out]`; an element
/// gather, paid once per weight change, for the faster non-transposed GEMM at small
/// batches).
///
/// Backward per head: `dW'_hᵀ = doutᵀ · Z_h`, `dZ_h = dout · W'_hᵀ` (GEMMs),
/// `dx_h[b, i] = Σ_j dZ_h[b, i·hy + j] · y_{b,h,j}` (`block_dot`),
/// `dy_h[b, j] = Σ_i x_{b,h,i} · dZ_h[b, i·hy + j]` (`block_dot_t`).
///
/// At inference the per-head GEMM can run in reduced precision
/// ([`BilinearFusion::visit_reduced`], [`WeightLayout::BilinearHead`]).
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
    /// Private so every change goes through [`Parameters::visit_params`], which marks
    /// the copies stale.
    w_xy: Param<B>,
    /// Training mode (forward through `w_t`) or evaluation (through `w_r`).
    training: bool,
    /// Whether `w_t` / `w_r` hold the current `w_xy` (set by their gathers, cleared by
    /// every parameter visit: optimizer steps, checkpoint loads).
    w_t_current: bool,
    w_r_current: bool,
    /// Gather indices: blocks `w_xy → w_t`, blocks `dw_t → w_xy`'s layout, elements
    /// `w_xy → w_r`.
    to_t: B::Ids,
    from_t: B::Ids,
    to_r: B::Ids,
    /// `W'ᵀ`: `[d_out, heads·hx·hy]`, head `h` in columns `h·hx·hy …`.
    w_t: B::Buf,
    /// The `W'_h` stacked: `[heads·hx·hy, d_out]`, head `h` in rows `h·hx·hy …`.
    w_r: B::Buf,
    /// The gradient in `w_t`'s layout, and gathered back into `w_xy`'s.
    dw_t: B::Buf,
    dw_back: B::Buf,
    /// `Z_h` per head, `[max_batch, hx·hy]` each, kept for backward; `dZ_h`.
    z: Vec<B::Buf>,
    dz: B::Buf,
    x_head: B::Buf,
    dx_head: B::Buf,
    y_head: B::Buf,
    dy_head: B::Buf,
    /// A head's reduced-precision GEMM output before it is added to `out`.
    zo: B::Buf,
    out: B::Buf,
    d_x: B::Buf,
    d_y: B::Buf,
    /// Per head, `Z_h · W'_h` in reduced precision, when set.
    reduced: Vec<Option<Box<dyn ReducedGemm<B>>>>,
    batch: Option<usize>,
}

impl<B: Backend> BilinearFusion<B> {
    pub fn config(&self) -> &BilinearFusionConfig {
        &self.config
    }

    /// The permuting gathers: `w_xy` as `heads·hx·d_out` hy-wide blocks (`dim = hy`) or
    /// as single elements (`dim = 1`).
    fn gather_spec(&self, dim: usize) -> GatherSpec {
        let (heads, hx, hy, d_out) = self.dims();
        let n = heads * hx * hy * d_out / dim;
        GatherSpec { batch: n, dim, table_rows: n, out_cols: dim, col_offset: 0 }
    }

    /// Refreshes `w_t` from `w_xy` if it has changed.
    fn ensure_w_t(&mut self, ops: &B) -> Result<()> {
        if !self.w_t_current {
            let spec = self.gather_spec(self.dims().2);
            ops.gather_rows(&spec, &self.to_t, &self.w_xy.value, &mut self.w_t).ctx(LAYER)?;
            self.w_t_current = true;
        }
        Ok(())
    }

    /// Training mode (the default) or evaluation mode: which copy of the bilinear weight
    /// the forward reads (see the type's docs).
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
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
        let k = hx * hy;
        if self.reduced.iter().any(Option::is_none) {
            if self.training {
                self.ensure_w_t(ops)?;
            } else if !self.w_r_current {
                ops.gather_rows(&self.gather_spec(1), &self.to_r, &self.w_xy.value, &mut self.w_r).ctx(LAYER)?;
                self.w_r_current = true;
            }
        }
        for h in 0..heads {
            ops.copy_cols(&Self::block(batch, hx, d_x, h * hx, false), x, &mut self.x_head).ctx(LAYER)?;
            ops.copy_cols(&Self::block(batch, hy, d_y, h * hy, false), y, &mut self.y_head).ctx(LAYER)?;
            // Z_h[b, i·hy + j] = x_h[b, i] · y_h[b, j]
            let bs = BlockShape { rows: batch, blocks: hx, width: hy };
            if let Some(r) = &mut self.reduced[h] {
                // Inference only: the kernel may form Z_h in its own precision; z[0] is
                // scratch for those that do not.
                r.gemm_outer(ops, bs, &self.x_head, &self.y_head, &mut self.z[0], &mut self.zo).ctx(LAYER)?;
                ops.axpy(n_out, 1.0, &self.zo, &mut self.out).ctx(LAYER)?;
                continue;
            }
            ops.block_outer(bs, &self.x_head, &self.y_head, &mut self.z[h]).ctx(LAYER)?;
            // out += Z_h · W'_h: [batch, k] · [k, d_out], as W'_hᵀ (w_t's columns h·k …) in
            // training or W'_h (w_r's rows h·k …) in evaluation
            if self.training {
                let spec =
                    GemmSpec::new(Transpose::No, Transpose::Yes, batch, d_out, k).b_layout(h * k, heads * k).beta(1.0);
                ops.gemm(&spec, &self.z[h], &self.w_t, &mut self.out).ctx(LAYER)?;
            } else {
                let spec = GemmSpec::nn(batch, d_out, k).b_layout(h * k * d_out, d_out).beta(1.0);
                ops.gemm(&spec, &self.z[h], &self.w_r, &mut self.out).ctx(LAYER)?;
            }
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
        let k = hx * hy;
        // The weights of the forward (nothing can change them in between).
        self.ensure_w_t(ops)?;
        for h in 0..heads {
            ops.copy_cols(&Self::block(batch, hx, d_x, h * hx, false), x, &mut self.x_head).ctx(LAYER)?;
            ops.copy_cols(&Self::block(batch, hy, d_y, h * hy, false), y, &mut self.y_head).ctx(LAYER)?;
            // dW'_hᵀ = doutᵀ · Z_h: [d_out, batch] · [batch, k], w_t's layout
            let dw = GemmSpec::new(Transpose::Yes, Transpose::No, d_out, k, batch).c_layout(h * k, heads * k);
            ops.gemm(&dw, d_output, &self.z[h], &mut self.dw_t).ctx(LAYER)?;
            // dZ_h = dout · W'_hᵀ: [batch, d_out] · [d_out, k]
            let dz = GemmSpec::nn(batch, k, d_out).b_layout(h * k, heads * k);
            ops.gemm(&dz, d_output, &self.w_t, &mut self.dz).ctx(LAYER)?;
            let bs = BlockShape { rows: batch, blocks: hx, width: hy };
            ops.block_dot(bs, &self.dz, &self.y_head, &mut self.dx_head, false).ctx(LAYER)?;
            ops.copy_cols(&Self::block(batch, hx, d_x, h * hx, true), &self.dx_head, &mut self.d_x).ctx(LAYER)?;
            ops.block_dot_t(bs, &self.x_head, &self.dz, &mut self.dy_head).ctx(LAYER)?;
            ops.copy_cols(&Self::block(batch, hy, d_y, h * hy, true), &self.dy_head, &mut self.d_y).ctx(LAYER)?;
        }
        // Back to w_xy's layout, added to its gradient.
        let spec = self.gather_spec(hy);
        ops.gather_rows(&spec, &self.from_t, &self.dw_t, &mut self.dw_back).ctx(LAYER)?;
        ops.axpy(heads * k * d_out, 1.0, &self.dw_back, &mut self.w_xy.grad).ctx(LAYER)?;
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
        // Inputs x and y are parts 0 and 1 of the fusion's input (`w_xy`'s rows are x's
        // columns, head by head; its columns mix the output and y's).
        v.scope("w_x", |v| v.within(&[Part::InPart(0)], &[Part::Out], |v| self.w_x.visit_params(v)));
        v.scope("w_y", |v| v.within(&[Part::InPart(1)], &[Part::Out], |v| self.w_y.visit_params(v)));
        v.within(&[Part::InPart(0)], &[Part::Out], |v| v.param("w_xy", &mut self.w_xy));
        // The visitor may have changed w_xy (optimizer step, checkpoint load).
        self.w_t_current = false;
        self.w_r_current = false;
    }
}
