//! A tiny floating-point trait so the reference ops run in both f32 (to compare with the
//! fast backends) and f64 (for finite-difference gradient checks).

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// The scalar operations the reference kernels need; implemented for `f32` and `f64`.
pub trait Float:
    Copy
    + Debug
    + PartialOrd
    + Send
    + Sync
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln_1p(self) -> Self;
    fn ln(self) -> Self;
    fn tanh(self) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn max(self, other: Self) -> Self;
    /// Stores an f64 accumulator (the optimizer's sum of squares) in the first slots of a
    /// buffer of `Self`, exactly: an `f32` buffer keeps its bits in two slots.
    fn store_acc(x: f64, slots: &mut [Self]);
    /// Reads what [`Float::store_acc`] stored.
    fn load_acc(slots: &[Self]) -> f64;
}

macro_rules! impl_float {
    ($t:ty, $store:path, $load:path) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            fn store_acc(x: f64, slots: &mut [Self]) {
                $store(x, slots)
            }
            fn load_acc(slots: &[Self]) -> f64 {
                $load(slots)
            }
        }
    };
}

impl_float!(f32, crate::optim::store_acc_f32, crate::optim::load_acc_f32);
impl_float!(f64, store_acc_f64, load_acc_f64);

fn store_acc_f64(x: f64, slots: &mut [f64]) {
    slots[0] = x;
}

fn load_acc_f64(slots: &[f64]) -> f64 {
    slots[0]
}
