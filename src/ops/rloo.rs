//! RLOO (REINFORCE leave-one-out; TRL's `RLOOTrainer`): the advantage of each of the G
//! completions of a prompt is its reward minus the mean reward of the other G − 1, and the loss is
//! PPO's clipped objective with one importance weight per completion. Two ops, written from
//! `RLOOTrainer._generate_and_score_completions` and `_compute_loss` (TRL main, 2026):
//!
//! ```text
//! r_b  = clip(reward_b, reward_clip_range) − β Σ_t m_t (old_t − ref_t)       (KL in the reward)
//! A_b  = r_b − (Σ_{j in group(b)} r_j − r_b) / (G − 1)
//! A_b ← (A_b − mean A) / (std A + 1e-4)                                        (normalize_advantages)
//! w_b  = exp(Σ_t m_t (logp_t − old_t))
//! loss = mean_b −min(w_b A_b, clip(w_b, 1 − ε_low, 1 + ε_high) A_b)
//! ```
//!
//! (std is the unbiased one, as torch's.) The advantages are one workgroup's kernel; the loss is
//! one thread per sequence, then one workgroup for the means; the backward scales the stored
//! per-sequence derivatives by the upstream gradient and the mask.

use crate::error::{Error, Result};
use crate::gpu::{Kernel, ShaderSource};
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};

static RLOO: ShaderSource = shader!("rloo/rloo.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&RLOO];

const WG: u32 = 64;
/// Floats per sequence in the loss's per-sequence table; matches `SEQ` in the shader.
const SEQ: usize = 4;

/// Settings of [`rloo_advantages`] (TRL's RLOOConfig names).
#[derive(Clone, Debug)]
pub struct RlooAdvantageConfig {
    /// Completions per prompt G (consecutive rows), at least 2. TRL's default 2.
    pub num_generations: usize,
    /// β of the sequence KL subtracted from the reward; 0: no KL (no reference). TRL's default 0.05.
    pub beta: f32,
    /// `(min, max)` the rewards are clipped to first; None: no clipping (TRL's default).
    pub reward_clip_range: Option<(f32, f32)>,
    /// Normalise the advantages over the batch. TRL's default false.
    pub normalize_advantages: bool,
}

impl Default for RlooAdvantageConfig {
    fn default() -> Self {
        RlooAdvantageConfig { num_generations: 2, beta: 0.05, reward_clip_range: None, normalize_advantages: false }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    group: u32,
    flags: u32,
    beta: f32,
    clip_lo: f32,
    clip_hi: f32,
    eps_low: f32,
    eps_high: f32,
    _pad: [u32; 3],
}

fn check_tokens(op: &'static str, rows: usize, cols: usize, inputs: &[(&str, &Tensor)]) -> Result<()> {
    for (what, x) in inputs {
        if x.dtype() != DType::F32 || x.shape() != [rows, cols] {
            return Err(Error::shape(op, format!("{what} must be f32 ({rows}, {cols}), got {:?} {:?}", x.dtype(), x.shape())));
        }
    }
    Ok(())
}

/// The advantages of B = groups · G completions: `rewards` (B), and when β ≠ 0 the policy's
/// (`old_logp`) and the reference's (`ref_logp`) token log-probs (B, T) under `mask` (B, T).
/// Returns the advantages (B) and `[kl, shaped reward mean]` (2): the masked token mean of
/// `old − ref` (0 without a reference) and the mean of `r_b`. All on the GPU.
pub fn rloo_advantages(rewards: &Tensor, kl: Option<(&Tensor, &Tensor)>, mask: &Tensor, cfg: &RlooAdvantageConfig) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rloo_advantages";
    let (b, g) = (rewards.len(), cfg.num_generations);
    if rewards.dtype() != DType::F32 || b == 0 || g < 2 || !b.is_multiple_of(g) {
        return Err(Error::shape(OP, format!("{b} f32 rewards must split into groups of num_generations = {g} (at least 2)")));
    }
    let [rows, t] = mask.shape()[..] else {
        return Err(Error::shape(OP, format!("mask must be (B, T), got {:?}", mask.shape())));
    };
    check_tokens(OP, b, t, &[("mask", mask)])?;
    if rows != b {
        return Err(Error::shape(OP, format!("mask has {rows} rows for {b} rewards")));
    }
    if let Some((old, r)) = kl {
        check_tokens(OP, b, t, &[("old_logp", old), ("ref_logp", r)])?;
    }
    if !cfg.beta.is_finite() || cfg.beta < 0.0 {
        return Err(Error::config("RLOO beta", format!("{} must be a finite number >= 0", cfg.beta)));
    }
    if cfg.beta != 0.0 && kl.is_none() {
        return Err(Error::config("RLOO beta", format!("beta {} needs the policy's and the reference's log-probs", cfg.beta)));
    }
    let (clip_lo, clip_hi) = cfg.reward_clip_range.unwrap_or((0.0, 0.0));
    if cfg.reward_clip_range.is_some() && !(clip_lo.is_finite() && clip_hi.is_finite() && clip_lo <= clip_hi) {
        return Err(Error::config("RLOO reward_clip_range", format!("({clip_lo}, {clip_hi}) must be finite with min <= max")));
    }
    let gpu = rewards.gpu();
    let flags = u32::from(kl.is_some()) | (u32::from(cfg.normalize_advantages) << 1) | (u32::from(cfg.reward_clip_range.is_some()) << 2);
    let p = Params { rows: b as u32, cols: t as u32, group: g as u32, flags, beta: cfg.beta, clip_lo, clip_hi, eps_low: 0.0, eps_high: 0.0, _pad: [0; 3] };
    let adv = Tensor::empty(gpu, &[b], DType::F32, "rloo advantages")?;
    let shaped = Tensor::empty(gpu, &[b], DType::F32, "rloo shaped rewards")?;
    let stats = Tensor::empty(gpu, &[2], DType::F32, "rloo advantage stats")?;
    let (old, r) = kl.unwrap_or((mask, mask)); // unread without the KL
    let binds = [(1, adv.binding()), (2, shaped.binding()), (3, rewards.binding()), (4, old.binding()), (5, r.binding()), (6, mask.binding()), (8, stats.binding())];
    gpu.dispatch_bound(&Kernel::new(&RLOO, "rloo_advantages"), bytemuck::bytes_of(&p), &[], &binds, [1, 1, 1])?;
    Ok((adv, stats))
}

/// Names of the loss's metrics after the loss, as TRL logs them.
pub const RLOO_METRIC_NAMES: [&str; 3] = ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"];

/// The RLOO loss of (B, T) token log-probs `logp` (differentiable), `old_logp` and `mask`, with
/// the per-sequence `advantages` (B) and the clip range `(ε_low, ε_high)`. Returns the `[1]`
/// loss and the stats `[loss, clip low, clip high, clip region]` (on the GPU).
pub fn rloo_loss(logp: &Var, old_logp: &Tensor, advantages: &Tensor, mask: &Tensor, epsilon: (f32, f32)) -> Result<(Var, Tensor)> {
    const OP: &str = "rloo_loss";
    let lp = logp.tensor();
    let shape = lp.shape().to_vec();
    let [b, t] = shape[..] else {
        return Err(Error::shape(OP, format!("logp must be (B, T), got {shape:?}")));
    };
    check_tokens(OP, b, t, &[("old_logp", old_logp), ("mask", mask)])?;
    if advantages.dtype() != DType::F32 || advantages.len() != b {
        return Err(Error::shape(OP, format!("advantages must be f32 with {b} elements, got {:?}", advantages.shape())));
    }
    let (eps_low, eps_high) = epsilon;
    if !(eps_low.is_finite() && eps_low >= 0.0 && eps_high.is_finite() && eps_high >= 0.0) {
        return Err(Error::config("RLOO epsilon / epsilon_high", format!("{eps_low} / {eps_high} must be finite numbers >= 0")));
    }
    let gpu = lp.gpu();
    let p = Params { rows: b as u32, cols: t as u32, group: 0, flags: 0, beta: 0.0, clip_lo: 0.0, clip_hi: 0.0, eps_low, eps_high, _pad: [0; 3] };
    let seq = Tensor::empty(gpu, &[b, SEQ], DType::F32, "rloo sequences")?;
    let binds = [(1, seq.binding()), (3, lp.binding()), (4, old_logp.binding()), (6, mask.binding()), (7, advantages.binding())];
    gpu.dispatch_bound(&Kernel::new(&RLOO, "rloo_sequences"), bytemuck::bytes_of(&p), &[], &binds, gpu.groups_1d(b, WG))?;
    let stats = Tensor::empty(gpu, &[4], DType::F32, "rloo stats")?;
    gpu.dispatch_bound(&Kernel::new(&RLOO, "rloo_reduce"), bytemuck::bytes_of(&p), &[], &[(2, stats.binding()), (3, seq.binding())], [1, 1, 1])?;
    let mask = mask.clone();
    let loss = Var::from_op(stats.view(0, &[1])?, &[logp], move |g| {
        let gpu = seq.gpu();
        let out = Tensor::empty(gpu, &[b, t], DType::F32, "rloo d logp")?;
        let binds = [(1, out.binding()), (3, seq.binding()), (4, g.binding()), (6, mask.binding())];
        gpu.dispatch_bound(&Kernel::new(&RLOO, "rloo_backward"), bytemuck::bytes_of(&p), &[], &binds, gpu.groups_1d(b * t, WG))?;
        Ok(vec![Some(out)])
    });
    Ok((loss, stats))
}

/// f64 references, written from TRL's `RLOOTrainer` (main, 2026).
pub mod reference {
    use super::RlooAdvantageConfig;

    /// `(advantages, [kl, shaped reward mean])`; token arrays (B, T) row-major, `old` and
    /// `ref_logp` empty when β = 0.
    pub fn rloo_advantages(rewards: &[f64], old: &[f64], ref_logp: &[f64], mask: &[f64], cfg: &RlooAdvantageConfig) -> (Vec<f64>, [f64; 2]) {
        let (b, g) = (rewards.len(), cfg.num_generations);
        let t = mask.len() / b;
        let mut r: Vec<f64> = rewards.to_vec();
        if let Some((lo, hi)) = cfg.reward_clip_range {
            r.iter_mut().for_each(|x| *x = x.clamp(lo as f64, hi as f64)); // rewards.clamp(min, max)
        }
        let mut kl_mean = 0.0;
        if !ref_logp.is_empty() {
            // per_token_kl = old − ref; kl = (per_token_kl * mask).sum(-1); rewards −= β kl
            let kl: Vec<f64> = (0..b).map(|i| (i * t..(i + 1) * t).map(|j| mask[j] * (old[j] - ref_logp[j])).sum()).collect();
            for (x, k) in r.iter_mut().zip(&kl) {
                *x -= cfg.beta as f64 * k;
            }
            kl_mean = kl.iter().sum::<f64>() / mask.iter().sum::<f64>().max(1.0);
        }
        let shaped_mean = r.iter().sum::<f64>() / b as f64;
        // baselines = (grouped_sum − grouped_rewards) / (G − 1); advantages = rewards − baselines
        let mut adv: Vec<f64> = r
            .chunks(g)
            .flat_map(|grp| {
                let sum: f64 = grp.iter().sum();
                grp.iter().map(move |x| x - (sum - x) / (g as f64 - 1.0))
            })
            .collect();
        if cfg.normalize_advantages {
            let mean = adv.iter().sum::<f64>() / b as f64;
            let std = (adv.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (b as f64 - 1.0).max(1.0)).sqrt();
            adv.iter_mut().for_each(|a| *a = (*a - mean) / (std + 1e-4));
        }
        (adv, [kl_mean, shaped_mean])
    }

    /// `[loss, clip low, clip high, clip region]` of TRL's `_compute_loss`.
    pub fn rloo_loss(logp: &[f64], old: &[f64], adv: &[f64], mask: &[f64], eps_low: f64, eps_high: f64) -> Vec<f64> {
        let b = adv.len();
        let t = logp.len() / b;
        let (mut loss, mut low, mut high) = (0.0, 0.0, 0.0);
        for (i, &a) in adv.iter().enumerate() {
            // log_ratio = (per_token_logps * mask).sum(1) − old_logps
            let s: f64 = (i * t..(i + 1) * t).map(|j| mask[j] * (logp[j] - old[j])).sum();
            let coef_1 = s.exp();
            let coef_2 = coef_1.clamp(1.0 - eps_low, 1.0 + eps_high);
            loss += -(coef_1 * a).min(coef_2 * a);
            low += f64::from(u8::from(coef_1 < 1.0 - eps_low && a < 0.0));
            high += f64::from(u8::from(coef_1 > 1.0 + eps_high && a > 0.0));
        }
        let n = b as f64;
        vec![loss / n, low / n, high / n, (low + high) / n]
    }
}
