//! Compiles every kernel source with NVRTC: no GPU needed, only libnvrtc.
//!
//! Run it with `cargo test -p mixrank-cuda --test nvrtc -- --ignored` after
//! `pip install nvidia-cuda-nvrtc-cu12`; the test finds libnvrtc through
//! `MIXRANK_NVRTC_LIB` (the path of `libnvrtc.so.12`), else the system loader path, else
//! Python's site-packages (`nvidia/cuda_nvrtc/lib`). It fails when none has it.

use std::path::PathBuf;
use std::process::Command;

use mixrank_cuda::kernels;

/// Candidate paths of libnvrtc: the env var, then every Python site-packages directory.
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("MIXRANK_NVRTC_LIB") {
        out.push(PathBuf::from(p));
    }
    for python in ["python3", "python"] {
        let script = "import site, sys; print('\\n'.join(site.getsitepackages() + [site.getusersitepackages()]))";
        if let Ok(o) = Command::new(python).args(["-c", script]).output() {
            for dir in String::from_utf8_lossy(&o.stdout).lines() {
                let lib = PathBuf::from(dir).join("nvidia/cuda_nvrtc/lib");
                if let Ok(entries) = std::fs::read_dir(&lib) {
                    let mut libs: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                            name.starts_with("libnvrtc.so")
                        })
                        .collect();
                    libs.sort();
                    out.extend(libs);
                }
            }
        }
    }
    out
}

/// Loads libnvrtc by full path and keeps it loaded, so cudarc's later load by name (its
/// soname, `libnvrtc.so.12`) finds this copy. Returns the path used.
fn preload_nvrtc() -> Result<PathBuf, String> {
    if mixrank_cuda::nvrtc_present() {
        return Ok(PathBuf::from("(system loader path)"));
    }
    let tried = candidates();
    for path in &tried {
        // SAFETY: loading libnvrtc runs its initialisers, which have no preconditions.
        if let Ok(lib) = unsafe { libloading::Library::new(path) } {
            std::mem::forget(lib);
            if mixrank_cuda::nvrtc_present() {
                return Ok(path.clone());
            }
        }
    }
    Err(format!(
        "libnvrtc not found (tried MIXRANK_NVRTC_LIB, the loader path and {tried:?}): \
         pip install nvidia-cuda-nvrtc-cu12, or set MIXRANK_NVRTC_LIB to libnvrtc.so.12"
    ))
}

#[test]
#[ignore = "needs libnvrtc: pip install nvidia-cuda-nvrtc-cu12 (or set MIXRANK_NVRTC_LIB)"]
fn every_kernel_source_compiles_with_nvrtc() {
    let lib = preload_nvrtc().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("libnvrtc: {}", lib.display());
    let mut failures = Vec::new();
    for file in kernels::FILES {
        match kernels::compile(file) {
            Ok(ptx) => {
                let text = ptx.to_src();
                for name in file.kernels {
                    // Every kernel the backend loads by name is an entry of this module.
                    let entry = format!(".entry {name}(");
                    if !text.contains(&entry) {
                        failures.push(format!("{}: no `{entry}` in the PTX", file.name));
                    }
                }
                let entries = text.matches(".entry ").count();
                if entries != file.kernels.len() {
                    failures.push(format!("{}: {entries} entries, {} listed", file.name, file.kernels.len()));
                }
                eprintln!("{}: {} kernels, {} bytes of PTX", file.name, entries, text.len());
            }
            Err(e) => failures.push(format!("{}: {e}", file.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_kernel_list_names_each_kernel_once() {
    let mut names: Vec<&str> = kernels::FILES.iter().flat_map(|f| f.kernels.iter().copied()).collect();
    let before = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), before, "a kernel name is listed twice");
    for file in kernels::FILES {
        for name in file.kernels {
            let decl = format!("__global__ void {name}(");
            assert!(file.source.contains(&decl), "{}: `{decl}` not in the source", file.name);
        }
    }
}
