//! On-policy rollouts for PPO and GRPO: completions sampled from the policy with the KV-cache
//! generator, and the scalar reward of each, from a reward model or from a Rust function (a
//! programmatic, verifiable reward such as "the answer is correct").

use super::reward::RewardModel;
use super::seqs::SeqBatch;
use crate::error::Result;
use crate::generate::{generate, GenerateConfig};
use crate::model::Model;
use crate::ops::sample::SamplingConfig;

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
