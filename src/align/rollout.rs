//! On-policy rollouts for PPO, GRPO and RLOO: completions sampled from the policy with the
//! KV-cache generator, and the scalar reward of each, from a reward model or from a Rust
//! function (a programmatic, verifiable reward such as "the answer is correct"). GRPO and RLOO
//! share the start of their micro-batch, [`sample_groups`]: G completions per prompt, their
//! rewards, and the policy's (on the tape) and reference's token log-probs.

use super::batching::{prompt_groups, sampling_seed};
use super::reference::{tempered_logps, Reference};
use super::reward::RewardModel;
use super::seqs::{SeqBatch, SeqTensors};
use crate::error::{Error, Result};
use crate::generate::{generate, GenerateConfig};
use crate::model::Model;
use crate::ops::sample::SamplingConfig;
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

/// Where the scalar reward of a (prompt, completion) comes from.
pub enum Rewards<'a> {
    /// A trained reward model, reading rows `prompt ++ completion` of at most `max_len` tokens.
    Model { model: &'a RewardModel, max_len: usize },
    /// A function of the prompt and completion tokens.
    Fn(&'a dyn Fn(&[u32], &[u32]) -> f32),
}

impl Rewards<'_> {
    /// One reward per (prompt, completion).
    pub fn score(&self, prompts: &[&[u32]], completions: &[&[u32]], pad: u32) -> Result<Vec<f32>> {
        match self {
            Rewards::Model { model, max_len } => {
                let rows: Vec<(&[u32], &[u32])> = prompts.iter().copied().zip(completions.iter().copied()).collect();
                model.score_rows(&rows, *max_len, pad, 32)
            }
            Rewards::Fn(f) => Ok(prompts.iter().zip(completions).map(|(p, c)| f(p, c)).collect()),
        }
    }

    /// Models this reward source holds in memory.
    pub fn models_in_memory(&self) -> usize {
        match self {
            Rewards::Model { .. } => 1,
            Rewards::Fn(_) => 0,
        }
    }
}

/// Settings of the sampler during rollouts.
#[derive(Clone, Debug)]
pub struct RolloutConfig {
    /// New tokens per completion at most. Example: 32.
    pub max_new_tokens: usize,
    /// Sampling temperature; PPO's and GRPO's log-probs are those of this tempered policy.
    /// Example: 1.0.
    pub temperature: f32,
    /// Tokens that end a completion (kept in it). Example: `[b'\n']` for the review corpus.
    pub stop_ids: Vec<u32>,
    /// Pad token id.
    pub pad_id: u32,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig { max_new_tokens: 32, temperature: 1.0, stop_ids: vec![], pad_id: 0 }
    }
}

/// A batch of sampled completions in the sampler's left-padded layout.
pub struct Rollout {
    pub prompts: Vec<Vec<u32>>,
    pub completions: Vec<Vec<u32>>,
    pub batch: SeqBatch,
}

impl Rollout {
    /// Did completion `i` end with a stop token?
    pub fn stopped(&self, i: usize, stop_ids: &[u32]) -> bool {
        self.completions[i].last().is_some_and(|t| stop_ids.contains(t))
    }

    /// Prompts and completions as slices.
    pub fn slices(&self) -> (Vec<&[u32]>, Vec<&[u32]>) {
        (self.prompts.iter().map(Vec::as_slice).collect(), self.completions.iter().map(Vec::as_slice).collect())
    }
}

/// Sample one completion per prompt from `policy` (seeded).
pub fn sample(policy: &Model, prompts: &[Vec<u32>], cfg: &RolloutConfig, seed: u64) -> Result<Rollout> {
    let sampling = SamplingConfig { temperature: cfg.temperature, top_k: 0, top_p: 1.0 };
    let gen = GenerateConfig { max_new_tokens: cfg.max_new_tokens, sampling, stop_ids: cfg.stop_ids.clone(), seed, pad_id: cfg.pad_id };
    let completions = generate(policy, prompts, &gen)?;
    let p: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let c: Vec<&[u32]> = completions.iter().map(Vec::as_slice).collect();
    let batch = SeqBatch::left_padded(&p, &c, cfg.pad_id)?;
    Ok(Rollout { prompts: prompts.to_vec(), completions, batch })
}

/// How GRPO and RLOO draw a micro-batch: `batch_size` prompts (the seeded shuffled order), each
/// sampled `num_generations` times, groups consecutive.
pub struct GroupSampling<'a> {
    pub prompts: &'a [Vec<u32>],
    pub rollout: &'a RolloutConfig,
    /// The run's seed (prompt order and sampling seeds).
    pub seed: u64,
    /// Prompts per micro-batch.
    pub batch_size: usize,
    /// Completions per prompt G.
    pub num_generations: usize,
    /// Completions that hit max_new_tokens without a stop token get an all-zero mask.
    pub mask_truncated_completions: bool,
}

/// A micro-batch of groups, sampled, scored, and through the token log-prob pass.
pub struct GroupRollout {
    /// One reward per completion (B·G, groups consecutive).
    pub rewards: Vec<f32>,
    /// Mean completion length in tokens.
    pub completion_length: f32,
    /// The rows on the GPU (the mask without the truncated completions, when asked).
    pub seqs: SeqTensors,
    /// The tempered policy's completion log-probs (B·G, T), on the tape.
    pub logp: Var,
    /// π_old's: with one update per rollout (TRL's `num_iterations = 1`), π itself, so the
    /// importance weight is 1 in value and only its gradient acts.
    pub old_logp: Tensor,
    /// The reference's (B·G, T), when one was asked for (β ≠ 0).
    pub ref_logp: Option<Tensor>,
}

/// Micro-batch `index` of a GRPO or RLOO run: its prompts (batch `index` of the shuffled order),
/// G completions of each sampled with the seed of `index`, their rewards, and the log-probs of
/// the policy (on `tape`) and, when given, of `reference`, at the rollout's temperature.
pub fn sample_groups(policy: &Model, tape: &Tape, how: &GroupSampling, index: usize, rewards: &Rewards, reference: Option<&Reference>) -> Result<GroupRollout> {
    let (b, g, cfg) = (how.batch_size, how.num_generations, how.rollout);
    // sample G completions per prompt and score them
    let prompts = prompt_groups(how.prompts, how.seed, index, b, g);
    let mut ro = sample(policy, &prompts, cfg, sampling_seed(how.seed, index))?;
    let (p, c) = ro.slices();
    let scores = rewards.score(&p, &c, cfg.pad_id)?;
    let completion_length = c.iter().map(|x| x.len()).sum::<usize>() as f32 / c.len() as f32;
    if how.mask_truncated_completions {
        let t = ro.batch.seq;
        for i in 0..b * g {
            if !ro.stopped(i, &cfg.stop_ids) {
                ro.batch.mask[i * t..(i + 1) * t].fill(0.0);
            }
        }
    }
    // the token log-probs: π_ref's (off the tape), π's on the tape
    let seqs = ro.batch.upload(policy.params().gpu())?;
    let ref_logp = reference.map(|r| r.token_logps(policy, &seqs, cfg.temperature)).transpose()?;
    let hidden = policy.hidden(Some(tape), &seqs.ids, seqs.key_mask.as_ref())?;
    let logp = tempered_logps(policy, Some(tape), &hidden, &seqs, cfg.temperature)?.0;
    let old_logp = logp.tensor().clone();
    Ok(GroupRollout { rewards: scores, completion_length, seqs, logp, old_logp, ref_logp })
}

/// Refuse a group run (GRPO, RLOO) without prompts, with fewer than 2 generations per prompt, or
/// with a KL term (`beta` ≠ 0) but no live reference model to compute it.
pub(crate) fn check_group_run(what: &str, prompts: usize, num_generations: usize, beta: f32, reference: &Reference) -> Result<()> {
    if prompts == 0 || num_generations < 2 {
        return Err(Error::config(what, format!("{prompts} prompts, {num_generations} generations per prompt (need prompts and at least 2)")));
    }
    if beta != 0.0 && matches!(reference, Reference::None | Reference::Precomputed) {
        return Err(Error::config(what, format!("beta {beta} needs a live reference model (or beta 0)")));
    }
    Ok(())
}
