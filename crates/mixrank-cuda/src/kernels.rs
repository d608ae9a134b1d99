//! The NVRTC kernel sources, one file per op family under `src/kernels/`, each compiled
//! with `common.cuh` prepended (so NVRTC needs no include path), and the entry points
//! every module must define.
//!
//! PTX can also be compiled ahead of time ([`ptx_text`], `examples/write_ptx.rs`) and
//! loaded from a directory (`MIXRANK_CUDA_PTX_DIR`), so a GPU machine needs only the
//! driver. Each file starts with the hash of the source it came from ([`source_hash`]);
//! PTX of another source is refused, never launched with the wrong signatures.

use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

/// Definitions every kernel file shares (activations, block reductions, the mask hash).
pub const COMMON: &str = include_str!("kernels/common.cuh");

/// One kernel source file: its name, its text, and the `extern "C"` kernels it defines.
#[derive(Debug, Clone, Copy)]
pub struct KernelFile {
    pub name: &'static str,
    pub source: &'static str,
    pub kernels: &'static [&'static str],
}

/// Every kernel file of the backend.
pub const FILES: &[KernelFile] = &[
    KernelFile {
        name: "pointwise.cu",
        source: include_str!("kernels/pointwise.cu"),
        kernels: &[
            "bias_act_forward",
            "bias_act_inplace",
            "bias_act_backward",
            "col_sum",
            "row_sum",
            "add_f32",
            "mul_f32",
            "mul_acc_f32",
            "mul_backward_f32",
            "scale_f32",
            "axpy_f32",
            "fill_f32",
            "copy_cols_f32",
            "gemm_k0",
            "block_dot",
            "block_outer",
            "block_dot_t",
            "round_bf16",
        ],
    },
    KernelFile { name: "gemm.cu", source: include_str!("kernels/gemm.cu"), kernels: &["gemm_tiled"] },
    KernelFile {
        name: "softmax.cu",
        source: include_str!("kernels/softmax.cu"),
        kernels: &["softmax_rows", "softmax_rows_backward", "normalize_rows", "normalize_rows_backward"],
    },
    KernelFile {
        name: "layernorm.cu",
        source: include_str!("kernels/layernorm.cu"),
        kernels: &["layer_norm_forward", "layer_norm_backward_dx", "layer_norm_backward_params"],
    },
    KernelFile {
        name: "embedding.cu",
        source: include_str!("kernels/embedding.cu"),
        kernels: &["gather_rows", "gather_pooled", "scatter_segments", "merge_rows"],
    },
    KernelFile {
        name: "optim.cu",
        source: include_str!("kernels/optim.cu"),
        kernels: &["sq_norm_acc", "adam_update", "fill_u32", "row_positions", "rowwise_adagrad", "lazy_adam"],
    },
    KernelFile {
        name: "loss.cu",
        source: include_str!("kernels/loss.cu"),
        kernels: &[
            "pointwise_loss_sums",
            "pointwise_loss_grad",
            "sum_f64",
            "xent_weight_sum",
            "softmax_xent_diag_rows",
            "sum_parts",
            "pairwise_ranknet",
            "listwise_softmax",
        ],
    },
    KernelFile {
        name: "mask.cu",
        source: include_str!("kernels/mask.cu"),
        kernels: &["dropout_mask", "top_k_mask", "gate_dropout_mask", "feature_dropout_mask"],
    },
];

/// Threads per block of every launch; the block reductions in `common.cuh` assume it
/// (a power of two, the size of their shared arrays).
pub const BLOCK: u32 = 256;

/// The full source NVRTC compiles for `file`: the shared header, then the file.
pub fn full_source(file: &KernelFile) -> String {
    format!("{COMMON}\n// ---- {} ----\n{}", file.name, file.source)
}

/// NVRTC options: IEEE division and square root, no fused multiply-add (so each `a * b + c`
/// rounds twice, as the Rust reference does), no flush-to-zero.
pub fn options(file: &KernelFile) -> CompileOptions {
    CompileOptions {
        ftz: Some(false),
        prec_sqrt: Some(true),
        prec_div: Some(true),
        fmad: Some(false),
        name: Some(file.name.to_string()),
        ..Default::default()
    }
}

/// Compiles one kernel file to PTX (needs libnvrtc, not a GPU).
pub fn compile(file: &KernelFile) -> Result<Ptx, CompileError> {
    cudarc::nvrtc::compile_ptx_with_opts(full_source(file), options(file))
}

/// FNV-1a (64-bit) of the full source of `file`: names the source a PTX file came from.
pub fn source_hash(file: &KernelFile) -> u64 {
    full_source(file).bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The first line of a PTX file written for `file` (a PTX comment).
pub fn ptx_header(file: &KernelFile) -> String {
    format!("// mixrank-cuda {} source {:016x}", file.name, source_hash(file))
}

/// Compiles `file` and returns its PTX text behind [`ptx_header`], for
/// `MIXRANK_CUDA_PTX_DIR` (file name: [`ptx_file_name`]).
pub fn ptx_text(file: &KernelFile) -> Result<String, CompileError> {
    Ok(format!("{}\n{}", ptx_header(file), compile(file)?.to_src()))
}

/// The name of `file`'s PTX in a PTX directory (`pointwise.cu` → `pointwise.ptx`).
pub fn ptx_file_name(file: &KernelFile) -> String {
    format!("{}.ptx", file.name.trim_end_matches(".cu"))
}

/// Checks that `text` (read from a PTX directory) was compiled from `file`'s current
/// source, and returns it as PTX to load.
pub fn ptx_from_text(file: &KernelFile, text: String) -> Result<Ptx, String> {
    let header = ptx_header(file);
    if text.lines().next() != Some(header.as_str()) {
        return Err(format!(
            "{}: the PTX was not compiled from this build's source (expected first line `{header}`); \
             write it again with `cargo run -p mixrank-cuda --example write_ptx -- DIR`",
            ptx_file_name(file)
        ));
    }
    if text.contains('\0') {
        return Err(format!("{}: a NUL byte in the PTX", ptx_file_name(file)));
    }
    Ok(Ptx::from_src(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptx_of_another_source_is_refused() {
        let file = &FILES[0];
        let good = format!("{}\n.version 8.0\n", ptx_header(file));
        assert!(ptx_from_text(file, good).is_ok());
        let stale = format!("// mixrank-cuda {} source {:016x}\n.version 8.0\n", file.name, source_hash(file) ^ 1);
        let e = ptx_from_text(file, stale).unwrap_err();
        assert!(e.contains("not compiled from this build's source"), "{e}");
        assert!(ptx_from_text(file, ".version 8.0\n".to_string()).is_err());
        // Every file has its own hash.
        let mut hashes: Vec<u64> = FILES.iter().map(source_hash).collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), FILES.len());
    }
}
