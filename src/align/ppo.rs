//! PPO for RLHF (TRL's PPOTrainer, InstructGPT's recipe). Each step:
//!
//! 1. rollout: sample a completion y for each prompt x from the policy (KV cache);
//! 2. score: the reward model's r(x, y) (optionally −penalty without EOS, clipped), and per
//!    token the KL estimate to the frozen reference, giving rewards
//!    `R_t = −β_KL · kl_t`, plus r(x, y) at the last completion token;
//! 3. advantages: GAE over the value head's estimates V_t (γ = 1, λ = 0.95),
//!    `δ_t = R_t + γV_{t+1} − V_t`, `A_t = δ_t + γλA_{t+1}`, returns `A_t + V_t`, then whitened;
//! 4. PPO epochs over minibatches of the rollout: the clipped surrogate
//!    `max(−A·ρ, −A·clip(ρ, 1 ± ε))`, `ρ = π/π_old`, plus vf_coef × the clipped value loss.
//!
//! GAE, whitening, the KL estimators, the per-token rewards, the minibatch gather and the fused
//! loss are WGSL kernels ([`crate::ops::ppo`]); from the rollout to the end of the step nothing
//! is read back but the step's metrics, once.
//! The value head (TRL's `v_head.summary`) reads the policy's last hidden states (shared trunk).

use super::common::{run_steps, shuffled, Reference, TrainConfig};
use super::rollout::{sample, Rewards, Rollout, RolloutConfig};
use super::seqs::{SeqBatch, SeqTensors};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::elementwise::{mul, mul_forward, scale};
use crate::ops::loss::{token_entropy, token_logprobs};
use crate::ops::matmul::linear;
use crate::ops::optim::{AdamW, AdamWConfig};
use crate::ops::ppo::{accumulate, gae, gather_rows, kl_penalty, ppo_loss, token_rewards, whiten, KlKind, PpoLossConfig, PPO_METRIC_NAMES};
use crate::params::{ParamSpec, ParamStore};
use crate::tape::{Tape, Var};
use crate::tensor::{DType, Tensor};
use crate::Gpu;

/// PPO settings (TRL's PPOConfig names where they exist).
#[derive(Clone, Debug)]
pub struct PpoConfig {
    /// Steps = rollout batches; `batch_size` = prompts per rollout.
    pub train: TrainConfig,
    pub rollout: RolloutConfig,
    /// Passes over each rollout batch. Example: 4.
    pub ppo_epochs: usize,
    /// Minibatches per pass (must divide the batch). Example: 1.
    pub minibatches: usize,
    /// β_KL, the weight of the per-token KL penalty in the reward. Example: 0.05.
    pub kl_coef: f32,
    /// k1 (`logπ − logπ_ref`, TRL's default) or k3.
    pub kl_estimator: KlKind,
    /// Adaptive KL controller (Ziegler et al.): target KL per sequence and horizon; None = fixed β.
    pub kl_target: Option<(f32, f32)>,
    /// GAE's γ and λ. Example: 1.0, 0.95.
    pub gamma: f32,
    pub lam: f32,
    /// Clip ranges and the value-loss weight. Example: 0.2, 0.2, 0.1.
    pub loss: PpoLossConfig,
    /// Added to the score of completions that did not end with a stop token, e.g. Some(-1.0).
    pub missing_eos_penalty: Option<f32>,
    /// Clip scores to ±this, e.g. Some(5.0).
    pub reward_clip: Option<f32>,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            train: TrainConfig { schedule: crate::train::schedule::Schedule::constant(1e-5), ..Default::default() },
            rollout: RolloutConfig::default(),
            ppo_epochs: 4,
            minibatches: 1,
            kl_coef: 0.05,
            kl_estimator: KlKind::K1,
            kl_target: None,
            gamma: 1.0,
            lam: 0.95,
            loss: PpoLossConfig::default(),
            missing_eos_penalty: None,
            reward_clip: None,
        }
    }
}

/// The value head `V(h) = w·h + b` over the policy's last hidden states (TRL: `v_head.summary`).
pub struct ValueHead {
    pub params: ParamStore,
}

impl ValueHead {
    /// A zero-initialised head for hidden width `c`.
    pub fn new(gpu: &Gpu, c: usize) -> Result<ValueHead> {
        let specs = [ParamSpec::new("v_head.summary.weight", &[1, c], false), ParamSpec::new("v_head.summary.bias", &[1], false)];
        Ok(ValueHead { params: ParamStore::new(gpu, &specs)? })
    }

    /// Values (B, T) for hidden states (B, T, C).
    pub fn values(&self, tape: Option<&Tape>, hidden: &Var) -> Result<Var> {
        let (b, t, c) = (hidden.shape()[0], hidden.shape()[1], hidden.shape()[2]);
        let p = |n: &str| match tape {
            Some(tp) => self.params.var(tp, n),
            None => Ok(Var::constant(self.params.value(n)?)),
        };
        linear(&hidden.reshape(&[b * t, c])?, &p("v_head.summary.weight")?, Some(&p("v_head.summary.bias")?))?.reshape(&[b, t])
    }
}

/// Completion log-probs (B, T) of the tempered policy, 0 outside the completion, and the
/// logits they came from.
pub(crate) fn tempered_logps(model: &Model, tape: Option<&Tape>, hidden: &Var, s: &SeqTensors, temperature: f32) -> Result<(Var, Var)> {
    let mut logits = model.lm_head(tape, hidden)?; // (B·T, V)
    if temperature != 1.0 {
        logits = scale(&logits, 1.0 / temperature)?;
    }
    let lp = token_logprobs(&logits, &s.labels)?.reshape(&[s.rows, s.seq])?;
    Ok((mul(&lp, &Var::constant(s.mask.clone()))?, logits))
}

/// The reference's completion log-probs (B, T) for the rollout rows.
pub(crate) fn reference_token_logps(policy: &Model, reference: &Reference, s: &SeqTensors, temperature: f32) -> Result<Tensor> {
    let run = |m: &Model| -> Result<Tensor> {
        let h = m.hidden(None, &s.ids, s.key_mask.as_ref())?;
        Ok(tempered_logps(m, None, &h, s, temperature)?.0.tensor().clone())
    };
    match reference {
        Reference::Model(m) => run(m),
        Reference::Adapters => super::dpo::with_adapters_off(policy, || run(policy)),
        Reference::Precomputed | Reference::None => {
            Err(Error::config("reference", "PPO and GRPO need a live reference (a frozen model or the policy without its adapters)"))
        }
    }
}

/// What one rollout leaves for the PPO epochs: (B, T) tensors on the GPU, and what the CPU
/// already holds from the sampler.
struct Scored {
    old_logp: Tensor,
    old_values: Tensor,
    advantages: Tensor,
    returns: Tensor,
    num_eos: usize,
    completion_length: f32,
}

/// The step's metric sums on the GPU, read back once at the end of the step: `objective/kl`,
/// `objective/entropy`, `objective/scores`, `objective/rlhf_reward`, then the means over the
/// updates of the loss and [`PPO_METRIC_NAMES`].
const KL_SLOT: usize = 0;
const ENTROPY_SLOT: usize = 1;
const SCORE_SLOT: usize = 2;
const RLHF_REWARD_SLOT: usize = 3;
const UPDATE_SLOT: usize = 4;
const STEP_METRICS: usize = UPDATE_SLOT + 1 + PPO_METRIC_NAMES.len();

/// Trains a policy with PPO: `Ppo::new(cfg).train(&policy, &prompts, &rewards, Reference::Model(&sft))`.
pub struct Ppo {
    pub cfg: PpoConfig,
}

impl Ppo {
    pub fn new(cfg: PpoConfig) -> Ppo {
        Ppo { cfg }
    }

    /// Run `cfg.train.steps` rollout + update rounds on `prompts` (token ids, drawn in a seeded
    /// shuffled order); returns each step's metrics with TRL's names.
    pub fn train(&self, policy: &Model, prompts: &[Vec<u32>], rewards: &Rewards, reference: Reference) -> Result<Vec<serde_json::Value>> {
        let cfg = &self.cfg;
        let b = cfg.train.batch_size;
        if prompts.is_empty() {
            return Err(Error::config("PPO", "no prompts"));
        }
        if cfg.minibatches == 0 || !b.is_multiple_of(cfg.minibatches) || cfg.ppo_epochs == 0 {
            return Err(Error::config("PPO", format!("{} minibatches must divide the batch of {b}; epochs {} must be positive", cfg.minibatches, cfg.ppo_epochs)));
        }
        let gpu = policy.params().gpu().clone();
        let head = ValueHead::new(&gpu, policy.hidden_size())?;
        let mut head_opt = AdamW::new(&head.params, AdamWConfig { ..cfg.train.adamw })?;
        let mut kl_coef = cfg.kl_coef;
        let describe = serde_json::json!({"kl_coef": cfg.kl_coef, "ppo_epochs": cfg.ppo_epochs, "minibatches": cfg.minibatches, "reference": reference.describe()});
        run_steps("ppo", &cfg.train, policy, describe, |step, lr, opt| {
            let batch: Vec<Vec<u32>> = (0..b).map(|i| prompts[shuffled(cfg.train.seed, prompts.len(), (step * b + i) as u64)].clone()).collect();
            let seed = crate::train::batch::mix(cfg.train.seed ^ (step as u64 + 1));
            let ro = sample(policy, &batch, &cfg.rollout, seed)?;
            // from here to the metrics everything stays on the GPU
            let acc = Tensor::zeros(&gpu, &[STEP_METRICS], DType::F32, "ppo step metrics")?;
            let sc = self.score(policy, &head, &ro, rewards, &reference, kl_coef, &acc)?;
            let mb = b / cfg.minibatches;
            let per_update = 1.0 / (cfg.ppo_epochs * cfg.minibatches) as f32;
            for epoch in 0..cfg.ppo_epochs {
                for k in 0..cfg.minibatches {
                    let rows: Vec<usize> = (0..mb).map(|i| shuffled(seed ^ epoch as u64, b, (k * mb + i) as u64)).collect();
                    self.update(policy, &head, &ro, &sc, &rows, opt, &mut head_opt, lr, (&acc, per_update))?;
                }
            }
            let m = acc.to_f32_vec()?; // the step's one readback
            let kl = m[KL_SLOT];
            let mut rec = serde_json::json!({
                "objective/kl": kl,
                "objective/entropy": m[ENTROPY_SLOT],
                "objective/scores": m[SCORE_SLOT],
                "objective/non_score_reward": -kl_coef * kl,
                "objective/rlhf_reward": m[RLHF_REWARD_SLOT],
                "val/num_eos_tokens": sc.num_eos,
                "completion_length": sc.completion_length,
                "loss": m[UPDATE_SLOT],
            });
            for (i, name) in PPO_METRIC_NAMES.iter().enumerate() {
                rec[*name] = m[UPDATE_SLOT + 1 + i].into();
            }
            rec["objective/kl_coef"] = kl_coef.into();
            if let Some((target, horizon)) = cfg.kl_target {
                // Adaptive KL controller: move β_KL towards the target, at most ±20% per horizon.
                let kl = rec["objective/kl"].as_f64().unwrap_or(0.0) as f32;
                let err = (kl / target - 1.0).clamp(-0.2, 0.2);
                kl_coef *= 1.0 + err * b as f32 / horizon;
            }
            Ok(rec)
        })
    }

    /// Score a rollout on the GPU: old log-probs and values, reference KL, per-token rewards,
    /// GAE, whitening; the KL and entropy sums go into `acc`.
    #[allow(clippy::too_many_arguments)]
    fn score(&self, policy: &Model, head: &ValueHead, ro: &Rollout, rewards: &Rewards, reference: &Reference, kl_coef: f32, acc: &Tensor) -> Result<Scored> {
        let cfg = &self.cfg;
        let gpu = policy.params().gpu();
        let s = ro.batch.upload(gpu)?;
        let (b, t) = (s.rows, s.seq);
        let h = policy.hidden(None, &s.ids, s.key_mask.as_ref())?;
        let (logp, logits) = tempered_logps(policy, None, &h, &s, cfg.rollout.temperature)?;
        let values = head.values(None, &h)?;
        let entropy = mul_forward(&token_entropy(logits.tensor())?.reshape(&[b, t])?, &s.mask)?; // (B, T)
        let ref_logp = reference_token_logps(policy, reference, &s, cfg.rollout.temperature)?;
        let kl = mul_forward(&kl_penalty(logp.tensor(), &ref_logp, cfg.kl_estimator)?, &s.mask)?; // (B, T)
        // the scores, on the GPU: the reward model's (every row in one forward, as the policy's
        // above) or the reward function's (on the CPU already)
        let (p, c) = ro.slices();
        let scores = match rewards {
            Rewards::Model { model, max_len } => {
                let rows: Vec<(&[u32], &[u32])> = p.iter().copied().zip(c.iter().copied()).collect();
                let rs = SeqBatch::right_padded(&rows, *max_len, max_len.saturating_sub(1), cfg.rollout.pad_id)?.upload(gpu)?;
                model.scores(None, &rs)?.tensor().clone()
            }
            Rewards::Fn(_) => Tensor::from_f32(gpu, &rewards.score(&p, &c, cfg.rollout.pad_id)?, &[b])?,
        };
        // per-token rewards −β·kl plus the score (with the missing-EOS penalty, clipped) at the
        // last completion token, GAE, whitening
        let penalty: Vec<f32> = (0..b)
            .map(|i| match (cfg.missing_eos_penalty, ro.stopped(i, &cfg.rollout.stop_ids)) {
                (Some(pen), false) => pen,
                _ => 0.0,
            })
            .collect();
        let rew = token_rewards(&kl, &scores, &Tensor::from_f32(gpu, &penalty, &[b])?, cfg.reward_clip, &s.mask, kl_coef)?;
        let (adv, ret) = gae(&rew, values.tensor(), &s.mask, cfg.gamma, cfg.lam)?;
        let adv = whiten(&adv, &s.mask, true)?;
        accumulate(acc, KL_SLOT, &kl, 1, 1.0 / b as f32)?;
        accumulate(acc, ENTROPY_SLOT, &entropy, 1, 1.0 / b as f32)?;
        accumulate(acc, SCORE_SLOT, &scores, 1, 1.0 / b as f32)?;
        accumulate(acc, RLHF_REWARD_SLOT, &rew, 1, 1.0 / b as f32)?; // mean shaped score − β·kl
        Ok(Scored {
            old_logp: logp.tensor().clone(),
            old_values: values.tensor().clone(),
            advantages: adv,
            returns: ret,
            num_eos: (0..b).filter(|&i| ro.stopped(i, &cfg.rollout.stop_ids)).count(),
            completion_length: mean(&ro.completions.iter().map(|c| c.len() as f32).collect::<Vec<_>>()),
        })
    }

    /// One PPO update on the rollout rows `rows` (gathered on the GPU); adds `scale` × [loss,
    /// approxkl, clipfrac, pg, vf, vf clipfrac] into the step's metrics at [`UPDATE_SLOT`].
    #[allow(clippy::too_many_arguments)]
    fn update(&self, policy: &Model, head: &ValueHead, ro: &Rollout, sc: &Scored, rows: &[usize], opt: &mut AdamW, head_opt: &mut AdamW, lr: f32, (acc, scale): (&Tensor, f32)) -> Result<()> {
        let gpu = policy.params().gpu();
        let s = select_rows(&ro.batch, rows).upload(gpu)?;
        let idx = Tensor::from_u32(gpu, &rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), &[rows.len()])?;
        let pick = |x: &Tensor| gather_rows(x, &idx);
        let tape = Tape::new();
        let h = policy.hidden(Some(&tape), &s.ids, s.key_mask.as_ref())?;
        let (logp, _) = tempered_logps(policy, Some(&tape), &h, &s, self.cfg.rollout.temperature)?;
        let values = head.values(Some(&tape), &h)?;
        let (loss, metrics) = ppo_loss(&logp, &pick(&sc.old_logp)?, &pick(&sc.advantages)?, &values, &pick(&sc.old_values)?, &pick(&sc.returns)?, &s.mask, &self.cfg.loss)?;
        tape.backward(&loss)?;
        opt.step(policy.trainable(), lr)?;
        head_opt.step(&head.params, lr)?;
        policy.trainable().zero_grad()?;
        head.params.zero_grad()?;
        accumulate(acc, UPDATE_SLOT, &metrics.tensor().view(0, &[1 + PPO_METRIC_NAMES.len()])?, 1 + PPO_METRIC_NAMES.len(), scale)
    }
}

/// The rows `rows` of a batch.
pub(crate) fn select_rows(b: &SeqBatch, rows: &[usize]) -> SeqBatch {
    let t = b.seq;
    let take = |v: &Vec<u32>| rows.iter().flat_map(|&r| v[r * t..(r + 1) * t].iter().copied()).collect::<Vec<u32>>();
    SeqBatch {
        rows: rows.len(),
        seq: t,
        ids: take(&b.ids),
        labels: take(&b.labels),
        mask: rows.iter().flat_map(|&r| b.mask[r * t..(r + 1) * t].iter().copied()).collect(),
        completion_len: rows.iter().map(|&r| b.completion_len[r]).collect(),
        last: rows.iter().enumerate().map(|(i, &r)| b.last[r] - (r * t) as u32 + (i * t) as u32).collect(),
        key_mask: b.key_mask.as_ref().map(take),
    }
}

/// The mean of `v` (0 when empty).
fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len().max(1) as f32
}
