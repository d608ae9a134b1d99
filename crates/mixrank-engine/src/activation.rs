//! Pointwise activations and their derivatives, shared by every backend.

use crate::float::Float;

/// Activation applied after a bias add. Backward passes take the **pre-activation** `z`
/// (not the output) because GELU and SiLU cannot be differentiated from their output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `y = z`.
    Identity,
    /// `y = max(z, 0)`; the derivative at `z = 0` is taken as 0.
    Relu,
    /// `y = 1 / (1 + e^-z)`.
    Sigmoid,
    /// `y = tanh(z)`.
    Tanh,
    /// GELU, tanh approximation: `y = z/2 · (1 + tanh(√(2/π)·(z + 0.044715·z³)))`.
    GeluTanh,
    /// SiLU / swish: `y = z · sigmoid(z)`.
    Silu,
}

const GELU_C: f64 = 0.797_884_560_802_865_4; // sqrt(2/pi)
const GELU_A: f64 = 0.044_715;

/// Numerically stable logistic function (never evaluates `exp` of a large positive number).
#[inline(always)]
pub fn sigmoid<T: Float>(z: T) -> T {
    if z >= T::ZERO {
        T::ONE / (T::ONE + (-z).exp())
    } else {
        let e = z.exp();
        e / (T::ONE + e)
    }
}

impl Activation {
    /// `act(z)`.
    #[inline(always)]
    pub fn forward<T: Float>(self, z: T) -> T {
        match self {
            Activation::Identity => z,
            Activation::Relu => {
                if z > T::ZERO {
                    z
                } else {
                    T::ZERO
                }
            }
            Activation::Sigmoid => sigmoid(z),
            Activation::Tanh => z.tanh(),
            Activation::GeluTanh => {
                let half = T::from_f64(0.5);
                let inner = T::from_f64(GELU_C) * (z + T::from_f64(GELU_A) * z * z * z);
                half * z * (T::ONE + inner.tanh())
            }
            Activation::Silu => z * sigmoid(z),
        }
    }

    /// `d act(z) / dz`, evaluated at the pre-activation `z`.
    #[inline(always)]
    pub fn derivative<T: Float>(self, z: T) -> T {
        match self {
            Activation::Identity => T::ONE,
            Activation::Relu => {
                if z > T::ZERO {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
            Activation::Sigmoid => {
                let s = sigmoid(z);
                s * (T::ONE - s)
            }
            Activation::Tanh => {
                let t = z.tanh();
                T::ONE - t * t
            }
            Activation::GeluTanh => {
                let half = T::from_f64(0.5);
                let c = T::from_f64(GELU_C);
                let a = T::from_f64(GELU_A);
                let t = (c * (z + a * z * z * z)).tanh();
                let dinner = c * (T::ONE + T::from_f64(3.0) * a * z * z);
                half * (T::ONE + t) + half * z * (T::ONE - t * t) * dinner
            }
            Activation::Silu => {
                let s = sigmoid(z);
                s * (T::ONE + z * (T::ONE - s))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Activation; 6] = [
        Activation::Identity,
        Activation::Relu,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::GeluTanh,
        Activation::Silu,
    ];

    #[test]
    fn derivative_matches_central_difference_in_f64() {
        // h = 1e-5: truncation error ~h²·|f'''| ≈ 1e-10, rounding ~1e-16/h ≈ 1e-11.
        let h = 1e-5;
        for act in ALL {
            for i in -40..=40 {
                let z = i as f64 * 0.173 + 0.011; // avoids the ReLU kink at 0
                let fd = (act.forward(z + h) - act.forward(z - h)) / (2.0 * h);
                let an = act.derivative(z);
                assert!((fd - an).abs() < 1e-8, "{act:?} at {z}: fd {fd} vs {an}");
            }
        }
    }

    #[test]
    fn sigmoid_is_stable_at_extremes() {
        assert_eq!(sigmoid(-1000.0f32), 0.0);
        assert_eq!(sigmoid(1000.0f32), 1.0);
        assert!(Activation::Silu.forward(-1000.0f32).abs() < 1e-30);
        assert_eq!(Activation::GeluTanh.forward(0.0f64), 0.0);
        assert!((Activation::GeluTanh.forward(3.0f64) - 2.996_362_8).abs() < 1e-6);
    }
}
