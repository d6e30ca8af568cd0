//! GRPO's loss with TRL's variants (`GRPOTrainer._compute_loss`), fused: loss types grpo,
//! bnpo, dr_grpo and dapo (how per-token losses are averaged), token- or sequence-level
//! importance weights (GSPO), asymmetric clipping (ε_low, ε_high: DAPO's clip-higher), and the
//! k3 KL to a reference when β ≠ 0. One thread per sequence, then one workgroup for the tokens
//! and the batch sums; the backward scales the stored derivatives by the upstream gradient.
//!
//! Per token of sequence b, with `w` the importance weight (`exp(logp − old)` per token, or per
//! sequence `exp(Σ_t m_t (logp − old) / n_b)`) and `A_b` the sequence's advantage:
//!
//! ```text
//! L_t = −min(w A_b, clip(w, 1 − ε_low, 1 + ε_high) A_b) + β (exp(ref − logp) − (ref − logp) − 1)
//! grpo:       mean_b (Σ_t m_t L_t / n_b)          bnpo, dapo: Σ_b Σ_t m_t L_t / Σ_b n_b
//! dr_grpo:    Σ_b Σ_t m_t L_t / (B · T_max)
//! ```
//!
//! (dapo divides by the tokens of the whole accumulated batch in TRL; with one batch per step,
//! as here, that is bnpo's normaliser.)

use crate::error::{Error, Result};
use crate::gpu::{Kernel, ShaderSource};
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};
use std::str::FromStr;

static GRPO: ShaderSource = shader!("grpo/grpo.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&GRPO];

const WG: u32 = 64;

/// TRL's `loss_type` of GRPO.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GrpoLossType {
    /// Per-sequence token means, then the mean over sequences (the original GRPO).
    Grpo,
    /// Token mean over the batch.
    Bnpo,
    /// Token sum over `B · max_completion_length` (Dr. GRPO: no length bias).
    DrGrpo,
    /// Token sum over the batch's completion tokens (DAPO); TRL's default.
    #[default]
    Dapo,
}

impl GrpoLossType {
    /// Every type.
    pub const ALL: [GrpoLossType; 4] = [GrpoLossType::Grpo, GrpoLossType::Bnpo, GrpoLossType::DrGrpo, GrpoLossType::Dapo];
    /// TRL's name.
    pub fn name(self) -> &'static str {
        match self {
            GrpoLossType::Grpo => "grpo",
            GrpoLossType::Bnpo => "bnpo",
            GrpoLossType::DrGrpo => "dr_grpo",
            GrpoLossType::Dapo => "dapo",
        }
    }
    fn code(self) -> u32 {
        self as u32
    }
}

impl FromStr for GrpoLossType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        GrpoLossType::ALL.iter().copied().find(|k| k.name() == s.trim()).ok_or_else(|| Error::config("GRPO loss_type", format!("`{s}` is not one of grpo, bnpo, dr_grpo, dapo")))
    }
}

/// TRL's `importance_sampling_level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ImportanceLevel {
    /// One weight per token (GRPO).
    #[default]
    Token,
    /// One weight per sequence, the exp of the mean token log-ratio (GSPO).
    Sequence,
}

impl FromStr for ImportanceLevel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "token" => Ok(ImportanceLevel::Token),
            "sequence" => Ok(ImportanceLevel::Sequence),
            _ => Err(Error::config("GRPO importance_sampling_level", format!("`{s}` is not token or sequence"))),
        }
    }
}

/// Settings of [`grpo_variant_loss`] (TRL's GRPOConfig names and defaults).
#[derive(Clone, Debug)]
pub struct GrpoLossConfig {
    /// Default dapo.
    pub loss_type: GrpoLossType,
    /// Default token.
    pub importance_sampling_level: ImportanceLevel,
    /// ε_low of the clip, default 0.2.
    pub epsilon: f32,
    /// ε_high (clip-higher); default = ε.
    pub epsilon_high: f32,
    /// β of the k3 KL; 0 needs no reference. TRL's default 0.
    pub beta: f32,
    /// T_max of dr_grpo's normaliser (the rollout's max_new_tokens).
    pub max_completion_length: usize,
}

impl Default for GrpoLossConfig {
    fn default() -> Self {
        GrpoLossConfig { loss_type: GrpoLossType::Dapo, importance_sampling_level: ImportanceLevel::Token, epsilon: 0.2, epsilon_high: 0.2, beta: 0.0, max_completion_length: 256 }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    loss_type: u32,
    sequence_level: u32,
    eps_low: f32,
    eps_high: f32,
    beta: f32,
    max_completion: f32,
}

/// Names of the metrics after the loss, as TRL logs them.
pub const GRPO_VARIANT_METRIC_NAMES: [&str; 4] = ["kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"];

/// The GRPO loss of (B, T) token log-probs `logp` (differentiable), `old_logp`, `mask`, the
/// per-sequence `advantages` (B) and, when β ≠ 0, `ref_logp`. Returns the `[1]` loss and the
/// stats `[loss, kl, clip low, clip high, clip region]` (on the GPU).
pub fn grpo_variant_loss(logp: &Var, old_logp: &Tensor, ref_logp: Option<&Tensor>, advantages: &Tensor, mask: &Tensor, cfg: &GrpoLossConfig) -> Result<(Var, Tensor)> {
    const OP: &str = "grpo_variant_loss";
    let lp = logp.tensor();
    let shape = lp.shape().to_vec();
    let [b, t] = shape[..] else {
        return Err(Error::shape(OP, format!("logp must be (B, T), got {shape:?}")));
    };
    for (what, x) in [("old_logp", old_logp), ("mask", mask)].into_iter().chain(ref_logp.map(|r| ("ref_logp", r))) {
        if x.dtype() != DType::F32 || x.shape() != [b, t] {
            return Err(Error::shape(OP, format!("{what} must be f32 ({b}, {t}), got {:?} {:?}", x.dtype(), x.shape())));
        }
    }
    if advantages.dtype() != DType::F32 || advantages.len() != b {
        return Err(Error::shape(OP, format!("advantages must be f32 with {b} elements, got {:?}", advantages.shape())));
    }
    let ok = |x: f32| x.is_finite() && x >= 0.0;
    if !(ok(cfg.epsilon) && ok(cfg.epsilon_high) && cfg.beta.is_finite() && cfg.max_completion_length > 0) {
        return Err(Error::config("GRPO epsilon / epsilon_high / beta", format!("{} / {} / {} (max_completion_length {})", cfg.epsilon, cfg.epsilon_high, cfg.beta, cfg.max_completion_length)));
    }
    if cfg.beta != 0.0 && ref_logp.is_none() {
        return Err(Error::config("GRPO beta", format!("beta {} needs the reference model's log-probs", cfg.beta)));
    }
    let gpu = lp.gpu();
    let p = Params {
        rows: b as u32,
        cols: t as u32,
        loss_type: cfg.loss_type.code(),
        sequence_level: u32::from(cfg.importance_sampling_level == ImportanceLevel::Sequence),
        eps_low: cfg.epsilon,
        eps_high: cfg.epsilon_high,
        beta: cfg.beta,
        max_completion: cfg.max_completion_length as f32,
    };
    let params = bytemuck::bytes_of(&p);
    // per sequence: token count and mean log importance weight
    let seq = Tensor::empty(gpu, &[b, 2], DType::F32, "grpo sequences")?;
    let binds = [(1, seq.binding()), (3, lp.binding()), (4, old_logp.binding()), (5, mask.binding())];
    gpu.dispatch_bound(&Kernel::new(&GRPO, "grpo_sequences"), params, &[], &binds, gpu.groups_1d(b, WG))?;
    // tokens and batch sums
    let dlogp = Tensor::empty(gpu, &[b, t], DType::F32, "grpo d logp")?;
    let stats = Tensor::empty(gpu, &[5], DType::F32, "grpo stats")?;
    let r = ref_logp.unwrap_or(old_logp); // unread when beta = 0
    let binds = [dlogp.binding(), stats.binding(), lp.binding(), old_logp.binding(), mask.binding(), advantages.binding(), r.binding(), seq.binding()];
    gpu.dispatch(&Kernel::new(&GRPO, "grpo_variant_loss"), params, &binds, [1, 1, 1])?;
    let loss = Var::from_op(stats.view(0, &[1])?, &[logp], move |g| {
        let gpu = dlogp.gpu();
        let out = Tensor::empty(gpu, &[b, t], DType::F32, "grpo d logp scaled")?;
        let binds = [(1, out.binding()), (3, dlogp.binding()), (4, g.binding())];
        gpu.dispatch_bound(&Kernel::new(&GRPO, "grpo_variant_backward"), bytemuck::bytes_of(&p), &[], &binds, gpu.groups_1d(b * t, WG))?;
        Ok(vec![Some(out)])
    });
    Ok((loss, stats))
}

/// f64 references, written from TRL's `GRPOTrainer._compute_loss` and `_generate_and_score_completions`.
pub mod reference {
    use super::{GrpoLossConfig, GrpoLossType, ImportanceLevel};

    /// `[loss, kl, clip low, clip high, clip region]`; token arrays (B, T) row-major; `ref_logp`
    /// empty means none.
    pub fn grpo_variant(logp: &[f64], old: &[f64], ref_logp: &[f64], adv: &[f64], mask: &[f64], cfg: &GrpoLossConfig) -> Vec<f64> {
        let b = adv.len();
        let t = logp.len() / b;
        let (el, eh, beta) = (cfg.epsilon as f64, cfg.epsilon_high as f64, cfg.beta as f64);
        let n_b: Vec<f64> = (0..b).map(|r| mask[r * t..(r + 1) * t].iter().sum()).collect();
        // log_importance_weights: per token, or (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        let seq_lw: Vec<f64> = (0..b).map(|r| (r * t..(r + 1) * t).map(|j| mask[j] * (logp[j] - old[j])).sum::<f64>() / n_b[r].max(1.0)).collect();
        let (mut per_token, mut kl, mut low, mut high) = (vec![0.0; logp.len()], vec![0.0; logp.len()], vec![0.0; logp.len()], vec![0.0; logp.len()]);
        for j in 0..logp.len() {
            let r = j / t;
            let lw = if cfg.importance_sampling_level == ImportanceLevel::Sequence { seq_lw[r] } else { logp[j] - old[j] };
            let coef_1 = lw.exp();
            let coef_2 = coef_1.clamp(1.0 - el, 1.0 + eh);
            per_token[j] = -(coef_1 * adv[r]).min(coef_2 * adv[r]);
            if !ref_logp.is_empty() && beta != 0.0 {
                let d = ref_logp[j] - logp[j];
                kl[j] = d.exp() - d - 1.0;
                per_token[j] += beta * kl[j];
            }
            low[j] = f64::from(u8::from(coef_1 < 1.0 - el && adv[r] < 0.0));
            high[j] = f64::from(u8::from(coef_1 > 1.0 + eh && adv[r] > 0.0));
        }
        let masked_sum = |x: &[f64]| x.iter().zip(mask).map(|(v, m)| v * m).sum::<f64>();
        let tokens: f64 = mask.iter().sum();
        let loss = match cfg.loss_type {
            GrpoLossType::Grpo => (0..b).map(|r| masked_sum_range(&per_token, mask, r * t, (r + 1) * t) / n_b[r].max(1.0)).sum::<f64>() / b as f64,
            GrpoLossType::Bnpo | GrpoLossType::Dapo => masked_sum(&per_token) / tokens.max(1.0),
            GrpoLossType::DrGrpo => masked_sum(&per_token) / (b * cfg.max_completion_length) as f64,
        };
        let m = tokens.max(1.0);
        let (lo, hi) = (masked_sum(&low) / m, masked_sum(&high) / m);
        vec![loss, masked_sum(&kl) / m, lo, hi, lo + hi]
    }

    fn masked_sum_range(x: &[f64], mask: &[f64], a: usize, b: usize) -> f64 {
        (a..b).map(|j| x[j] * mask[j]).sum()
    }

    /// TRL's advantages: `rewards − group mean`, divided by `std + 1e-4` with the group's
    /// (`"group"`) or the whole batch's (`"batch"`) unbiased std, or not at all (`"none"`).
    pub fn advantages(rewards: &[f64], group: usize, scale: &str) -> Vec<f64> {
        let std = |x: &[f64]| {
            let m = x.iter().sum::<f64>() / x.len() as f64;
            (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() as f64 - 1.0).max(1.0)).sqrt()
        };
        let batch_std = std(rewards);
        rewards
            .chunks(group)
            .flat_map(|g| {
                let mean = g.iter().sum::<f64>() / g.len() as f64;
                let s = match scale {
                    "group" => Some(std(g)),
                    "batch" => Some(batch_std),
                    _ => None,
                };
                g.iter().map(move |r| match s {
                    Some(s) => (r - mean) / (s + 1e-4),
                    None => r - mean,
                })
            })
            .collect()
    }
}
