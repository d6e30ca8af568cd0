//! GRPO (DeepSeekMath; TRL's GRPOTrainer): no value model. For each prompt sample a group of G
//! completions, score each (a reward model or a Rust function: a verifiable reward), and use
//! the group-normalised reward as every token's advantage,
//!
//! ```text
//! A_i = (r_i − mean(r_group)) / (std(r_group) + 1e-4),
//! ```
//!
//! in the clipped objective `−min(ρA, clip(ρ, 1 − ε, 1 + ε_high)A) + β·k3(π, π_ref)`
//! ([`crate::ops::grpo::grpo_variant_loss`], fused), with TRL's variants: `loss_type` grpo (mean
//! over each completion's tokens, then over completions), bnpo and dapo (TRL's default: token
//! mean over the batch), dr_grpo (token sum over B · max_new_tokens); `importance_sampling_level`
//! token or sequence (GSPO: ρ per completion, the exp of its mean token log-ratio);
//! `scale_rewards` group, batch or none; `epsilon_high` (clip-higher); and
//! `mask_truncated_completions` (completions that never stopped count for nothing). β = 0 needs
//! no reference, and none is evaluated. With one update per rollout (TRL's default
//! `num_iterations = 1`) π_old is the policy itself, so ρ = 1 in value and only its gradient acts.
//!
//! With gradient accumulation each micro-batch samples its own groups (prompts: the split of one
//! batch of grad_accum × batch_size; sampling seed: the micro-batch's index). Advantages are
//! per group, so they do not depend on the split; `scale_rewards = batch` and the dapo and bnpo
//! token means are over the micro-batch, as TRL's per-micro-batch normalisation.

use super::common::TrainConfig;
use super::reference::Reference;
use super::rollout::{check_group_run, sample_groups, GroupSampling, Rewards, RolloutConfig};
use crate::train::trainer::{self, read_norm, Method, MicroBatch, MicroMetrics};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::grpo::{grpo_variant_loss, GrpoLossConfig, GrpoLossType, ImportanceLevel, GRPO_VARIANT_METRIC_NAMES};
use crate::ops::ppo::group_advantages;
use crate::tape::Tape;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// GRPO settings (TRL's GRPOConfig names).
#[derive(Clone, Debug)]
pub struct GrpoConfig {
    /// Steps; `batch_size` = prompts per micro-batch (each sampled `num_generations` times).
    pub train: TrainConfig,
    pub rollout: RolloutConfig,
    /// Completions per prompt G (at least 2). Example: 8.
    pub num_generations: usize,
    /// ε (ε_low) of the clipped objective. Example: 0.2.
    pub epsilon: f32,
    /// ε_high of the clip (DAPO's clip-higher, e.g. 0.28); None: = ε.
    pub epsilon_high: Option<f32>,
    /// β of the k3 KL to the reference; 0 needs no reference. Example: 0.04.
    pub beta: f32,
    /// How advantages are scaled (Dr. GRPO argues for none). Default: group.
    pub scale_rewards: ScaleRewards,
    /// How token losses are averaged. Default: dapo, as TRL.
    pub loss_type: GrpoLossType,
    /// Importance weights per token (GRPO) or per sequence (GSPO). Default: token.
    pub importance_sampling_level: ImportanceLevel,
    /// Completions that hit max_new_tokens without a stop token are left out of the loss.
    pub mask_truncated_completions: bool,
}

/// TRL's `scale_rewards`: the std that divides `reward − group mean`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ScaleRewards {
    /// The group's std (GRPO).
    #[default]
    Group,
    /// The whole batch's std (more robust to easy or hard groups).
    Batch,
    /// No scaling (Dr. GRPO).
    None,
}

impl std::str::FromStr for ScaleRewards {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "group" | "true" => Ok(ScaleRewards::Group),
            "batch" => Ok(ScaleRewards::Batch),
            "none" | "false" => Ok(ScaleRewards::None),
            _ => Err(Error::config("GRPO scale_rewards", format!("`{s}` is not group, batch or none"))),
        }
    }
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            // 4 prompts × 8 generations = 32 completions a step
            train: TrainConfig { batch_size: 4, schedule: crate::train::schedule::Schedule::constant(1e-5), ..Default::default() },
            rollout: RolloutConfig::default(),
            num_generations: 8,
            epsilon: 0.2,
            epsilon_high: None,
            beta: 0.04,
            scale_rewards: ScaleRewards::Group,
            loss_type: GrpoLossType::Dapo,
            importance_sampling_level: ImportanceLevel::Token,
            mask_truncated_completions: false,
        }
    }
}

/// One GRPO step's metrics, with TRL's names in `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpoMetrics {
    pub step: usize,
    pub loss: f32,
    pub lr: f32,
    /// Global gradient norm before clipping (absent without clipping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f32>,
    /// Mean reward of the step's completions.
    pub reward: f32,
    /// Their (unbiased) standard deviation.
    pub reward_std: f32,
    /// Mean k3 KL to the reference per completion token; absent when β = 0 (no reference).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<f32>,
    /// Share of tokens clipped below 1 − ε, above 1 + ε_high, and either.
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

/// Trains a policy with GRPO: `Grpo::new(cfg).train(&policy, &prompts, &Rewards::Fn(&f), Reference::None)`.
pub struct Grpo {
    pub cfg: GrpoConfig,
}

impl Grpo {
    pub fn new(cfg: GrpoConfig) -> Grpo {
        Grpo { cfg }
    }

    /// Run `cfg.train.steps` steps on `prompts`; returns each step's metrics with TRL's names
    /// (reward, reward_std, kl, clip_ratio/*, completion_length).
    pub fn train(&self, policy: &Model, prompts: &[Vec<u32>], rewards: &Rewards, reference: Reference) -> Result<Vec<GrpoMetrics>> {
        let cfg = &self.cfg;
        cfg.train.check("GRPO")?;
        let (b, g) = (cfg.train.batch_size, cfg.num_generations);
        check_group_run("GRPO", prompts.len(), g, cfg.beta, &reference)?;
        let loss = GrpoLossConfig {
            loss_type: cfg.loss_type,
            importance_sampling_level: cfg.importance_sampling_level,
            epsilon: cfg.epsilon,
            epsilon_high: cfg.epsilon_high.unwrap_or(cfg.epsilon),
            beta: cfg.beta,
            max_completion_length: cfg.rollout.max_new_tokens.max(1),
        };
        let groups = GroupSampling {
            prompts,
            rollout: &cfg.rollout,
            seed: cfg.train.seed,
            batch_size: b,
            num_generations: g,
            mask_truncated_completions: cfg.mask_truncated_completions,
        };
        let mut method = GrpoMethod { cfg, policy, groups, rewards, reference, loss };
        Ok(trainer::train(&cfg.train.loop_config(b * g), policy, &mut method)?.metrics)
    }
}

/// GRPO's step in the training loop (no state between steps: the sampling seed is a function
/// of seed and step).
struct GrpoMethod<'a> {
    cfg: &'a GrpoConfig,
    policy: &'a Model,
    groups: GroupSampling<'a>,
    rewards: &'a Rewards<'a>,
    reference: Reference<'a>,
    loss: GrpoLossConfig,
}

/// What a GRPO micro-batch leaves for the step's metrics: `[loss, GRPO_VARIANT_METRIC_NAMES...]`
/// on the GPU, the rewards and the mean completion length.
struct GrpoPart {
    stats: Tensor,
    rewards: Vec<f32>,
    completion_length: f32,
}

impl Method for GrpoMethod<'_> {
    type Metrics = GrpoMetrics;
    type Part = GrpoPart;

    fn name(&self) -> &'static str {
        "grpo"
    }

    fn settings(&self) -> serde_json::Value {
        let cfg = self.cfg;
        self.cfg.train.settings(serde_json::json!({
            "num_generations": cfg.num_generations, "beta": cfg.beta, "epsilon": cfg.epsilon, "epsilon_high": self.loss.epsilon_high,
            "loss_type": cfg.loss_type.name(), "importance_sampling_level": format!("{:?}", cfg.importance_sampling_level).to_lowercase(),
            "scale_rewards": format!("{:?}", cfg.scale_rewards).to_lowercase(), "mask_truncated_completions": cfg.mask_truncated_completions,
            "reference": self.reference.describe(),
        }))
    }

    fn backward(&mut self, mb: MicroBatch) -> Result<GrpoPart> {
        let (cfg, policy) = (self.cfg, self.policy);
        let (b, g) = (cfg.train.batch_size, cfg.num_generations);
        let use_ref = cfg.beta != 0.0;
        // 1. sample G completions per prompt, score them; π's log-probs on the tape, π_ref's
        let tape = Tape::new();
        let ro = sample_groups(policy, &tape, &self.groups, mb.index(), self.rewards, use_ref.then_some(&self.reference))?;
        // 2. advantages: each reward against its group
        let rt = Tensor::from_f32(policy.params().gpu(), &ro.rewards, &[b * g])?;
        let adv = match cfg.scale_rewards {
            ScaleRewards::Group => group_advantages(&rt, g, true)?,
            ScaleRewards::None => group_advantages(&rt, g, false)?,
            ScaleRewards::Batch => {
                // the rewards are on the CPU already (a Rust function or the reward model's
                // scores read for the metrics): the batch std is one number
                let centred = group_advantages(&rt, g, false)?;
                let std = unbiased_std(&ro.rewards) + 1e-4;
                crate::ops::elementwise::scale_forward(&centred, 1.0 / std)?
            }
        };
        // 3. the clipped objective with the KL to the reference, backward
        let (loss, stats) = grpo_variant_loss(&ro.logp, &ro.old_logp, ro.ref_logp.as_ref(), &adv, &ro.seqs.mask, &self.loss)?;
        tape.backward(&mb.scaled(&loss)?)?;
        Ok(GrpoPart { stats, rewards: ro.rewards, completion_length: ro.completion_length })
    }

    /// Means over the micro-batches; reward and reward_std over all the step's completions.
    fn finish(&mut self, parts: Vec<GrpoPart>, grad_norm: Option<Tensor>) -> Result<GrpoMetrics> {
        // 4. the metrics: the step's readback, [loss, kl, clip ratios] each
        let stats = MicroMetrics::read(&parts.iter().map(|p| p.stats.clone()).collect::<Vec<_>>())?;
        let r: Vec<f32> = parts.iter().flat_map(|p| p.rewards.iter().copied()).collect();
        let lengths = parts.iter().map(|p| p.completion_length as f64).sum::<f64>() / parts.len() as f64;
        debug_assert_eq!(GRPO_VARIANT_METRIC_NAMES, ["kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"]);
        Ok(GrpoMetrics {
            loss: stats.mean(0),
            grad_norm: read_norm(grad_norm)?,
            reward: r.iter().sum::<f32>() / r.len() as f32,
            reward_std: unbiased_std(&r),
            kl: (self.cfg.beta != 0.0).then(|| stats.mean(1)),
            clip_ratio_low_mean: stats.mean(2),
            clip_ratio_high_mean: stats.mean(3),
            clip_ratio_region_mean: stats.mean(4),
            completion_length: lengths as f32,
            ..Default::default()
        })
    }

    fn loss(m: &GrpoMetrics) -> f32 {
        m.loss
    }

    fn stamp(&self, m: &mut GrpoMetrics, done: usize, lr: f32, elapsed_s: f64, _: usize) {
        (m.step, m.lr, m.elapsed_s) = (done, lr, elapsed_s);
    }
}

/// The unbiased standard deviation (torch.std), 0 for fewer than 2 values.
fn unbiased_std(x: &[f32]) -> f32 {
    if x.len() < 2 {
        return 0.0;
    }
    let mean = x.iter().sum::<f32>() / x.len() as f32;
    (x.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / (x.len() - 1) as f32).sqrt()
}
