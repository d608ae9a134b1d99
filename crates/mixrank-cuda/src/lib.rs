//! The CUDA backend of `mixrank-engine`: [`CudaOps`] implements
//! [`mixrank_engine::Backend`] with cuBLAS for the GEMM (f32, TF32 off) and
//! NVRTC-compiled kernels (`src/kernels/*.cu`) for every other op.
//!
//! The CUDA libraries are loaded at run time (`cudarc`'s `dynamic-loading`): building
//! and testing this crate needs no CUDA toolkit, driver or GPU, and [`CudaOps::new`]
//! returns a [`CudaError`] (never panics) where they are missing. At run time only the
//! driver is required: libcublas is optional ([`GemmPath::Kernel`] without it), and
//! libnvrtc too when `MIXRANK_CUDA_PTX_DIR` names precompiled PTX
//! (`examples/write_ptx.rs`).
//!
//! # Status (issue 14, first part)
//! Every method of the trait but `pack_reduced` has a device implementation; **none has been run on a GPU
//! yet** (the session that wrote them had none). What was checked without one: the crate
//! builds, `CudaOps::new` fails cleanly on a machine without a driver, NVRTC compiles
//! every kernel source (`tests/nvrtc.rs`), and the conformance suite against the reference
//! backend (`tests/conformance.rs`) and `mixrank-nn`'s layers against their rounding bound
//! (`tests/layers.rs`) pass at small shapes on a host emulation of the driver and cuBLAS
//! (`emu/run.sh`: this crate's Rust code as is, the kernels compiled for the CPU). On a
//! GPU the suites are `bench/gpu_check.sh`.
//!
//! Not done yet: bf16 GEMMs (`pack_reduced` refuses, the trait's default), CUDA graphs,
//! the copy stream with pinned buffers, multi-tensor optimizer launches and a device sort
//! (see below). (`--device cuda[:N]` on train, eval, predict, serve and bench is in the
//! CLI, `crates/mixrank/src/backend.rs`; several GPUs train data-parallel under `mpirun
//! … --device cuda` with NCCL, `mixrank-dist`'s `Nccl`. PyTorch's figures on the same GPU
//! come from `bench/torch_gpu_bench.py` and the heterogeneous twin with `--device cuda`,
//! which `bench/gpu_check.sh` runs; none has run on a GPU yet.)
//!
//! # Differences from the host backends
//! - **Sync points beyond the trait's.** The sparse-gradient ops must return the number
//!   of distinct ids on the host (`SparseGrad::len`), so `scatter_rows_grad`,
//!   `scatter_pooled_grad` and `merge_sparse_grads` read their ids back, sort them on
//!   the host and upload the plan; the reduction itself runs on the device, each row
//!   summed in batch order (deterministic, no float atomics). The ranking losses read
//!   their pairs / groups back to validate them (they synchronise anyway).
//! - **Unvalidated ids in the forward.** `gather_rows`, `gather_pooled` and the sparse
//!   optimizers do not read ids or offsets back, so an id past the table is not reported
//!   as `IdOutOfRange`: the gathers write 0 for it and the updates skip it. Invalid CSR
//!   offsets are not reported either (the gather reads no id past the buffer).
//! - **Driver failures** surface as `EngineError::InvalidArgument` (the engine's error
//!   has no device variant yet); [`CudaOps::last_error`] holds the driver's message.
//! - Sums use block trees (f32 within rows, f64 for the losses and norms), so results
//!   match the reference to rounding, not bit for bit; per-column sums (bias, layer-norm
//!   parameter gradients, `sum_cols`), per-element ops, masks and the sparse-gradient
//!   rows follow the reference's order (`--fmad=false`).

mod backend;
mod check;
mod error;
pub mod kernels;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream};
use mixrank_engine::GemmOperands;

pub use error::CudaError;

/// Which implementation runs [`mixrank_engine::Backend::gemm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmPath {
    /// cuBLAS `sgemm` (TF32 off): the fast path, the default when libcublas loads.
    Cublas,
    /// This crate's tiled kernel (`kernels/gemm.cu`): slow, but needs no libcublas, and
    /// each element is the reference's sequential dot product.
    Kernel,
}

/// The CUDA backend: one context and one compute stream on one GPU, cuBLAS, and the
/// compiled kernels. Buffers are device memory (`CudaSlice<f32>` / `CudaSlice<u32>`).
pub struct CudaOps {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// `None` when libcublas is absent (the GEMM runs [`GemmPath::Kernel`]).
    blas: Option<CudaBlas>,
    gemm_path: GemmPath,
    /// The operands of every GEMM (bf16: mixed-precision training, `backend.rs`).
    gemm_operands: GemmOperands,
    funcs: HashMap<&'static str, CudaFunction>,
    /// Stands in for an absent optional operand (a bias, a weight, a mask).
    dummy_f32: CudaSlice<f32>,
    dummy_u32: CudaSlice<u32>,
    scratch: Mutex<Scratch>,
    last_error: Mutex<Option<String>>,
}

/// Device scratch that only grows (so steady-state steps do not allocate).
pub(crate) struct Scratch {
    /// Loss and weight sums read back by the losses (f64).
    pub sums: CudaSlice<f64>,
    pub u32_a: CudaSlice<u32>,
    pub u32_b: CudaSlice<u32>,
    pub f32_a: CudaSlice<f32>,
    pub f64_a: CudaSlice<f64>,
    /// A GEMM's operands rounded to bf16 ([`GemmOperands::Bf16`]).
    pub gemm_a: CudaSlice<f32>,
    pub gemm_b: CudaSlice<f32>,
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic in the CUDA bindings".to_string())
}

/// Runs `f`, turning a panic of the bindings (a missing library or symbol) into an error.
fn guarded<T, E: std::fmt::Debug>(what: &'static str, f: impl FnOnce() -> Result<T, E>) -> Result<T, CudaError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CudaError::Driver { what, message: format!("{e:?}") }),
        Err(p) => Err(CudaError::Driver { what, message: panic_message(p) }),
    }
}

/// Whether the NVIDIA driver library can be loaded (no GPU needed to answer).
pub fn driver_present() -> bool {
    catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

/// Whether libnvrtc can be loaded.
pub fn nvrtc_present() -> bool {
    catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false)
}

/// Whether libcublas can be loaded.
pub fn cublas_present() -> bool {
    catch_unwind(|| unsafe { cudarc::cublas::sys::is_culib_present() }).unwrap_or(false)
}

/// A cuBLAS handle on `stream` with TF32 off (`CUBLAS_DEFAULT_MATH` does not use TF32
/// tensor cores for f32 GEMMs).
fn open_cublas(stream: &Arc<CudaStream>) -> Result<CudaBlas, CudaError> {
    let blas = match catch_unwind(AssertUnwindSafe(|| CudaBlas::new(stream.clone()))) {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(CudaError::Blas { what: "creating the handle", message: format!("{e:?}") }),
        Err(p) => return Err(CudaError::Blas { what: "creating the handle", message: panic_message(p) }),
    };
    // SAFETY: the handle is live (owned by `blas`); the call only sets its math mode.
    let status = unsafe {
        cudarc::cublas::sys::cublasSetMathMode(*blas.handle(), cudarc::cublas::sys::cublasMath_t::CUBLAS_DEFAULT_MATH)
    };
    if status != cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Err(CudaError::Blas { what: "setting the math mode", message: format!("{status:?}") });
    }
    Ok(blas)
}

/// The CUDA version of the loaded driver, as `major.minor` (or why it is unknown).
pub fn driver_version() -> String {
    if !driver_present() {
        return "absent".to_string();
    }
    let mut v = 0i32;
    // SAFETY: writes one int; the driver library loads (checked above).
    let r = catch_unwind(AssertUnwindSafe(|| unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }));
    match r {
        Ok(cudarc::driver::sys::CUresult::CUDA_SUCCESS) => format!("{}.{}", v / 1000, (v % 1000) / 10),
        _ => "unknown".to_string(),
    }
}

/// The version of the loaded libnvrtc, as `major.minor`.
pub fn nvrtc_version() -> String {
    if !nvrtc_present() {
        return "absent".to_string();
    }
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: writes two ints; libnvrtc loads (checked above).
    let r = catch_unwind(AssertUnwindSafe(|| unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }));
    match r {
        Ok(cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS) => format!("{major}.{minor}"),
        _ => "unknown".to_string(),
    }
}

impl CudaOps {
    /// Opens GPU `ordinal`: a context, a compute stream, cuBLAS (TF32 off) when libcublas
    /// loads (else the GEMM is [`GemmPath::Kernel`]), and every kernel compiled with NVRTC
    /// and loaded. Fails with a [`CudaError`] saying what is missing when there is no
    /// driver, no such GPU or no libnvrtc.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        let count = guarded("counting GPUs", || {
            cudarc::driver::result::init()?;
            CudaContext::device_count()
        })?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoDevice { ordinal, count: count.max(0) as usize });
        }
        let ctx = guarded("creating the context", || CudaContext::new(ordinal))?;
        // SAFETY: every buffer of this backend is used on `stream` alone (cuBLAS included),
        // so cudarc's per-buffer events, which order uses across streams, are not needed;
        // without them a launch is one driver call instead of two per buffer argument.
        unsafe { ctx.disable_event_tracking() };
        let stream = guarded("creating the stream", || ctx.new_stream())?;
        // Precompiled PTX (examples/write_ptx.rs) when MIXRANK_CUDA_PTX_DIR names it, so the
        // machine needs no libnvrtc; else NVRTC compiles every kernel file now.
        let ptx_dir = std::env::var_os("MIXRANK_CUDA_PTX_DIR").map(std::path::PathBuf::from);
        if ptx_dir.is_none() && !nvrtc_present() {
            return Err(CudaError::NoNvrtc);
        }
        let mut funcs = HashMap::new();
        for file in kernels::FILES {
            let ptx = if let Some(dir) = &ptx_dir {
                let path = dir.join(kernels::ptx_file_name(file));
                let text = std::fs::read_to_string(&path).map_err(|e| CudaError::Compile {
                    file: file.name,
                    message: format!("reading {} (MIXRANK_CUDA_PTX_DIR): {e}", path.display()),
                })?;
                kernels::ptx_from_text(file, text).map_err(|message| CudaError::Compile { file: file.name, message })?
            } else {
                match catch_unwind(|| kernels::compile(file)) {
                    Ok(Ok(ptx)) => ptx,
                    Ok(Err(e)) => return Err(CudaError::Compile { file: file.name, message: e.to_string() }),
                    Err(p) => return Err(CudaError::Compile { file: file.name, message: panic_message(p) }),
                }
            };
            let module = ctx.load_module(ptx).map_err(|e| CudaError::Driver {
                what: "loading a kernel module",
                message: format!(
                    "{e:?} (PTX from libnvrtc {}, driver {}: a driver older than libnvrtc cannot load its PTX; \
                     use the libnvrtc of the driver's CUDA version)",
                    nvrtc_version(),
                    driver_version()
                ),
            })?;
            for &name in file.kernels {
                funcs.insert(name, guarded("loading a kernel", || module.load_function(name))?);
            }
        }
        let blas = if cublas_present() { Some(open_cublas(&stream)?) } else { None };
        let gemm_path = if blas.is_some() { GemmPath::Cublas } else { GemmPath::Kernel };
        let scratch = guarded("allocating scratch", || -> Result<Scratch, cudarc::driver::DriverError> {
            Ok(Scratch {
                sums: stream.alloc_zeros(2)?,
                u32_a: stream.alloc_zeros(1)?,
                u32_b: stream.alloc_zeros(1)?,
                f32_a: stream.alloc_zeros(1)?,
                f64_a: stream.alloc_zeros(1)?,
                gemm_a: stream.alloc_zeros(1)?,
                gemm_b: stream.alloc_zeros(1)?,
            })
        })?;
        let dummy_f32 = guarded("allocating", || stream.alloc_zeros::<f32>(1))?;
        let dummy_u32 = guarded("allocating", || stream.alloc_zeros::<u32>(1))?;
        Ok(CudaOps {
            ctx,
            stream,
            blas,
            gemm_path,
            gemm_operands: GemmOperands::F32,
            funcs,
            dummy_f32,
            dummy_u32,
            scratch: Mutex::new(scratch),
            last_error: Mutex::new(None),
        })
    }

    /// The GPU's name, as the driver reports it.
    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|e| format!("unknown ({e:?})"))
    }

    /// One line for logs: the GPU, the driver's and libnvrtc's CUDA versions, the GEMM.
    pub fn describe(&self) -> String {
        format!(
            "{} (driver CUDA {}, libnvrtc {}, GEMM {:?})",
            self.device_name(),
            driver_version(),
            nvrtc_version(),
            self.gemm_path
        )
    }

    /// The GEMM implementation in use.
    pub fn gemm_path(&self) -> GemmPath {
        self.gemm_path
    }

    /// Uses `path` for GEMMs; [`GemmPath::Cublas`] without libcublas is
    /// [`CudaError::NoCublas`].
    pub fn with_gemm_path(mut self, path: GemmPath) -> Result<Self, CudaError> {
        if path == GemmPath::Cublas && self.blas.is_none() {
            return Err(CudaError::NoCublas);
        }
        self.gemm_path = path;
        Ok(self)
    }

    /// The same backend with GEMM operands `operands` (bf16: mixed-precision training;
    /// [`mixrank_engine::Backend::gemm_operands`]).
    pub fn with_gemm_operands(mut self, operands: GemmOperands) -> Self {
        self.gemm_operands = operands;
        self
    }

    /// The GEMM operands in use.
    pub fn operands(&self) -> GemmOperands {
        self.gemm_operands
    }

    /// The message of the last failed CUDA call, if any (the engine's error type carries
    /// only static text).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().map(|e| e.clone()).unwrap_or(None)
    }

    /// Waits for every op queued so far.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(|e| CudaError::Driver { what: "synchronising", message: format!("{e:?}") })
    }
}
