//! Why the CUDA backend could not start.

/// An error opening the CUDA backend ([`crate::CudaOps::new`]). Op failures after that
/// are the engine's [`mixrank_engine::EngineError`], as the [`mixrank_engine::Backend`]
/// trait requires.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CudaError {
    /// `libcuda.so` could not be loaded: no NVIDIA driver on this machine.
    #[error(
        "CUDA requested but no NVIDIA driver was found (libcuda.so could not be loaded); \
         install the NVIDIA driver, or use the CPU backend (--device cpu)"
    )]
    NoDriver,
    /// The driver is there but has no GPU of that ordinal.
    #[error("CUDA requested device {ordinal} but the NVIDIA driver reports {count} GPU(s)")]
    NoDevice { ordinal: usize, count: usize },
    /// `libnvrtc.so` (the run-time kernel compiler) could not be loaded.
    #[error(
        "CUDA requested but libnvrtc (the CUDA run-time compiler) was not found: install the CUDA \
         toolkit, or `pip install nvidia-cuda-nvrtc-cu12` and put its nvidia/cuda_nvrtc/lib directory \
         on LD_LIBRARY_PATH"
    )]
    NoNvrtc,
    /// `libcublas.so` could not be loaded.
    #[error(
        "CUDA requested but libcublas was not found: install the CUDA toolkit, or `pip install \
         nvidia-cublas-cu12` and put its nvidia/cublas/lib directory on LD_LIBRARY_PATH"
    )]
    NoCublas,
    /// A driver call failed (or the driver bindings panicked) while starting.
    #[error("CUDA driver error while {what}: {message}")]
    Driver { what: &'static str, message: String },
    /// NVRTC rejected a kernel source (a bug in this crate).
    #[error("NVRTC could not compile {file}: {message}")]
    Compile { file: &'static str, message: String },
    /// cuBLAS could not start.
    #[error("cuBLAS error while {what}: {message}")]
    Blas { what: &'static str, message: String },
}
