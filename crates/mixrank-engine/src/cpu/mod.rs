//! [`CpuOps`]: the fast host backend. GEMMs go to the `gemm` crate; every other op is a
//! row- or column-parallel loop over rayon's current pool, run inline when small.

mod block;
mod embedding;
mod gemm;
mod huge;
mod layer_norm;
mod normalize;
mod optim;
mod par;

pub(crate) use par::worth_splitting;
mod pointwise;
mod reduce;
mod softmax;

use crate::activation::Activation;
use crate::bf16::Bf16Kernel;
use crate::check;
use crate::error::Result;
use crate::host;
use crate::loss;
use crate::ops::{
    Backend, BlockShape, ColCopy, GatherSpec, GemmOperands, GemmSpec, GradWrite, GroupSpec, LayerNormSpec, LossInput,
    NormStats, PairSpec, Pooling, Shape, SparseGrad, SparseView,
};
use crate::optim::{AdamSpec, LazyAdamSpec, RowAdagradSpec, TableShape};
use crate::reduced::{self, HostBf16, ReducedGemm, WeightLayout};

/// The fast CPU backend over host `Vec`s. Threads come from rayon's current pool (build a
/// pool with `rayon::ThreadPoolBuilder` and `install` to choose how many).
///
/// Call ops from inside the pool (run the training or serving loop under
/// `pool.install`): a parallel op called from a thread outside the pool hands its work
/// to sleeping workers and waits, which costs tens of microseconds per call on a VM —
/// measured 10× on a 64K-element op (docs/BENCHMARKS.md).
#[derive(Debug, Clone, Copy)]
pub struct CpuOps {
    /// GEMMs with `m·n·k` at least this large run multithreaded; smaller ones run on the
    /// calling thread, where they are no slower (docs/BENCHMARKS.md) and can run side by side.
    pub gemm_par_min: usize,
    /// The bf16 kernel [`Backend::pack_reduced`] packs for; `None` (the default) takes
    /// [`Bf16Kernel::select`] at packing time: `MIXRANK_BF16_KERNEL` if set, else the
    /// fastest this CPU has.
    pub bf16_kernel: Option<Bf16Kernel>,
    /// The operands of every GEMM: f32, or bf16-rounded for mixed-precision training
    /// ([`Backend::gemm_operands`]; `gemm.rs`).
    pub gemm_operands: GemmOperands,
}

impl CpuOps {
    /// Default GEMM threading threshold: `m·n·k >= 2^20`. Measured inside a 2-thread
    /// pool (docs/BENCHMARKS.md): 512×64·64×32 (1 M) is a wash, 128×128·128×128 (2 M) and
    /// larger gain 1.6-1.9×.
    pub const DEFAULT_GEMM_PAR_MIN: usize = 1 << 20;

    pub fn new() -> Self {
        CpuOps { gemm_par_min: Self::DEFAULT_GEMM_PAR_MIN, bf16_kernel: None, gemm_operands: GemmOperands::F32 }
    }

    /// The same backend with GEMM operands `operands` (bf16: mixed-precision training).
    pub fn with_gemm_operands(self, operands: GemmOperands) -> Self {
        CpuOps { gemm_operands: operands, ..self }
    }

    /// The same backend packing reduced-precision GEMMs for `kernel`.
    pub fn with_bf16_kernel(self, kernel: Bf16Kernel) -> Self {
        CpuOps { bf16_kernel: Some(kernel), ..self }
    }
}

impl Default for CpuOps {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for CpuOps {
    type Buf = Vec<f32>;
    type Ids = Vec<u32>;

    fn pack_reduced(
        &self,
        k: usize,
        n: usize,
        weight: &Vec<f32>,
        layout: WeightLayout,
        max_batch: usize,
    ) -> Result<Box<dyn ReducedGemm<Self>>> {
        let kernel = match self.bf16_kernel {
            Some(k) => k,
            None => Bf16Kernel::select()?,
        };
        let w = reduced::dense_weight(weight, k, n, layout)?;
        Ok(Box::new(HostBf16::new(kernel, k, n, &w, max_batch)?))
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        Ok(huge::zeroed(len))
    }
    fn upload(&self, host: &[f32]) -> Result<Vec<f32>> {
        Ok(huge::copied(host))
    }
    fn write(&self, host: &[f32], dst: &mut Vec<f32>) -> Result<()> {
        host::copy("write", host, dst)
    }
    fn read(&self, src: &Vec<f32>, host: &mut [f32]) -> Result<()> {
        host::copy_out("read", src, host)
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn fill(&self, n: usize, value: f32, buf: &mut Vec<f32>) -> Result<()> {
        check::vector("fill", "buf", buf.len(), n)?;
        buf[..n].fill(value);
        Ok(())
    }
    fn alloc_ids(&self, len: usize) -> Result<Vec<u32>> {
        Ok(huge::zeroed(len))
    }
    fn upload_ids(&self, host: &[u32]) -> Result<Vec<u32>> {
        Ok(host.to_vec())
    }
    fn write_ids(&self, host: &[u32], dst: &mut Vec<u32>) -> Result<()> {
        host::copy("write_ids", host, dst)
    }
    fn read_ids(&self, src: &Vec<u32>, host: &mut [u32]) -> Result<()> {
        host::copy_out("read_ids", src, host)
    }
    fn ids_len(&self, ids: &Vec<u32>) -> usize {
        ids.len()
    }

    fn gemm(&self, spec: &GemmSpec, a: &Vec<f32>, b: &Vec<f32>, c: &mut Vec<f32>) -> Result<()> {
        match self.gemm_operands {
            GemmOperands::F32 => gemm::gemm(spec, self.gemm_par_min, a, b, c),
            GemmOperands::Bf16 => gemm::gemm_bf16_operands(spec, self.gemm_par_min, a, b, c),
        }
    }

    fn gemm_operands(&self) -> GemmOperands {
        self.gemm_operands
    }

    fn keep_awake(&self) -> crate::KeepAwake {
        crate::KeepAwake::start()
    }

    fn bias_act_forward(
        &self,
        act: Activation,
        shape: Shape,
        bias: Option<&Vec<f32>>,
        z: &mut Vec<f32>,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        pointwise::bias_act_forward(act, shape, bias.map(|b| b.as_slice()), z, y)
    }
    fn bias_act_inplace(&self, act: Activation, shape: Shape, bias: Option<&Vec<f32>>, x: &mut Vec<f32>) -> Result<()> {
        pointwise::bias_act_inplace(act, shape, bias.map(|b| b.as_slice()), x)
    }
    fn bias_act_backward(
        &self,
        act: Activation,
        shape: Shape,
        z: &Vec<f32>,
        dy: &Vec<f32>,
        dz: &mut Vec<f32>,
        dbias: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        pointwise::bias_act_backward(act, shape, z, dy, dz, dbias.map(|b| b.as_mut_slice()))
    }

    fn add(&self, n: usize, a: &Vec<f32>, b: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        pointwise::add(n, a, b, out)
    }
    fn mul(&self, n: usize, a: &Vec<f32>, b: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        pointwise::mul(n, a, b, out)
    }
    fn mul_acc(&self, n: usize, a: &Vec<f32>, b: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        pointwise::mul_acc(n, a, b, out)
    }
    fn mul_backward(
        &self,
        n: usize,
        a: &Vec<f32>,
        b: &Vec<f32>,
        dout: &Vec<f32>,
        da: &mut Vec<f32>,
        db: &mut Vec<f32>,
    ) -> Result<()> {
        pointwise::mul_backward(n, a, b, dout, da, db)
    }
    fn scale(&self, n: usize, alpha: f32, x: &mut Vec<f32>) -> Result<()> {
        pointwise::scale(n, alpha, x)
    }
    fn axpy(&self, n: usize, alpha: f32, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        pointwise::axpy(n, alpha, x, y)
    }
    fn copy_cols(&self, spec: &ColCopy, src: &Vec<f32>, dst: &mut Vec<f32>) -> Result<()> {
        pointwise::copy_cols(spec, src, dst)
    }

    fn normalize_rows(
        &self,
        shape: Shape,
        eps: f32,
        x: &Vec<f32>,
        y: &mut Vec<f32>,
        rnorm: &mut Vec<f32>,
    ) -> Result<()> {
        normalize::forward(shape, eps, x, y, rnorm)
    }
    fn normalize_rows_backward(
        &self,
        shape: Shape,
        y: &Vec<f32>,
        rnorm: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        normalize::backward(shape, y, rnorm, dy, dx)
    }
    fn softmax_rows(&self, shape: Shape, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        softmax::softmax_rows(shape, x, y)
    }
    fn softmax_rows_backward(&self, shape: Shape, y: &Vec<f32>, dy: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        softmax::softmax_rows_backward(shape, y, dy, dx)
    }

    fn layer_norm_forward(
        &self,
        spec: &LayerNormSpec,
        x: &Vec<f32>,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
        y: &mut Vec<f32>,
        stats: &mut NormStats<Self>,
    ) -> Result<()> {
        layer_norm::forward(spec, x, gamma, beta, y, &mut stats.mean, &mut stats.rstd)
    }
    fn layer_norm_backward(
        &self,
        spec: &LayerNormSpec,
        x: &Vec<f32>,
        gamma: &Vec<f32>,
        stats: &NormStats<Self>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
        dgamma: &mut Vec<f32>,
        dbeta: &mut Vec<f32>,
    ) -> Result<()> {
        layer_norm::backward(spec, x, gamma, &stats.mean, &stats.rstd, dy, dx, dgamma, dbeta)
    }

    fn gather_rows(&self, spec: &GatherSpec, ids: &Vec<u32>, table: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        embedding::gather_rows(spec, ids, table, out)
    }
    fn gather_pooled(
        &self,
        spec: &GatherSpec,
        pooling: Pooling,
        offsets: &Vec<u32>,
        ids: &Vec<u32>,
        table: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        embedding::gather_pooled(spec, pooling, offsets, ids, table, out)
    }
    fn scatter_rows_grad(
        &self,
        spec: &GatherSpec,
        ids: &Vec<u32>,
        dout: &Vec<f32>,
        grad: &mut SparseGrad<Self>,
    ) -> Result<()> {
        embedding::scatter_rows_grad(spec, ids, dout, grad)
    }
    fn scatter_pooled_grad(
        &self,
        spec: &GatherSpec,
        pooling: Pooling,
        offsets: &Vec<u32>,
        ids: &Vec<u32>,
        dout: &Vec<f32>,
        grad: &mut SparseGrad<Self>,
    ) -> Result<()> {
        embedding::scatter_pooled_grad(spec, pooling, offsets, ids, dout, grad)
    }

    fn block_dot(&self, s: BlockShape, t: &Vec<f32>, y: &Vec<f32>, out: &mut Vec<f32>, accumulate: bool) -> Result<()> {
        block::block_dot(s, t, y, out, accumulate)
    }
    fn block_outer(&self, s: BlockShape, d: &Vec<f32>, y: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        block::block_outer(s, d, y, out)
    }
    fn block_dot_t(&self, s: BlockShape, d: &Vec<f32>, t: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        block::block_dot_t(s, d, t, out)
    }
    fn sum_rows(&self, shape: Shape, x: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        reduce::sum_rows(shape, x, out)
    }
    fn sum_cols(&self, shape: Shape, x: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        reduce::sum_cols(shape, x, out)
    }
    fn dropout_mask(&self, n: usize, p: f32, seed: u64, step: u64, first: u64, mask: &mut Vec<f32>) -> Result<()> {
        crate::mask::dropout_mask(n, p, seed, step, first, mask, |v| v)
    }

    fn top_k_mask(&self, shape: Shape, k: usize, x: &Vec<f32>, mask: &mut Vec<f32>) -> Result<()> {
        crate::mask::top_k_mask(shape.rows, shape.cols, k, x, mask, 0.0, crate::mask::MASKED)
    }

    fn gate_dropout_mask(
        &self,
        shape: Shape,
        p: f32,
        seed: u64,
        step: u64,
        first_row: u64,
        mask: &mut Vec<f32>,
    ) -> Result<()> {
        crate::mask::gate_dropout_mask(shape.rows, shape.cols, p, seed, step, first_row, mask, 0.0, crate::mask::MASKED)
    }

    fn feature_dropout_mask(
        &self,
        rows: usize,
        slot_of: &Vec<u32>,
        slots: usize,
        p: f32,
        seed: u64,
        step: u64,
        first_row: u64,
        mask: &mut Vec<f32>,
    ) -> Result<()> {
        crate::mask::feature_dropout_mask(rows, slot_of, slots, p, seed, step, first_row, mask, 1.0, 0.0)
    }

    fn sum(&self, n: usize, x: &Vec<f32>) -> Result<f32> {
        Ok(reduce::sum(n, x)? as f32)
    }

    fn sq_norm_acc(&self, n: usize, x: &Vec<f32>, acc: &mut Vec<f32>) -> Result<()> {
        optim::sq_norm_acc(n, x, acc)
    }
    fn sq_norm_read(&self, acc: &Vec<f32>) -> Result<f64> {
        crate::optim::load_acc(acc)
    }
    fn adam_update(
        &self,
        n: usize,
        spec: &AdamSpec,
        acc: &Vec<f32>,
        w: &mut Vec<f32>,
        g: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) -> Result<()> {
        optim::adam_update(n, spec, acc, w, g, m, v)
    }
    fn merge_sparse_grads(
        &self,
        dim: usize,
        a: SparseView<'_, Self>,
        b: SparseView<'_, Self>,
        out: &mut SparseGrad<Self>,
    ) -> Result<()> {
        host::merge_sparse_grads(dim, a, b, out)
    }
    fn rowwise_adagrad_update(
        &self,
        spec: &RowAdagradSpec,
        shape: TableShape,
        len: usize,
        ids: &Vec<u32>,
        rows: &Vec<f32>,
        table: &mut Vec<f32>,
        acc: &mut Vec<f32>,
    ) -> Result<()> {
        optim::rowwise_adagrad(spec, shape, len, ids, rows, table, acc)
    }
    fn lazy_adam_update(
        &self,
        spec: &LazyAdamSpec,
        shape: TableShape,
        len: usize,
        ids: &Vec<u32>,
        rows: &Vec<f32>,
        table: &mut Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        steps: &mut Vec<u32>,
    ) -> Result<()> {
        optim::lazy_adam(spec, shape, len, ids, rows, table, m, v, steps)
    }

    fn bce_with_logits(
        &self,
        n: usize,
        input: LossInput<'_, Vec<f32>>,
        grad: &mut Vec<f32>,
        write: GradWrite,
    ) -> Result<f32> {
        Ok(loss::bce_with_logits(n, host::loss_slices(&input), grad, write)? as f32)
    }
    fn mse(&self, n: usize, input: LossInput<'_, Vec<f32>>, grad: &mut Vec<f32>, write: GradWrite) -> Result<f32> {
        Ok(loss::mse(n, host::loss_slices(&input), grad, write)? as f32)
    }
    fn huber(
        &self,
        n: usize,
        delta: f32,
        input: LossInput<'_, Vec<f32>>,
        grad: &mut Vec<f32>,
        write: GradWrite,
    ) -> Result<f32> {
        Ok(loss::huber(n, delta, host::loss_slices(&input), grad, write)? as f32)
    }
    fn softmax_xent_diag(
        &self,
        n: usize,
        scores: &Vec<f32>,
        weight: &Vec<f32>,
        grad: &mut Vec<f32>,
        write: GradWrite,
    ) -> Result<f32> {
        Ok(loss::softmax_xent_diag(n, scores, weight, grad, write)? as f32)
    }
    fn pairwise_ranknet(
        &self,
        spec: &PairSpec,
        pairs: &Vec<u32>,
        input: LossInput<'_, Vec<f32>>,
        grad: &mut Vec<f32>,
        write: GradWrite,
    ) -> Result<f32> {
        Ok(loss::pairwise_ranknet(spec, pairs, host::loss_slices(&input), grad, write)? as f32)
    }
    fn listwise_softmax(
        &self,
        spec: &GroupSpec,
        offsets: &Vec<u32>,
        members: &Vec<u32>,
        input: LossInput<'_, Vec<f32>>,
        grad: &mut Vec<f32>,
        write: GradWrite,
    ) -> Result<f32> {
        Ok(loss::listwise_softmax(spec, offsets, members, host::loss_slices(&input), grad, write)? as f32)
    }
}
