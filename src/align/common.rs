//! What the alignment trainers share: their common settings, where reference log-probs come
//! from, preference pairs in memory or on disk, and the step loop (schedule, AdamW, JSONL
//! metrics, progress bar, NaN check, final checkpoint).

use crate::data::PreferenceDataset;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::optim::{AdamW, AdamWConfig};
use crate::train::checkpoint::{self, TrainerState};
use crate::train::metrics::MetricsLog;
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
    let mut log = match &cfg.out_dir {
        Some(out) => {
            std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
            Some(MetricsLog::open(&out.join("metrics.jsonl"))?)
        }
        None => None,
    };
    let bar = crate::train::progress_bar(cfg.progress, cfg.steps as u64, name);
    let t0 = Instant::now();
    let mut all = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
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
        all.push(rec);
    }
    bar.finish_and_clear();
    if let Some(out) = &cfg.out_dir {
        let st = TrainerState {
            step: cfg.steps as u64,
            seed: cfg.seed,
            batches_seen: cfg.steps as u64,
            trainer: name.into(),
            config: serde_json::json!({"train": cfg, "method": extra_config}),
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
