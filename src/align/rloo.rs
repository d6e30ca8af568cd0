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
//!
//! With gradient accumulation each micro-batch samples its own groups (prompts: the split of one
//! batch of grad_accum × batch_size; sampling seed: the micro-batch's index). The leave-one-out
//! baselines are per group, so they do not depend on the split; `normalize_advantages` is over
//! the micro-batch.

use super::common::TrainConfig;
use super::reference::Reference;
use super::rollout::{check_group_run, sample_groups, GroupSampling, Rewards, RolloutConfig};
use crate::error::Result;
use crate::model::Model;
use crate::ops::rloo::{rloo_advantages, rloo_loss, RlooAdvantageConfig, RLOO_METRIC_NAMES};
use crate::tape::Tape;
use crate::tensor::Tensor;
use crate::train::trainer::{self, read_norm, Method, MicroBatch, MicroMetrics};
use serde::{Deserialize, Serialize};

/// TRL's RLOOConfig learning rate, the constant schedule of [`RlooConfig::default`].
pub const DEFAULT_LR: f32 = 1e-6;

/// RLOO settings (TRL's RLOOConfig names and defaults).
#[derive(Clone, Debug)]
pub struct RlooConfig {
    /// Steps; `batch_size` = prompts per micro-batch (each sampled `num_generations` times).
    /// TRL's learning rate 1e-6.
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

/// One RLOO step's metrics, with TRL's names in `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RlooMetrics {
    pub step: usize,
    pub loss: f32,
    pub lr: f32,
    /// Global gradient norm before clipping (absent without clipping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f32>,
    /// Mean reward of the step's completions (before the KL term and any clipping).
    pub reward: f32,
    /// Their (unbiased) standard deviation.
    pub reward_std: f32,
    /// Share of prompts whose G rewards are all equal (no learning signal: every advantage 0).
    pub frac_reward_zero_std: f32,
    /// Mean summed KL to the reference per completion; absent when β = 0 (no reference).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<f32>,
    /// Share of completions whose importance weight was clipped below 1 − ε, above 1 + ε_high,
    /// and either.
    #[serde(rename = "clip_ratio/low_mean")]
    pub clip_ratio_low_mean: f32,
    #[serde(rename = "clip_ratio/high_mean")]
    pub clip_ratio_high_mean: f32,
    #[serde(rename = "clip_ratio/region_mean")]
    pub clip_ratio_region_mean: f32,
    /// Mean completion length in tokens.
    pub completion_length: f32,
    #[serde(default)]
    pub elapsed_s: f64,
}

/// Trains a policy with RLOO: `Rloo::new(cfg).train(&policy, &prompts, &Rewards::Fn(&f), Reference::Model(&sft))`.
pub struct Rloo {
    pub cfg: RlooConfig,
}

impl Rloo {
    pub fn new(cfg: RlooConfig) -> Rloo {
        Rloo { cfg }
    }

    /// Run `cfg.train.steps` steps on `prompts` (resuming and checkpointing as `cfg.train`
    /// says); returns each step's metrics with TRL's names (reward, reward_std,
    /// frac_reward_zero_std, kl, clip_ratio/*, completion_length).
    pub fn train(&self, policy: &Model, prompts: &[Vec<u32>], rewards: &Rewards, reference: Reference) -> Result<Vec<RlooMetrics>> {
        let cfg = &self.cfg;
        cfg.train.check("RLOO")?;
        let (b, g) = (cfg.train.batch_size, cfg.num_generations);
        check_group_run("RLOO", prompts.len(), g, cfg.beta, &reference)?;
        let adv = RlooAdvantageConfig { num_generations: g, beta: cfg.beta, reward_clip_range: cfg.reward_clip_range, normalize_advantages: cfg.normalize_advantages };
        let epsilon = (cfg.epsilon, cfg.epsilon_high.unwrap_or(cfg.epsilon));
        let groups = GroupSampling {
            prompts,
            rollout: &cfg.rollout,
            seed: cfg.train.seed,
            batch_size: b,
            num_generations: g,
            mask_truncated_completions: cfg.mask_truncated_completions,
        };
        let mut method = RlooMethod { cfg, policy, groups, rewards, reference, adv, epsilon };
        Ok(trainer::train(&cfg.train.loop_config(b * g), policy, &mut method)?.metrics)
    }
}

/// RLOO's step in the training loop (no state between steps: the sampling seed is a function
/// of seed and step, and the leave-one-out baseline is the step's own group).
struct RlooMethod<'a> {
    cfg: &'a RlooConfig,
    policy: &'a Model,
    groups: GroupSampling<'a>,
    rewards: &'a Rewards<'a>,
    reference: Reference<'a>,
    adv: RlooAdvantageConfig,
    /// (ε_low, ε_high) of the clip.
    epsilon: (f32, f32),
}

/// What an RLOO micro-batch leaves for the step's metrics: `[loss, RLOO_METRIC_NAMES...]` and
/// the mean KL (when β ≠ 0) on the GPU, the rewards and the mean completion length.
struct RlooPart {
    stats: Tensor,
    kl: Option<Tensor>,
    rewards: Vec<f32>,
    completion_length: f32,
}

impl Method for RlooMethod<'_> {
    type Metrics = RlooMetrics;
    type Part = RlooPart;

    fn name(&self) -> &'static str {
        "rloo"
    }

    fn settings(&self) -> serde_json::Value {
        let cfg = self.cfg;
        cfg.train.settings(serde_json::json!({
            "num_generations": cfg.num_generations, "beta": cfg.beta, "epsilon": cfg.epsilon, "epsilon_high": self.epsilon.1,
            "normalize_advantages": cfg.normalize_advantages, "reward_clip_range": cfg.reward_clip_range,
            "mask_truncated_completions": cfg.mask_truncated_completions, "reference": self.reference.describe(),
        }))
    }

    fn backward(&mut self, mb: MicroBatch) -> Result<RlooPart> {
        let (cfg, policy) = (self.cfg, self.policy);
        let (b, g) = (cfg.train.batch_size, cfg.num_generations);
        let use_ref = cfg.beta != 0.0;
        // rollout: each prompt G times, groups consecutive, scored; log-probs: π (on the tape),
        // π_old = π (one update per rollout), π_ref when β ≠ 0
        let tape = Tape::new();
        let ro = sample_groups(policy, &tape, &self.groups, mb.index(), self.rewards, use_ref.then_some(&self.reference))?;
        // advantages and loss, on the GPU
        let rt = Tensor::from_f32(policy.params().gpu(), &ro.rewards, &[b * g])?;
        let (adv, adv_stats) = rloo_advantages(&rt, ro.ref_logp.as_ref().map(|x| (&ro.old_logp, x)), &ro.seqs.mask, &self.adv)?;
        let (loss, stats) = rloo_loss(&ro.logp, &ro.old_logp, &adv, &ro.seqs.mask, self.epsilon)?;
        tape.backward(&mb.scaled(&loss)?)?;
        Ok(RlooPart { stats, kl: use_ref.then_some(adv_stats), rewards: ro.rewards, completion_length: ro.completion_length })
    }

    /// Means over the micro-batches; the reward statistics over all the step's completions.
    fn finish(&mut self, parts: Vec<RlooPart>, grad_norm: Option<Tensor>) -> Result<RlooMetrics> {
        // metrics: the step's readback, [loss, clip ratios] each
        let stats = MicroMetrics::read(&parts.iter().map(|p| p.stats.clone()).collect::<Vec<_>>())?;
        let kl = parts.iter().map(|p| p.kl.clone()).collect::<Option<Vec<Tensor>>>().map(|k| MicroMetrics::read(&k)).transpose()?;
        let r: Vec<f32> = parts.iter().flat_map(|p| p.rewards.iter().copied()).collect();
        let lengths = parts.iter().map(|p| p.completion_length as f64).sum::<f64>() / parts.len() as f64;
        debug_assert_eq!(RLOO_METRIC_NAMES, ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"]);
        let (mean, std) = mean_std(&r);
        let g = self.cfg.num_generations;
        Ok(RlooMetrics {
            loss: stats.mean(0),
            grad_norm: read_norm(grad_norm)?,
            reward: mean,
            reward_std: std,
            frac_reward_zero_std: r.chunks(g).filter(|grp| mean_std(grp).1.abs() < 1e-8).count() as f32 / (r.len() / g) as f32,
            kl: kl.map(|k| k.mean(0)),
            clip_ratio_low_mean: stats.mean(1),
            clip_ratio_high_mean: stats.mean(2),
            clip_ratio_region_mean: stats.mean(3),
            completion_length: lengths as f32,
            ..Default::default()
        })
    }

    fn loss(m: &RlooMetrics) -> f32 {
        m.loss
    }

    fn stamp(&self, m: &mut RlooMetrics, done: usize, lr: f32, elapsed_s: f64, _: usize) {
        (m.step, m.lr, m.elapsed_s) = (done, lr, elapsed_s);
    }
}
/// The mean and the unbiased standard deviation (torch.std; 0 for fewer than 2 values).
fn mean_std(x: &[f32]) -> (f32, f32) {
    let mean = x.iter().sum::<f32>() / x.len().max(1) as f32;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / (x.len().max(2) - 1) as f32;
    (mean, var.sqrt())
}
