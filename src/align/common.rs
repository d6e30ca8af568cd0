//! What the alignment trainers share: their common settings, where reference log-probs come
//! from, preference pairs in memory or on disk, and the step loop (schedule, AdamW, JSONL
//! metrics, progress bar, NaN check, final checkpoint).

use crate::data::PreferenceDataset;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::optim::{AdamW, AdamWConfig};
use crate::train::checkpoint::{self, TrainerState};
use crate::train::control::{RunControl, StepInfo};
use crate::train::metrics::MetricsLog;
use crate::train::rundir::{check_settings, RunDir, RunOptions};
use crate::train::schedule::Schedule;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

/// Settings every alignment trainer has.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimizer steps. Example: 100.
    pub steps: usize,
    /// Pairs (reward, DPO) or prompts (PPO, GRPO) per step. Example: 8.
    pub batch_size: usize,
    /// Longest row (prompt + completion) in tokens. Example: 128.
    pub max_len: usize,
    /// Longest prompt kept (its end) when a row is too long. Example: 64.
    pub max_prompt_len: usize,
    /// Learning-rate schedule; `total` = `steps` when 0.
    pub schedule: Schedule,
    /// AdamW settings (its `lr` is ignored: the schedule gives each step's rate).
    #[serde(skip, default)]
    pub adamw: AdamWConfig,
    /// Seed of the data order and of sampling.
    pub seed: u64,
    /// Where `metrics.jsonl` and the final checkpoint go.
    pub out_dir: Option<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
    /// What may happen to an `out_dir` that already holds a run (see [`RunDir`]).
    #[serde(skip, default)]
    pub run: RunOptions,
    /// Continue from `out_dir`'s latest checkpoint of this trainer, if there is one (weights,
    /// adapter, AdamW moments and step; the data order is a function of seed and step).
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
            max_len: 128,
            max_prompt_len: 64,
            schedule: Schedule { lr: 5e-5, warmup: 10, total: 0, min_lr: 5e-6 },
            adamw: AdamWConfig { max_grad_norm: Some(1.0), weight_decay: 0.0, ..AdamWConfig::default() },
            seed: 0,
            out_dir: None,
            checkpoint_activations: false,
            progress: false,
            run: RunOptions::default(),
            resume: false,
            control: RunControl::default(),
        }
    }
}

/// Where the reference policy's log-probs come from (DPO, PPO's KL, GRPO's KL).
pub enum Reference<'a> {
    /// A frozen model in memory (a second copy of the weights).
    Model(&'a Model),
    /// The policy itself with its LoRA adapters switched off: one copy of the weights.
    Adapters,
    /// DPO only: values stored in the preference file by `precompute_reference`.
    Precomputed,
    /// No reference (reference-free losses such as SimPO's `sigmoid_norm`, or β = 0).
    None,
}

impl Reference<'_> {
    /// Models held in memory by a run with this reference (the policy included).
    pub fn models_in_memory(&self) -> usize {
        match self {
            Reference::Model(_) => 2,
            _ => 1,
        }
    }

    /// A name for logs and tables.
    pub fn describe(&self) -> &'static str {
        match self {
            Reference::Model(_) => "frozen model",
            Reference::Adapters => "policy without adapters",
            Reference::Precomputed => "precomputed",
            Reference::None => "none",
        }
    }
}

/// Run `f` with the policy's LoRA adapters switched off: the base model is the reference.
pub(crate) fn with_adapters_off<T>(policy: &Model, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if policy.lora().is_none() {
        return Err(Error::config("reference", "`Reference::Adapters` needs a policy with LoRA adapters attached (Model::add_lora)"));
    }
    policy.set_adapters_enabled(false);
    let r = f();
    policy.set_adapters_enabled(true);
    r
}

/// The reference's sequence log-probs (B) of the rows of `s`, from a live reference (a frozen
/// model or the policy with its adapters off), zeros for `Reference::None`; `what` names the
/// method in the error for `Reference::Precomputed`, which only DPO's preference files hold.
pub(crate) fn live_reference_logps(policy: &Model, reference: &Reference, s: &crate::align::SeqTensors, what: &str) -> Result<crate::tensor::Tensor> {
    use crate::align::sequence_logps;
    match reference {
        Reference::Model(m) => Ok(sequence_logps(m, None, s)?.tensor().clone()),
        Reference::Adapters => with_adapters_off(policy, || Ok(sequence_logps(policy, None, s)?.tensor().clone())),
        Reference::None => crate::tensor::Tensor::zeros(s.ids.gpu(), &[s.rows], crate::tensor::DType::F32, "no reference"),
        Reference::Precomputed => Err(Error::config(what, "precomputed reference log-probs exist for DPO's preference files only; use a reference model or LoRA adapters")),
    }
}

/// One preference pair in tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    /// Reference log-probs (chosen, rejected) when precomputed.
    pub reference: Option<[f32; 2]>,
}

/// Preference pairs, from a memory-mapped file or from memory (an app's own feedback).
pub trait Pairs {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn pair(&self, i: usize) -> Result<Pair>;
}

impl Pairs for [Pair] {
    fn len(&self) -> usize {
        <[Pair]>::len(self)
    }
    fn pair(&self, i: usize) -> Result<Pair> {
        self.get(i).cloned().ok_or_else(|| Error::config("preference pairs", format!("no pair {i} of {}", <[Pair]>::len(self))))
    }
}

impl Pairs for Vec<Pair> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    fn pair(&self, i: usize) -> Result<Pair> {
        self.as_slice().pair(i)
    }
}

impl Pairs for PreferenceDataset {
    fn len(&self) -> usize {
        PreferenceDataset::len(self)
    }
    fn pair(&self, i: usize) -> Result<Pair> {
        let r = self.get(i).ok_or_else(|| Error::config("preference data", format!("{}: no row {i}", self.dataset().path().display())))?;
        Ok(Pair { prompt: r.prompt.to_vec(), chosen: r.chosen.to_vec(), rejected: r.rejected.to_vec(), reference: r.reference_logps })
    }
}

/// Index of the `k`-th item of an endless stream of epochs over `n` items, each epoch a new
/// permutation fixed by `seed` (an affine map with a multiplier coprime to `n`).
pub fn shuffled(seed: u64, n: usize, k: u64) -> usize {
    let n = n.max(1) as u64;
    let (epoch, pos) = (k / n, k % n);
    let mix = crate::train::batch::mix;
    let mut a = (mix(seed ^ epoch) % n).max(1);
    while gcd(a, n) != 1 {
        a = a % n + 1;
    }
    let c = mix(seed.wrapping_add(epoch).wrapping_mul(31)) % n;
    ((a * pos + c) % n) as usize
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The step loop every trainer runs: learning rate, the step itself (`step_fn(step, lr, opt)`
/// returns that step's metrics, one JSON object with a finite "loss"), metrics log, progress,
/// and a final checkpoint of `model` under `out_dir`. Returns every step's metrics.
pub(crate) fn run_steps(
    name: &str,
    cfg: &TrainConfig,
    model: &Model,
    extra_config: serde_json::Value,
    mut step_fn: impl FnMut(usize, f32, &mut AdamW) -> Result<serde_json::Value>,
) -> Result<Vec<serde_json::Value>> {
    if cfg.steps == 0 || cfg.batch_size == 0 {
        return Err(Error::config(name, format!("steps {} and batch size {} must be positive", cfg.steps, cfg.batch_size)));
    }
    model.set_checkpointing(cfg.checkpoint_activations);
    // (pairs hold two rows each; the plan counts batch_size rows of max_len tokens)
    crate::model::memory::remember_plan(model, cfg.batch_size, cfg.max_len, cfg.checkpoint_activations);
    let mut schedule = cfg.schedule.clone();
    if schedule.total == 0 {
        schedule.total = cfg.steps;
    }
    let mut opt = AdamW::new(model.trainable(), AdamWConfig { lr: schedule.lr, ..cfg.adamw })?;
    // What this run means, saved with every checkpoint and checked on resume.
    let settings = serde_json::json!({"train": cfg, "method": extra_config});
    let run = cfg.out_dir.as_ref().map(|out| RunDir::open(out, cfg.resume, &cfg.run)).transpose()?;
    let mut start = 0;
    if let (Some(run), true) = (&run, cfg.resume) {
        let (dir, st) = run.resume_point(name)?;
        for c in check_settings(&st.config, &settings, cfg.run.allow_changed_settings)? {
            eprintln!("warning: resuming {} with a changed setting: {c}", dir.display());
        }
        checkpoint::load_weights(&dir, model)?;
        checkpoint::load_optimizer(&dir, &mut opt)?;
        start = st.step as usize;
        MetricsLog::truncate_after(&run.path().join("metrics.jsonl"), st.step)?;
    }
    let mut log = run.as_ref().map(|r| MetricsLog::open(&r.path().join("metrics.jsonl"))).transpose()?;
    let bar = crate::train::progress_bar(cfg.progress, cfg.steps as u64, name);
    bar.set_position(start as u64);
    let t0 = Instant::now();
    let mut all = Vec::with_capacity(cfg.steps);
    let mut done = start;
    for step in start..cfg.steps {
        let lr = schedule.at(step);
        let mut rec = step_fn(step, lr, &mut opt)?;
        let loss = rec["loss"].as_f64().unwrap_or(f64::NAN);
        if !loss.is_finite() {
            return Err(Error::NonFinite { what: format!("{name} loss at step {step}"), value: loss });
        }
        rec["step"] = (step + 1).into();
        rec["lr"] = lr.into();
        rec["elapsed_s"] = t0.elapsed().as_secs_f64().into();
        if let Some(log) = log.as_mut() {
            log.log(&rec)?;
        }
        bar.set_message(format!("loss {loss:.4}"));
        bar.inc(1);
        done = step + 1;
        let info = StepInfo { step: done, total: cfg.steps, loss: loss as f32, lr, metrics: &rec };
        let stop = cfg.control.should_stop(&info);
        all.push(rec);
        if stop {
            break;
        }
    }
    bar.finish_and_clear();
    if let (Some(out), true) = (&cfg.out_dir, done > start || start == 0) {
        let st = TrainerState {
            step: done as u64,
            seed: cfg.seed,
            batches_seen: done as u64,
            trainer: name.into(),
            config: settings,
        };
        checkpoint::save(out, model, &opt, &st, None)?;
    }
    Ok(all)
}

/// Metric `(name, value)` pairs into a JSON object.
pub(crate) fn to_json(pairs: &[(&str, f32)]) -> serde_json::Value {
    serde_json::Value::Object(pairs.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn shuffled_is_a_permutation_per_epoch() {
        for n in [1usize, 2, 7, 12, 100] {
            for epoch in 0..3u64 {
                let mut seen: Vec<usize> = (0..n as u64).map(|k| super::shuffled(5, n, epoch * n as u64 + k)).collect();
                seen.sort();
                assert_eq!(seen, (0..n).collect::<Vec<_>>());
            }
        }
    }
}
