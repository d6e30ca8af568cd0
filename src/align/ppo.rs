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
//! In the one training loop ([`crate::train::trainer`]) step 1-3 are [`Method::prepare`] and each
//! of the `ppo_epochs × minibatches` updates is one of the loop's: with gradient accumulation
//! (TRL's `gradient_accumulation_steps`) a minibatch's rows are split into `grad_accum`
//! micro-batches, each loss (a token mean over its rows) scaled by 1/grad_accum, then one AdamW
//! step of the policy and one of the value head.
//!
//! GAE, whitening, the KL estimators, the per-token rewards, the minibatch gather and the fused
//! loss are WGSL kernels ([`crate::ops::ppo`]); from the rollout to the end of the step nothing
//! is read back but the step's metrics, once.
//! The value head (TRL's `v_head.summary`) reads the policy's last hidden states (shared trunk).

use super::batching::{prompt_groups, sampling_seed, shuffled};
use super::common::TrainConfig;
use super::reference::{tempered_logps, Reference};
use super::rollout::{sample, Rewards, Rollout, RolloutConfig};
use super::seqs::SeqBatch;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::elementwise::mul_forward;
use crate::ops::matmul::linear;
use crate::ops::optim::AdamW;
use crate::ops::ppo::{accumulate, gae, gather_rows, kl_penalty, ppo_loss, token_rewards, whiten, KlKind, PpoLossConfig, PPO_METRIC_NAMES};
use crate::params::{ParamSpec, ParamStore};
use crate::tape::{Tape, Var};
use crate::tensor::{DType, Tensor};
use crate::train::trainer::{self, Method, MethodState, MicroBatch};
use crate::Gpu;
use serde::{Deserialize, Serialize};

/// The adaptive KL controller's horizon in completions (Ziegler et al.; TRL's old PPOConfig
/// `horizon`), the usual second half of [`PpoConfig::kl_target`].
pub const DEFAULT_KL_HORIZON: f32 = 10_000.0;

/// PPO settings (TRL's PPOConfig names where they exist).
#[derive(Clone, Debug)]
pub struct PpoConfig {
    /// Steps = rollout batches; `batch_size` = prompts per rollout; `grad_accum` micro-batches
    /// per minibatch update.
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
    /// Adaptive KL controller (Ziegler et al.): target KL per sequence and horizon in completions
    /// (e.g. [`DEFAULT_KL_HORIZON`]); None = fixed β.
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
        let rows = b / cfg.minibatches;
        if !rows.is_multiple_of(cfg.train.grad_accum) {
            return Err(Error::config("PPO", format!("grad_accum {} must divide each minibatch's {rows} rows (batch {b} / {} minibatches)", cfg.train.grad_accum, cfg.minibatches)));
        }
        let head = ValueHead::new(policy.params().gpu(), policy.hidden_size())?;
        let head_opt = AdamW::new(&head.params, cfg.train.adamw)?;
        let mut method = PpoMethod { ppo: self, policy, prompts, rewards, reference, head, head_opt, kl_coef: cfg.kl_coef, rollout: None };
        // the memory plan's rows: the rollout's, scored in one forward
        Ok(trainer::train(&cfg.train.loop_config(b), policy, &mut method)?.metrics)
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
        let (logp, token_entropy) = tempered_logps(policy, None, &h, &s, cfg.rollout.temperature)?;
        let values = head.values(None, &h)?;
        let entropy = mul_forward(&token_entropy.tensor().reshape(&[b, t])?, &s.mask)?; // (B, T)
        let ref_logp = reference.token_logps(policy, &s, cfg.rollout.temperature)?;
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

    /// Loss and backward of a PPO update's micro-batch, the rollout rows `rows` (gathered on the
    /// GPU), its loss scaled by `mb`; adds `scale` × [loss, approxkl, clipfrac, pg, vf, vf
    /// clipfrac] into the step's metrics at [`UPDATE_SLOT`].
    fn micro_update(&self, policy: &Model, head: &ValueHead, r: &StepRollout, rows: &[usize], mb: MicroBatch, scale: f32) -> Result<()> {
        let (ro, sc) = (&r.rollout, &r.scored);
        let gpu = policy.params().gpu();
        let s = select_rows(&ro.batch, rows).upload(gpu)?;
        let idx = Tensor::from_u32(gpu, &rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), &[rows.len()])?;
        let pick = |x: &Tensor| gather_rows(x, &idx);
        let tape = Tape::new();
        let h = policy.hidden(Some(&tape), &s.ids, s.key_mask.as_ref())?;
        let (logp, _) = tempered_logps(policy, Some(&tape), &h, &s, self.cfg.rollout.temperature)?;
        let values = head.values(Some(&tape), &h)?;
        let (loss, metrics) = ppo_loss(&logp, &pick(&sc.old_logp)?, &pick(&sc.advantages)?, &values, &pick(&sc.old_values)?, &pick(&sc.returns)?, &s.mask, &self.cfg.loss)?;
        tape.backward(&mb.scaled(&loss)?)?;
        accumulate(&r.acc, UPDATE_SLOT, &metrics.tensor().view(0, &[1 + PPO_METRIC_NAMES.len()])?, 1 + PPO_METRIC_NAMES.len(), scale)
    }
}

/// One step's rollout, scored, for its updates; and the step's metric sums on the GPU.
struct StepRollout {
    rollout: Rollout,
    scored: Scored,
    /// The step's sampling seed (it also shuffles each epoch's minibatches).
    seed: u64,
    acc: Tensor,
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
    /// The current step's rollout, from `prepare` to `finish`.
    rollout: Option<StepRollout>,
}

impl Method for PpoMethod<'_> {
    type Metrics = PpoMetrics;
    type Part = ();

    fn name(&self) -> &'static str {
        "ppo"
    }

    fn settings(&self) -> serde_json::Value {
        let cfg = &self.ppo.cfg;
        cfg.train.settings(serde_json::json!({"kl_coef": cfg.kl_coef, "ppo_epochs": cfg.ppo_epochs, "minibatches": cfg.minibatches, "reference": self.reference.describe()}))
    }

    /// Steps 1-3: the rollout, scored on the GPU (from here to the metrics everything stays there).
    fn prepare(&mut self, step: usize) -> Result<()> {
        let (ppo, cfg, policy) = (self.ppo, &self.ppo.cfg, self.policy);
        let batch = prompt_groups(self.prompts, cfg.train.seed, step, cfg.train.batch_size, 1);
        let seed = sampling_seed(cfg.train.seed, step);
        let rollout = sample(policy, &batch, &cfg.rollout, seed)?;
        let acc = Tensor::zeros(policy.params().gpu(), &[STEP_METRICS], DType::F32, "ppo step metrics")?;
        let scored = ppo.score(policy, &self.head, &rollout, self.rewards, &self.reference, self.kl_coef, &acc)?;
        self.rollout = Some(StepRollout { rollout, scored, seed, acc });
        Ok(())
    }

    fn updates_per_step(&self) -> usize {
        self.ppo.cfg.ppo_epochs * self.ppo.cfg.minibatches
    }

    /// Step 4: micro-batch `mb.micro` of minibatch `update % minibatches` of epoch
    /// `update / minibatches` (each epoch shuffles the rollout's rows).
    fn backward(&mut self, mb: MicroBatch) -> Result<()> {
        let cfg = &self.ppo.cfg;
        let r = self.rollout.as_ref().expect("prepare runs before the updates");
        let (b, m) = (cfg.train.batch_size, cfg.minibatches);
        let (epoch, k) = (mb.update / m, mb.update % m);
        let rows = b / m / mb.accum; // per micro-batch
        let first = k * (b / m) + mb.micro * rows;
        let picked: Vec<usize> = (first..first + rows).map(|i| shuffled(r.seed ^ epoch as u64, b, i as u64)).collect();
        let scale = 1.0 / (self.updates_per_step() * mb.accum) as f32;
        self.ppo.micro_update(self.policy, &self.head, r, &picked, mb, scale)
    }

    /// The value head's own AdamW update, beside the loop's of the policy.
    fn after_update(&mut self, lr: f32) -> Result<()> {
        self.head_opt.step(&self.head.params, lr)?;
        self.head.params.zero_grad()
    }

    /// The update metrics are means over the step's updates and micro-batches.
    fn finish(&mut self, _parts: Vec<()>, _grad_norm: Option<Tensor>) -> Result<PpoMetrics> {
        let cfg = &self.ppo.cfg;
        let r = self.rollout.take().expect("prepare runs before finish");
        let m = r.acc.to_f32_vec()?; // the step's one readback
        debug_assert_eq!(PPO_METRIC_NAMES, ["policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg"]);
        let (kl, u) = (m[KL_SLOT], UPDATE_SLOT);
        let metrics = PpoMetrics {
            loss: m[u],
            objective_kl: kl,
            objective_entropy: m[ENTROPY_SLOT],
            objective_scores: m[SCORE_SLOT],
            objective_non_score_reward: -self.kl_coef * kl,
            objective_rlhf_reward: m[RLHF_REWARD_SLOT],
            objective_kl_coef: self.kl_coef,
            val_num_eos_tokens: r.scored.num_eos as f32,
            completion_length: r.scored.completion_length,
            policy_approxkl_avg: m[u + 1],
            policy_clipfrac_avg: m[u + 2],
            loss_policy_avg: m[u + 3],
            loss_value_avg: m[u + 4],
            val_clipfrac_avg: m[u + 5],
            ..Default::default()
        };
        if let Some((target, horizon)) = cfg.kl_target {
            // Adaptive KL controller: move β_KL towards the target, at most ±20% per horizon.
            let err = (kl / target - 1.0).clamp(-0.2, 0.2);
            self.kl_coef *= 1.0 + err * cfg.train.batch_size as f32 / horizon;
        }
        Ok(metrics)
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

/// The mean of `v` (0 when empty).
fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len().max(1) as f32
}
