//! Supervised fine-tuning and pretraining: next-token cross-entropy on a [`BatchSource`], AdamW
//! with warmup + cosine, clipping, gradient accumulation, held-out evaluation, checkpoints that
//! resume bit-for-bit, and one JSONL metrics record per step. Each optimizer step is one command
//! encoder and one submit; the loss and gradient norm are the only values read back.

use super::batch::{BatchSource, LmBatch};
use super::checkpoint::{self, TrainerState};
use super::metrics::MetricsLog;
use super::rundir::{check_settings, RunDir, RunOptions};
use super::schedule::Schedule;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::elementwise::{axpby, scale};
use crate::ops::vocab_head::head_cross_entropy;
use crate::ops::optim::{AdamW, AdamWConfig};
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
    /// Micro-batches per optimizer step. Example: 1.
    pub grad_accum: usize,
    /// Learning-rate schedule (peak, warmup, floor); `total` is set to `steps` when 0.
    pub schedule: Schedule,
    /// AdamW settings (its `lr` is ignored; the schedule gives each step's rate).
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

/// One optimizer step over `accum` micro-batches starting at batch index `first`. Returns the
/// mean loss and the gradient norm (before clipping).
pub fn train_step(
    model: &Model,
    opt: &mut AdamW,
    src: &dyn BatchSource,
    first: u64,
    cfg: &SftConfig,
    lr: f32,
) -> Result<(f32, f32)> {
    let store = model.trainable(); // with a LoRA adapter: only the adapter
    let accum = cfg.grad_accum.max(1);
    let mut total: Option<Tensor> = None;
    for micro in 0..accum {
        let b = src.batch(first + micro as u64, cfg.batch_size, cfg.seq_len)?;
        let (ids, targets, mask) = upload(model, &b)?;
        let tape = Tape::new();
        // The chunked vocabulary head: the (B·T, V) logits never exist.
        let hidden = model.hidden(Some(&tape), &ids, None)?; // (B, T, C)
        let head = model.token_head(Some(&tape), &hidden, &targets)?; // (B·T, 3)
        let loss = head_cross_entropy(&head, &targets, Some(&mask), model.vocab_size())?;
        tape.backward(&scale(&loss, 1.0 / accum as f32)?)?;
        let l = loss.tensor();
        total = Some(match total {
            None => crate::ops::elementwise::scale_forward(l, 1.0 / accum as f32)?,
            Some(t) => axpby(&t, l, 1.0, 1.0 / accum as f32)?,
        });
    }
    let norm = opt.step(store, lr)?;
    store.zero_grad()?;
    let loss = total.expect("accum >= 1").scalar()?; // the step's one submit
    let norm = match norm {
        Some(n) => n.scalar()?,
        None => f32::NAN,
    };
    Ok((loss, norm))
}

/// Train `model` on `train`, evaluating on `eval`.
pub fn train(model: &Model, train: &dyn BatchSource, eval: Option<&dyn BatchSource>, cfg: &SftConfig) -> Result<SftReport> {
    if cfg.batch_size == 0 || cfg.seq_len == 0 || cfg.seq_len > model.max_len() {
        return Err(Error::config("SFT", format!("batch {} x seq {} (the model takes up to {} tokens)", cfg.batch_size, cfg.seq_len, model.max_len())));
    }
    if cfg.steps == 0 || cfg.grad_accum == 0 {
        return Err(Error::config("SFT", format!("steps {} and grad_accum {} must be positive", cfg.steps, cfg.grad_accum)));
    }
    model.set_checkpointing(cfg.checkpoint_activations);
    crate::model::memory::remember_plan(model, cfg.batch_size, cfg.seq_len, cfg.checkpoint_activations);
    let mut schedule = cfg.schedule.clone();
    if schedule.total == 0 {
        schedule.total = cfg.steps;
    }
    let mut opt = AdamW::new(model.trainable(), AdamWConfig { lr: schedule.lr, ..cfg.adamw })?;
    let mut start = 0usize;
    let mut log = None;
    // What this run means: its settings, its data, its model; saved with every checkpoint.
    let settings = serde_json::json!({"sft": cfg, "data": train.describe(), "model": model.config().to_json()});
    let run = cfg.out_dir.as_ref().map(|out| RunDir::open(out, cfg.resume, &cfg.run)).transpose()?;
    if let Some(run) = &run {
        let out = run.path();
        if cfg.resume {
            let (dir, st) = run.resume_point("sft")?;
            let changes = match st.config.get("sft") {
                Some(_) => check_settings(&st.config, &settings, cfg.run.allow_changed_settings)?,
                None => check_settings(&st.config, &settings["sft"], cfg.run.allow_changed_settings)?, // before data and model were recorded
            };
            for c in changes {
                eprintln!("warning: resuming {} with a changed setting: {c}", dir.display());
            }
            checkpoint::load_weights(&dir, model)?;
            checkpoint::load_optimizer(&dir, &mut opt)?;
            start = st.step as usize;
            MetricsLog::truncate_after(&out.join("metrics.jsonl"), st.step)?;
        }
        log = Some(MetricsLog::open(&out.join("metrics.jsonl"))?);
    }
    let accum = cfg.grad_accum.max(1) as u64;
    let bar = super::progress_bar(cfg.progress, cfg.steps as u64, "sft");
    bar.set_position(start as u64);
    let mut report = SftReport { start_step: start, ..Default::default() };
    let t0 = Instant::now();
    let tokens_per_step = (cfg.batch_size * cfg.seq_len) as u64 * accum;
    for step in start..cfg.steps {
        let lr = schedule.at(step);
        let (loss, norm) = train_step(model, &mut opt, train, step as u64 * accum, cfg, lr)?;
        if !loss.is_finite() {
            return Err(Error::NonFinite { what: format!("training loss at step {step}"), value: loss as f64 });
        }
        report.losses.push(loss);
        let done = step + 1;
        let tps = (done - start) as f64 * tokens_per_step as f64 / t0.elapsed().as_secs_f64();
        let mut rec = serde_json::json!({"step": done, "loss": loss, "lr": lr, "grad_norm": norm, "tokens_per_s": tps});
        let eval_now = eval.is_some() && ((cfg.eval_every > 0 && done % cfg.eval_every == 0) || done == cfg.steps);
        if let (true, Some(ev)) = (eval_now, eval) {
            let l = evaluate(model, ev, cfg)?;
            report.evals.push((done, l));
            rec["eval_loss"] = l.into();
        }
        if let Some(log) = log.as_mut() {
            log.log(&rec)?;
        }
        let info = super::control::StepInfo { step: done, total: cfg.steps, loss, lr, metrics: &rec };
        let stop = cfg.control.should_stop(&info);
        if let Some(out) = &cfg.out_dir {
            if (cfg.save_every > 0 && done % cfg.save_every == 0) || done == cfg.steps || stop {
                let st = TrainerState {
                    step: done as u64,
                    seed: cfg.seed,
                    batches_seen: done as u64 * accum,
                    trainer: "sft".into(),
                    config: settings.clone(),
                };
                checkpoint::save(out, model, &opt, &st, None)?;
            }
        }
        bar.set_message(format!("loss {loss:.4}  {tps:.0} tok/s"));
        bar.inc(1);
        if stop {
            break;
        }
    }
    bar.finish_and_clear();
    report.tokens_per_s = report.losses.len() as f64 * tokens_per_step as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    Ok(report)
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
