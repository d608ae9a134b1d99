//! Large CPU buffers on transparent huge pages.
//!
//! An embedding table and its optimizer state are read and written at random rows: the
//! bench model's lazy Adam touches ~53,000 rows of 26 tables × 3 arrays of 6.4 MB per
//! step, and with 4 KB pages nearly every row costs a TLB miss (a page walk) on top of
//! its cache misses. Buffers of at least [`HUGE_MIN_BYTES`] are therefore marked
//! `madvise(MADV_HUGEPAGE)` before they are first written (Linux; where the kernel's
//! `transparent_hugepage` setting is `madvise` or `always` it then backs them with 2 MB
//! pages as they are touched). Zeroed buffers stay allocated as zeroed memory (pages
//! the kernel maps on first touch), so nothing is written at allocation. A hint:
//! contents and results are unchanged, and a kernel that refuses it leaves ordinary
//! pages.

/// Buffers at least this large ask for huge pages. Only the 2 MB-aligned interior of a
/// buffer can be marked (a `Vec` starts where the allocator put it), so a 6.4 MB table
/// gets 2 or 3 huge pages (4–6 MB of it); below two pages little would be covered.
pub const HUGE_MIN_BYTES: usize = 4 << 20;

/// `len` zeros (`T::default()` of a number type: zeroed memory, written on first use).
pub fn zeroed<T: Copy + Default>(len: usize) -> Vec<T> {
    let v = vec![T::default(); len];
    if len * size_of::<T>() >= HUGE_MIN_BYTES {
        advise(&v);
    }
    v
}

/// A copy of `host`.
pub fn copied<T: Copy>(host: &[T]) -> Vec<T> {
    if size_of_val(host) < HUGE_MIN_BYTES {
        return host.to_vec();
    }
    let mut v = Vec::with_capacity(host.len());
    advise(&v);
    v.extend_from_slice(host);
    v
}

/// Marks the 2 MB-aligned interior of `v`'s allocation for huge pages.
fn advise<T>(v: &Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let base = v.as_ptr() as usize;
        let start = base.next_multiple_of(HUGE);
        let end = (base + v.capacity() * size_of::<T>()) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside `v`'s allocation; MADV_HUGEPAGE changes how
            // the kernel backs it, not its contents. The result is ignored: a hint.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_buffers_hold_their_values() {
        for len in [0, 7, HUGE_MIN_BYTES / 4 + 3] {
            let v = zeroed::<f32>(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0));
            assert!(zeroed::<u32>(len).iter().all(|&x| x == 0));
            let host: Vec<f32> = (0..len).map(|i| i as f32).collect();
            assert_eq!(copied(&host), host);
        }
    }
}
