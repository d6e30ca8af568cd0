//! Learning-rate schedule: linear warmup, then cosine decay to a floor (nanoGPT's `get_lr`).

use serde::{Deserialize, Serialize};

/// Warmup + cosine schedule.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Schedule {
    /// Peak learning rate. Example: 3e-4.
    pub lr: f32,
    /// Steps of linear warmup from lr/warmup to lr. Example: 100.
    pub warmup: usize,
    /// Step at which the cosine reaches `min_lr`; constant after. Example: 5000.
    pub total: usize,
    /// Floor of the decay. Example: 3e-5.
    pub min_lr: f32,
}

impl Schedule {
    /// A constant learning rate.
    pub fn constant(lr: f32) -> Schedule {
        Schedule { lr, warmup: 0, total: 0, min_lr: lr }
    }

    /// The learning rate for 0-based `step`.
    pub fn at(&self, step: usize) -> f32 {
        if step < self.warmup {
            return self.lr * (step + 1) as f32 / self.warmup as f32;
        }
        if step >= self.total || self.total <= self.warmup {
            return if self.total == 0 { self.lr } else { self.min_lr };
        }
        let ratio = (step - self.warmup) as f32 / (self.total - self.warmup) as f32;
        let coeff = 0.5 * (1.0 + (std::f32::consts::PI * ratio).cos());
        self.min_lr + coeff * (self.lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::Schedule;
    #[test]
    fn warmup_then_cosine() {
        let s = Schedule { lr: 1.0, warmup: 10, total: 110, min_lr: 0.1 };
        assert!((s.at(0) - 0.1).abs() < 1e-6);
        assert!((s.at(9) - 1.0).abs() < 1e-6);
        assert!((s.at(10) - 1.0).abs() < 1e-6);
        assert!((s.at(60) - 0.55).abs() < 1e-5);
        assert!((s.at(110) - 0.1).abs() < 1e-6);
        assert!((s.at(500) - 0.1).abs() < 1e-6);
        assert_eq!(Schedule::constant(0.5).at(1000), 0.5);
    }
}
