//! The settings every alignment trainer has, and how they feed the one training loop
//! ([`crate::train::trainer`]): steps, batch and gradient accumulation, lengths, schedule,
//! AdamW, seed, output, resume.

use crate::error::{Error, Result};
use crate::ops::optim::AdamWConfig;
use crate::train::control::RunControl;
use crate::train::rundir::RunOptions;
use crate::train::schedule::Schedule;
use crate::train::trainer::LoopConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Settings every alignment trainer has.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimizer steps. Example: 100.
    pub steps: usize,
    /// Pairs (reward, DPO), rows (KTO) or prompts (PPO, GRPO, RLOO) per micro-batch. Example: 8.
    pub batch_size: usize,
    /// Micro-batches per optimizer update (TRL's `gradient_accumulation_steps`): a step learns
    /// from `grad_accum × batch_size` items with the memory of `batch_size` (PPO: each
    /// minibatch's rows split in `grad_accum`). Example: 1. Written to a checkpoint's settings
    /// only when not 1, so a run saved before the setting existed resumes unchanged.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub grad_accum: usize,
    /// Longest row (prompt + completion) in tokens. Example: 128.
    pub max_len: usize,
    /// Longest prompt kept (its end) when a row is too long. Example: 64.
    pub max_prompt_len: usize,
    /// Learning-rate schedule; `total` = `steps` when 0.
    pub schedule: Schedule,
    /// AdamW's moments, decay and clipping (the schedule gives each step's learning rate).
    #[serde(skip, default)]
    pub adamw: AdamWConfig,
    /// Seed of the data order and of sampling.
    pub seed: u64,
    /// Where `metrics.jsonl` and the checkpoints go.
    pub out_dir: Option<PathBuf>,
    /// Save a checkpoint every this many steps (0 = only at the end and when stopped).
    #[serde(default)]
    pub save_every: usize,
    /// Show a progress bar.
    pub progress: bool,
    /// What may happen to an `out_dir` that already holds a run (see [`RunDir`]).
    #[serde(skip, default)]
    pub run: RunOptions,
    /// Continue from `out_dir`'s latest checkpoint of this trainer (weights, adapter, AdamW
    /// moments, step, the method's own state; the data order and sampling seeds are functions
    /// of seed and step).
    #[serde(default)]
    pub resume: bool,
    /// Per-step callback and cancel flag; a stopped run saves a checkpoint under `out_dir`.
    #[serde(skip)]
    pub control: RunControl,
    /// Recompute each transformer block of the policy in the backward instead of keeping its
    /// activations (less memory, one more forward per step; same losses and gradients).
    #[serde(default)]
    pub checkpoint_activations: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 100,
            batch_size: 8,
            grad_accum: 1,
            max_len: 128,
            max_prompt_len: 64,
            schedule: Schedule { lr: 5e-5, warmup: 10, total: 0, min_lr: 5e-6 },
            adamw: AdamWConfig { max_grad_norm: Some(1.0), weight_decay: 0.0, ..AdamWConfig::default() },
            seed: 0,
            out_dir: None,
            save_every: 0,
            checkpoint_activations: false,
            progress: false,
            run: RunOptions::default(),
            resume: false,
            control: RunControl::default(),
        }
    }
}

impl TrainConfig {
    /// What the training loop needs from these settings; `rows` forward rows of up to
    /// `max_len` tokens per pass, one micro-batch (pairs count two rows, groups G).
    pub(crate) fn loop_config(&self, rows: usize) -> LoopConfig<'_> {
        LoopConfig {
            steps: self.steps,
            schedule: &self.schedule,
            adamw: self.adamw,
            grad_accum: self.grad_accum,
            seed: self.seed,
            out_dir: self.out_dir.as_deref(),
            resume: self.resume,
            run: self.run,
            save_every: self.save_every,
            eval_every: 0,
            progress: self.progress,
            control: &self.control,
            checkpoint_activations: self.checkpoint_activations,
            rows,
            row_len: self.max_len,
        }
    }

    /// What a run means for resume checks: these settings and the method's own.
    pub(crate) fn settings(&self, method: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"train": self, "method": method})
    }

    /// Refuse a run with no steps, an empty batch or no micro-batches, naming the method.
    pub(crate) fn check(&self, what: &str) -> Result<()> {
        if self.steps == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            return Err(Error::config(what, format!("steps {}, batch size {} and grad_accum {} must be positive", self.steps, self.batch_size, self.grad_accum)));
        }
        Ok(())
    }
}

/// `grad_accum` of settings saved before it existed.
fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}
