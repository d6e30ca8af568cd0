//! RLOO, REINFORCE leave-one-out (Ahmadian et al. 2024; TRL's RLOOTrainer as on TRL main in
//! 2026, the GRPO-shaped rewrite): no value model. For each prompt sample G completions, score
//! each (a reward model or a Rust function), subtract β times the completion's summed KL to the
//! reference from its reward, and take as its advantage its reward minus the mean of the other
//! G − 1,
//!
//! ```text
//! r_b = reward_b − β Σ_t (logπ_old − logπ_ref),   A_b = r_b − (Σ_group r − r_b) / (G − 1),
//! ```
//!
//! in the sequence-level clipped objective `−min(wA, clip(w, 1 − ε, 1 + ε_high)A)` with
//! `w = π(y|x)/π_old(y|x)` (one importance weight per completion: RLOO treats the completion as
//! one action), averaged over completions ([`crate::ops::rloo`], WGSL kernels). TRL's defaults:
//! G = 2, β = 0.05, ε = 0.2, no reward clipping, no advantage normalisation, learning rate 1e-6.
//! β = 0 needs no reference, and none is evaluated. With one update per rollout (TRL's default
//! `num_iterations = 1`) π_old is the policy itself, so w = 1 in value and only its gradient acts.

use super::common::{run_steps, shuffled, to_json, Reference, TrainConfig};
use super::ppo::{reference_token_logps, tempered_logps};
use super::rollout::{sample, Rewards, RolloutConfig};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::rloo::{rloo_advantages, rloo_loss, RlooAdvantageConfig, RLOO_METRIC_NAMES};
use crate::tape::Tape;
use crate::tensor::Tensor;

/// TRL's RLOOConfig learning rate, the constant schedule of [`RlooConfig::default`].
pub const DEFAULT_LR: f32 = 1e-6;

/// RLOO settings (TRL's RLOOConfig names and defaults).
#[derive(Clone, Debug)]
pub struct RlooConfig {
    /// Steps; `batch_size` = prompts per step (each sampled `num_generations` times). TRL's
    /// learning rate 1e-6.
    pub train: TrainConfig,
    pub rollout: RolloutConfig,
    /// Completions per prompt G (at least 2). TRL's default 2.
    pub num_generations: usize,
    /// β of the KL in the reward; 0 needs no reference. TRL's default 0.05.
    pub beta: f32,
    /// ε (ε_low) of the clip. TRL's default 0.2.
    pub epsilon: f32,
    /// ε_high of the clip (DAPO's clip-higher recommends 0.28); None: = ε.
    pub epsilon_high: Option<f32>,
    /// Normalise the advantages over the batch (mean 0, std 1). TRL's default false.
    pub normalize_advantages: bool,
    /// Clip the rewards to `(min, max)` before the KL; None (TRL's default): no clipping.
    pub reward_clip_range: Option<(f32, f32)>,
    /// Completions that hit max_new_tokens without a stop token are left out of the loss.
    pub mask_truncated_completions: bool,
}

impl Default for RlooConfig {
    fn default() -> Self {
        RlooConfig {
            train: TrainConfig { schedule: crate::train::schedule::Schedule::constant(DEFAULT_LR), ..Default::default() },
            rollout: RolloutConfig::default(),
            num_generations: 2,
            beta: 0.05,
            epsilon: 0.2,
            epsilon_high: None,
            normalize_advantages: false,
            reward_clip_range: None,
            mask_truncated_completions: false,
        }
    }
}

/// Trains a policy with RLOO: `Rloo::new(cfg).train(&policy, &prompts, &Rewards::Fn(&f), Reference::Model(&sft))`.
pub struct Rloo {
    pub cfg: RlooConfig,
}

impl Rloo {
    pub fn new(cfg: RlooConfig) -> Rloo {
        Rloo { cfg }
    }

    /// Run `cfg.train.steps` steps on `prompts`; returns each step's metrics with TRL's names
    /// (reward, reward_std, frac_reward_zero_std, kl, clip_ratio/*, completion_length).
    pub fn train(&self, policy: &Model, prompts: &[Vec<u32>], rewards: &Rewards, reference: Reference) -> Result<Vec<serde_json::Value>> {
        let cfg = &self.cfg;
        let (b, g) = (cfg.train.batch_size, cfg.num_generations);
        if prompts.is_empty() || g < 2 {
            return Err(Error::config("RLOO", format!("{} prompts, {g} generations per prompt (need prompts and at least 2)", prompts.len())));
        }
        let use_ref = cfg.beta != 0.0;
        if use_ref && matches!(reference, Reference::None | Reference::Precomputed) {
            return Err(Error::config("RLOO", format!("beta {} needs a live reference model (or beta 0)", cfg.beta)));
        }
        let gpu = policy.params().gpu().clone();
        let adv_cfg = RlooAdvantageConfig { num_generations: g, beta: cfg.beta, reward_clip_range: cfg.reward_clip_range, normalize_advantages: cfg.normalize_advantages };
        let epsilon = (cfg.epsilon, cfg.epsilon_high.unwrap_or(cfg.epsilon));
        let describe = serde_json::json!({
            "num_generations": g, "beta": cfg.beta, "epsilon": cfg.epsilon, "epsilon_high": epsilon.1,
            "normalize_advantages": cfg.normalize_advantages, "reward_clip_range": cfg.reward_clip_range,
            "mask_truncated_completions": cfg.mask_truncated_completions, "reference": reference.describe(),
        });
        run_steps("rloo", &cfg.train, policy, describe, |step, lr, opt| {
            // rollout: each prompt G times, groups consecutive
            let batch: Vec<Vec<u32>> = (0..b)
                .flat_map(|i| std::iter::repeat_n(prompts[shuffled(cfg.train.seed, prompts.len(), (step * b + i) as u64)].clone(), g))
                .collect();
            let seed = crate::train::batch::mix(cfg.train.seed ^ (step as u64 + 1));
            let mut ro = sample(policy, &batch, &cfg.rollout, seed)?;
            let (p, c) = ro.slices();
            let r = rewards.score(&p, &c, cfg.rollout.pad_id)?;
            let completion_length = c.iter().map(|x| x.len()).sum::<usize>() as f32 / c.len() as f32;
            if cfg.mask_truncated_completions {
                let t = ro.batch.seq;
                for i in 0..b * g {
                    if !ro.stopped(i, &cfg.rollout.stop_ids) {
                        ro.batch.mask[i * t..(i + 1) * t].fill(0.0);
                    }
                }
            }
            // log-probs: π (on the tape), π_old = π (one update per rollout), π_ref when β ≠ 0
            let s = ro.batch.upload(&gpu)?;
            let tape = Tape::new();
            let h = policy.hidden(Some(&tape), &s.ids, s.key_mask.as_ref())?;
            let logp = tempered_logps(policy, Some(&tape), &h, &s, cfg.rollout.temperature)?.0;
            let old = logp.tensor().clone();
            let ref_logp = if use_ref { Some(reference_token_logps(policy, &reference, &s, cfg.rollout.temperature)?) } else { None };
            // advantages and loss, on the GPU
            let rt = Tensor::from_f32(&gpu, &r, &[b * g])?;
            let (adv, adv_stats) = rloo_advantages(&rt, ref_logp.as_ref().map(|x| (&old, x)), &s.mask, &adv_cfg)?;
            let (loss, stats) = rloo_loss(&logp, &old, &adv, &s.mask, epsilon)?;
            tape.backward(&loss)?;
            opt.step(policy.trainable(), lr)?;
            policy.trainable().zero_grad()?;
            // metrics
            let stats = stats.to_f32_vec()?; // the step's submit: [loss, clip ratios]
            let mut rec = to_json(&RLOO_METRIC_NAMES.iter().copied().zip(stats[1..].iter().copied()).collect::<Vec<_>>());
            rec["loss"] = stats[0].into();
            if use_ref {
                rec["kl"] = adv_stats.to_f32_vec()?[0].into();
            }
            let (mean, std) = mean_std(&r);
            let zero_std = r.chunks(g).filter(|grp| mean_std(grp).1.abs() < 1e-8).count() as f32 / b as f32;
            rec["reward"] = mean.into();
            rec["reward_std"] = std.into();
            rec["frac_reward_zero_std"] = zero_std.into();
            rec["completion_length"] = completion_length.into();
            Ok(rec)
        })
    }
}

/// The mean and the unbiased standard deviation (torch.std; 0 for fewer than 2 values).
fn mean_std(x: &[f32]) -> (f32, f32) {
    let mean = x.iter().sum::<f32>() / x.len().max(1) as f32;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / (x.len().max(2) - 1) as f32;
    (mean, var.sqrt())
}
