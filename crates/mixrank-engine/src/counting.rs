//! [`Counting`]: a backend that forwards every op to a host-memory backend and counts
//! the traffic a device backend would pay for — buffer allocations, uploads (host →
//! device writes) and readbacks (device → host reads, including the scalars `sum` and
//! the losses return). Tests run real code on it to prove what a training step or an
//! inference call moves across the bus. It also counts the floating-point operations of
//! the matrix products ([`Counting::flops`]): what `mixrank experiment experts` reports
//! as an expert's FLOPs per example.

use crate::activation::Activation;
use crate::error::Result;
use crate::ops::{
    Backend, BlockShape, ColCopy, GatherSpec, GemmSpec, GradWrite, GroupSpec, LayerNormSpec, LossInput, NormStats,
    PairSpec, Pooling, Shape, SparseGrad,
};
use crate::optim::{AdamSpec, LazyAdamSpec, RowAdagradSpec, TableShape};
use crate::reduced::{ReducedGemm, WeightLayout};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Traffic counts (events and elements).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Buffers allocated (`alloc`, `upload`, their id forms, a `SparseGrad` growing).
    pub allocs: u64,
    pub alloc_elems: u64,
    /// `write` / `write_ids` calls and elements.
    pub uploads: u64,
    pub upload_elems: u64,
    /// `read` / `read_ids` calls and elements, plus one per returned scalar.
    pub readbacks: u64,
    pub readback_elems: u64,
}

impl std::ops::Sub for Traffic {
    type Output = Traffic;
    fn sub(self, o: Traffic) -> Traffic {
        Traffic {
            allocs: self.allocs - o.allocs,
            alloc_elems: self.alloc_elems - o.alloc_elems,
            uploads: self.uploads - o.uploads,
            upload_elems: self.upload_elems - o.upload_elems,
            readbacks: self.readbacks - o.readbacks,
            readback_elems: self.readback_elems - o.readback_elems,
        }
    }
}

#[derive(Default)]
struct Counters {
    allocs: AtomicU64,
    alloc_elems: AtomicU64,
    uploads: AtomicU64,
    upload_elems: AtomicU64,
    readbacks: AtomicU64,
    readback_elems: AtomicU64,
    flops: AtomicU64,
}

/// Forwards to `B` and counts traffic; see the module docs.
#[derive(Default)]
pub struct Counting<B> {
    pub inner: B,
    c: Counters,
}

impl<B> Counting<B> {
    pub fn new(inner: B) -> Self {
        Counting { inner, c: Counters::default() }
    }

    /// The counts so far.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            allocs: self.c.allocs.load(Relaxed),
            alloc_elems: self.c.alloc_elems.load(Relaxed),
            uploads: self.c.uploads.load(Relaxed),
            upload_elems: self.c.upload_elems.load(Relaxed),
            readbacks: self.c.readbacks.load(Relaxed),
            readback_elems: self.c.readback_elems.load(Relaxed),
        }
    }

    /// Floating-point operations of the matrix products run so far, from each op's
    /// shape: a GEMM `2·m·n·k` (a multiply and an add per term), a per-row block product
    /// (`block_dot`, `block_dot_t`, `block_outer`) `2·rows·blocks·width`. Elementwise ops,
    /// activations, norms and softmax are not counted (linear in the widths, small beside
    /// the products).
    pub fn flops(&self) -> u64 {
        self.c.flops.load(Relaxed)
    }

    fn flop_event(&self, n: usize) {
        self.c.flops.fetch_add(n as u64, Relaxed);
    }

    fn alloc_event(&self, n: usize) {
        self.c.allocs.fetch_add(1, Relaxed);
        self.c.alloc_elems.fetch_add(n as u64, Relaxed);
    }
    fn upload_event(&self, n: usize) {
        self.c.uploads.fetch_add(1, Relaxed);
        self.c.upload_elems.fetch_add(n as u64, Relaxed);
    }
    fn readback_event(&self, n: usize) {
        self.c.readbacks.fetch_add(1, Relaxed);
        self.c.readback_elems.fetch_add(n as u64, Relaxed);
    }
}

/// A buffer of the counting backend: the inner host backend's `Vec`, behind a type
/// that code generic over [`Backend`] cannot look into — as it could not look into a
/// device backend's memory. Code that runs on `Counting` therefore reaches its data only
/// through `read` / `write` (which are counted), and a layer, trainer or server that
/// compiles for `Counting` cannot be relying on host buffers. Tests that name
/// `Counting` may look inside through `Deref`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Dev<T>(Vec<T>);

impl<T> std::ops::Deref for Dev<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Dev<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.0
    }
}

type Host = Dev<f32>;
type HostIds = Dev<u32>;
type Inner = Vec<f32>;
type InnerIds = Vec<u32>;

/// A loss's inputs as the inner backend's buffers.
fn inner_input<'a>(i: LossInput<'a, Host>) -> LossInput<'a, Inner> {
    LossInput {
        pred: &i.pred.0,
        target: &i.target.0,
        weight: i.weight.map(|w| &w.0),
        mask: i.mask.map(|m| &m.0),
        weight_sum: i.weight_sum,
    }
}

/// Runs `f` on the same buffers viewed as the inner backend's statistics.
fn with_stats<B: Backend<Buf = Inner, Ids = InnerIds> + 'static, R>(
    stats: &mut NormStats<Counting<B>>,
    f: impl FnOnce(&mut NormStats<B>) -> R,
) -> R {
    let mut inner = NormStats::<B> { mean: std::mem::take(&mut stats.mean.0), rstd: std::mem::take(&mut stats.rstd.0) };
    let r = f(&mut inner);
    stats.mean = Dev(inner.mean);
    stats.rstd = Dev(inner.rstd);
    r
}

impl<B: Backend<Buf = Inner, Ids = InnerIds> + 'static> Counting<B> {
    /// Runs `f` on the same buffers viewed as the inner backend's sparse gradient,
    /// counting an allocation when it grows.
    fn with_grad<R>(&self, grad: &mut SparseGrad<Self>, f: impl FnOnce(&mut SparseGrad<B>) -> R) -> R {
        let cap = (grad.ids.len(), grad.rows.len(), grad.scratch.len());
        let mut inner = SparseGrad::<B> {
            ids: std::mem::take(&mut grad.ids.0),
            rows: std::mem::take(&mut grad.rows.0),
            len: grad.len,
            dim: grad.dim,
            scratch: std::mem::take(&mut grad.scratch.0),
        };
        let r = f(&mut inner);
        let grown = [(cap.0, inner.ids.len()), (cap.1, inner.rows.len()), (cap.2, inner.scratch.len())];
        for (before, after) in grown {
            if after > before {
                self.alloc_event(after);
            }
        }
        grad.ids = Dev(inner.ids);
        grad.rows = Dev(inner.rows);
        grad.len = inner.len;
        grad.dim = inner.dim;
        grad.scratch = Dev(inner.scratch);
        r
    }
}

impl<B: Backend<Buf = Inner, Ids = InnerIds> + 'static> Backend for Counting<B> {
    type Buf = Host;
    type Ids = HostIds;

    fn pack_reduced(
        &self,
        k: usize,
        n: usize,
        weight: &Host,
        layout: WeightLayout,
        max_batch: usize,
    ) -> Result<Box<dyn ReducedGemm<Self>>> {
        Ok(Box::new(CountedReduced(self.inner.pack_reduced(k, n, weight, layout, max_batch)?)))
    }

    fn alloc(&self, len: usize) -> Result<Host> {
        self.alloc_event(len);
        self.inner.alloc(len).map(Dev)
    }
    fn upload(&self, host: &[f32]) -> Result<Host> {
        self.alloc_event(host.len());
        self.inner.upload(host).map(Dev)
    }
    fn write(&self, host: &[f32], dst: &mut Host) -> Result<()> {
        self.upload_event(host.len());
        self.inner.write(host, dst)
    }
    fn read(&self, src: &Host, host: &mut [f32]) -> Result<()> {
        self.readback_event(host.len());
        self.inner.read(src, host)
    }
    fn len(&self, buf: &Host) -> usize {
        self.inner.len(buf)
    }
    fn fill(&self, n: usize, value: f32, buf: &mut Host) -> Result<()> {
        self.inner.fill(n, value, buf)
    }
    fn alloc_ids(&self, len: usize) -> Result<HostIds> {
        self.alloc_event(len);
        self.inner.alloc_ids(len).map(Dev)
    }
    fn upload_ids(&self, host: &[u32]) -> Result<HostIds> {
        self.alloc_event(host.len());
        self.inner.upload_ids(host).map(Dev)
    }
    fn write_ids(&self, host: &[u32], dst: &mut HostIds) -> Result<()> {
        self.upload_event(host.len());
        self.inner.write_ids(host, dst)
    }
    fn read_ids(&self, src: &HostIds, host: &mut [u32]) -> Result<()> {
        self.readback_event(host.len());
        self.inner.read_ids(src, host)
    }
    fn ids_len(&self, ids: &HostIds) -> usize {
        self.inner.ids_len(ids)
    }
    fn gemm(&self, spec: &GemmSpec, a: &Host, b: &Host, c: &mut Host) -> Result<()> {
        self.flop_event(2 * spec.m * spec.n * spec.k);
        self.inner.gemm(spec, a, b, c)
    }
    fn gemm_operands(&self) -> crate::GemmOperands {
        self.inner.gemm_operands()
    }
    fn keep_awake(&self) -> crate::KeepAwake {
        self.inner.keep_awake()
    }
    fn bias_act_forward(
        &self,
        act: Activation,
        shape: Shape,
        bias: Option<&Host>,
        z: &mut Host,
        y: &mut Host,
    ) -> Result<()> {
        self.inner.bias_act_forward(act, shape, bias.map(|b| &b.0), z, y)
    }
    fn bias_act_inplace(&self, act: Activation, shape: Shape, bias: Option<&Host>, x: &mut Host) -> Result<()> {
        self.inner.bias_act_inplace(act, shape, bias.map(|b| &b.0), x)
    }
    fn bias_act_backward(
        &self,
        act: Activation,
        shape: Shape,
        z: &Host,
        dy: &Host,
        dz: &mut Host,
        dbias: Option<&mut Host>,
    ) -> Result<()> {
        self.inner.bias_act_backward(act, shape, z, dy, dz, dbias.map(|d| &mut d.0))
    }
    fn add(&self, n: usize, a: &Host, b: &Host, out: &mut Host) -> Result<()> {
        self.inner.add(n, a, b, out)
    }
    fn mul(&self, n: usize, a: &Host, b: &Host, out: &mut Host) -> Result<()> {
        self.inner.mul(n, a, b, out)
    }
    fn mul_acc(&self, n: usize, a: &Host, b: &Host, out: &mut Host) -> Result<()> {
        self.inner.mul_acc(n, a, b, out)
    }
    fn mul_backward(&self, n: usize, a: &Host, b: &Host, dout: &Host, da: &mut Host, db: &mut Host) -> Result<()> {
        self.inner.mul_backward(n, a, b, dout, da, db)
    }
    fn scale(&self, n: usize, alpha: f32, x: &mut Host) -> Result<()> {
        self.inner.scale(n, alpha, x)
    }
    fn axpy(&self, n: usize, alpha: f32, x: &Host, y: &mut Host) -> Result<()> {
        self.inner.axpy(n, alpha, x, y)
    }
    fn copy_cols(&self, spec: &ColCopy, src: &Host, dst: &mut Host) -> Result<()> {
        self.inner.copy_cols(spec, src, dst)
    }
    fn normalize_rows(&self, shape: Shape, eps: f32, x: &Host, y: &mut Host, rnorm: &mut Host) -> Result<()> {
        self.inner.normalize_rows(shape, eps, x, y, rnorm)
    }
    fn normalize_rows_backward(&self, shape: Shape, y: &Host, rnorm: &Host, dy: &Host, dx: &mut Host) -> Result<()> {
        self.inner.normalize_rows_backward(shape, y, rnorm, dy, dx)
    }
    fn softmax_rows(&self, shape: Shape, x: &Host, y: &mut Host) -> Result<()> {
        self.inner.softmax_rows(shape, x, y)
    }
    fn softmax_rows_backward(&self, shape: Shape, y: &Host, dy: &Host, dx: &mut Host) -> Result<()> {
        self.inner.softmax_rows_backward(shape, y, dy, dx)
    }
    fn layer_norm_forward(
        &self,
        spec: &LayerNormSpec,
        x: &Host,
        gamma: &Host,
        beta: &Host,
        y: &mut Host,
        stats: &mut NormStats<Self>,
    ) -> Result<()> {
        with_stats(stats, |s| self.inner.layer_norm_forward(spec, x, gamma, beta, y, s))
    }
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_backward(
        &self,
        spec: &LayerNormSpec,
        x: &Host,
        gamma: &Host,
        stats: &NormStats<Self>,
        dy: &Host,
        dx: &mut Host,
        dgamma: &mut Host,
        dbeta: &mut Host,
    ) -> Result<()> {
        // The statistics are only read, and borrowed immutably: the wrapper passes a
        // host copy (its own overhead, not traffic a device backend would pay).
        let inner = NormStats::<B> { mean: stats.mean.0.clone(), rstd: stats.rstd.0.clone() };
        self.inner.layer_norm_backward(spec, x, gamma, &inner, dy, dx, dgamma, dbeta)
    }
    fn gather_rows(&self, spec: &GatherSpec, ids: &HostIds, table: &Host, out: &mut Host) -> Result<()> {
        self.inner.gather_rows(spec, ids, table, out)
    }
    fn gather_pooled(
        &self,
        spec: &GatherSpec,
        pooling: Pooling,
        offsets: &HostIds,
        ids: &HostIds,
        table: &Host,
        out: &mut Host,
    ) -> Result<()> {
        self.inner.gather_pooled(spec, pooling, offsets, ids, table, out)
    }
    fn scatter_rows_grad(
        &self,
        spec: &GatherSpec,
        ids: &HostIds,
        dout: &Host,
        grad: &mut SparseGrad<Self>,
    ) -> Result<()> {
        self.with_grad(grad, |g| self.inner.scatter_rows_grad(spec, ids, dout, g))
    }
    fn scatter_pooled_grad(
        &self,
        spec: &GatherSpec,
        pooling: Pooling,
        offsets: &HostIds,
        ids: &HostIds,
        dout: &Host,
        grad: &mut SparseGrad<Self>,
    ) -> Result<()> {
        self.with_grad(grad, |g| self.inner.scatter_pooled_grad(spec, pooling, offsets, ids, dout, g))
    }
    fn block_dot(&self, s: BlockShape, t: &Host, y: &Host, out: &mut Host, accumulate: bool) -> Result<()> {
        self.flop_event(2 * s.rows * s.blocks * s.width);
        self.inner.block_dot(s, t, y, out, accumulate)
    }
    fn block_outer(&self, s: BlockShape, d: &Host, y: &Host, out: &mut Host) -> Result<()> {
        self.flop_event(2 * s.rows * s.blocks * s.width);
        self.inner.block_outer(s, d, y, out)
    }
    fn block_dot_t(&self, s: BlockShape, d: &Host, t: &Host, out: &mut Host) -> Result<()> {
        self.flop_event(2 * s.rows * s.blocks * s.width);
        self.inner.block_dot_t(s, d, t, out)
    }
    fn sum_rows(&self, shape: Shape, x: &Host, out: &mut Host) -> Result<()> {
        self.inner.sum_rows(shape, x, out)
    }
    fn sum_cols(&self, shape: Shape, x: &Host, out: &mut Host) -> Result<()> {
        self.inner.sum_cols(shape, x, out)
    }
    fn sum(&self, n: usize, x: &Host) -> Result<f32> {
        self.readback_event(1);
        self.inner.sum(n, x)
    }
    fn sq_norm_acc(&self, n: usize, x: &Host, acc: &mut Host) -> Result<()> {
        self.inner.sq_norm_acc(n, x, acc)
    }
    fn sq_norm_read(&self, acc: &Host) -> Result<f64> {
        self.readback_event(1);
        self.inner.sq_norm_read(acc)
    }
    fn adam_update(
        &self,
        n: usize,
        spec: &AdamSpec,
        acc: &Host,
        w: &mut Host,
        g: &Host,
        m: &mut Host,
        v: &mut Host,
    ) -> Result<()> {
        self.inner.adam_update(n, spec, acc, w, g, m, v)
    }
    fn merge_sparse_grads(
        &self,
        dim: usize,
        a: (usize, &HostIds, &Host),
        b: (usize, &HostIds, &Host),
        out: &mut SparseGrad<Self>,
    ) -> Result<()> {
        self.with_grad(out, |o| self.inner.merge_sparse_grads(dim, (a.0, &a.1 .0, &a.2 .0), (b.0, &b.1 .0, &b.2 .0), o))
    }
    fn rowwise_adagrad_update(
        &self,
        spec: &RowAdagradSpec,
        shape: TableShape,
        len: usize,
        ids: &HostIds,
        rows: &Host,
        table: &mut Host,
        acc: &mut Host,
    ) -> Result<()> {
        self.inner.rowwise_adagrad_update(spec, shape, len, ids, rows, table, acc)
    }
    fn lazy_adam_update(
        &self,
        spec: &LazyAdamSpec,
        shape: TableShape,
        len: usize,
        ids: &HostIds,
        rows: &Host,
        table: &mut Host,
        m: &mut Host,
        v: &mut Host,
        steps: &mut HostIds,
    ) -> Result<()> {
        self.inner.lazy_adam_update(spec, shape, len, ids, rows, table, m, v, steps)
    }
    fn dropout_mask(&self, n: usize, p: f32, seed: u64, step: u64, first: u64, mask: &mut Host) -> Result<()> {
        self.inner.dropout_mask(n, p, seed, step, first, mask)
    }
    fn top_k_mask(&self, shape: Shape, k: usize, x: &Host, mask: &mut Host) -> Result<()> {
        self.inner.top_k_mask(shape, k, x, mask)
    }
    fn gate_dropout_mask(
        &self,
        shape: Shape,
        p: f32,
        seed: u64,
        step: u64,
        first_row: u64,
        mask: &mut Host,
    ) -> Result<()> {
        self.inner.gate_dropout_mask(shape, p, seed, step, first_row, mask)
    }
    fn feature_dropout_mask(
        &self,
        rows: usize,
        slot_of: &HostIds,
        slots: usize,
        p: f32,
        seed: u64,
        step: u64,
        first_row: u64,
        mask: &mut Host,
    ) -> Result<()> {
        self.inner.feature_dropout_mask(rows, slot_of, slots, p, seed, step, first_row, mask)
    }
    fn bce_with_logits(&self, n: usize, input: LossInput<'_, Host>, grad: &mut Host, write: GradWrite) -> Result<f32> {
        self.readback_event(1);
        self.inner.bce_with_logits(n, inner_input(input), grad, write)
    }
    fn mse(&self, n: usize, input: LossInput<'_, Host>, grad: &mut Host, write: GradWrite) -> Result<f32> {
        self.readback_event(1);
        self.inner.mse(n, inner_input(input), grad, write)
    }
    fn huber(
        &self,
        n: usize,
        delta: f32,
        input: LossInput<'_, Host>,
        grad: &mut Host,
        write: GradWrite,
    ) -> Result<f32> {
        self.readback_event(1);
        self.inner.huber(n, delta, inner_input(input), grad, write)
    }
    fn softmax_xent_diag(
        &self,
        n: usize,
        scores: &Host,
        weight: &Host,
        grad: &mut Host,
        write: GradWrite,
    ) -> Result<f32> {
        self.readback_event(1);
        self.inner.softmax_xent_diag(n, scores, weight, grad, write)
    }
    fn pairwise_ranknet(
        &self,
        spec: &PairSpec,
        pairs: &HostIds,
        input: LossInput<'_, Host>,
        grad: &mut Host,
        write: GradWrite,
    ) -> Result<f32> {
        self.readback_event(1);
        self.inner.pairwise_ranknet(spec, pairs, inner_input(input), grad, write)
    }
    fn listwise_softmax(
        &self,
        spec: &GroupSpec,
        offsets: &HostIds,
        members: &HostIds,
        input: LossInput<'_, Host>,
        grad: &mut Host,
        write: GradWrite,
    ) -> Result<f32> {
        self.readback_event(1);
        self.inner.listwise_softmax(spec, offsets, members, inner_input(input), grad, write)
    }
}

/// The inner backend's reduced-precision GEMM on the counting backend's buffers (its
/// matrix products are not in [`Counting::flops`], which counts the f32 model).
struct CountedReduced<B: Backend>(Box<dyn ReducedGemm<B>>);

impl<B: Backend<Buf = Inner, Ids = InnerIds> + 'static> ReducedGemm<Counting<B>> for CountedReduced<B> {
    fn gemm(&mut self, batch: usize, input: &Host, out: &mut Host) -> Result<()> {
        self.0.gemm(batch, input, out)
    }
    fn gemm_outer(
        &mut self,
        ops: &Counting<B>,
        shape: BlockShape,
        x: &Host,
        y: &Host,
        z: &mut Host,
        out: &mut Host,
    ) -> Result<()> {
        self.0.gemm_outer(&ops.inner, shape, x, y, z, out)
    }
    fn name(&self) -> &'static str {
        self.0.name()
    }
}
