//! `impl Backend for CudaOps`: argument checks on the host, then a cuBLAS call or a
//! kernel launch on the compute stream. Kernel arguments follow the `.cu` signatures:
//! sizes as `u64` (`unsigned long long`), flags as `i32`, scalars as `f32`/`f64`.

use std::sync::MutexGuard;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaFunction, CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};
use mixrank_engine::mask::dropout_base;
use mixrank_engine::{
    Activation, AdamSpec, Backend, BlockShape, ColCopy, EngineError, GatherSpec, GemmOperands, GemmSpec, GradWrite,
    GroupSpec, LayerNormSpec, LazyAdamSpec, LossInput, NormStats, PairSpec, Pooling, Result, RowAdagradSpec, Shape,
    SparseGrad, SparseRows, SparseView, TableShape, Transpose, NORM_ACC_LEN,
};

use crate::check;
use crate::kernels::BLOCK;
use crate::{CudaOps, GemmPath, Scratch};

/// The most blocks a grid-stride launch uses.
const MAX_GRID: u64 = 1 << 20;
/// `NO_POS` of the kernels: no gradient row.
const NO_POS: u32 = u32::MAX;

/// Launches kernel `$name` with the arguments in order; temporaries live until the
/// launch is queued (one statement).
macro_rules! launch {
    ($ops:expr, $op:expr, $name:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let f: &CudaFunction = $ops.func($op, $name)?;
        // SAFETY: the argument list matches the kernel's signature in src/kernels/*.cu in
        // order and types (emu/ unpacks the launch's parameters by that signature and the
        // conformance suite runs every kernel there), and the host checks above bound
        // every index the kernel computes to the buffers' lengths.
        let r = unsafe { $ops.stream.launch_builder(f)$(.arg($arg))*.launch($cfg) };
        r.map(|_| ()).map_err(|e| $ops.dev_err($op, e))
    }};
}

fn cfg(grid: u64) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid.clamp(1, MAX_GRID) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// One thread per element (grid-stride).
fn elems(n: usize) -> LaunchConfig {
    cfg((n as u64).div_ceil(BLOCK as u64))
}

/// One block per row (row-stride).
fn per_row(rows: usize) -> LaunchConfig {
    cfg(rows as u64)
}

/// One block.
fn single() -> LaunchConfig {
    cfg(1)
}

/// One thread.
fn serial() -> LaunchConfig {
    LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 }
}

fn act_id(act: Activation) -> i32 {
    match act {
        Activation::Identity => 0,
        Activation::Relu => 1,
        Activation::Sigmoid => 2,
        Activation::Tanh => 3,
        Activation::GeluTanh => 4,
        Activation::Silu => 5,
    }
}

fn flag(b: bool) -> i32 {
    b as i32
}

fn u(n: usize) -> u64 {
    n as u64
}

/// The f32 bag weight of reference.rs `bag_weight`.
fn bag_weight(pooling: Pooling, count: u32) -> f32 {
    match pooling {
        Pooling::Sum => 1.0,
        Pooling::Mean => (1.0 / (count as f64).max(1.0)) as f32,
    }
}

impl CudaOps {
    pub(crate) fn func(&self, op: &'static str, name: &'static str) -> Result<&CudaFunction> {
        self.funcs.get(name).ok_or(EngineError::InvalidArgument { op, reason: "a CUDA kernel is missing" })
    }

    pub(crate) fn dev_err(&self, op: &'static str, e: impl std::fmt::Debug) -> EngineError {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(format!("{op}: {e:?}"));
        }
        EngineError::InvalidArgument { op, reason: "a CUDA call failed (CudaOps::last_error has the driver's message)" }
    }

    fn scratch(&self) -> MutexGuard<'_, Scratch> {
        self.scratch.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn alloc_zeroed<T: DeviceRepr + ValidAsZeroBits>(&self, op: &'static str, len: usize) -> Result<CudaSlice<T>> {
        if len == 0 {
            // The driver refuses zero-byte allocations (cuMemAlloc: CUDA_ERROR_INVALID_VALUE),
            // so an empty buffer owns one element and says it has none.
            let one = self.stream.alloc_zeros::<T>(1).map_err(|e| self.dev_err(op, e))?;
            let ptr = one.leak();
            // SAFETY: `ptr` is a live allocation of one `T` (from `alloc_zeros` above, now
            // owned by the new slice, which frees it on drop); the slice claims 0 elements.
            return Ok(unsafe { self.stream.upgrade_device_ptr(ptr, 0) });
        }
        self.stream.alloc_zeros(len).map_err(|e| self.dev_err(op, e))
    }

    /// Grows `buf` to at least `len` elements (contents lost when it grows).
    fn reserve<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        op: &'static str,
        buf: &mut CudaSlice<T>,
        len: usize,
    ) -> Result<()> {
        if buf.len() < len {
            *buf = self.alloc_zeroed(op, len)?;
        }
        Ok(())
    }

    fn htod<T: DeviceRepr>(&self, op: &'static str, host: &[T], dst: &mut CudaSlice<T>) -> Result<()> {
        if host.is_empty() {
            return Ok(());
        }
        check::vector(op, "dst", dst.len(), host.len())?;
        let mut view = dst.slice_mut(0..host.len());
        self.stream.memcpy_htod(host, &mut view).map_err(|e| self.dev_err(op, e))
    }

    fn dtoh<T: DeviceRepr>(&self, op: &'static str, src: &CudaSlice<T>, host: &mut [T]) -> Result<()> {
        if host.is_empty() {
            return Ok(());
        }
        check::vector(op, "src", src.len(), host.len())?;
        let view = src.slice(0..host.len());
        self.stream.memcpy_dtoh(&view, host).map_err(|e| self.dev_err(op, e))?;
        self.stream.synchronize().map_err(|e| self.dev_err(op, e))
    }

    fn read_u32(&self, op: &'static str, src: &CudaSlice<u32>, n: usize) -> Result<Vec<u32>> {
        let mut host = vec![0u32; n];
        self.dtoh(op, src, &mut host)?;
        Ok(host)
    }

    /// Reads the two f64 sums a loss kernel left in `sums`.
    fn read_sums(&self, op: &'static str, sums: &CudaSlice<f64>) -> Result<[f64; 2]> {
        let mut host = [0f64; 2];
        self.dtoh(op, sums, &mut host)?;
        Ok(host)
    }

    fn ensure_sparse(&self, op: &'static str, grad: &mut SparseGrad<Self>, dim: usize, touched: usize) -> Result<()> {
        grad.dim = dim;
        self.reserve(op, &mut grad.ids, touched)?;
        self.reserve(op, &mut grad.rows, touched * dim)
    }

    /// The sorted-segment table gradient of a gather: `bags` holds the CSR offsets
    /// (`batch + 1`, validated) and `ids` the ids (validated) of the batch, on the host.
    /// Sorts the occurrences by (id, position) here, uploads the plan, and sums each
    /// distinct id's occurrences in batch order on the device.
    #[allow(clippy::too_many_arguments)]
    fn scatter_sorted(
        &self,
        op: &'static str,
        spec: &GatherSpec,
        pooling: Pooling,
        offsets: &[u32],
        ids: &[u32],
        dout: &CudaSlice<f32>,
        grad: &mut SparseGrad<Self>,
    ) -> Result<()> {
        let nnz = ids.len();
        let mut bag_of = vec![0u32; nnz];
        for b in 0..spec.batch {
            for p in offsets[b]..offsets[b + 1] {
                bag_of[p as usize] = b as u32;
            }
        }
        let mut order: Vec<u32> = (0..nnz as u32).collect();
        order.sort_by_key(|&p| (ids[p as usize], p));
        let mut unique: Vec<u32> = Vec::new();
        let mut seg_start: Vec<u32> = Vec::new();
        let mut src_row = Vec::with_capacity(nnz);
        let mut weight = Vec::with_capacity(nnz);
        for (k, &p) in order.iter().enumerate() {
            let id = ids[p as usize];
            if unique.last() != Some(&id) {
                unique.push(id);
                seg_start.push(k as u32);
            }
            let b = bag_of[p as usize] as usize;
            src_row.push(b as u32);
            weight.push(bag_weight(pooling, offsets[b + 1] - offsets[b]));
        }
        seg_start.push(nnz as u32);
        self.ensure_sparse(op, grad, spec.dim, unique.len())?;
        grad.len = unique.len();
        if unique.is_empty() {
            return Ok(());
        }
        self.htod(op, &unique, &mut grad.ids)?;
        let mut s = self.scratch();
        let s = &mut *s;
        self.reserve(op, &mut s.u32_a, seg_start.len())?;
        self.reserve(op, &mut s.u32_b, nnz)?;
        self.reserve(op, &mut s.f32_a, nnz)?;
        self.htod(op, &seg_start, &mut s.u32_a)?;
        self.htod(op, &src_row, &mut s.u32_b)?;
        self.htod(op, &weight, &mut s.f32_a)?;
        let segments = unique.len();
        launch!(self, op, "scatter_segments", elems(segments * spec.dim);
            &u(segments), &u(spec.dim), &u(spec.out_cols), &u(spec.col_offset),
            &s.u32_a, &s.u32_b, &s.f32_a, dout, &mut grad.rows)
    }

    /// Builds `pos` (`[table_rows]`): each row's gradient row, or `NO_POS`.
    fn row_positions(
        &self,
        op: &'static str,
        shape: TableShape,
        len: usize,
        ids: &CudaSlice<u32>,
        pos: &mut CudaSlice<u32>,
    ) -> Result<()> {
        self.reserve(op, pos, shape.rows)?;
        launch!(self, op, "fill_u32", elems(shape.rows); &u(shape.rows), &NO_POS, &mut *pos)?;
        if len > 0 {
            launch!(self, op, "row_positions", elems(len); &u(len), &u(shape.rows), ids, &mut *pos)?;
        }
        Ok(())
    }

    /// BCE / MSE / Huber (`kind` 0 / 1 / 2): sums on one block, the gradient per
    /// element, the weighted mean read back.
    #[allow(clippy::too_many_arguments)]
    fn pointwise_loss(
        &self,
        op: &'static str,
        kind: i32,
        delta: f32,
        n: usize,
        input: LossInput<'_, CudaSlice<f32>>,
        grad: &mut CudaSlice<f32>,
        write: GradWrite,
    ) -> Result<f32> {
        check::loss_input(
            op,
            n,
            input.pred.len(),
            input.target.len(),
            input.weight.map(|w| w.len()),
            input.mask.map(|m| m.len()),
            grad.len(),
        )?;
        let weight = input.weight.unwrap_or(&self.dummy_f32);
        let mask = input.mask.unwrap_or(&self.dummy_f32);
        let (hw, hm) = (flag(input.weight.is_some()), flag(input.mask.is_some()));
        if input.weight_sum.is_some_and(|w| !w.is_finite()) {
            return Err(EngineError::InvalidArgument { op, reason: "the given weight sum must be finite" });
        }
        let mut s = self.scratch();
        launch!(self, op, "pointwise_loss_sums", single();
            &kind, &u(n), &delta, input.pred, input.target, weight, &hw, mask, &hm, &mut s.sums)?;
        // A given weight sum replaces the kernel's in place: the gradient kernel reads
        // it there, and the loss read back below is divided by it.
        if let Some(w) = input.weight_sum {
            let host: &[f64] = &[w];
            let mut view = s.sums.slice_mut(1..2);
            self.stream.memcpy_htod(host, &mut view).map_err(|e| self.dev_err(op, e))?;
        }
        if n > 0 {
            launch!(self, op, "pointwise_loss_grad", elems(n);
                &kind, &u(n), &delta, input.pred, input.target, weight, &hw, mask, &hm,
                &write.scale, &flag(write.accumulate), &s.sums, &mut *grad)?;
        }
        let [loss, wsum] = self.read_sums(op, &s.sums)?;
        Ok(if wsum == 0.0 { 0.0 } else { (loss / wsum) as f32 })
    }

    /// The ranking losses refuse a given weight sum (as the host backends do).
    fn check_given_weight_sum(op: &'static str, weight_sum: Option<f64>) -> Result<()> {
        if weight_sum.is_some() {
            return Err(EngineError::InvalidArgument { op, reason: "a given weight sum is for pointwise losses" });
        }
        Ok(())
    }

    fn check_temperature(op: &'static str, t: f32) -> Result<()> {
        if !(t.is_finite() && t > 0.0) {
            return Err(EngineError::InvalidArgument { op, reason: "temperature must be a finite number > 0" });
        }
        Ok(())
    }
}

impl CudaOps {
    /// The f32 GEMM (cuBLAS `sgemm`, or the tiled kernel).
    fn gemm_f32(&self, spec: &GemmSpec, a: &CudaSlice<f32>, b: &CudaSlice<f32>, c: &mut CudaSlice<f32>) -> Result<()> {
        const OP: &str = "gemm";
        check::gemm(spec, a.len(), b.len(), c.len())?;
        let (m, n, k) = (spec.m, spec.n, spec.k);
        if m == 0 || n == 0 {
            return Ok(());
        }
        // A single-row operand's stride is never used; cuBLAS still wants ld >= cols.
        let ld = |[rows, cols]: [usize; 2], ld: usize| if rows <= 1 { ld.max(cols).max(1) } else { ld };
        let ldc = ld([m, n], spec.c.ld);
        let blas = match (self.gemm_path, &self.blas) {
            (GemmPath::Cublas, Some(blas)) => blas,
            _ => {
                let tiles = m.div_ceil(16) * n.div_ceil(16);
                let av = a.slice(spec.a.offset..);
                let bv = b.slice(spec.b.offset..);
                let mut cv = c.slice_mut(spec.c.offset..);
                return launch!(self, OP, "gemm_tiled", cfg(tiles as u64);
                    &u(m), &u(n), &u(k), &flag(spec.trans_a == Transpose::Yes), &flag(spec.trans_b == Transpose::Yes),
                    &spec.alpha, &spec.beta, &av, &u(spec.a.ld), &bv, &u(spec.b.ld), &mut cv, &u(spec.c.ld));
            }
        };
        if k == 0 {
            let mut cv = c.slice_mut(spec.c.offset..);
            return launch!(self, OP, "gemm_k0", elems(m * n);
                &u(m), &u(n), &u(ldc), &spec.alpha, &spec.beta, &mut cv);
        }
        let int = |x: usize| -> Result<i32> {
            i32::try_from(x)
                .map_err(|_| EngineError::InvalidArgument { op: OP, reason: "a GEMM dimension exceeds i32" })
        };
        let op = |t: Transpose| match t {
            Transpose::No => cublasOperation_t::CUBLAS_OP_N,
            Transpose::Yes => cublasOperation_t::CUBLAS_OP_T,
        };
        // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLAS gets B as its
        // first operand and A as its second, with m and n swapped.
        let cfg = GemmConfig {
            transa: op(spec.trans_b),
            transb: op(spec.trans_a),
            m: int(n)?,
            n: int(m)?,
            k: int(k)?,
            alpha: spec.alpha,
            lda: int(ld(spec.stored_b(), spec.b.ld))?,
            ldb: int(ld(spec.stored_a(), spec.a.ld))?,
            beta: spec.beta,
            ldc: int(ldc)?,
        };
        let av = a.slice(spec.a.offset..);
        let bv = b.slice(spec.b.offset..);
        let mut cv = c.slice_mut(spec.c.offset..);
        // SAFETY: `check::gemm` bounds every element cuBLAS reads or writes by the
        // buffers' lengths (offset + (rows - 1)·ld + cols), and the views start at the
        // offsets.
        unsafe { blas.gemm(cfg, &bv, &av, &mut cv) }.map_err(|e| self.dev_err(OP, e))
    }

    /// [`GemmOperands::Bf16`]: the operands' used extents rounded to bf16 (ties to even)
    /// into scratch, then the f32 GEMM of those. A product of two bf16 values is exact in
    /// f32, so this is a bf16 GEMM with f32 accumulation; it is not yet the fast path
    /// (cuBLAS `GemmEx` on bf16 operands), which needs a GPU to check.
    fn gemm_bf16_operands(
        &self,
        spec: &GemmSpec,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        c: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "gemm";
        check::gemm(spec, a.len(), b.len(), c.len())?;
        let used = |[rows, cols]: [usize; 2], offset: usize, ld: usize| {
            if rows == 0 || cols == 0 {
                offset
            } else {
                offset + (rows - 1) * ld + cols
            }
        };
        let (na, nb) =
            (used(spec.stored_a(), spec.a.offset, spec.a.ld), used(spec.stored_b(), spec.b.offset, spec.b.ld));
        let mut guard = self.scratch();
        let s = &mut *guard;
        self.reserve(OP, &mut s.gemm_a, na.max(1))?;
        self.reserve(OP, &mut s.gemm_b, nb.max(1))?;
        if na > 0 {
            launch!(self, OP, "round_bf16", elems(na); &u(na), a, &mut s.gemm_a)?;
        }
        if nb > 0 {
            launch!(self, OP, "round_bf16", elems(nb); &u(nb), b, &mut s.gemm_b)?;
        }
        self.gemm_f32(spec, &s.gemm_a, &s.gemm_b, c)
    }
}

impl Backend for CudaOps {
    type Buf = CudaSlice<f32>;
    type Ids = CudaSlice<u32>;

    // ---- memory ---------------------------------------------------------------------

    fn alloc(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.alloc_zeroed("alloc", len)
    }
    fn upload(&self, host: &[f32]) -> Result<CudaSlice<f32>> {
        let mut buf = self.alloc_zeroed("upload", host.len())?;
        self.htod("upload", host, &mut buf)?;
        Ok(buf)
    }
    fn write(&self, host: &[f32], dst: &mut CudaSlice<f32>) -> Result<()> {
        self.htod("write", host, dst)
    }
    fn read(&self, src: &CudaSlice<f32>, host: &mut [f32]) -> Result<()> {
        self.dtoh("read", src, host)
    }
    fn len(&self, buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }
    fn fill(&self, n: usize, value: f32, buf: &mut CudaSlice<f32>) -> Result<()> {
        const OP: &str = "fill";
        check::vector(OP, "buf", buf.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        launch!(self, OP, "fill_f32", elems(n); &u(n), &value, buf)
    }
    fn alloc_ids(&self, len: usize) -> Result<CudaSlice<u32>> {
        self.alloc_zeroed("alloc_ids", len)
    }
    fn upload_ids(&self, host: &[u32]) -> Result<CudaSlice<u32>> {
        let mut buf = self.alloc_zeroed("upload_ids", host.len())?;
        self.htod("upload_ids", host, &mut buf)?;
        Ok(buf)
    }
    fn write_ids(&self, host: &[u32], dst: &mut CudaSlice<u32>) -> Result<()> {
        self.htod("write_ids", host, dst)
    }
    fn read_ids(&self, src: &CudaSlice<u32>, host: &mut [u32]) -> Result<()> {
        self.dtoh("read_ids", src, host)
    }
    fn ids_len(&self, ids: &CudaSlice<u32>) -> usize {
        ids.len()
    }

    // ---- GEMM -----------------------------------------------------------------------

    fn gemm(&self, spec: &GemmSpec, a: &CudaSlice<f32>, b: &CudaSlice<f32>, c: &mut CudaSlice<f32>) -> Result<()> {
        match self.gemm_operands {
            GemmOperands::F32 => self.gemm_f32(spec, a, b, c),
            GemmOperands::Bf16 => self.gemm_bf16_operands(spec, a, b, c),
        }
    }

    fn gemm_operands(&self) -> GemmOperands {
        self.gemm_operands
    }

    // ---- fused bias + activation ----------------------------------------------------

    fn bias_act_forward(
        &self,
        act: Activation,
        shape: Shape,
        bias: Option<&CudaSlice<f32>>,
        z: &mut CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "bias_act_forward";
        if let Some(b) = bias {
            check::vector(OP, "bias", b.len(), shape.cols)?;
        }
        check::matrix(OP, "z", z.len(), shape)?;
        check::matrix(OP, "y", y.len(), shape)?;
        if shape.is_empty() {
            return Ok(());
        }
        launch!(self, OP, "bias_act_forward", elems(shape.len());
            &act_id(act), &u(shape.rows), &u(shape.cols), bias.unwrap_or(&self.dummy_f32),
            &flag(bias.is_some()), z, y)
    }

    fn bias_act_inplace(
        &self,
        act: Activation,
        shape: Shape,
        bias: Option<&CudaSlice<f32>>,
        x: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "bias_act_inplace";
        if let Some(b) = bias {
            check::vector(OP, "bias", b.len(), shape.cols)?;
        }
        check::matrix(OP, "x", x.len(), shape)?;
        if shape.is_empty() {
            return Ok(());
        }
        launch!(self, OP, "bias_act_inplace", elems(shape.len());
            &act_id(act), &u(shape.rows), &u(shape.cols), bias.unwrap_or(&self.dummy_f32),
            &flag(bias.is_some()), x)
    }

    fn bias_act_backward(
        &self,
        act: Activation,
        shape: Shape,
        z: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dz: &mut CudaSlice<f32>,
        dbias: Option<&mut CudaSlice<f32>>,
    ) -> Result<()> {
        const OP: &str = "bias_act_backward";
        check::matrix(OP, "z", z.len(), shape)?;
        check::matrix(OP, "dy", dy.len(), shape)?;
        check::matrix(OP, "dz", dz.len(), shape)?;
        if let Some(db) = &dbias {
            check::vector(OP, "dbias", db.len(), shape.cols)?;
        }
        if shape.is_empty() {
            return Ok(());
        }
        launch!(self, OP, "bias_act_backward", elems(shape.len()); &act_id(act), &u(shape.len()), z, dy, &mut *dz)?;
        if let Some(db) = dbias {
            launch!(self, OP, "col_sum", elems(shape.cols);
                &u(shape.rows), &u(shape.cols), &*dz, db, &1i32)?;
        }
        Ok(())
    }

    // ---- elementwise ----------------------------------------------------------------

    fn add(&self, n: usize, a: &CudaSlice<f32>, b: &CudaSlice<f32>, out: &mut CudaSlice<f32>) -> Result<()> {
        binary_checks("add", n, a, b, out)?;
        if n == 0 {
            return Ok(());
        }
        launch!(self, "add", "add_f32", elems(n); &u(n), a, b, out)
    }
    fn mul(&self, n: usize, a: &CudaSlice<f32>, b: &CudaSlice<f32>, out: &mut CudaSlice<f32>) -> Result<()> {
        binary_checks("mul", n, a, b, out)?;
        if n == 0 {
            return Ok(());
        }
        launch!(self, "mul", "mul_f32", elems(n); &u(n), a, b, out)
    }
    fn mul_acc(&self, n: usize, a: &CudaSlice<f32>, b: &CudaSlice<f32>, out: &mut CudaSlice<f32>) -> Result<()> {
        binary_checks("mul_acc", n, a, b, out)?;
        if n == 0 {
            return Ok(());
        }
        launch!(self, "mul_acc", "mul_acc_f32", elems(n); &u(n), a, b, out)
    }
    fn mul_backward(
        &self,
        n: usize,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        da: &mut CudaSlice<f32>,
        db: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "mul_backward";
        binary_checks(OP, n, a, b, dout)?;
        check::vector(OP, "da", da.len(), n)?;
        check::vector(OP, "db", db.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        launch!(self, OP, "mul_backward_f32", elems(n); &u(n), a, b, dout, da, db)
    }
    fn scale(&self, n: usize, alpha: f32, x: &mut CudaSlice<f32>) -> Result<()> {
        check::vector("scale", "x", x.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        launch!(self, "scale", "scale_f32", elems(n); &u(n), &alpha, x)
    }
    fn axpy(&self, n: usize, alpha: f32, x: &CudaSlice<f32>, y: &mut CudaSlice<f32>) -> Result<()> {
        check::vector("axpy", "x", x.len(), n)?;
        check::vector("axpy", "y", y.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        launch!(self, "axpy", "axpy_f32", elems(n); &u(n), &alpha, x, y)
    }
    fn copy_cols(&self, spec: &ColCopy, src: &CudaSlice<f32>, dst: &mut CudaSlice<f32>) -> Result<()> {
        const OP: &str = "copy_cols";
        check::col_copy(spec, src.len(), dst.len())?;
        if spec.rows == 0 || spec.cols == 0 {
            return Ok(());
        }
        launch!(self, OP, "copy_cols_f32", elems(spec.rows * spec.cols);
            &u(spec.rows), &u(spec.cols), &u(spec.src_ld), &u(spec.src_col), &u(spec.dst_ld),
            &u(spec.dst_col), &flag(spec.accumulate), src, dst)
    }

    // ---- softmax and row normalisation ----------------------------------------------

    fn softmax_rows(&self, shape: Shape, x: &CudaSlice<f32>, y: &mut CudaSlice<f32>) -> Result<()> {
        const OP: &str = "softmax_rows";
        check::matrix(OP, "x", x.len(), shape)?;
        check::matrix(OP, "y", y.len(), shape)?;
        if shape.is_empty() {
            return Ok(());
        }
        launch!(self, OP, "softmax_rows", per_row(shape.rows); &u(shape.rows), &u(shape.cols), x, y)
    }
    fn softmax_rows_backward(
        &self,
        shape: Shape,
        y: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "softmax_rows_backward";
        check::matrix(OP, "y", y.len(), shape)?;
        check::matrix(OP, "dy", dy.len(), shape)?;
        check::matrix(OP, "dx", dx.len(), shape)?;
        if shape.is_empty() {
            return Ok(());
        }
        launch!(self, OP, "softmax_rows_backward", per_row(shape.rows); &u(shape.rows), &u(shape.cols), y, dy, dx)
    }

    fn normalize_rows(
        &self,
        shape: Shape,
        eps: f32,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        rnorm: &mut CudaSlice<f32>,
    ) -> Result<()> {
        mixrank_engine::normalize::check_forward(shape, eps, x.len(), y.len(), rnorm.len())?;
        if shape.rows == 0 {
            return Ok(());
        }
        launch!(self, "normalize_rows", "normalize_rows", per_row(shape.rows);
            &u(shape.rows), &u(shape.cols), &eps, x, y, rnorm)
    }
    fn normalize_rows_backward(
        &self,
        shape: Shape,
        y: &CudaSlice<f32>,
        rnorm: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<()> {
        mixrank_engine::normalize::check_backward(shape, y.len(), rnorm.len(), dy.len(), dx.len())?;
        if shape.is_empty() {
            return Ok(());
        }
        launch!(self, "normalize_rows_backward", "normalize_rows_backward", per_row(shape.rows);
            &u(shape.rows), &u(shape.cols), y, rnorm, dy, dx)
    }

    // ---- layer norm -----------------------------------------------------------------

    fn layer_norm_forward(
        &self,
        spec: &LayerNormSpec,
        x: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        beta: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        stats: &mut NormStats<Self>,
    ) -> Result<()> {
        const OP: &str = "layer_norm_forward";
        let shape = Shape::new(spec.rows, spec.cols);
        check_eps(spec)?;
        check::matrix(OP, "x", x.len(), shape)?;
        check::matrix(OP, "y", y.len(), shape)?;
        check::vector(OP, "gamma", gamma.len(), spec.cols)?;
        check::vector(OP, "beta", beta.len(), spec.cols)?;
        check::vector(OP, "mean", stats.mean.len(), spec.rows)?;
        check::vector(OP, "rstd", stats.rstd.len(), spec.rows)?;
        if spec.rows == 0 {
            return Ok(());
        }
        launch!(self, OP, "layer_norm_forward", per_row(spec.rows);
            &u(spec.rows), &u(spec.cols), &spec.eps, x, gamma, beta, y, &mut stats.mean, &mut stats.rstd)
    }

    fn layer_norm_backward(
        &self,
        spec: &LayerNormSpec,
        x: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        stats: &NormStats<Self>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
        dgamma: &mut CudaSlice<f32>,
        dbeta: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "layer_norm_backward";
        let shape = Shape::new(spec.rows, spec.cols);
        check_eps(spec)?;
        check::matrix(OP, "x", x.len(), shape)?;
        check::matrix(OP, "dy", dy.len(), shape)?;
        check::matrix(OP, "dx", dx.len(), shape)?;
        check::vector(OP, "gamma", gamma.len(), spec.cols)?;
        check::vector(OP, "dgamma", dgamma.len(), spec.cols)?;
        check::vector(OP, "dbeta", dbeta.len(), spec.cols)?;
        check::vector(OP, "mean", stats.mean.len(), spec.rows)?;
        check::vector(OP, "rstd", stats.rstd.len(), spec.rows)?;
        if shape.is_empty() {
            return Ok(());
        }
        launch!(self, OP, "layer_norm_backward_dx", per_row(spec.rows);
            &u(spec.rows), &u(spec.cols), x, gamma, &stats.mean, &stats.rstd, dy, dx)?;
        launch!(self, OP, "layer_norm_backward_params", elems(spec.cols);
            &u(spec.rows), &u(spec.cols), x, &stats.mean, &stats.rstd, dy, dgamma, dbeta)
    }

    // ---- embeddings -----------------------------------------------------------------

    fn gather_rows(
        &self,
        spec: &GatherSpec,
        ids: &CudaSlice<u32>,
        table: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "gather_rows";
        check::gather(OP, spec, table.len(), out.len())?;
        check::vector(OP, "ids", ids.len(), spec.batch)?;
        if spec.batch == 0 || spec.dim == 0 {
            return Ok(());
        }
        launch!(self, OP, "gather_rows", elems(spec.batch * spec.dim);
            &u(spec.batch), &u(spec.dim), &u(spec.table_rows), &u(spec.out_cols), &u(spec.col_offset),
            ids, table, out)
    }

    fn gather_pooled(
        &self,
        spec: &GatherSpec,
        pooling: Pooling,
        offsets: &CudaSlice<u32>,
        ids: &CudaSlice<u32>,
        table: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "gather_pooled";
        check::gather(OP, spec, table.len(), out.len())?;
        check::holds(OP, "offsets", offsets.len(), &[spec.batch + 1], spec.batch + 1)?;
        if spec.batch == 0 || spec.dim == 0 {
            return Ok(());
        }
        let pool = match pooling {
            Pooling::Sum => 0i32,
            Pooling::Mean => 1i32,
        };
        launch!(self, OP, "gather_pooled", elems(spec.batch * spec.dim);
            &u(spec.batch), &u(spec.dim), &u(spec.table_rows), &u(spec.out_cols), &u(spec.col_offset),
            &pool, offsets, ids, &u(ids.len()), table, out)
    }

    fn scatter_rows_grad(
        &self,
        spec: &GatherSpec,
        ids: &CudaSlice<u32>,
        dout: &CudaSlice<f32>,
        grad: &mut SparseGrad<Self>,
    ) -> Result<()> {
        const OP: &str = "scatter_rows_grad";
        check::gather(OP, spec, spec.table_rows * spec.dim, dout.len())?;
        check::vector(OP, "ids", ids.len(), spec.batch)?;
        let host_ids = self.read_u32(OP, ids, spec.batch)?;
        check::ids_in_range(OP, &host_ids, spec.table_rows)?;
        let offsets: Vec<u32> = (0..=spec.batch as u32).collect();
        self.scatter_sorted(OP, spec, Pooling::Sum, &offsets, &host_ids, dout, grad)
    }

    fn scatter_pooled_grad(
        &self,
        spec: &GatherSpec,
        pooling: Pooling,
        offsets: &CudaSlice<u32>,
        ids: &CudaSlice<u32>,
        dout: &CudaSlice<f32>,
        grad: &mut SparseGrad<Self>,
    ) -> Result<()> {
        const OP: &str = "scatter_pooled_grad";
        check::gather(OP, spec, spec.table_rows * spec.dim, dout.len())?;
        check::holds(OP, "offsets", offsets.len(), &[spec.batch + 1], spec.batch + 1)?;
        let host_offsets = self.read_u32(OP, offsets, spec.batch + 1)?;
        let nnz = check::offsets(OP, &host_offsets, spec.batch, ids.len())?;
        let host_ids = self.read_u32(OP, ids, nnz)?;
        check::ids_in_range(OP, &host_ids, spec.table_rows)?;
        self.scatter_sorted(OP, spec, pooling, &host_offsets, &host_ids, dout, grad)
    }

    // ---- reductions -----------------------------------------------------------------

    fn block_dot(
        &self,
        s: BlockShape,
        t: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        accumulate: bool,
    ) -> Result<()> {
        mixrank_engine::block::check_dot(s, t.len(), y.len(), out.len())?;
        if s.rows * s.blocks == 0 {
            return Ok(());
        }
        launch!(self, "block_dot", "block_dot", elems(s.rows * s.blocks);
            &u(s.rows), &u(s.blocks), &u(s.width), t, y, out, &flag(accumulate))
    }
    fn block_outer(
        &self,
        s: BlockShape,
        d: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        mixrank_engine::block::check_outer(s, d.len(), y.len(), out.len())?;
        if s.rows * s.blocks * s.width == 0 {
            return Ok(());
        }
        launch!(self, "block_outer", "block_outer", elems(s.rows * s.blocks * s.width);
            &u(s.rows), &u(s.blocks), &u(s.width), d, y, out)
    }
    fn block_dot_t(
        &self,
        s: BlockShape,
        d: &CudaSlice<f32>,
        t: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        mixrank_engine::block::check_dot_t(s, d.len(), t.len(), out.len())?;
        if s.rows * s.width == 0 {
            return Ok(());
        }
        launch!(self, "block_dot_t", "block_dot_t", elems(s.rows * s.width);
            &u(s.rows), &u(s.blocks), &u(s.width), d, t, out)
    }

    fn sum_rows(&self, shape: Shape, x: &CudaSlice<f32>, out: &mut CudaSlice<f32>) -> Result<()> {
        check::matrix("sum_rows", "x", x.len(), shape)?;
        check::vector("sum_rows", "out", out.len(), shape.rows)?;
        if shape.rows == 0 {
            return Ok(());
        }
        launch!(self, "sum_rows", "row_sum", per_row(shape.rows); &u(shape.rows), &u(shape.cols), x, out)
    }
    fn sum_cols(&self, shape: Shape, x: &CudaSlice<f32>, out: &mut CudaSlice<f32>) -> Result<()> {
        check::matrix("sum_cols", "x", x.len(), shape)?;
        check::vector("sum_cols", "out", out.len(), shape.cols)?;
        if shape.cols == 0 {
            return Ok(());
        }
        launch!(self, "sum_cols", "col_sum", elems(shape.cols); &u(shape.rows), &u(shape.cols), x, out, &0i32)
    }
    fn sum(&self, n: usize, x: &CudaSlice<f32>) -> Result<f32> {
        const OP: &str = "sum";
        check::vector(OP, "x", x.len(), n)?;
        let mut s = self.scratch();
        launch!(self, OP, "sum_f64", single(); &u(n), x, &mut s.sums)?;
        Ok(self.read_sums(OP, &s.sums)?[0] as f32)
    }

    // ---- masks ----------------------------------------------------------------------

    fn dropout_mask(
        &self,
        n: usize,
        p: f32,
        seed: u64,
        step: u64,
        first: u64,
        mask: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "dropout_mask";
        check::vector(OP, "mask", mask.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let p = p as f64;
        let keep_scale = (1.0 / (1.0 - p)) as f32;
        let base = dropout_base(seed, step).wrapping_add(first);
        launch!(self, OP, "dropout_mask", elems(n); &u(n), &p, &keep_scale, &base, mask)
    }

    fn top_k_mask(&self, shape: Shape, k: usize, x: &CudaSlice<f32>, mask: &mut CudaSlice<f32>) -> Result<()> {
        const OP: &str = "top_k_mask";
        check::vector(OP, "x", x.len(), shape.len())?;
        check::vector(OP, "mask", mask.len(), shape.len())?;
        if shape.is_empty() {
            return Ok(());
        }
        launch!(self, OP, "top_k_mask", elems(shape.rows); &u(shape.rows), &u(shape.cols), &u(k), x, mask)
    }

    fn gate_dropout_mask(
        &self,
        shape: Shape,
        p: f32,
        seed: u64,
        step: u64,
        first_row: u64,
        mask: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "gate_dropout_mask";
        check::vector(OP, "mask", mask.len(), shape.len())?;
        if shape.is_empty() {
            return Ok(());
        }
        let base = dropout_base(seed, step).wrapping_add(first_row.wrapping_mul(shape.cols as u64));
        launch!(self, OP, "gate_dropout_mask", elems(shape.rows);
            &u(shape.rows), &u(shape.cols), &(p as f64), &base, mask)
    }

    fn feature_dropout_mask(
        &self,
        rows: usize,
        slot_of: &CudaSlice<u32>,
        slots: usize,
        p: f32,
        seed: u64,
        step: u64,
        first_row: u64,
        mask: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "feature_dropout_mask";
        let cols = slot_of.len();
        check::vector(OP, "mask", mask.len(), rows * cols)?;
        if rows * cols == 0 {
            return Ok(());
        }
        let base = dropout_base(seed, step).wrapping_add(first_row.wrapping_mul(slots as u64));
        launch!(self, OP, "feature_dropout_mask", elems(rows * cols);
            &u(rows), &u(cols), &u(slots), &(p as f64), &base, slot_of, mask)
    }

    // ---- optimizers -----------------------------------------------------------------

    fn sq_norm_acc(&self, n: usize, x: &CudaSlice<f32>, acc: &mut CudaSlice<f32>) -> Result<()> {
        const OP: &str = "sq_norm_acc";
        check::vector(OP, "x", x.len(), n)?;
        check::vector("sq_norm", "acc", acc.len(), NORM_ACC_LEN)?;
        launch!(self, OP, "sq_norm_acc", single(); &u(n), x, acc)
    }
    fn sq_norm_read(&self, acc: &CudaSlice<f32>) -> Result<f64> {
        check::vector("sq_norm", "acc", acc.len(), NORM_ACC_LEN)?;
        let mut host = [0f32; NORM_ACC_LEN];
        self.dtoh("sq_norm_read", acc, &mut host)?;
        Ok(f64::from_bits(host[0].to_bits() as u64 | ((host[1].to_bits() as u64) << 32)))
    }
    fn adam_update(
        &self,
        n: usize,
        spec: &AdamSpec,
        acc: &CudaSlice<f32>,
        w: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "adam_update";
        for (name, len) in [("w", w.len()), ("g", g.len()), ("m", m.len()), ("v", v.len())] {
            check::vector(OP, name, len, n)?;
        }
        check::vector("sq_norm", "acc", acc.len(), NORM_ACC_LEN)?;
        if n == 0 {
            return Ok(());
        }
        launch!(self, OP, "adam_update", elems(n);
            &u(n), &spec.lr, &spec.beta1, &spec.beta2, &spec.eps, &spec.step_size, &spec.bc2_sqrt,
            &spec.l2, &spec.decoupled, &flag(spec.clip_norm.is_some()), &spec.clip_norm.unwrap_or(0.0),
            acc, w, g, m, v)
    }
    fn merge_sparse_grads(
        &self,
        dim: usize,
        a: SparseView<'_, Self>,
        b: SparseView<'_, Self>,
        out: &mut SparseGrad<Self>,
    ) -> Result<()> {
        const OP: &str = "merge_sparse_grads";
        for (len, ids, rows) in [a, b] {
            check::vector(OP, "ids", ids.len(), len)?;
            check::vector(OP, "rows", rows.len(), len * dim)?;
        }
        let (ia, ib) = (self.read_u32(OP, a.1, a.0)?, self.read_u32(OP, b.1, b.0)?);
        let (mut ids, mut from_a, mut from_b) = (Vec::new(), Vec::new(), Vec::new());
        let (mut i, mut j) = (0, 0);
        while i < ia.len() || j < ib.len() {
            let (take_a, take_b) = match (ia.get(i), ib.get(j)) {
                (Some(x), Some(y)) => (x <= y, y <= x),
                (Some(_), None) => (true, false),
                _ => (false, true),
            };
            ids.push(if take_a { ia[i] } else { ib[j] });
            from_a.push(if take_a { i as u32 } else { NO_POS });
            from_b.push(if take_b { j as u32 } else { NO_POS });
            i += take_a as usize;
            j += take_b as usize;
        }
        self.ensure_sparse(OP, out, dim, a.0 + b.0)?;
        out.len = ids.len();
        if ids.is_empty() {
            return Ok(());
        }
        self.htod(OP, &ids, &mut out.ids)?;
        let mut s = self.scratch();
        let s = &mut *s;
        self.reserve(OP, &mut s.u32_a, ids.len())?;
        self.reserve(OP, &mut s.u32_b, ids.len())?;
        self.htod(OP, &from_a, &mut s.u32_a)?;
        self.htod(OP, &from_b, &mut s.u32_b)?;
        let (ra, rb) = (a.2, b.2);
        let ra = if ra.is_empty() { &self.dummy_f32 } else { ra };
        let rb = if rb.is_empty() { &self.dummy_f32 } else { rb };
        launch!(self, OP, "merge_rows", elems(ids.len() * dim);
            &u(ids.len()), &u(dim), &s.u32_a, &s.u32_b, ra, rb, &mut out.rows)
    }
    fn rowwise_adagrad_update(
        &self,
        spec: &RowAdagradSpec,
        shape: TableShape,
        len: usize,
        ids: &CudaSlice<u32>,
        rows: &CudaSlice<f32>,
        table: &mut CudaSlice<f32>,
        acc: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "rowwise_adagrad";
        check::vector(OP, "grad ids", ids.len(), len)?;
        check::vector(OP, "grad rows", rows.len(), len * shape.dim)?;
        check::vector(OP, "table", table.len(), shape.rows * shape.dim)?;
        check::vector(OP, "accumulators", acc.len(), shape.rows)?;
        let mut s = self.scratch();
        let all = spec.rows == SparseRows::All;
        let walked = if all { shape.rows } else { len };
        if walked == 0 || shape.dim == 0 {
            return Ok(());
        }
        if all {
            self.row_positions(OP, shape, len, ids, &mut s.u32_a)?;
        }
        let pos = if all { &s.u32_a } else { &self.dummy_u32 };
        let ids = if len == 0 { &self.dummy_u32 } else { ids };
        let rows = if rows.is_empty() { &self.dummy_f32 } else { rows };
        launch!(self, OP, "rowwise_adagrad", per_row(walked);
            &u(walked), &u(shape.rows), &u(shape.dim), &flag(all), &spec.lr, &spec.eps, &spec.weight_decay,
            ids, pos, rows, table, acc)
    }
    fn lazy_adam_update(
        &self,
        spec: &LazyAdamSpec,
        shape: TableShape,
        len: usize,
        ids: &CudaSlice<u32>,
        rows: &CudaSlice<f32>,
        table: &mut CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        steps: &mut CudaSlice<u32>,
    ) -> Result<()> {
        const OP: &str = "lazy_adam";
        check::vector(OP, "grad ids", ids.len(), len)?;
        check::vector(OP, "grad rows", rows.len(), len * shape.dim)?;
        let n = shape.rows * shape.dim;
        for (name, l) in [("table", table.len()), ("m", m.len()), ("v", v.len())] {
            check::vector(OP, name, l, n)?;
        }
        check::vector(OP, "row steps", steps.len(), shape.rows)?;
        let mut s = self.scratch();
        let all = spec.rows == SparseRows::All;
        let walked = if all { shape.rows } else { len };
        if walked == 0 {
            return Ok(());
        }
        if all {
            self.row_positions(OP, shape, len, ids, &mut s.u32_a)?;
        }
        let pos = if all { &s.u32_a } else { &self.dummy_u32 };
        let ids = if len == 0 { &self.dummy_u32 } else { ids };
        let rows = if rows.is_empty() { &self.dummy_f32 } else { rows };
        launch!(self, OP, "lazy_adam", per_row(walked);
            &u(walked), &u(shape.rows), &u(shape.dim), &flag(all), &spec.lr, &spec.beta1, &spec.beta2,
            &spec.eps, &spec.weight_decay, &flag(spec.global_step.is_some()), &spec.global_step.unwrap_or(0),
            ids, pos, rows, table, m, v, steps)
    }

    // ---- losses ---------------------------------------------------------------------

    fn bce_with_logits(
        &self,
        n: usize,
        input: LossInput<'_, CudaSlice<f32>>,
        grad: &mut CudaSlice<f32>,
        write: GradWrite,
    ) -> Result<f32> {
        self.pointwise_loss("bce_with_logits", 0, 0.0, n, input, grad, write)
    }
    fn mse(
        &self,
        n: usize,
        input: LossInput<'_, CudaSlice<f32>>,
        grad: &mut CudaSlice<f32>,
        write: GradWrite,
    ) -> Result<f32> {
        self.pointwise_loss("mse", 1, 0.0, n, input, grad, write)
    }
    fn huber(
        &self,
        n: usize,
        delta: f32,
        input: LossInput<'_, CudaSlice<f32>>,
        grad: &mut CudaSlice<f32>,
        write: GradWrite,
    ) -> Result<f32> {
        if !(delta.is_finite() && delta > 0.0) {
            return Err(EngineError::InvalidArgument { op: "huber", reason: "delta must be a finite number > 0" });
        }
        self.pointwise_loss("huber", 2, delta, n, input, grad, write)
    }
    fn softmax_xent_diag(
        &self,
        n: usize,
        scores: &CudaSlice<f32>,
        weight: &CudaSlice<f32>,
        grad: &mut CudaSlice<f32>,
        write: GradWrite,
    ) -> Result<f32> {
        const OP: &str = "softmax_xent_diag";
        check::vector(OP, "scores", scores.len(), n * n)?;
        check::vector(OP, "weight", weight.len(), n)?;
        check::vector(OP, "grad", grad.len(), n * n)?;
        if n == 0 {
            return Ok(0.0);
        }
        let mut s = self.scratch();
        let s = &mut *s;
        self.reserve(OP, &mut s.f64_a, n)?;
        launch!(self, OP, "xent_weight_sum", single(); &u(n), weight, &mut s.sums)?;
        launch!(self, OP, "softmax_xent_diag_rows", per_row(n);
            &u(n), scores, weight, &write.scale, &flag(write.accumulate), &s.sums, &mut s.f64_a, &mut *grad)?;
        launch!(self, OP, "sum_parts", single(); &u(n), &s.f64_a, &mut s.sums)?;
        let [loss, wsum] = self.read_sums(OP, &s.sums)?;
        Ok(if wsum == 0.0 { 0.0 } else { (loss / wsum) as f32 })
    }
    fn pairwise_ranknet(
        &self,
        spec: &PairSpec,
        pairs: &CudaSlice<u32>,
        input: LossInput<'_, CudaSlice<f32>>,
        grad: &mut CudaSlice<f32>,
        write: GradWrite,
    ) -> Result<f32> {
        const OP: &str = "pairwise_ranknet";
        let n = spec.rows;
        check::loss_input(
            OP,
            n,
            input.pred.len(),
            input.target.len(),
            input.weight.map(|w| w.len()),
            input.mask.map(|m| m.len()),
            grad.len(),
        )?;
        Self::check_given_weight_sum(OP, input.weight_sum)?;
        Self::check_temperature(OP, spec.temperature)?;
        check::holds(OP, "pairs", pairs.len(), &[spec.pairs, 2], 2 * spec.pairs)?;
        let host_pairs = self.read_u32(OP, pairs, 2 * spec.pairs)?;
        check::ids_in_range(OP, &host_pairs, n)?;
        let weight = input.weight.unwrap_or(&self.dummy_f32);
        let mask = input.mask.unwrap_or(&self.dummy_f32);
        let pairs = if spec.pairs == 0 { &self.dummy_u32 } else { pairs };
        let mut s = self.scratch();
        launch!(self, OP, "pairwise_ranknet", serial();
            &u(n), &u(spec.pairs), &spec.temperature, pairs, input.pred, input.target,
            weight, &flag(input.weight.is_some()), mask, &flag(input.mask.is_some()),
            &write.scale, &flag(write.accumulate), &mut s.sums, &mut *grad)?;
        let [loss, wsum] = self.read_sums(OP, &s.sums)?;
        Ok(if wsum == 0.0 { 0.0 } else { (loss / wsum) as f32 })
    }
    fn listwise_softmax(
        &self,
        spec: &GroupSpec,
        offsets: &CudaSlice<u32>,
        members: &CudaSlice<u32>,
        input: LossInput<'_, CudaSlice<f32>>,
        grad: &mut CudaSlice<f32>,
        write: GradWrite,
    ) -> Result<f32> {
        const OP: &str = "listwise_softmax";
        let n = spec.rows;
        check::loss_input(
            OP,
            n,
            input.pred.len(),
            input.target.len(),
            input.weight.map(|w| w.len()),
            input.mask.map(|m| m.len()),
            grad.len(),
        )?;
        Self::check_given_weight_sum(OP, input.weight_sum)?;
        Self::check_temperature(OP, spec.temperature)?;
        check::holds(OP, "offsets", offsets.len(), &[spec.groups + 1], spec.groups + 1)?;
        let host_offsets = self.read_u32(OP, offsets, spec.groups + 1)?;
        let used = check::offsets(OP, &host_offsets, spec.groups, members.len())?;
        let host_members = self.read_u32(OP, members, used)?;
        check::ids_in_range(OP, &host_members, n)?;
        let weight = input.weight.unwrap_or(&self.dummy_f32);
        let mask = input.mask.unwrap_or(&self.dummy_f32);
        let members = if used == 0 { &self.dummy_u32 } else { members };
        let mut s = self.scratch();
        launch!(self, OP, "listwise_softmax", serial();
            &u(n), &u(spec.groups), &spec.temperature, offsets, members, input.pred, input.target,
            weight, &flag(input.weight.is_some()), mask, &flag(input.mask.is_some()),
            &write.scale, &flag(write.accumulate), &mut s.sums, &mut *grad)?;
        let [loss, wsum] = self.read_sums(OP, &s.sums)?;
        Ok(if wsum == 0.0 { 0.0 } else { (loss / wsum) as f32 })
    }
}

fn binary_checks(
    op: &'static str,
    n: usize,
    a: &CudaSlice<f32>,
    b: &CudaSlice<f32>,
    out: &CudaSlice<f32>,
) -> Result<()> {
    check::vector(op, "a", a.len(), n)?;
    check::vector(op, "b", b.len(), n)?;
    check::vector(op, "out", out.len(), n)
}

fn check_eps(spec: &LayerNormSpec) -> Result<()> {
    if spec.eps.is_nan() || spec.eps < 0.0 {
        return Err(EngineError::InvalidArgument { op: "layer_norm", reason: "eps must be a non-negative number" });
    }
    Ok(())
}
