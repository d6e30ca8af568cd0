//! The one training loop. SFT, the reward model, DPO (and ORPO/SimPO through its losses), KTO,
//! PPO, GRPO and RLOO each bring only what is theirs, a [`Method`]: the loss of a micro-batch
//! (their batch, their loss, backward), the step's metrics, and whatever state they carry from
//! step to step. The loop owns everything else, the same for every method:
//!
//! ```text
//! open and lock the run directory; on resume: weights, AdamW moments, the method's state
//! for step in start..steps:
//!     lr = schedule(step)                         the schedule is the learning rate's one home
//!     method.prepare(step)                        PPO: the rollout and its scoring; others: nothing
//!     for update in 0..method.updates_per_step(): 1; PPO: ppo_epochs × minibatches
//!         for micro in 0..grad_accum:             gradient accumulation
//!             parts += method.backward(micro)     loss / grad_accum, backward: gradients add up
//!         norm = AdamW step at lr; zero_grad      AdamW clips by `max_grad_norm`
//!         method.after_update(lr)                 PPO: its value head's AdamW step
//!     metrics = method.finish(parts, norm)        the step's readback
//!     NaN check; evaluation every `eval_every`; metrics.jsonl; progress bar; callback / cancel
//!     every `save_every` steps, at the end and on a stop: an atomic checkpoint
//! ```
//!
//! **Gradient accumulation** (TRL's `gradient_accumulation_steps`): each update is `grad_accum`
//! micro-batches of `batch_size`, each loss scaled by 1/grad_accum before its backward, then one
//! AdamW step, so a step of grad_accum × batch_size costs the memory of one micro-batch. Micro-batch
//! j of step s is the run's batch `s · grad_accum + j` ([`MicroBatch::index`]): for the methods
//! that draw items in the seeded shuffled order (SFT, reward, DPO, KTO, the prompts of GRPO and
//! RLOO) that is exactly what one batch of grad_accum × batch_size would hold, split in order.
//! The step equals that one big batch wherever the loss is a mean over the batch's items (SFT's
//! over tokens of equal-length rows, reward, DPO but `aot`/`aot_unpaired`, KTO's
//! `apo_zero_unpaired`); where it couples the batch (KTO's KL rows and z0, DPO's `aot` sort, GRPO's
//! and RLOO's batch-wide scaling, GRPO's dapo/bnpo token means) each micro-batch is its own batch,
//! as in TRL. A step's metrics are the means over its micro-batches of their values (each method's
//! `finish` says where it merges otherwise: sums, min/max, count-weighted means).
//!
//! A checkpoint holds the policy (and its LoRA adapter), the AdamW moments, the step (which
//! fixes the data position and every random stream: batches and sampling seeds are functions
//! of seed and batch index), and the method's own state ([`MethodState`]: a value head and its
//! moments, the adaptive KL coefficient, running means), so a run killed at any step resumes
//! from its last checkpoint to the same losses and weights, bit for bit.

use super::checkpoint::{self, TrainerState};
use super::control::{RunControl, StepInfo};
use super::metrics::MetricsLog;
use super::rundir::{check_settings, RunDir, RunOptions};
use super::schedule::Schedule;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::elementwise::scale;
use crate::ops::optim::{AdamW, AdamWConfig, AdamWState};
use crate::params::ParamStore;
use crate::tape::Var;
use crate::tensor::Tensor;
use crate::weights::{save_f32, write_atomic, WeightFile};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// What the loop needs to know about a run, whatever the method (borrowed from the method's
/// own config: [`crate::train::sft::SftConfig`], [`crate::align::TrainConfig`]).
pub struct LoopConfig<'a> {
    /// Optimizer steps in all (after a resume: counting from the first run's step 0).
    pub steps: usize,
    /// The learning rate of every step; `total` = `steps` when 0.
    pub schedule: &'a Schedule,
    /// AdamW's moments, decay and clipping (its learning rate is the schedule's).
    pub adamw: AdamWConfig,
    /// Micro-batches per optimizer update (TRL's `gradient_accumulation_steps`), each of
    /// `rows`; their gradients add up before the one AdamW step. Example: 1.
    pub grad_accum: usize,
    /// The run's seed (recorded in each checkpoint).
    pub seed: u64,
    /// Where metrics.jsonl and checkpoints go; None: nothing is written.
    pub out_dir: Option<&'a Path>,
    /// Continue from `out_dir`'s latest checkpoint.
    pub resume: bool,
    pub run: RunOptions,
    /// Checkpoint every this many steps (0: only at the end and when stopped).
    pub save_every: usize,
    /// Call [`Method::evaluate`] every this many steps (0: only at the end).
    pub eval_every: usize,
    pub progress: bool,
    pub control: &'a RunControl,
    pub checkpoint_activations: bool,
    /// Rows and tokens per row of one forward pass (one micro-batch), for the memory plan.
    pub rows: usize,
    pub row_len: usize,
}

/// One micro-batch of an optimizer update, as a method sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MicroBatch {
    /// 0-based optimizer step.
    pub step: usize,
    /// Which of the step's updates (0 unless the method makes several: PPO).
    pub update: usize,
    /// This micro-batch, `0..accum`.
    pub micro: usize,
    /// Micro-batches per update (`grad_accum`).
    pub accum: usize,
}

impl MicroBatch {
    /// The data position: the run's batch `step · accum + micro`. A method that draws batch k
    /// as items `k·b .. (k+1)·b` of its shuffled order gets, over a step's micro-batches,
    /// exactly the items of one batch of `accum · b`, split in order.
    pub fn index(&self) -> usize {
        self.step * self.accum + self.micro
    }

    /// What goes into backward: `loss / accum`, so that the update's gradient is the mean of
    /// its micro-batches' (the loss itself, untouched, when `accum` is 1).
    pub fn scaled(&self, loss: &Var) -> Result<Var> {
        if self.accum == 1 {
            return Ok(loss.clone());
        }
        scale(loss, 1.0 / self.accum as f32)
    }
}

/// A step's micro-batch metric vectors, read back after its update (one vector per
/// micro-batch, in order), and how methods merge them.
pub struct MicroMetrics(Vec<Vec<f32>>);

impl MicroMetrics {
    /// Read each micro-batch's metrics tensor.
    pub fn read(parts: &[Tensor]) -> Result<MicroMetrics> {
        Ok(MicroMetrics(parts.iter().map(Tensor::to_f32_vec).collect::<Result<_>>()?))
    }

    /// Value `k` of every micro-batch, in order.
    pub fn values(&self, k: usize) -> impl Iterator<Item = f32> + '_ {
        self.0.iter().map(move |v| v[k])
    }

    /// The mean of value `k` over the micro-batches (summed in f64 in order: the value itself
    /// for one micro-batch).
    pub fn mean(&self, k: usize) -> f32 {
        (self.values(k).map(f64::from).sum::<f64>() / self.0.len().max(1) as f64) as f32
    }

    /// The sum of value `k` over the micro-batches.
    pub fn sum(&self, k: usize) -> f32 {
        self.values(k).map(f64::from).sum::<f64>() as f32
    }

    /// The least and the largest value `k`.
    pub fn min(&self, k: usize) -> f32 {
        self.values(k).fold(f32::INFINITY, f32::min)
    }
    pub fn max(&self, k: usize) -> f32 {
        self.values(k).fold(f32::NEG_INFINITY, f32::max)
    }
}

/// The gradient norm before clipping that AdamW returned (None without clipping), read back.
pub fn read_norm(norm: Option<Tensor>) -> Result<Option<f32>> {
    norm.map(|n| n.scalar()).transpose()
}

/// What a method keeps between steps besides the policy and its AdamW: small values as JSON
/// and tensors (a value head, its moments) by name. Saved in every checkpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MethodState {
    pub values: serde_json::Value,
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl MethodState {
    /// A tensor by name (an error naming the checkpoint's missing entry otherwise).
    pub fn tensor(&self, name: &str) -> Result<&(String, Vec<usize>, Vec<f32>)> {
        self.tensors.iter().find(|t| t.0 == name).ok_or_else(|| Error::config("checkpoint method state", format!("no tensor `{name}`")))
    }

    /// Add a parameter store's values and its AdamW's moments under `prefix`.
    pub fn push_store(&mut self, prefix: &str, store: &ParamStore, opt: &AdamW) -> Result<()> {
        for (name, shape, data) in store.read_all()? {
            self.tensors.push((format!("{prefix}.param.{name}"), shape, data));
        }
        let s = opt.state()?;
        let n = s.m.len();
        self.tensors.push((format!("{prefix}.exp_avg"), vec![n], s.m));
        self.tensors.push((format!("{prefix}.exp_avg_sq"), vec![n], s.v));
        self.values[format!("{prefix}.step")] = s.step.into();
        Ok(())
    }

    /// Restore what [`MethodState::push_store`] saved into `store` and `opt`.
    pub fn load_store(&self, prefix: &str, store: &ParamStore, opt: &mut AdamW) -> Result<()> {
        let mut params = vec![];
        for e in store.entries() {
            let (_, shape, data) = self.tensor(&format!("{prefix}.param.{}", e.name))?;
            params.push((e.name.clone(), shape.clone(), data.clone()));
        }
        store.write_all(&params)?;
        let step = self.values[format!("{prefix}.step")]
            .as_u64()
            .ok_or_else(|| Error::config("checkpoint method state", format!("no `{prefix}.step`")))?;
        let m = self.tensor(&format!("{prefix}.exp_avg"))?.2.clone();
        let v = self.tensor(&format!("{prefix}.exp_avg_sq"))?.2.clone();
        opt.load_state(&AdamWState { step, m, v })
    }
}

/// A training method: what is its own in a run.
pub trait Method {
    /// One step's metrics (TRL's names when serialised), one line of metrics.jsonl.
    type Metrics: Serialize;
    /// What [`Method::backward`] keeps of a micro-batch for [`Method::finish`]: its metrics,
    /// still on the GPU until the step's update is recorded.
    type Part;
    /// The trainer's name in checkpoints and progress: "sft", "dpo", ...
    fn name(&self) -> &'static str;
    /// What the run means (the method's settings, data, reference): saved with every checkpoint
    /// and compared on resume.
    fn settings(&self) -> serde_json::Value;
    /// Work of step `step` before its micro-batches (PPO: the rollout and its scoring).
    /// Default: none.
    fn prepare(&mut self, _step: usize) -> Result<()> {
        Ok(())
    }
    /// Optimizer updates in one step, each of `grad_accum` micro-batches (PPO: ppo_epochs ×
    /// minibatches over one rollout). Default: 1.
    fn updates_per_step(&self) -> usize {
        1
    }
    /// One micro-batch: its batch, the loss, and backward of `mb.scaled(loss)`, which adds its
    /// gradients into the trainable store's (the loop steps AdamW and zeroes them).
    fn backward(&mut self, mb: MicroBatch) -> Result<Self::Part>;
    /// After each AdamW update of the policy at learning rate `lr` (PPO: the value head's own
    /// update). Default: none.
    fn after_update(&mut self, _lr: f32) -> Result<()> {
        Ok(())
    }
    /// The step's metrics from its micro-batches' parts (in order) and the gradient norm before
    /// clipping of its last update (None without clipping): the step's readback.
    fn finish(&mut self, parts: Vec<Self::Part>, grad_norm: Option<Tensor>) -> Result<Self::Metrics>;
    /// The step's training loss (checked finite by the loop).
    fn loss(m: &Self::Metrics) -> f32;
    /// Record the loop's bookkeeping in a step's metrics: steps done, learning rate, seconds
    /// since the loop started and steps run in this call.
    fn stamp(&self, m: &mut Self::Metrics, done: usize, lr: f32, elapsed_s: f64, steps_run: usize);
    /// Held-out evaluation after step `done`, written into its metrics. Default: none.
    fn evaluate(&mut self, _m: &mut Self::Metrics, _done: usize) -> Result<()> {
        Ok(())
    }
    /// The state the method carries between steps. Default: none.
    fn state(&self) -> Result<MethodState> {
        Ok(MethodState::default())
    }
    /// Restore the state of a checkpoint. Default: none.
    fn restore(&mut self, _state: MethodState) -> Result<()> {
        Ok(())
    }
}

/// What a run did: each step's metrics run in this call, and the step it started from.
pub struct RunReport<M> {
    pub start_step: usize,
    pub metrics: Vec<M>,
}

/// Names of the method-state files inside a checkpoint directory.
const STATE_JSON: &str = "method_state.json";
const STATE_TENSORS: &str = "method_state.safetensors";

/// Run `method` on `model` (the policy, whose trainable store AdamW updates) for the steps
/// `cfg` asks for.
pub fn train<M: Method>(cfg: &LoopConfig, model: &Model, method: &mut M) -> Result<RunReport<M::Metrics>> {
    let name = method.name();
    if cfg.steps == 0 || cfg.rows == 0 || cfg.grad_accum == 0 {
        return Err(Error::config(name, format!("steps {}, batch size {} and grad_accum {} must be positive", cfg.steps, cfg.rows, cfg.grad_accum)));
    }
    model.set_checkpointing(cfg.checkpoint_activations);
    crate::model::memory::remember_plan(model, cfg.rows, cfg.row_len, cfg.checkpoint_activations);
    let mut schedule = cfg.schedule.clone();
    if schedule.total == 0 {
        schedule.total = cfg.steps;
    }
    let mut opt = AdamW::new(model.trainable(), cfg.adamw)?;
    let settings = method.settings();
    let run = cfg.out_dir.map(|out| RunDir::open(out, cfg.resume, &cfg.run)).transpose()?;
    let mut start = 0;
    if let (Some(run), true) = (&run, cfg.resume) {
        let (dir, st) = run.resume_point(name)?;
        for c in check_settings(&st.config, &settings, cfg.run.allow_changed_settings)? {
            eprintln!("warning: resuming {} with a changed setting: {c}", dir.display());
        }
        checkpoint::load_weights(&dir, model)?;
        checkpoint::load_optimizer(&dir, &mut opt)?;
        method.restore(load_state(&dir)?)?;
        start = st.step as usize;
        MetricsLog::truncate_after(&run.path().join("metrics.jsonl"), st.step)?;
    }
    let mut log = run.as_ref().map(|r| MetricsLog::open(&r.path().join("metrics.jsonl"))).transpose()?;
    let bar = super::progress_bar(cfg.progress, cfg.steps as u64, name);
    bar.set_position(start as u64);
    let t0 = Instant::now();
    let mut all = Vec::with_capacity(cfg.steps.saturating_sub(start));
    for step in start..cfg.steps {
        let lr = schedule.at(step);
        method.prepare(step)?;
        let (mut parts, mut norm) = (Vec::new(), None);
        for update in 0..method.updates_per_step() {
            for micro in 0..cfg.grad_accum {
                parts.push(method.backward(MicroBatch { step, update, micro, accum: cfg.grad_accum })?);
            }
            norm = opt.step(model.trainable(), lr)?; // with a LoRA adapter: only the adapter
            model.trainable().zero_grad()?;
            method.after_update(lr)?;
        }
        let mut m = method.finish(parts, norm)?;
        let loss = M::loss(&m);
        if !loss.is_finite() {
            return Err(Error::NonFinite { what: format!("{name} loss at step {step}"), value: loss as f64 });
        }
        let done = step + 1;
        if (cfg.eval_every > 0 && done % cfg.eval_every == 0) || done == cfg.steps {
            method.evaluate(&mut m, done)?;
        }
        method.stamp(&mut m, done, lr, t0.elapsed().as_secs_f64(), done - start);
        let rec = serde_json::to_value(&m).map_err(|e| Error::config(name, format!("metrics do not serialise: {e}")))?;
        if let Some(log) = log.as_mut() {
            log.log(&rec)?;
        }
        bar.set_message(format!("loss {loss:.4}"));
        bar.inc(1);
        let stop = cfg.control.should_stop(&StepInfo { step: done, total: cfg.steps, loss, lr, metrics: &rec });
        if let (Some(out), true) = (cfg.out_dir, (cfg.save_every > 0 && done % cfg.save_every == 0) || done == cfg.steps || stop) {
            let st = TrainerState { step: done as u64, seed: cfg.seed, batches_seen: (done * cfg.grad_accum) as u64, trainer: name.into(), config: settings.clone() };
            save(out, model, &opt, &st, &method.state()?)?;
        }
        all.push(m);
        if stop {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(RunReport { start_step: start, metrics: all })
}

/// A checkpoint with the method's state beside the policy's (written before the manifest, so
/// the manifest covers it).
fn save(out: &Path, model: &Model, opt: &AdamW, st: &TrainerState, state: &MethodState) -> Result<()> {
    checkpoint::save_with(out, model, opt, st, None, &|tmp: &Path| {
        let js = serde_json::to_string_pretty(&state.values).expect("JSON value serialises");
        write_atomic(&tmp.join(STATE_JSON), js.as_bytes())?;
        if !state.tensors.is_empty() {
            save_f32(tmp.join(STATE_TENSORS), &state.tensors, HashMap::new())?;
        }
        Ok(())
    })?;
    Ok(())
}

/// The method state of checkpoint `dir` (empty for a checkpoint written before method states).
fn load_state(dir: &Path) -> Result<MethodState> {
    let mut state = MethodState::default();
    let js = dir.join(STATE_JSON);
    if js.is_file() {
        let text = std::fs::read_to_string(&js).map_err(|e| Error::io(&js, e))?;
        state.values = serde_json::from_str(&text).map_err(|e| Error::format(&js, format!("invalid JSON: {e}")))?;
    }
    let ts = dir.join(STATE_TENSORS);
    if ts.is_file() {
        let f = WeightFile::open(&ts)?;
        for name in f.names() {
            let shape = f.shape(&name).unwrap_or_default();
            let data = f.get_f32(&name, &shape)?;
            state.tensors.push((name, shape, data));
        }
    }
    Ok(state)
}
