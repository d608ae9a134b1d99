//! The op interface layer code calls: [`Backend`] plus the small spec types its methods
//! take.
//!
//! # Conventions (all backends)
//! - **Dtype and layout.** Buffers hold `f32` (ids and offsets: `u32`). Matrices are
//!   **row-major**: element `(r, c)` of a `[rows, cols]` matrix lives at `r * ld + c`.
//!   Every op except [`Backend::gemm`], [`Backend::copy_cols`] and the gathers/scatters
//!   takes dense matrices, i.e. leading dimension `ld = cols`; GEMM operands and column
//!   blocks carry an explicit `offset` and `ld` so a layer can address a column block of a
//!   wider matrix (e.g. one expert's slice of a fused `[batch, n_experts * d]` output).
//! - **Prefix semantics.** An op touches only the elements its shape names; a buffer may
//!   be longer. Workspaces are therefore allocated once for the largest batch and reused
//!   for smaller ones. A buffer shorter than the shape needs is an error, never a panic.
//! - **Gradient accumulation.** Parameter gradients (`dbias`, `dgamma`, `dbeta`) are
//!   **accumulated** (`+=`): zero them once per step. Activation gradients (`dx`, `dz`)
//!   are **overwritten**, except where a method says otherwise (GEMM uses `beta`).
//! - **Aliasing.** Inputs are `&Buf` and outputs `&mut Buf`, so Rust forbids passing the
//!   same buffer as both; ops that make sense in place have an `_inplace` form.
//! - **Host sync.** Methods that return an `f32` ([`Backend::sum`], the losses) are the
//!   only ones a device backend must synchronise on.
//! - **Allocation.** Only the `alloc`/`upload` methods allocate, plus
//!   [`Backend::scatter_rows_grad`]/[`Backend::scatter_pooled_grad`] when a batch touches
//!   more rows than the [`SparseGrad`] was created for (it then grows once). Exception:
//!   `CpuOps::gemm` goes through the `gemm` crate, which allocates its packing buffers on
//!   each call (its API takes no workspace); at the bench shapes that is one allocation
//!   per ≥ 0.1 ms GEMM.

use crate::activation::Activation;
use crate::error::Result;
use crate::optim::{AdamSpec, LazyAdamSpec, RowAdagradSpec, TableShape};
use crate::reduced::{ReducedGemm, WeightLayout};

/// Whether a GEMM operand is used as stored or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transpose {
    /// `op(X) = X`.
    No,
    /// `op(X) = Xᵀ`.
    Yes,
}

/// Where a matrix starts inside its buffer and its row stride.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatLayout {
    /// Index of element `(0, 0)`.
    pub offset: usize,
    /// Row stride in elements (`>= cols` of the stored matrix).
    pub ld: usize,
}

/// Everything a GEMM needs besides its buffers: `C = alpha · op(A) · op(B) + beta · C`.
///
/// `op(A)` is `[m, k]`, `op(B)` is `[k, n]`, `C` is `[m, n]`. The *stored* `A` is
/// `[m, k]` (or `[k, m]` when transposed), likewise `B` is `[k, n]` (or `[n, k]`).
/// When `beta == 0`, `C` is not read (NaNs in it do not propagate), as in BLAS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmSpec {
    pub trans_a: Transpose,
    pub trans_b: Transpose,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub beta: f32,
    pub a: MatLayout,
    pub b: MatLayout,
    pub c: MatLayout,
}

impl GemmSpec {
    /// Dense operands (offset 0, `ld` = stored column count), `alpha = 1`, `beta = 0`.
    pub fn new(trans_a: Transpose, trans_b: Transpose, m: usize, n: usize, k: usize) -> Self {
        let lda = if trans_a == Transpose::No { k } else { m };
        let ldb = if trans_b == Transpose::No { n } else { k };
        GemmSpec {
            trans_a,
            trans_b,
            m,
            n,
            k,
            alpha: 1.0,
            beta: 0.0,
            a: MatLayout { offset: 0, ld: lda },
            b: MatLayout { offset: 0, ld: ldb },
            c: MatLayout { offset: 0, ld: n },
        }
    }

    /// `C = A · B` with `A: [m, k]`, `B: [k, n]` (a Linear forward with `W: [in, out]`).
    pub fn nn(m: usize, n: usize, k: usize) -> Self {
        Self::new(Transpose::No, Transpose::No, m, n, k)
    }

    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }

    pub fn beta(mut self, beta: f32) -> Self {
        self.beta = beta;
        self
    }

    pub fn a_layout(mut self, offset: usize, ld: usize) -> Self {
        self.a = MatLayout { offset, ld };
        self
    }

    pub fn b_layout(mut self, offset: usize, ld: usize) -> Self {
        self.b = MatLayout { offset, ld };
        self
    }

    pub fn c_layout(mut self, offset: usize, ld: usize) -> Self {
        self.c = MatLayout { offset, ld };
        self
    }

    /// `[rows, cols]` of `A` as stored.
    pub fn stored_a(&self) -> [usize; 2] {
        match self.trans_a {
            Transpose::No => [self.m, self.k],
            Transpose::Yes => [self.k, self.m],
        }
    }

    /// `[rows, cols]` of `B` as stored.
    pub fn stored_b(&self) -> [usize; 2] {
        match self.trans_b {
            Transpose::No => [self.k, self.n],
            Transpose::Yes => [self.n, self.k],
        }
    }

    /// One past the last element of A's buffer this product reads: `offset + (rows −
    /// 1)·ld + cols` of the stored `[rows, cols]`, or the offset when A is empty.
    pub fn a_end(&self) -> usize {
        extent_end(self.stored_a(), self.a)
    }

    /// [`GemmSpec::a_end`] for B.
    pub fn b_end(&self) -> usize {
        extent_end(self.stored_b(), self.b)
    }
}

/// Per-row blocks: a `[rows, blocks·width]` matrix read as `blocks` blocks of `width`
/// per row, beside a `[rows, width]` vector per row and a `[rows, blocks]` weight per
/// row and block (FinalMLP's bilinear fusion: one `[blocks, width]` matrix per row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockShape {
    pub rows: usize,
    pub blocks: usize,
    pub width: usize,
}

/// `[rows, cols]` of a dense row-major matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub rows: usize,
    pub cols: usize,
}

impl Shape {
    pub fn new(rows: usize, cols: usize) -> Self {
        Shape { rows, cols }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A strided copy of a `[rows, cols]` block between two matrices: the building block of
/// concatenation (forward) and split (backward) along columns.
///
/// `dst[r, dst_col + c] (+)= src[r, src_col + c]` for `r < rows`, `c < cols`, where `src`
/// has row stride `src_ld` and `dst` row stride `dst_ld`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColCopy {
    pub rows: usize,
    pub cols: usize,
    pub src_ld: usize,
    pub src_col: usize,
    pub dst_ld: usize,
    pub dst_col: usize,
    /// Add into `dst` instead of overwriting it.
    pub accumulate: bool,
}

/// Geometry of an embedding lookup from a `[table_rows, dim]` table into columns
/// `col_offset .. col_offset + dim` of a `[batch, out_cols]` output, so several fields
/// concatenate into one `[batch, total_dim]` matrix without a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatherSpec {
    pub batch: usize,
    pub dim: usize,
    pub table_rows: usize,
    pub out_cols: usize,
    pub col_offset: usize,
}

/// How the rows of a multi-valued field's bag are combined. An empty bag gives zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Sum,
    Mean,
}

/// Layer-norm geometry: normalise each row of a `[rows, cols]` matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNormSpec {
    pub rows: usize,
    pub cols: usize,
    /// Added to the (biased) variance before the square root.
    pub eps: f32,
}

/// Per-row statistics the layer-norm forward keeps for its backward: `mean` and
/// `rstd = 1 / sqrt(var + eps)`, each `[rows]`. Allocate once per layer.
pub struct NormStats<B: Backend + ?Sized> {
    pub mean: B::Buf,
    pub rstd: B::Buf,
}

impl<B: Backend> NormStats<B> {
    /// Statistics buffers for up to `rows` rows.
    pub fn new(ops: &B, rows: usize) -> Result<Self> {
        Ok(NormStats { mean: ops.alloc(rows)?, rstd: ops.alloc(rows)? })
    }
}

/// The gradient of an embedding table restricted to the rows a batch touched, so a sparse
/// optimizer updates only those rows.
///
/// After a scatter, `ids[..len]` holds the touched row ids in **ascending** order and
/// `rows[i * dim .. (i + 1) * dim]` the gradient of row `ids[i]`. Entries past `len` are
/// unspecified. Rows are summed in batch order, so results do not depend on threads.
pub struct SparseGrad<B: Backend + ?Sized> {
    pub ids: B::Ids,
    pub rows: B::Buf,
    pub len: usize,
    pub dim: usize,
    /// Backend scratch (a permutation of positions on CPU).
    pub(crate) scratch: B::Ids,
}

impl<B: Backend> SparseGrad<B> {
    /// A gradient for `dim`-wide rows with room for `capacity` touched positions (the
    /// largest number of ids one batch holds).
    pub fn new(ops: &B, dim: usize, capacity: usize) -> Result<Self> {
        Ok(SparseGrad {
            ids: ops.alloc_ids(capacity)?,
            rows: ops.alloc(capacity * dim)?,
            len: 0,
            dim,
            scratch: ops.alloc_ids(capacity)?,
        })
    }
}

/// A sparse gradient's first `len` ids and rows, borrowed (an operand of
/// [`Backend::merge_sparse_grads`]).
pub type SparseView<'a, B> = (usize, &'a <B as Backend>::Ids, &'a <B as Backend>::Buf);

/// Inputs of a per-example loss over `n` examples.
///
/// `weight` scales each example (default 1). `mask` selects examples: example `i` counts
/// iff `mask[i] != 0`, and a masked-out example contributes nothing even if its target or
/// prediction is NaN (how a multi-task batch marks missing labels). The loss is the
/// weighted mean `Σ wᵢ·mᵢ·ℓᵢ / W` with `W = Σ wᵢ·mᵢ` (or `weight_sum` where given);
/// when `W` is 0 loss and gradient are 0.
pub struct LossInput<'a, Buf: ?Sized> {
    /// Logits (BCE) or predictions (MSE), `[n]`.
    pub pred: &'a Buf,
    /// Labels in `[0, 1]` (BCE, soft labels allowed) or regression targets (MSE), `[n]`.
    pub target: &'a Buf,
    pub weight: Option<&'a Buf>,
    pub mask: Option<&'a Buf>,
    /// The weighted mean's denominator `W`, given by the caller instead of the op's own
    /// `Σ wᵢ·mᵢ` over the `n` examples (`None`). Data-parallel training passes the
    /// global batch's, so that a rank's per-example gradient `scale·wᵢ·∂ℓᵢ/W` is
    /// bit for bit the one a single process computes (the op rounds `scale/W` to the
    /// element type once, whoever computed `W`). Pointwise losses only
    /// ([`Backend::bce_with_logits`], [`Backend::mse`], [`Backend::huber`]); the ranking
    /// losses refuse it.
    pub weight_sum: Option<f64>,
}

/// How a loss writes its gradient: `grad (+)= scale · ∂loss/∂pred`. `scale` lets a
/// trainer weight tasks or mix a distillation loss into the same gradient buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradWrite {
    pub scale: f32,
    pub accumulate: bool,
}

impl Default for GradWrite {
    fn default() -> Self {
        GradWrite { scale: 1.0, accumulate: false }
    }
}

/// The shape of a pairwise ranking loss ([`Backend::pairwise_ranknet`]): `pairs` ordered
/// pairs `(i, j)` of the first `rows` examples, stored flat in an id buffer
/// (`[i₀, j₀, i₁, j₁, …]`, `2·pairs` ids), and the temperature `T > 0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairSpec {
    pub rows: usize,
    pub pairs: usize,
    pub temperature: f32,
}

/// The shape of a listwise ranking loss ([`Backend::listwise_softmax`]): `groups` groups
/// of the first `rows` examples in CSR form — group `g` is
/// `members[offsets[g] .. offsets[g + 1]]` (`offsets`: `[groups + 1]`, non-decreasing,
/// `offsets[0] = 0`) — and the temperature `T > 0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupSpec {
    pub rows: usize,
    pub groups: usize,
    pub temperature: f32,
}

fn extent_end([rows, cols]: [usize; 2], l: MatLayout) -> usize {
    if rows == 0 || cols == 0 {
        l.offset
    } else {
        l.offset + (rows - 1) * l.ld + cols
    }
}

/// What the matrix products of a backend read their operands as ([`Backend::gemm_operands`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemmOperands {
    /// f32 operands (f32 arithmetic throughout).
    #[default]
    F32,
    /// bf16 operands (each f32 operand rounded to bf16, to nearest even) with f32
    /// accumulation and an f32 result: mixed-precision training's matrix products, as
    /// PyTorch's bf16 autocast computes them. Weights, gradients and optimizer state stay
    /// f32 (the master copy); bf16 has f32's exponent range, so no loss scaling.
    Bf16,
}

/// `x` rounded to the nearest bf16 (ties to even), as an f32; NaN stays NaN.
pub fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// The op set of the model family. Layer code is generic over `B: Backend` and only ever
/// holds `B::Buf`/`B::Ids`, so a CUDA backend (cuBLAS + NVRTC kernels) can implement this
/// trait without any change to layers. See the module docs for layout and accumulation
/// conventions; each method documents its math and shapes.
pub trait Backend: Send + Sync {
    /// An `f32` buffer in the backend's memory.
    type Buf: Send + Sync;
    /// A `u32` buffer (embedding ids, CSR offsets) in the backend's memory.
    type Ids: Send + Sync;

    // ---- memory ---------------------------------------------------------------------

    /// A zero-filled buffer of `len` elements.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer holding a copy of `host`.
    fn upload(&self, host: &[f32]) -> Result<Self::Buf>;
    /// Copies `host` into the first `host.len()` elements of `dst` (no allocation).
    fn write(&self, host: &[f32], dst: &mut Self::Buf) -> Result<()>;
    /// Copies the first `host.len()` elements of `src` into `host`.
    fn read(&self, src: &Self::Buf, host: &mut [f32]) -> Result<()>;
    /// Number of elements in `buf`.
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Sets the first `n` elements of `buf` to `value`.
    fn fill(&self, n: usize, value: f32, buf: &mut Self::Buf) -> Result<()>;
    /// A zero-filled id buffer of `len` elements.
    fn alloc_ids(&self, len: usize) -> Result<Self::Ids>;
    /// An id buffer holding a copy of `host`.
    fn upload_ids(&self, host: &[u32]) -> Result<Self::Ids>;
    /// Copies `host` into the first `host.len()` elements of `dst` (no allocation).
    fn write_ids(&self, host: &[u32], dst: &mut Self::Ids) -> Result<()>;
    /// Copies the first `host.len()` elements of `src` into `host`.
    fn read_ids(&self, src: &Self::Ids, host: &mut [u32]) -> Result<()>;
    /// Number of elements in `ids`.
    fn ids_len(&self, ids: &Self::Ids) -> usize;

    // ---- GEMM -----------------------------------------------------------------------

    /// `C = alpha · op(A) · op(B) + beta · C`; shapes and layouts in [`GemmSpec`].
    ///
    /// A Linear layer `Y = X·W` (`X: [batch, in]`, `W: [in, out]`) uses `nn` forward;
    /// backward is `dX = dY·Wᵀ` (`No, Yes`) and `dW += Xᵀ·dY` (`Yes, No`, `beta = 1`).
    fn gemm(&self, spec: &GemmSpec, a: &Self::Buf, b: &Self::Buf, c: &mut Self::Buf) -> Result<()>;

    // ---- fused bias + activation ----------------------------------------------------

    /// `z[r, c] += bias[c]` (in place; `z` becomes the pre-activation kept for backward),
    /// then `y = act(z)`. `z`, `y`: `[rows, cols]`; `bias`: `[cols]` or none.
    fn bias_act_forward(
        &self,
        act: Activation,
        shape: Shape,
        bias: Option<&Self::Buf>,
        z: &mut Self::Buf,
        y: &mut Self::Buf,
    ) -> Result<()>;

    /// `x = act(x + bias)` in place, for inference or when nothing is kept for backward.
    fn bias_act_inplace(
        &self,
        act: Activation,
        shape: Shape,
        bias: Option<&Self::Buf>,
        x: &mut Self::Buf,
    ) -> Result<()>;

    /// Backward of [`Backend::bias_act_forward`] given the pre-activation `z`:
    /// `dz = dy ⊙ act'(z)` (overwrite) and `dbias[c] += Σ_r dz[r, c]` (accumulate).
    fn bias_act_backward(
        &self,
        act: Activation,
        shape: Shape,
        z: &Self::Buf,
        dy: &Self::Buf,
        dz: &mut Self::Buf,
        dbias: Option<&mut Self::Buf>,
    ) -> Result<()>;

    // ---- elementwise (first n elements) ---------------------------------------------

    /// `out = a + b`.
    fn add(&self, n: usize, a: &Self::Buf, b: &Self::Buf, out: &mut Self::Buf) -> Result<()>;
    /// `out = a ⊙ b`.
    fn mul(&self, n: usize, a: &Self::Buf, b: &Self::Buf, out: &mut Self::Buf) -> Result<()>;
    /// `out += a ⊙ b` (e.g. accumulating `dx₀` across CrossNet layers).
    fn mul_acc(&self, n: usize, a: &Self::Buf, b: &Self::Buf, out: &mut Self::Buf) -> Result<()>;
    /// Backward of `out = a ⊙ b`: `da = dout ⊙ b`, `db = dout ⊙ a` (overwrite).
    fn mul_backward(
        &self,
        n: usize,
        a: &Self::Buf,
        b: &Self::Buf,
        dout: &Self::Buf,
        da: &mut Self::Buf,
        db: &mut Self::Buf,
    ) -> Result<()>;
    /// `x = alpha · x`.
    fn scale(&self, n: usize, alpha: f32, x: &mut Self::Buf) -> Result<()>;
    /// `y = alpha · x + y`.
    fn axpy(&self, n: usize, alpha: f32, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// Strided block copy (concatenate / split along columns); see [`ColCopy`].
    fn copy_cols(&self, spec: &ColCopy, src: &Self::Buf, dst: &mut Self::Buf) -> Result<()>;

    // ---- softmax --------------------------------------------------------------------

    /// Row softmax: `y[r, c] = exp(x[r, c] - max_r) / Σ_c' exp(x[r, c'] - max_r)`.
    fn softmax_rows(&self, shape: Shape, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// Backward given the softmax output: `dx = y ⊙ (dy - Σ_c dy ⊙ y)` per row (overwrite).
    fn softmax_rows_backward(&self, shape: Shape, y: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;

    // ---- row normalisation ----------------------------------------------------------

    /// Row L2 normalisation ([`crate::normalize`]): per row, `s = 1/sqrt(Σ_c x² + eps)`,
    /// `y = x · s`; `rnorm` (`[rows]`) receives `s`. `x`, `y`: `[rows, cols]`.
    fn normalize_rows(
        &self,
        shape: Shape,
        eps: f32,
        x: &Self::Buf,
        y: &mut Self::Buf,
        rnorm: &mut Self::Buf,
    ) -> Result<()>;
    /// Backward of [`Backend::normalize_rows`] given its output and `rnorm`:
    /// `dx = s · (dy - y · ⟨dy, y⟩)` per row (overwrite).
    fn normalize_rows_backward(
        &self,
        shape: Shape,
        y: &Self::Buf,
        rnorm: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()>;

    // ---- layer norm -----------------------------------------------------------------

    /// Per row: `mean = Σx/C`, `var = Σ(x-mean)²/C`, `rstd = 1/sqrt(var+eps)`,
    /// `y = (x - mean)·rstd·gamma + beta`. `x`, `y`: `[rows, cols]`; `gamma`, `beta`:
    /// `[cols]`; `stats` receives `mean` and `rstd` (`[rows]`).
    fn layer_norm_forward(
        &self,
        spec: &LayerNormSpec,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        y: &mut Self::Buf,
        stats: &mut NormStats<Self>,
    ) -> Result<()>;

    /// With `x̂ = (x - mean)·rstd` and `g = dy ⊙ gamma`:
    /// `dx = rstd · (g - mean_c(g) - x̂ · mean_c(g ⊙ x̂))` (overwrite),
    /// `dgamma += Σ_r dy ⊙ x̂`, `dbeta += Σ_r dy` (accumulate).
    #[allow(clippy::too_many_arguments)] // BLAS-style: each buffer is a distinct operand
    fn layer_norm_backward(
        &self,
        spec: &LayerNormSpec,
        x: &Self::Buf,
        gamma: &Self::Buf,
        stats: &NormStats<Self>,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        dgamma: &mut Self::Buf,
        dbeta: &mut Self::Buf,
    ) -> Result<()>;

    // ---- embeddings -----------------------------------------------------------------

    /// Single-valued field: `out[b, col_offset + j] = table[ids[b], j]` for `b < batch`,
    /// `j < dim`. `ids`: `[batch]`; `table`: `[table_rows, dim]`; `out`:
    /// `[batch, out_cols]`. Other columns of `out` are left untouched.
    fn gather_rows(&self, spec: &GatherSpec, ids: &Self::Ids, table: &Self::Buf, out: &mut Self::Buf) -> Result<()>;

    /// Multi-valued field in CSR form: example `b` owns `ids[offsets[b] .. offsets[b+1]]`
    /// (`offsets`: `[batch + 1]`, non-decreasing, `offsets[0] = 0`).
    /// `out[b, col_offset + j] = pool_{i in bag b} table[ids[i], j]` (sum or mean; empty
    /// bag → 0).
    fn gather_pooled(
        &self,
        spec: &GatherSpec,
        pooling: Pooling,
        offsets: &Self::Ids,
        ids: &Self::Ids,
        table: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// Gradient of [`Backend::gather_rows`] w.r.t. the table, compacted to touched rows:
    /// for each distinct id `t`, `grad_row(t) = Σ_{b: ids[b] = t} dout[b, col_offset ..]`.
    /// Overwrites `grad` (see [`SparseGrad`]).
    fn scatter_rows_grad(
        &self,
        spec: &GatherSpec,
        ids: &Self::Ids,
        dout: &Self::Buf,
        grad: &mut SparseGrad<Self>,
    ) -> Result<()>;

    /// Gradient of [`Backend::gather_pooled`] w.r.t. the table, compacted to touched rows:
    /// each occurrence of `t` in bag `b` adds `dout[b, col_offset ..]` (divided by the bag
    /// size under mean pooling). Overwrites `grad`.
    fn scatter_pooled_grad(
        &self,
        spec: &GatherSpec,
        pooling: Pooling,
        offsets: &Self::Ids,
        ids: &Self::Ids,
        dout: &Self::Buf,
        grad: &mut SparseGrad<Self>,
    ) -> Result<()>;

    // ---- reductions -----------------------------------------------------------------

    /// Per-row block dot products: `out[r, k] (+)= Σ_j t[r, k·w + j] · y[r, j]` for
    /// `t`: `[rows, blocks·w]`, `y`: `[rows, w]`, `out`: `[rows, blocks]` (overwritten, or
    /// added to with `accumulate`). Each row's `[blocks, w]` matrix times its vector.
    fn block_dot(
        &self,
        s: BlockShape,
        t: &Self::Buf,
        y: &Self::Buf,
        out: &mut Self::Buf,
        accumulate: bool,
    ) -> Result<()>;
    /// Per-row outer products: `out[r, k·w + j] = d[r, k] · y[r, j]` (overwrite) for `d`:
    /// `[rows, blocks]`, `y`: `[rows, w]`, `out`: `[rows, blocks·w]` — the gradient of
    /// [`Backend::block_dot`] w.r.t. `t`.
    fn block_outer(&self, s: BlockShape, d: &Self::Buf, y: &Self::Buf, out: &mut Self::Buf) -> Result<()>;
    /// Per-row transposed block products: `out[r, j] = Σ_k d[r, k] · t[r, k·w + j]`
    /// (overwrite) — the gradient of [`Backend::block_dot`] w.r.t. `y`.
    fn block_dot_t(&self, s: BlockShape, d: &Self::Buf, t: &Self::Buf, out: &mut Self::Buf) -> Result<()>;

    /// `out[r] = Σ_c x[r, c]`; `out`: `[rows]`.
    fn sum_rows(&self, shape: Shape, x: &Self::Buf, out: &mut Self::Buf) -> Result<()>;
    /// `out[c] = Σ_r x[r, c]`; `out`: `[cols]` (overwrite).
    fn sum_cols(&self, shape: Shape, x: &Self::Buf, out: &mut Self::Buf) -> Result<()>;
    /// `Σ_i x[i]` over the first `n` elements (accumulated in f64). Host sync point.
    fn sum(&self, n: usize, x: &Self::Buf) -> Result<f32>;

    // ---- masks made on the device (`crate::mask`) -------------------------------------

    /// Writes the first `n` elements of the dropout mask of (`seed`, `step`) with drop
    /// probability `p` into `mask`: `0` or `1 / (1 - p)` per element, a function of
    /// (seed, step, index) only ([`crate::mask::dropout_mask`]), identical on every
    /// backend; `mask[i]` is element `first + i` of the stream (data-parallel training:
    /// the rank's first global row times the row width, so the ranks draw the global
    /// batch's masks).
    fn dropout_mask(&self, n: usize, p: f32, seed: u64, step: u64, first: u64, mask: &mut Self::Buf) -> Result<()>;

    /// Per row of `x` (`[rows, cols]`): `0` at the `k` largest values (ties to the lower
    /// index), [`crate::mask::MASKED`] elsewhere — the additive mask of top-k gating.
    fn top_k_mask(&self, shape: Shape, k: usize, x: &Self::Buf, mask: &mut Self::Buf) -> Result<()>;

    /// Gate dropout in place on an additive gate mask (`[rows, cols]`: `0` = in play,
    /// [`crate::mask::MASKED`] = excluded): each in-play element is excluded with
    /// probability `p`, from the (seed, step, index) stream of [`Backend::dropout_mask`],
    /// except that a row never loses its last in-play element
    /// ([`crate::mask::gate_dropout_mask`]); row `r` is row `first_row + r` of the stream.
    #[allow(clippy::too_many_arguments)]
    fn gate_dropout_mask(
        &self,
        shape: Shape,
        p: f32,
        seed: u64,
        step: u64,
        first_row: u64,
        mask: &mut Self::Buf,
    ) -> Result<()>;

    // ---- optimizers (`crate::optim`) ---------------------------------------------------

    /// `acc += Σ x[i]²` over the first `n` elements, summed in f64 chunk by chunk in order
    /// (`acc`: [`crate::optim::NORM_ACC_LEN`] elements, zeroed with [`Backend::fill`]).
    fn sq_norm_acc(&self, n: usize, x: &Self::Buf, acc: &mut Self::Buf) -> Result<()>;
    /// The sum of squares accumulated in `acc`. Host sync point (statistics only: the
    /// updates read `acc` in place).
    fn sq_norm_read(&self, acc: &Self::Buf) -> Result<f64>;
    /// One Adam/AdamW update of `w[..n]` with gradient `g` and moments `m`, `v`
    /// ([`crate::optim::AdamSpec`]); the clip factor comes from the norm accumulated in
    /// `acc` over every parameter of the step.
    #[allow(clippy::too_many_arguments)]
    fn adam_update(
        &self,
        n: usize,
        spec: &AdamSpec,
        acc: &Self::Buf,
        w: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
    ) -> Result<()>;
    /// Merges two sparse gradients `(len, ids, rows)` of one table of `dim`-wide rows
    /// (each with ascending distinct ids) into `out`: the union of ids, ascending, the rows
    /// of an id in both summed as `a + b`. Folding a table's features in order through
    /// it sums each row in feature order. `out` grows (allocates) only past its capacity.
    fn merge_sparse_grads(
        &self,
        dim: usize,
        a: SparseView<'_, Self>,
        b: SparseView<'_, Self>,
        out: &mut SparseGrad<Self>,
    ) -> Result<()>;
    /// Row-wise Adagrad on the `[rows, dim]` `table` with per-row accumulators `acc`
    /// from a sparse gradient (`len` ascending `ids`, `rows`) ([`crate::optim::RowAdagradSpec`]).
    #[allow(clippy::too_many_arguments)]
    fn rowwise_adagrad_update(
        &self,
        spec: &RowAdagradSpec,
        shape: TableShape,
        len: usize,
        ids: &Self::Ids,
        rows: &Self::Buf,
        table: &mut Self::Buf,
        acc: &mut Self::Buf,
    ) -> Result<()>;
    /// Lazy Adam on the `[rows, dim]` `table` with moments `m`, `v` and per-row update
    /// counts `steps` from a sparse gradient ([`crate::optim::LazyAdamSpec`]).
    #[allow(clippy::too_many_arguments)]
    fn lazy_adam_update(
        &self,
        spec: &LazyAdamSpec,
        shape: TableShape,
        len: usize,
        ids: &Self::Ids,
        rows: &Self::Buf,
        table: &mut Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        steps: &mut Self::Ids,
    ) -> Result<()>;

    /// Feature dropout on `rows` rows of `slot_of.len()` columns
    /// ([`crate::mask::feature_dropout_mask`]): `mask[r, c]` is 0 when row `r`'s slot
    /// `slot_of[c]` (of `slots`) is dropped with probability `p`, 1 otherwise (not
    /// rescaled); from the (seed, step, index) stream of [`Backend::dropout_mask`], row `r`
    /// being row `first_row + r` of it.
    #[allow(clippy::too_many_arguments)]
    fn feature_dropout_mask(
        &self,
        rows: usize,
        slot_of: &Self::Ids,
        slots: usize,
        p: f32,
        seed: u64,
        step: u64,
        first_row: u64,
        mask: &mut Self::Buf,
    ) -> Result<()>;

    // ---- losses ---------------------------------------------------------------------

    /// Binary cross-entropy on logits `z` with labels `y ∈ [0, 1]`, computed stably as
    /// `ℓ = max(z, 0) - z·y + ln(1 + e^{-|z|})`; `∂ℓ/∂z = sigmoid(z) - y`. Returns the
    /// weighted mean (see [`LossInput`]) and writes its gradient w.r.t. the logits to
    /// `grad` per [`GradWrite`]. Host sync point.
    fn bce_with_logits(
        &self,
        n: usize,
        input: LossInput<'_, Self::Buf>,
        grad: &mut Self::Buf,
        write: GradWrite,
    ) -> Result<f32>;

    /// Mean squared error `ℓ = (p - t)²` (no ½), `∂ℓ/∂p = 2(p - t)`; weighting, masking
    /// and gradient writing as in [`Backend::bce_with_logits`]. Host sync point.
    fn mse(&self, n: usize, input: LossInput<'_, Self::Buf>, grad: &mut Self::Buf, write: GradWrite) -> Result<f32>;

    /// Huber loss with threshold `delta > 0`: `ℓ = ½d²` for `|d| ≤ δ`, else
    /// `δ(|d| - ½δ)`, `∂ℓ/∂p = clamp(d, -δ, δ)` with `d = p - t`; weighting, masking and
    /// gradient writing as in [`Backend::bce_with_logits`]. Host sync point.
    fn huber(
        &self,
        n: usize,
        delta: f32,
        input: LossInput<'_, Self::Buf>,
        grad: &mut Self::Buf,
        write: GradWrite,
    ) -> Result<f32>;

    /// In-batch softmax cross-entropy with the diagonal as the target (the retrieval
    /// loss of a two-tower model): `scores` is `[n, n]` (row `i`: query `i` against
    /// every row's item, already divided by the temperature), `weight` `[n]` (row `i`'s
    /// weight; 0 leaves the row out, e.g. a row that is not a positive). Returns
    /// `L = Σᵢ wᵢ·(log Σⱼ exp sᵢⱼ − sᵢᵢ) / Σᵢ wᵢ` (0 when every weight is 0) and writes
    /// `grad[i, j] (+)= scale · wᵢ/Σw · (softmax(sᵢ)ⱼ − δᵢⱼ)`, `[n, n]`.
    fn softmax_xent_diag(
        &self,
        n: usize,
        scores: &Self::Buf,
        weight: &Self::Buf,
        grad: &mut Self::Buf,
        write: GradWrite,
    ) -> Result<f32>;

    /// RankNet toward a teacher's preferences ([`crate::loss::pairwise_ranknet`]): over the
    /// pairs `(i, j)` of `pairs` ([`PairSpec`]), with `d = (sᵢ − sⱼ)/T`,
    /// `P = σ((tᵢ − tⱼ)/T)` and the pair weight `wᵢⱼ = (wᵢ + wⱼ)/2`,
    /// `L = T²·Σ wᵢⱼ·[softplus(d) − P·d] / Σ wᵢⱼ`; the gradient `T·wᵢⱼ·(σ(d) − P)/Σ wᵢⱼ`
    /// goes to `sᵢ` and its negation to `sⱼ`. `input.pred` holds the student's logits `s`,
    /// `input.target` the teacher's `t`; `weight` and `mask` as in [`LossInput`], and a
    /// pair with a masked-out row is left out (its NaNs do not propagate). Writes
    /// `grad (+)= scale·∂L/∂s` per [`GradWrite`]. Host sync point.
    fn pairwise_ranknet(
        &self,
        spec: &PairSpec,
        pairs: &Self::Ids,
        input: LossInput<'_, Self::Buf>,
        grad: &mut Self::Buf,
        write: GradWrite,
    ) -> Result<f32>;

    /// Softmax cross-entropy within groups ([`crate::loss::listwise_softmax`]): per group
    /// ([`GroupSpec`]) of its rows that count (mask ≠ 0), `p = softmax(s/T)`,
    /// `q = softmax(t/T)`, `L = T²·Σ_g W_g·[−Σᵢ qᵢ·ln pᵢ] / Σ_g W_g` with `W_g` the mean
    /// weight of the group's counted rows; `∂L/∂sᵢ = T·W_g·(pᵢ − qᵢ)/Σ W`. Groups of fewer
    /// than two counted rows are left out. Inputs and gradient writing as in
    /// [`Backend::pairwise_ranknet`]. Host sync point.
    fn listwise_softmax(
        &self,
        spec: &GroupSpec,
        offsets: &Self::Ids,
        members: &Self::Ids,
        input: LossInput<'_, Self::Buf>,
        grad: &mut Self::Buf,
        write: GradWrite,
    ) -> Result<f32>;

    // ---- host threads ---------------------------------------------------------------

    /// Keeps the backend's host worker threads polling for work (not asleep) while the
    /// guard lives: for a stretch of many short ops, such as a training loop
    /// ([`crate::awake`]). Call it on the thread that issues the ops. The default, for a
    /// backend whose ops do not run on host workers, keeps nothing awake.
    fn keep_awake(&self) -> crate::KeepAwake {
        crate::KeepAwake::none()
    }

    // ---- mixed precision (training) -------------------------------------------------

    /// The operands every [`Backend::gemm`] of this backend takes: `F32`, or `Bf16`
    /// (`[train] precision = "bf16"`: each operand element rounded to bf16, round to
    /// nearest even, products accumulated in f32 into an f32 `C`). The default, and
    /// every backend that cannot, is `F32`. The trainer refuses a config whose
    /// precision its backend does not compute.
    fn gemm_operands(&self) -> GemmOperands {
        GemmOperands::F32
    }

    // ---- reduced precision (inference) ----------------------------------------------

    /// Packs a GEMM weight (`[k, n]`, stored in `weight` as `layout` says) once for
    /// reduced-precision inference GEMMs of up to `max_batch` rows
    /// ([`crate::reduced`]). The backend chooses its kernel (the CPU backend: AMX,
    /// AVX512-BF16, a widening kernel or the portable loop); a backend without a
    /// reduced-precision GEMM refuses, which is the default.
    fn pack_reduced(
        &self,
        k: usize,
        n: usize,
        weight: &Self::Buf,
        layout: WeightLayout,
        max_batch: usize,
    ) -> Result<Box<dyn ReducedGemm<Self>>>
    where
        Self: Sized,
    {
        let _ = (k, n, weight, layout, max_batch);
        Err(crate::EngineError::Unsupported { op: "pack_reduced", feature: "a reduced-precision GEMM" })
    }
}
