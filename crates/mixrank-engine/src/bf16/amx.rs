//! AMX-BF16 kernel (Intel Sapphire Rapids and later): `tdpbf16ps` multiplies a 16×32
//! bf16 tile of `A` by a 16-pair×16 tile of packed weights into a 16×16 f32 tile, about
//! 30× the work of one `vdpbf16ps`. On the bench CPU `vdpbf16ps` issues at half the rate
//! of an f32 FMA, so AVX512-BF16 alone cannot beat f32; AMX can.
//!
//! Rust 1.95 has no stable AMX intrinsics, so the tile instructions are inline assembly.
//! Each 32×32 output block runs its whole K loop in one `asm!` block: zero 4 accumulator
//! tiles (2×2 blocks of 16×16), then per 32 values of K load 2 `A` tiles and 2 weight
//! tiles and issue 4 `tdpbf16ps`, then store. The packed weight layout (pairs along K,
//! 32 columns per panel, 128-byte rows) is already the tile layout, so a weight tile is a
//! strided load of half a panel. Rows and columns that do not fill a 32×32 block are left
//! to the AVX512-BF16 kernel.
//!
//! Soundness rests on: run-time detection (CPUID) plus the kernel's permission for tile
//! data (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), checked once per process before any kernel
//! token with this kind exists; the tile configuration being loaded on the current thread
//! by the same function that issues the tile instructions (no tile state crosses a
//! function boundary, and Rust code never emits AMX instructions itself); and the bounds
//! asserted in [`band`] before any pointer is formed.

use super::{Bf16Matrix, PackedBf16, K_ALIGN, NR};
use std::sync::OnceLock;

/// Output rows per AMX block (two 16-row tiles).
pub const AMX_MR: usize = 32;

/// Whether this CPU and OS can run AMX-BF16 (and AVX512-BF16 for the edges). Asks the
/// kernel for tile-data permission on first call.
pub fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    if !super::avx512::supported() {
        return false;
    }
    // CPUID.(EAX=7,ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
    let edx = __cpuid_count(7, 0).edx;
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
        return false;
    }
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) takes no pointers; it only asks
    // the kernel to let this process use tile data (it fails cleanly where unsupported).
    // The `syscall` instruction clobbers rcx and r11, declared below.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// All full 32×32 blocks of rows `r0 .. r0 + rows` of `C = A · W` (`c`: `[rows, n]`):
/// every panel with 32 valid columns times the first `rows / 32 · 32` rows. Returns that
/// row count; the caller computes the remaining rows and a partial last panel.
/// Callers must hold an AMX kernel token.
pub fn band(a: &Bf16Matrix, w: &PackedBf16, r0: usize, rows: usize, c: &mut [f32]) -> usize {
    let n = w.n();
    let full_rows = rows / AMX_MR * AMX_MR;
    let full_panels = n / NR;
    let k_tiles = w.kp_pad() * 2 / K_ALIGN;
    if full_rows == 0 || full_panels == 0 || k_tiles == 0 {
        return 0;
    }
    // Bounds for every access below: A rows r0 .. r0+full_rows, each read for k_tiles·32
    // values; whole panels of kp_pad·2·NR values; C rows < full_rows, columns < n.
    assert_eq!(a.ld() % K_ALIGN, 0);
    assert!(a.ld() >= k_tiles * K_ALIGN);
    assert!(a.data().len() >= (r0 + full_rows) * a.ld());
    assert!(c.len() >= full_rows * n);
    assert_eq!(w.kp_pad() % (K_ALIGN / 2), 0);
    #[cfg(target_arch = "x86_64")]
    {
        debug_assert!(supported());
        // SAFETY: see the module docs; bounds asserted above.
        unsafe { x86::band(a, w, r0, full_rows, full_panels, k_tiles, c) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("an AMX kernel token cannot be built on this architecture");
    full_rows
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Bf16Matrix, PackedBf16, AMX_MR, NR};
    use std::arch::asm;

    /// Palette 1, tiles 0..8 all 16 rows × 64 bytes: 0-3 accumulators (16×16 f32),
    /// 4-5 `A` (16 rows × 32 bf16), 6-7 weights (16 K-pairs × 16 columns × 2 bf16).
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    impl TileConfig {
        fn new() -> Self {
            let mut cfg = [0u8; 64];
            cfg[0] = 1; // palette
            for t in 0..8 {
                cfg[16 + 2 * t] = 64; // bytes per row (little-endian u16)
                cfg[48 + t] = 16; // rows
            }
            TileConfig(cfg)
        }
    }

    /// # Safety
    /// AMX-BF16 must be usable by this process; `full_rows` rows from `r0` of `a`, each
    /// `k_tiles · 32` values, the first `full_panels` panels of `w` and `full_rows` rows
    /// of `c` (stride `w.n()`) must be in bounds.
    pub unsafe fn band(
        a: &Bf16Matrix,
        w: &PackedBf16,
        r0: usize,
        full_rows: usize,
        full_panels: usize,
        k_tiles: usize,
        c: &mut [f32],
    ) {
        let cfg = TileConfig::new();
        let lda = a.ld() * 2; // bytes
        let ldc = w.n() * 4; // bytes
                             // SAFETY: the config is a valid palette-1 configuration (16 rows × 64 bytes for
                             // tiles 0-7, the limits of palette 1).
        unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
        for panel in 0..full_panels {
            let wp = w.panel(panel).as_ptr();
            for rb in (0..full_rows).step_by(AMX_MR) {
                let a0 = a.data()[(r0 + rb) * a.ld()..].as_ptr();
                let c0 = c[rb * w.n() + panel * NR..].as_mut_ptr();
                // SAFETY: tile loads read 16 rows of 64 bytes at stride lda from
                // a0 + t·64 and a0 + 16·lda + t·64 for t < k_tiles (inside rows
                // rb..rb+32 and their first k_tiles·32 values), and 16 rows of 64 bytes
                // at stride 128 from the panel (k_tiles·16 pairs · 128 bytes = the
                // padded panel). Stores write rows rb..rb+32, 32 columns from
                // panel·32 < n. The loop runs k_tiles >= 1 times.
                unsafe {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        "2:",
                        "tileloadd tmm4, [{a0} + {lda}*1]",
                        "tileloadd tmm5, [{a1} + {lda}*1]",
                        "tileloadd tmm6, [{b} + {ldb}*1]",
                        "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        "add {a0}, 64",
                        "add {a1}, 64",
                        "add {b}, 2048",
                        "dec {kt}",
                        "jnz 2b",
                        "tilestored [{c0} + {ldc}*1], tmm0",
                        "tilestored [{c0} + {ldc}*1 + 64], tmm1",
                        "tilestored [{c1} + {ldc}*1], tmm2",
                        "tilestored [{c1} + {ldc}*1 + 64], tmm3",
                        a0 = inout(reg) a0 => _,
                        a1 = inout(reg) a0.add(16 * a.ld()) => _,
                        b = inout(reg) wp => _,
                        kt = inout(reg) k_tiles => _,
                        lda = in(reg) lda,
                        ldb = in(reg) 2 * NR * 2,
                        c0 = in(reg) c0,
                        c1 = in(reg) c0.add(16 * w.n()),
                        ldc = in(reg) ldc,
                        options(nostack),
                    );
                }
            }
        }
        // SAFETY: releases this thread's tile state; no tile instruction follows.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bf16::Bf16Kernel;

    /// The tiles themselves (not the AVX512 edge code) produce the full blocks, and
    /// nothing outside them is written.
    #[test]
    fn band_computes_full_blocks_only() {
        if !supported() {
            eprintln!("skipping: no AMX-BF16");
            return;
        }
        let (m, k, n) = (70, 45, 70);
        let vals =
            |len: usize, s: usize| -> Vec<f32> { (0..len).map(|i| ((i * 7 + s) % 13) as f32 / 8.0 - 0.75).collect() };
        let a = Bf16Matrix::from_f32(m, k, &vals(m * k, 1)).unwrap();
        let w = PackedBf16::pack(k, n, &vals(k * n, 2)).unwrap();
        let mut c = vec![f32::NAN; m * n];
        assert_eq!(band(&a, &w, 0, m, &mut c), 64);
        let mut expected = vec![0.0; m * n];
        Bf16Kernel::portable().gemm(m, &a, &w, &mut expected).unwrap();
        for r in 0..m {
            for j in 0..n {
                let (got, want) = (c[r * n + j], expected[r * n + j]);
                if r < 64 && j < 64 {
                    // Values are multiples of 1/8 with |.| <= 0.75: every product and
                    // partial sum of 45 terms is exact in f32, so results are equal.
                    assert_eq!(got, want, "C[{r},{j}]");
                } else {
                    assert!(got.is_nan(), "band wrote C[{r},{j}] outside its blocks");
                }
            }
        }
    }
}
