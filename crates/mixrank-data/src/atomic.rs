//! Crash-safe file writes: write to a temporary name beside the target, sync, rename.
//! A crash leaves either the old file or the new one, never a half-written file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary name used while `path` is being written (hidden, per process).
pub fn tmp_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically, creating its directory if needed. On error the
/// returned path is the file the failing operation touched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), (PathBuf, std::io::Error)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| (dir.to_path_buf(), e))?;
    }
    let tmp = tmp_name(path);
    let mut f = std::fs::File::create(&tmp).map_err(|e| (tmp.clone(), e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| (tmp.clone(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| (path.to_path_buf(), e))
}
