//! Stable categorical hashing — part of the checkpoint contract.
//!
//! A categorical value becomes an embedding row as follows:
//! 1. Its *key bytes*: a string's UTF-8 bytes; an integer's shortest decimal form
//!    (`-12`, `0`, `4711`), so the value 4711 hashes the same whether it came from a
//!    Parquet INT64 column, a CSV cell or a libsvm feature index. A null or empty cell
//!    is the empty key.
//! 2. `h = xxh3_64_with_seed(key bytes, HASH_SEED)` (XXH3, 64-bit, from `xxhash-rust`;
//!    the algorithm is specified and platform-independent).
//! 3. Hashed table: `row = h % buckets`. Vocabulary table: the value's index in the
//!    vocabulary, or the out-of-vocabulary row `len` (no hashing).
//!
//! Changing `HASH_SEED` or this recipe invalidates every trained embedding table,
//! so both are versioned by [`HASH_VERSION`], which manifests record.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the categorical hash: the bytes of "mixrank1" read as a big-endian u64.
pub const HASH_SEED: u64 = u64::from_be_bytes(*b"mixrank1");
/// Version of the recipe above.
pub const HASH_VERSION: u32 = 1;

/// 64-bit hash of a key.
#[inline]
pub fn hash_bytes(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, HASH_SEED)
}

/// 64-bit hash of an integer value through its decimal form.
#[inline]
pub fn hash_i64(v: i64) -> u64 {
    let mut buf = [0u8; 20];
    hash_bytes(format_i64(v, &mut buf))
}

/// Writes the shortest decimal form of `v` into `buf`, returning the used tail.
#[inline]
pub fn format_i64(v: i64, buf: &mut [u8; 20]) -> &[u8] {
    let neg = v < 0;
    let mut n = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// Maps a 64-bit hash onto `[0, buckets)`.
#[inline]
pub fn bucket(h: u64, buckets: u64) -> u32 {
    (h % buckets) as u32
}

/// A deterministic number in `[0, 1)` for (file name, row), used by row-fraction splits.
pub fn row_fraction(file_key: u64, row: u64) -> f64 {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&file_key.to_le_bytes());
    b[8..].copy_from_slice(&row.to_le_bytes());
    (hash_bytes(&b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned values: if this test fails, the hash recipe changed and every checkpoint
    /// trained before the change maps values to the wrong rows.
    #[test]
    fn hash_is_pinned() {
        assert_eq!(HASH_SEED, 0x6d69_7872_616e_6b31);
        let got = [hash_bytes(b""), hash_bytes(b"05db9164"), hash_i64(4711), hash_i64(-3)];
        let want = [PINNED[0], PINNED[1], PINNED[2], PINNED[3]];
        assert_eq!(got, want, "hash values changed: {got:#x?}");
    }

    /// Computed independently with the reference XXH3 (Python `xxhash` 3.x:
    /// `xxh3_64_intdigest(key, seed=int.from_bytes(b"mixrank1", "big"))`).
    const PINNED: [u64; 4] =
        [0x1b00_4151_3251_55aa, 0xcb00_75ab_85fb_3305, 0x7ec4_bd5c_f18c_b1d8, 0x8a2a_9848_2f8c_5358];

    #[test]
    fn integers_hash_as_their_decimal_text() {
        for v in [0i64, 7, -7, 4711, i64::MIN, i64::MAX, 1_000_000] {
            assert_eq!(hash_i64(v), hash_bytes(v.to_string().as_bytes()), "{v}");
        }
    }

    #[test]
    fn row_fraction_is_uniformish() {
        let n = 100_000;
        let below = (0..n).filter(|&r| row_fraction(99, r) < 0.9).count();
        let frac = below as f64 / n as f64;
        assert!((frac - 0.9).abs() < 0.005, "{frac}");
    }
}
