//! The byte payloads ranks send each other over the [`mixrank_dist::Collective`]'s byte
//! collectives: runs of little-endian `f32`, `u32` and `u64` written by [`put`] and read
//! back by [`Reader`], which names the sending rank and the payload in its errors.

use crate::error::{Result, TrainError};

/// A fixed-size value that travels little-endian.
pub(crate) trait Word: Copy {
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    fn get(b: &[u8]) -> Self;
}

macro_rules! word {
    ($($t:ty),*) => {$(
        impl Word for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("one word"))
            }
        }
    )*};
}
word!(f32, u32, u64);

/// Appends `v`'s values to `out`.
pub(crate) fn put<T: Word>(out: &mut Vec<u8>, v: &[T]) {
    out.reserve(v.len() * T::SIZE);
    v.iter().for_each(|&x| x.put(out));
}

/// Reads runs of words off a byte payload received from `rank`.
pub(crate) struct Reader<'a> {
    pub bytes: &'a [u8],
    pub at: usize,
    pub rank: usize,
    /// What the payload holds, for errors: "lookup requests".
    pub what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8], rank: usize, what: &'static str) -> Self {
        Reader { bytes, at: 0, rank, what }
    }

    /// The next `n` values.
    pub fn take<T: Word>(&mut self, n: usize) -> Result<Vec<T>> {
        // Counts come off the wire: checked, so a bad one is an error, not an overflow.
        let end = n.checked_mul(T::SIZE).and_then(|len| self.at.checked_add(len));
        let s = end
            .and_then(|end| self.bytes.get(self.at..end))
            .ok_or_else(|| TrainError::Distributed(format!("rank {}'s {} are cut short", self.rank, self.what)))?;
        self.at += s.len();
        Ok(s.chunks_exact(T::SIZE).map(T::get).collect())
    }

    pub fn f32s(&mut self, n: usize) -> Result<Vec<f32>> {
        self.take(n)
    }

    pub fn u32s(&mut self, n: usize) -> Result<Vec<u32>> {
        self.take(n)
    }

    /// A count written as one `u64`.
    pub fn len(&mut self) -> Result<usize> {
        Ok(self.take::<u64>(1)?[0] as usize)
    }

    /// Fails unless the whole payload was read.
    pub fn done(&self) -> Result<()> {
        if self.at != self.bytes.len() {
            return Err(TrainError::Distributed(format!(
                "rank {}'s {} are {} bytes longer than expected",
                self.rank,
                self.what,
                self.bytes.len() - self.at
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_short_or_long_payloads_are_named() {
        let mut b = Vec::new();
        put(&mut b, &[1.5f32, -0.0]);
        put(&mut b, &[7u32]);
        put(&mut b, &[u64::MAX - 3]);
        let mut r = Reader::new(&b, 2, "test rows");
        assert_eq!(r.f32s(2).unwrap(), [1.5, -0.0]);
        assert_eq!(r.u32s(1).unwrap(), [7]);
        assert_eq!(r.take::<u64>(1).unwrap(), [u64::MAX - 3]);
        r.done().unwrap();
        let mut short = Reader::new(&b[..5], 2, "test rows");
        short.f32s(1).unwrap();
        let e = short.f32s(1).unwrap_err().to_string();
        assert!(e.contains("rank 2's test rows are cut short"), "{e}");
        let long = Reader::new(&b, 1, "test rows");
        assert!(long.done().unwrap_err().to_string().contains("20 bytes longer"));
    }
}
