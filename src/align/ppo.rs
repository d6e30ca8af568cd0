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
//! GAE, whitening, the KL estimators and the fused loss are WGSL kernels ([`crate::ops::ppo`]).
//! The value head (TRL's `v_head.summary`) reads the policy's last hidden states (shared trunk).

use super::batching::{prompt_groups, sampling_seed, shuffled};
use super::common::TrainConfig;
use super::reference::{tempered_logps, Reference};
use super::rollout::{sample, Rewards, Rollout, RolloutConfig};
use super::seqs::SeqBatch;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::matmul::linear;
use crate::ops::optim::AdamW;
use crate::ops::ppo::{gae, kl_penalty, ppo_loss, whiten, KlKind, PpoLossConfig};
use crate::ops::reduce::sum_last_forward;
use crate::params::{ParamSpec, ParamStore};
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;
use crate::train::trainer::{self, Method, MethodState, Step};
use crate::Gpu;
use serde::{Deserialize, Serialize};

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

/// What one rollout leaves for the PPO epochs, on the CPU: (B, T) rows.
struct Scored {
    old_logp: Vec<f32>,
    old_values: Vec<f32>,
    advantages: Vec<f32>,
    returns: Vec<f32>,
    metrics: serde_json::Value,
}

/// One PPO step's metrics, with TRL's names in `metrics.jsonl` (the update's values are means
/// over the step's epochs and minibatches).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PpoMetrics {
    #[serde(default)]
    pub step: usize,
    /// Mean PPO loss (policy + vf_coef · value) of the updates.
    pub loss: f32,
    #[serde(default)]
    pub lr: f32,
    /// Mean summed per-token KL to the reference per completion.
    #[serde(rename = "objective/kl")]
    pub objective_kl: f32,
    /// Mean summed per-token entropy per completion.
    #[serde(rename = "objective/entropy")]
    pub objective_entropy: f32,
    /// Mean reward-model (or function) score, before penalties and clipping.
    #[serde(rename = "objective/scores")]
    pub objective_scores: f32,
    /// −β_KL · objective/kl.
    #[serde(rename = "objective/non_score_reward")]
    pub objective_non_score_reward: f32,
    /// Mean shaped score minus the KL penalty.
    #[serde(rename = "objective/rlhf_reward")]
    pub objective_rlhf_reward: f32,
    /// β_KL used this step (moves with the adaptive controller).
    #[serde(rename = "objective/kl_coef")]
    pub objective_kl_coef: f32,
    /// Completions that ended with a stop token.
    #[serde(rename = "val/num_eos_tokens")]
    pub val_num_eos_tokens: f32,
    /// Mean completion length in tokens.
    pub completion_length: f32,
    #[serde(rename = "policy/approxkl_avg")]
    pub policy_approxkl_avg: f32,
    #[serde(rename = "policy/clipfrac_avg")]
    pub policy_clipfrac_avg: f32,
    #[serde(rename = "loss/policy_avg")]
    pub loss_policy_avg: f32,
    #[serde(rename = "loss/value_avg")]
    pub loss_value_avg: f32,
    #[serde(rename = "val/clipfrac_avg")]
    pub val_clipfrac_avg: f32,
    #[serde(default)]
    pub elapsed_s: f64,
}

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
    pub fn train(&self, policy: &Model, prompts: &[Vec<u32>], rewards: &Rewards, reference: Reference) -> Result<Vec<PpoMetrics>> {
        let cfg = &self.cfg;
        cfg.train.check("PPO")?;
        let b = cfg.train.batch_size;
        if prompts.is_empty() {
            return Err(Error::config("PPO", "no prompts"));
        }
        if cfg.minibatches == 0 || !b.is_multiple_of(cfg.minibatches) || cfg.ppo_epochs == 0 {
            return Err(Error::config("PPO", format!("{} minibatches must divide the batch of {b}; epochs {} must be positive", cfg.minibatches, cfg.ppo_epochs)));
        }
        let head = ValueHead::new(policy.params().gpu(), policy.hidden_size())?;
        let head_opt = AdamW::new(&head.params, cfg.train.adamw)?;
        let mut method = PpoMethod { ppo: self, policy, prompts, rewards, reference, head, head_opt, kl_coef: cfg.kl_coef };
        Ok(trainer::train(&cfg.train.loop_config(b), policy, &mut method)?.metrics)
    }

    /// Score a rollout: old log-probs and values, reference KL, rewards, GAE, whitening.
    fn score(&self, policy: &Model, head: &ValueHead, ro: &Rollout, rewards: &Rewards, reference: &Reference, kl_coef: f32) -> Result<Scored> {
        let cfg = &self.cfg;
        let gpu = policy.params().gpu();
        let s = ro.batch.upload(gpu)?;
        let (b, t) = (s.rows, s.seq);
        let h = policy.hidden(None, &s.ids, s.key_mask.as_ref())?;
        let (logp, token_entropy) = tempered_logps(policy, None, &h, &s, cfg.rollout.temperature)?;
        let values = head.values(None, &h)?;
        let entropy = sum_last_forward(&crate::ops::elementwise::mul_forward(&token_entropy.tensor().reshape(&[b, t])?, &s.mask)?)?; // (B)
        let ref_logp = reference.token_logps(policy, &s, cfg.rollout.temperature)?;
        let kl = crate::ops::elementwise::mul_forward(&kl_penalty(logp.tensor(), &ref_logp, cfg.kl_estimator)?, &s.mask)?; // (B, T)
        let (p, c) = ro.slices();
        let mut scores = rewards.score(&p, &c, cfg.rollout.pad_id)?;
        let raw_scores = scores.clone();
        for (i, sc) in scores.iter_mut().enumerate() {
            if let (Some(pen), false) = (cfg.missing_eos_penalty, ro.stopped(i, &cfg.rollout.stop_ids)) {
                *sc += pen;
            }
            if let Some(clip) = cfg.reward_clip {
                *sc = sc.clamp(-clip, clip);
            }
        }
        let kl_v = kl.to_f32_vec()?;
        // per-token rewards: −β·kl, plus the score at the last completion token
        let mut r = kl_v.iter().map(|k| -kl_coef * k).collect::<Vec<f32>>();
        for (i, sc) in scores.iter().enumerate() {
            let last = ro.batch.mask[i * t..(i + 1) * t].iter().rposition(|&m| m > 0.0);
            if let Some(l) = last {
                r[i * t + l] += sc;
            }
        }
        let rew = Tensor::from_f32(gpu, &r, &[b, t])?;
        let (adv, ret) = gae(&rew, values.tensor(), &s.mask, cfg.gamma, cfg.lam)?;
        let adv = whiten(&adv, &s.mask, true)?;
        let kl_sum: f32 = kl_v.iter().sum::<f32>() / b as f32;
        let ent: f32 = entropy.to_f32_vec()?.iter().sum::<f32>() / b as f32;
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
        let len = mean(&ro.completions.iter().map(|c| c.len() as f32).collect::<Vec<_>>());
        let metrics = serde_json::json!({
            "objective/kl": kl_sum,
            "objective/entropy": ent,
            "objective/scores": mean(&raw_scores),
            "objective/non_score_reward": -kl_coef * kl_sum,
            "objective/rlhf_reward": mean(&scores) - kl_coef * kl_sum,
            "val/num_eos_tokens": (0..b).filter(|&i| ro.stopped(i, &cfg.rollout.stop_ids)).count(),
            "completion_length": len,
        });
        Ok(Scored {
            old_logp: logp.to_f32_vec()?,
            old_values: values.to_f32_vec()?,
            advantages: adv.to_f32_vec()?,
            returns: ret.to_f32_vec()?,
            metrics,
        })
    }

    /// One PPO update on the rollout rows `rows`; returns [loss, approxkl, clipfrac, pg, vf, vf clipfrac].
    #[allow(clippy::too_many_arguments)]
    fn update(&self, policy: &Model, head: &ValueHead, ro: &Rollout, sc: &Scored, rows: &[usize], opt: &mut AdamW, head_opt: &mut AdamW, lr: f32) -> Result<Vec<f32>> {
        let gpu = policy.params().gpu();
        let t = ro.batch.seq;
        let sub = select_rows(&ro.batch, rows);
        let s = sub.upload(gpu)?;
        let pick = |v: &[f32]| -> Result<Tensor> {
            let x: Vec<f32> = rows.iter().flat_map(|&r| v[r * t..(r + 1) * t].iter().copied()).collect();
            Tensor::from_f32(gpu, &x, &[rows.len(), t])
        };
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
        let m = metrics.tensor().to_f32_vec()?;
        Ok(m[..6].to_vec())
    }
}

/// PPO's step in the training loop, with what it carries from step to step: the value head,
/// its AdamW, and the adaptive KL coefficient.
struct PpoMethod<'a> {
    ppo: &'a Ppo,
    policy: &'a Model,
    prompts: &'a [Vec<u32>],
    rewards: &'a Rewards<'a>,
    reference: Reference<'a>,
    head: ValueHead,
    head_opt: AdamW,
    kl_coef: f32,
}

impl Method for PpoMethod<'_> {
    type Metrics = PpoMetrics;

    fn name(&self) -> &'static str {
        "ppo"
    }

    fn settings(&self) -> serde_json::Value {
        let cfg = &self.ppo.cfg;
        cfg.train.settings(serde_json::json!({"kl_coef": cfg.kl_coef, "ppo_epochs": cfg.ppo_epochs, "minibatches": cfg.minibatches, "reference": self.reference.describe()}))
    }

    fn step(&mut self, st: Step) -> Result<PpoMetrics> {
        let (ppo, cfg, policy) = (self.ppo, &self.ppo.cfg, self.policy);
        let b = cfg.train.batch_size;
        let batch = prompt_groups(self.prompts, cfg.train.seed, st.step, b, 1);
        let seed = sampling_seed(cfg.train.seed, st.step);
        let ro = sample(policy, &batch, &cfg.rollout, seed)?;
        let sc = ppo.score(policy, &self.head, &ro, self.rewards, &self.reference, self.kl_coef)?;
        let mut rec = sc.metrics.clone();
        let mb = b / cfg.minibatches;
        let mut sums = [0.0f64; 6];
        let mut count = 0.0;
        for epoch in 0..cfg.ppo_epochs {
            for k in 0..cfg.minibatches {
                let rows: Vec<usize> = (0..mb).map(|i| shuffled(seed ^ epoch as u64, b, (k * mb + i) as u64)).collect();
                let m = ppo.update(policy, &self.head, &ro, &sc, &rows, st.opt, &mut self.head_opt, st.lr)?;
                for (s, v) in sums.iter_mut().zip(m) {
                    *s += v as f64;
                }
                count += 1.0;
            }
        }
        rec["loss"] = (sums[0] / count).into();
        for (i, name) in crate::ops::ppo::PPO_METRIC_NAMES.iter().enumerate() {
            rec[*name] = (sums[i + 1] / count).into();
        }
        rec["objective/kl_coef"] = self.kl_coef.into();
        if let Some((target, horizon)) = cfg.kl_target {
            // Adaptive KL controller: move β_KL towards the target, at most ±20% per horizon.
            let kl = rec["objective/kl"].as_f64().unwrap_or(0.0) as f32;
            let err = (kl / target - 1.0).clamp(-0.2, 0.2);
            self.kl_coef *= 1.0 + err * b as f32 / horizon;
        }
        serde_json::from_value(rec).map_err(|e| Error::config("PPO metrics", e.to_string()))
    }

    fn loss(m: &PpoMetrics) -> f32 {
        m.loss
    }

    fn stamp(&self, m: &mut PpoMetrics, done: usize, lr: f32, elapsed_s: f64, _: usize) {
        (m.step, m.lr, m.elapsed_s) = (done, lr, elapsed_s);
    }

    fn state(&self) -> Result<MethodState> {
        let mut s = MethodState { values: serde_json::json!({"kl_coef": self.kl_coef}), tensors: vec![] };
        s.push_store("value_head", &self.head.params, &self.head_opt)?;
        Ok(s)
    }

    fn restore(&mut self, s: MethodState) -> Result<()> {
        s.load_store("value_head", &self.head.params, &mut self.head_opt)?;
        let kl = s.values["kl_coef"].as_f64().ok_or_else(|| Error::config("PPO checkpoint", "no `kl_coef` in its method state"))?;
        self.kl_coef = kl as f32;
        Ok(())
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
