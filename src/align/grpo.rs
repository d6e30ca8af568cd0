//! GRPO (DeepSeekMath; TRL's GRPOTrainer): no value model. For each prompt sample a group of G
//! completions, score each (a reward model or a Rust function: a verifiable reward), and use
//! the group-normalised reward as every token's advantage,
//!
//! ```text
//! A_i = (r_i − mean(r_group)) / (std(r_group) + 1e-4),
//! ```
//!
//! in the clipped objective `−min(ρA, clip(ρ, 1 ± ε)A) + β·k3(π, π_ref)` averaged over each
//! completion's tokens, then over completions ([`crate::ops::ppo::grpo_loss`], one kernel pass).
//! With one update per rollout (TRL's default `num_iterations = 1`) π_old is the policy itself,
//! so ρ = 1 in value and only its gradient acts.

use super::common::{run_steps, shuffled, to_json, Reference, TrainConfig};
use super::ppo::{reference_token_logps, tempered_logps};
use super::rollout::{sample, Rewards, RolloutConfig};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::ppo::{group_advantages, grpo_loss};
use crate::tape::Tape;
use crate::tensor::Tensor;

/// GRPO settings (TRL's GRPOConfig names).
#[derive(Clone, Debug)]
pub struct GrpoConfig {
    /// Steps; `batch_size` = prompts per step (each sampled `num_generations` times).
    pub train: TrainConfig,
    pub rollout: RolloutConfig,
    /// Completions per prompt G (at least 2). Example: 8.
    pub num_generations: usize,
    /// ε of the clipped objective. Example: 0.2.
    pub epsilon: f32,
    /// β of the k3 KL to the reference; 0 needs no reference. Example: 0.04.
    pub beta: f32,
    /// Divide by the group's std (Dr. GRPO argues for false). Example: true.
    pub scale_rewards: bool,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            train: TrainConfig { schedule: crate::train::schedule::Schedule::constant(1e-5), ..Default::default() },
            rollout: RolloutConfig::default(),
            num_generations: 8,
            epsilon: 0.2,
            beta: 0.04,
            scale_rewards: true,
        }
    }
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
    pub fn train(&self, policy: &Model, prompts: &[Vec<u32>], rewards: &Rewards, reference: Reference) -> Result<Vec<serde_json::Value>> {
        let cfg = &self.cfg;
        let (b, g) = (cfg.train.batch_size, cfg.num_generations);
        if prompts.is_empty() || g < 2 {
            return Err(Error::config("GRPO", format!("{} prompts, {g} generations per prompt (need prompts and at least 2)", prompts.len())));
        }
        let use_ref = cfg.beta != 0.0;
        if use_ref && matches!(reference, Reference::None | Reference::Precomputed) {
            return Err(Error::config("GRPO", format!("beta {} needs a live reference model (or beta 0)", cfg.beta)));
        }
        let gpu = policy.params().gpu().clone();
        let describe = serde_json::json!({"num_generations": g, "beta": cfg.beta, "epsilon": cfg.epsilon, "reference": reference.describe()});
        run_steps("grpo", &cfg.train, policy, describe, |step, lr, opt| {
            let batch: Vec<Vec<u32>> = (0..b)
                .flat_map(|i| std::iter::repeat_n(prompts[shuffled(cfg.train.seed, prompts.len(), (step * b + i) as u64)].clone(), g))
                .collect(); // each prompt G times, groups consecutive
            let seed = crate::train::batch::mix(cfg.train.seed ^ (step as u64 + 1));
            let ro = sample(policy, &batch, &cfg.rollout, seed)?;
            let (p, c) = ro.slices();
            let r = rewards.score(&p, &c, cfg.rollout.pad_id)?;
            let adv = group_advantages(&Tensor::from_f32(&gpu, &r, &[b * g])?, g, cfg.scale_rewards)?;
            let s = ro.batch.upload(&gpu)?;
            let ref_logp = if use_ref { Some(reference_token_logps(policy, &reference, &s, cfg.rollout.temperature)?) } else { None };
            let tape = Tape::new();
            let h = policy.hidden(Some(&tape), &s.ids, s.key_mask.as_ref())?;
            let logp = tempered_logps(policy, Some(&tape), &h, &s, cfg.rollout.temperature)?.0;
            let old = logp.tensor().clone(); // π_old = π (one update per rollout)
            let (loss, metrics) = grpo_loss(&logp, &old, ref_logp.as_ref(), &adv, &s.mask, cfg.epsilon, cfg.beta)?;
            tape.backward(&loss)?;
            opt.step(policy.trainable(), lr)?;
            policy.trainable().zero_grad()?;
            let stats = metrics.tensor().to_f32_vec()?; // the step's submit: [loss, kl, clip ratios]
            let mut rec = to_json(&metrics.named(&stats));
            rec["loss"] = stats[0].into();
            let mean = r.iter().sum::<f32>() / r.len() as f32;
            let std = (r.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / (r.len() - 1).max(1) as f32).sqrt();
            rec["reward"] = mean.into();
            rec["reward_std"] = std.into();
            rec["completion_length"] = (c.iter().map(|x| x.len()).sum::<usize>() as f32 / c.len() as f32).into();
            Ok(rec)
        })
    }
}
