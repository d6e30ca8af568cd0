//! Supervised fine-tuning and pretraining: next-token cross-entropy on a [`BatchSource`], as a
//! [`Method`] of the one training loop ([`super::trainer`]), which brings AdamW with warmup +
//! cosine, clipping, gradient accumulation, held-out evaluation, checkpoints that resume
//! bit-for-bit, and one JSONL metrics record per step. Micro-batch k of the run is the source's
//! batch k; the loss and gradient norm are the only values read back.

use super::batch::{BatchSource, LmBatch};
use super::rundir::RunOptions;
use super::schedule::Schedule;
use super::trainer::{self, read_norm, LoopConfig, Method, MicroBatch, MicroMetrics};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::optim::AdamWConfig;
use crate::ops::vocab_head::head_cross_entropy;
use crate::tape::Tape;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

/// SFT settings. `Default` gives a small run that makes sense with no flags.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SftConfig {
    /// Sequences per micro-batch. Example: 8.
    pub batch_size: usize,
    /// Tokens per sequence. Example: 128.
    pub seq_len: usize,
    /// Optimizer steps. Example: 1000.
    pub steps: usize,
    /// Micro-batches per optimizer step (TRL's `gradient_accumulation_steps`): a step learns
    /// from `grad_accum × batch_size` sequences with the memory of `batch_size`. Example: 1.
    pub grad_accum: usize,
    /// Learning-rate schedule (peak, warmup, floor); `total` is set to `steps` when 0.
    pub schedule: Schedule,
    /// AdamW's moments, decay and clipping (the schedule gives each step's learning rate).
    #[serde(skip, default)]
    pub adamw: AdamWConfig,
    /// Evaluate on the held-out source every this many steps (0 = only at the end).
    pub eval_every: usize,
    /// Held-out batches per evaluation. Example: 4.
    pub eval_batches: usize,
    /// Save a checkpoint every this many steps (0 = only at the end, if `out_dir` is set).
    pub save_every: usize,
    /// Where checkpoints and `metrics.jsonl` go.
    pub out_dir: Option<PathBuf>,
    /// Continue from `out_dir/latest` (an error when there is no valid checkpoint there).
    pub resume: bool,
    /// What may happen to a directory that already holds a run (see [`RunDir`]).
    #[serde(skip, default)]
    pub run: RunOptions,
    /// Seed of the data order.
    pub seed: u64,
    /// Show a progress bar.
    pub progress: bool,
    /// Per-step callback and cancel flag; a stopped run saves a checkpoint under `out_dir`.
    #[serde(skip)]
    pub control: super::control::RunControl,
    /// Recompute each transformer block in the backward instead of keeping its activations
    /// (less memory, one more forward per step; same losses and gradients).
    #[serde(default)]
    pub checkpoint_activations: bool,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            batch_size: 8,
            seq_len: 128,
            steps: 300,
            grad_accum: 1,
            schedule: Schedule { lr: 1e-3, warmup: 20, total: 0, min_lr: 1e-4 },
            adamw: AdamWConfig { max_grad_norm: Some(1.0), weight_decay: 0.1, beta2: 0.99, ..AdamWConfig::default() },
            eval_every: 100,
            eval_batches: 4,
            save_every: 0,
            out_dir: None,
            resume: false,
            run: RunOptions::default(),
            seed: 0,
            progress: false,
            control: Default::default(),
            checkpoint_activations: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct SftReport {
    /// Training loss of every step run in this call, in order.
    pub losses: Vec<f32>,
    /// (step, held-out loss) for every evaluation.
    pub evals: Vec<(usize, f32)>,
    /// Step the run started from (non-zero after a resume).
    pub start_step: usize,
    /// Tokens per second over the run.
    pub tokens_per_s: f64,
    /// Every step's metrics run in this call (as written to metrics.jsonl).
    pub metrics: Vec<SftMetrics>,
}

/// Upload a batch: ids (B, T), targets and mask (B·T).
pub fn upload(model: &Model, b: &LmBatch) -> Result<(Tensor, Tensor, Tensor)> {
    let gpu = model.params().gpu();
    Ok((
        Tensor::from_u32(gpu, &b.ids, &[b.batch, b.seq])?,
        Tensor::from_u32(gpu, &b.targets, &[b.batch * b.seq])?,
        Tensor::from_f32(gpu, &b.mask, &[b.batch * b.seq])?,
    ))
}

/// Mean masked cross-entropy of `model` on a batch, without gradients.
pub fn eval_loss(model: &Model, b: &LmBatch) -> Result<f32> {
    let (ids, targets, mask) = upload(model, b)?;
    let hidden = model.hidden(None, &ids, None)?;
    let head = model.token_head(None, &hidden, &targets)?;
    head_cross_entropy(&head, &targets, Some(&mask), model.vocab_size())?.tensor().scalar()
}

/// One SFT step's metrics (TRL's names), one line of metrics.jsonl.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SftMetrics {
    pub step: usize,
    pub loss: f32,
    pub lr: f32,
    /// Global gradient norm before clipping (absent without clipping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f32>,
    /// Held-out loss, at the steps that evaluate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f32>,
    /// Training tokens per second since the run (or the resume) started.
    pub tokens_per_s: f64,
}

/// SFT as a [`Method`] of the training loop: next-token cross-entropy on a batch source.
struct Sft<'a> {
    model: &'a Model,
    train: &'a dyn BatchSource,
    eval: Option<&'a dyn BatchSource>,
    cfg: &'a SftConfig,
}

impl Method for Sft<'_> {
    type Metrics = SftMetrics;
    type Part = Tensor;

    fn name(&self) -> &'static str {
        "sft"
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::json!({"sft": self.cfg, "data": self.train.describe(), "model": self.model.config().to_json()})
    }

    fn backward(&mut self, mb: MicroBatch) -> Result<Tensor> {
        let b = self.train.batch(mb.index() as u64, self.cfg.batch_size, self.cfg.seq_len)?;
        let (ids, targets, mask) = upload(self.model, &b)?;
        let tape = Tape::new();
        // The chunked vocabulary head: the (B·T, V) logits never exist.
        let hidden = self.model.hidden(Some(&tape), &ids, None)?; // (B, T, C)
        let head = self.model.token_head(Some(&tape), &hidden, &targets)?; // (B·T, 3)
        let loss = head_cross_entropy(&head, &targets, Some(&mask), self.model.vocab_size())?;
        tape.backward(&mb.scaled(&loss)?)?;
        Ok(loss.tensor().clone())
    }

    /// The loss is the mean of the micro-batches' mean token losses.
    fn finish(&mut self, parts: Vec<Tensor>, grad_norm: Option<Tensor>) -> Result<SftMetrics> {
        let loss = MicroMetrics::read(&parts)?.mean(0);
        Ok(SftMetrics { loss, grad_norm: read_norm(grad_norm)?, ..Default::default() })
    }

    fn loss(m: &SftMetrics) -> f32 {
        m.loss
    }

    fn stamp(&self, m: &mut SftMetrics, done: usize, lr: f32, elapsed_s: f64, steps_run: usize) {
        let tokens = (self.cfg.batch_size * self.cfg.seq_len * self.cfg.grad_accum) as f64 * steps_run as f64;
        (m.step, m.lr, m.tokens_per_s) = (done, lr, tokens / elapsed_s.max(1e-9));
    }

    fn evaluate(&mut self, m: &mut SftMetrics, _done: usize) -> Result<()> {
        if let Some(ev) = self.eval {
            m.eval_loss = Some(evaluate(self.model, ev, self.cfg)?);
        }
        Ok(())
    }
}
/// Train `model` on `train`, evaluating on `eval`, in the training loop of [`super::trainer`].
pub fn train(model: &Model, train: &dyn BatchSource, eval: Option<&dyn BatchSource>, cfg: &SftConfig) -> Result<SftReport> {
    if cfg.batch_size == 0 || cfg.seq_len == 0 || cfg.seq_len > model.max_len() {
        return Err(Error::config("SFT", format!("batch {} x seq {} (the model takes up to {} tokens)", cfg.batch_size, cfg.seq_len, model.max_len())));
    }
    if cfg.steps == 0 || cfg.grad_accum == 0 {
        return Err(Error::config("SFT", format!("steps {} and grad_accum {} must be positive", cfg.steps, cfg.grad_accum)));
    }
    let run = LoopConfig {
        steps: cfg.steps,
        schedule: &cfg.schedule,
        adamw: cfg.adamw,
        grad_accum: cfg.grad_accum,
        seed: cfg.seed,
        out_dir: cfg.out_dir.as_deref(),
        resume: cfg.resume,
        run: cfg.run,
        save_every: cfg.save_every,
        eval_every: cfg.eval_every,
        progress: cfg.progress,
        control: &cfg.control,
        checkpoint_activations: cfg.checkpoint_activations,
        rows: cfg.batch_size,
        row_len: cfg.seq_len,
    };
    let t0 = Instant::now();
    let r = trainer::train(&run, model, &mut Sft { model, train, eval, cfg })?;
    let tokens = (cfg.batch_size * cfg.seq_len * cfg.grad_accum * r.metrics.len()) as f64;
    Ok(SftReport {
        losses: r.metrics.iter().map(|m| m.loss).collect(),
        evals: r.metrics.iter().filter_map(|m| m.eval_loss.map(|l| (m.step, l))).collect(),
        start_step: r.start_step,
        tokens_per_s: tokens / t0.elapsed().as_secs_f64().max(1e-9),
        metrics: r.metrics,
    })
}

/// Mean held-out loss over the first `eval_batches` batches of `src`.
pub fn evaluate(model: &Model, src: &dyn BatchSource, cfg: &SftConfig) -> Result<f32> {
    let n = cfg.eval_batches.max(1);
    let mut sum = 0.0;
    for i in 0..n {
        let l = eval_loss(model, &src.batch(i as u64, cfg.batch_size, cfg.seq_len)?)?;
        if !l.is_finite() {
            return Err(Error::NonFinite { what: format!("held-out loss of evaluation batch {i} ({})", src.describe()), value: l as f64 });
        }
        sum += l;
    }
    Ok(sum / n as f32)
}
