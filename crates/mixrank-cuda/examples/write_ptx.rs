//! Compiles every kernel file of the CUDA backend to PTX in a directory, for a GPU
//! machine without libnvrtc: run the backend there with `MIXRANK_CUDA_PTX_DIR=DIR`.
//! Needs libnvrtc here (e.g. `pip install nvidia-cuda-nvrtc-cu12` and its lib directory
//! on LD_LIBRARY_PATH). The driver must be at least libnvrtc's CUDA version to load the
//! PTX (an older libnvrtc makes PTX that more drivers load).
//!
//! `cargo run -p mixrank-cuda --example write_ptx -- DIR`

use mixrank_cuda::kernels;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: write_ptx DIR");
        std::process::exit(2)
    });
    if !mixrank_cuda::nvrtc_present() {
        eprintln!(
            "libnvrtc not found: pip install nvidia-cuda-nvrtc-cu12 and put nvidia/cuda_nvrtc/lib on LD_LIBRARY_PATH"
        );
        std::process::exit(1);
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {dir}: {e}"));
    for file in kernels::FILES {
        let text = kernels::ptx_text(file).unwrap_or_else(|e| panic!("{}: {e}", file.name));
        let path = std::path::Path::new(&dir).join(kernels::ptx_file_name(file));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        println!("{}", path.display());
    }
    println!("libnvrtc {}", mixrank_cuda::nvrtc_version());
}
