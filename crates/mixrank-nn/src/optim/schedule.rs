//! Learning-rate schedules.

use crate::error::{NnError, Result};

/// What the learning rate does after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decay {
    /// Stays at the peak.
    Constant,
    /// Falls linearly to `min_ratio · peak` at `total_steps`.
    Linear,
    /// Follows half a cosine down to `min_ratio · peak` at `total_steps`.
    Cosine,
}

/// Linear warm-up from 0 to `peak` over `warmup_steps`, then [`Decay`] until
/// `total_steps`, then flat at the final value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub peak: f32,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub decay: Decay,
    /// Final learning rate as a fraction of `peak`, in `[0, 1]`.
    pub min_ratio: f32,
}

impl LrSchedule {
    /// A constant learning rate.
    pub fn constant(lr: f32) -> Self {
        LrSchedule { peak: lr, warmup_steps: 0, total_steps: 0, decay: Decay::Constant, min_ratio: 1.0 }
    }

    pub fn validate(&self) -> Result<()> {
        let bad =
            |field: &'static str, reason: String| Err(NnError::InvalidConfig { layer: "LrSchedule", field, reason });
        if !(self.peak.is_finite() && self.peak >= 0.0) {
            return bad("peak", format!("{} is not a non-negative number", self.peak));
        }
        if !(0.0..=1.0).contains(&self.min_ratio) {
            return bad("min_ratio", format!("{} is not in [0, 1]", self.min_ratio));
        }
        if self.decay != Decay::Constant && self.total_steps < self.warmup_steps {
            return bad("total_steps", format!("{} is below warmup_steps {}", self.total_steps, self.warmup_steps));
        }
        Ok(())
    }

    /// Learning rate of step `step` (0-based: the first update uses `lr(0)`).
    ///
    /// Warm-up: `peak · (step + 1) / warmup_steps`, so the first step is not wasted at 0.
    pub fn lr(&self, step: u64) -> f32 {
        let peak = self.peak as f64;
        if step < self.warmup_steps {
            return (peak * (step + 1) as f64 / self.warmup_steps as f64) as f32;
        }
        let min = peak * self.min_ratio as f64;
        let span = self.total_steps.saturating_sub(self.warmup_steps);
        let progress = if span == 0 { 1.0 } else { ((step - self.warmup_steps) as f64 / span as f64).min(1.0) };
        let lr = match self.decay {
            Decay::Constant => peak,
            Decay::Linear => peak + (min - peak) * progress,
            Decay::Cosine => min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        lr as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_hits_hand_computed_points() {
        let s = LrSchedule { peak: 1.0, warmup_steps: 4, total_steps: 14, decay: Decay::Linear, min_ratio: 0.1 };
        s.validate().unwrap();
        assert_eq!([s.lr(0), s.lr(1), s.lr(3)], [0.25, 0.5, 1.0]);
        assert_eq!(s.lr(4), 1.0);
        assert!((s.lr(9) - 0.55).abs() < 1e-6); // halfway: 1 + (0.1 - 1)·0.5
        assert!((s.lr(14) - 0.1).abs() < 1e-6);
        assert!((s.lr(1000) - 0.1).abs() < 1e-6);
        let c = LrSchedule { decay: Decay::Cosine, min_ratio: 0.0, ..s };
        assert!((c.lr(9) - 0.5).abs() < 1e-6); // cos(π/2) = 0
        assert!(c.lr(14).abs() < 1e-6);
        assert_eq!(LrSchedule::constant(0.3).lr(12345), 0.3);
        assert!(LrSchedule { min_ratio: 2.0, ..s }.validate().is_err());
        assert!(LrSchedule { total_steps: 2, ..s }.validate().is_err());
    }
}
