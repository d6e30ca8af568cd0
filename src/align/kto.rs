//! Kahneman-Tversky Optimisation (TRL's KTOTrainer): alignment from thumbs up / thumbs down on
//! single answers, no pairs. For a completion y of prompt x with log-ratio
//! `r = log π(y|x) − log π_ref(y|x)` and the batch's KL estimate `z0` (below),
//!
//! ```text
//! desirable:    L = w_d (1 − σ(β (r − z0)))
//! undesirable:  L = w_u (1 − σ(β (z0 − r)))          (loss_type kto)
//! z0 = max(0, mean_j [log π(y_{j−1}|x_j) − log π_ref(y_{j−1}|x_j)])   (detached)
//! ```
//!
//! where the KL rows pair each prompt with the previous row's completion in the same batch
//! (TRL's `_get_kl_dataset`: completions shifted by one, `(x_1, y_n), (x_2, y_1), ...`), scored by
//! the policy without gradient and by the reference. `apo_zero_unpaired` drops z0 and uses
//! `w_u σ(β r)` for undesirable rows. The loss is the mean over the batch's rows, in one fused
//! kernel ([`crate::ops::kto::kto_loss`]). The reference is a frozen model, the policy with its
//! adapters off, or none.
//!
//! ```no_run
//! # fn main() -> plumb::Result<()> {
//! use plumb::align::{Completion, Kto, KtoTrainConfig, Reference};
//! let gpu = plumb::Gpu::new()?;
//! let policy = plumb::model::Model::load(&gpu, "sft-out/latest-model".as_ref())?;
//! let reference = plumb::model::Model::load(&gpu, "sft-out/latest-model".as_ref())?;
//! let feedback = vec![
//!     Completion { prompt: vec![10], completion: vec![72, 105, 10], label: true },
//!     Completion { prompt: vec![10], completion: vec![66, 111, 10], label: false },
//! ];
//! let metrics = Kto::new(KtoTrainConfig::default()).train(&policy, &feedback, Reference::Model(&reference))?;
//! println!("margin {:?}", metrics.last().and_then(|m| m.rewards_margins));
//! # Ok(()) }
//! ```

use super::batching::step_indices;
use super::common::TrainConfig;
use super::reference::Reference;
use super::seqs::{sequence_logps, SeqBatch};
use crate::train::trainer::{self, read_norm, Method, MicroBatch, MicroMetrics};
use crate::data::UnpairedDataset;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::kto::{kto_loss, KtoConfig, KtoStats};
use crate::tape::Tape;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// One piece of unpaired feedback in tokens: a completion of a prompt, desirable or not.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
    /// True: desirable (thumbs up); false: undesirable.
    pub label: bool,
}

/// Unpaired feedback, from a memory-mapped file or from memory (an app's own thumbs).
pub trait Completions {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn completion(&self, i: usize) -> Result<Completion>;
}

impl Completions for [Completion] {
    fn len(&self) -> usize {
        <[Completion]>::len(self)
    }
    fn completion(&self, i: usize) -> Result<Completion> {
        self.get(i).cloned().ok_or_else(|| Error::config("KTO data", format!("no row {i} of {}", <[Completion]>::len(self))))
    }
}

impl Completions for Vec<Completion> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    fn completion(&self, i: usize) -> Result<Completion> {
        self.as_slice().completion(i)
    }
}

impl Completions for UnpairedDataset {
    fn len(&self) -> usize {
        UnpairedDataset::len(self)
    }
    fn completion(&self, i: usize) -> Result<Completion> {
        let r = self.get(i).ok_or_else(|| Error::config("KTO data", format!("{}: no row {i}", self.dataset().path().display())))?;
        Ok(Completion { prompt: r.prompt.to_vec(), completion: r.completion.to_vec(), label: r.label })
    }
}

/// KTO settings: the shared training settings and the loss's (TRL's KTOConfig names).
#[derive(Clone, Debug)]
pub struct KtoTrainConfig {
    /// Steps, rows per micro-batch (at least 2 for `kto`: the KL rows pair rows of one
    /// micro-batch), gradient accumulation, lengths, schedule, seed, output.
    pub train: TrainConfig,
    /// β, loss type, desirable and undesirable weights. Default: kto, β = 0.1, weights 1.
    pub loss: KtoConfig,
    /// Pad token id.
    pub pad_id: u32,
}

impl Default for KtoTrainConfig {
    /// 200 steps of 8 rows at a peak learning rate of 5e-5 (TRL's KTOConfig says 1e-6 for
    /// large models; small ones take more).
    fn default() -> Self {
        KtoTrainConfig { train: TrainConfig { steps: 200, ..TrainConfig::default() }, loss: KtoConfig::default(), pad_id: 0 }
    }
}

/// One step's metrics, with TRL's names in `metrics.jsonl`. Means over the desirable
/// (`chosen`) or undesirable (`rejected`) rows of the step (all its micro-batches) are absent
/// when it has none.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KtoMetrics {
    pub step: usize,
    pub loss: f32,
    pub lr: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f32>,
    /// Mean β r over desirable rows.
    #[serde(rename = "rewards/chosen", skip_serializing_if = "Option::is_none")]
    pub rewards_chosen: Option<f32>,
    /// Mean β r over undesirable rows.
    #[serde(rename = "rewards/rejected", skip_serializing_if = "Option::is_none")]
    pub rewards_rejected: Option<f32>,
    /// `rewards/chosen − rewards/rejected` (when the batch has both).
    #[serde(rename = "rewards/margins", skip_serializing_if = "Option::is_none")]
    pub rewards_margins: Option<f32>,
    /// Mean sequence log-prob of desirable completions.
    #[serde(rename = "logps/chosen", skip_serializing_if = "Option::is_none")]
    pub logps_chosen: Option<f32>,
    /// Mean sequence log-prob of undesirable completions.
    #[serde(rename = "logps/rejected", skip_serializing_if = "Option::is_none")]
    pub logps_rejected: Option<f32>,
    /// The KL estimate z0 of the step (0 for `apo_zero_unpaired`).
    pub kl: f32,
    #[serde(rename = "count/chosen")]
    pub count_chosen: f32,
    #[serde(rename = "count/rejected")]
    pub count_rejected: f32,
    #[serde(default)]
    pub elapsed_s: f64,
}

impl KtoMetrics {
    /// A step's metrics from the loss op's stats (TRL's `log` divides each sum by its count).
    fn from_stats(s: &KtoStats) -> KtoMetrics {
        let mean = |sum: f32, n: f32| (n > 0.0).then(|| sum / n);
        let (rc, rr) = (mean(s.rewards_chosen_sum, s.count_chosen), mean(s.rewards_rejected_sum, s.count_rejected));
        KtoMetrics {
            loss: s.loss,
            rewards_chosen: rc,
            rewards_rejected: rr,
            rewards_margins: rc.zip(rr).map(|(c, r)| c - r),
            logps_chosen: mean(s.logps_chosen_sum, s.count_chosen),
            logps_rejected: mean(s.logps_rejected_sum, s.count_rejected),
            kl: s.kl,
            count_chosen: s.count_chosen,
            count_rejected: s.count_rejected,
            ..Default::default()
        }
    }
}

/// Trains a policy on unpaired feedback: `Kto::new(cfg).train(&policy, &feedback, Reference::Model(&sft))`.
pub struct Kto {
    pub cfg: KtoTrainConfig,
}

impl Kto {
    pub fn new(cfg: KtoTrainConfig) -> Kto {
        Kto { cfg }
    }

    /// Train `policy` on `data` against `reference` (a frozen model, `Adapters`, or `None`);
    /// returns each step's metrics (also written to `metrics.jsonl` under `out_dir`).
    pub fn train(&self, policy: &Model, data: &dyn Completions, reference: Reference) -> Result<Vec<KtoMetrics>> {
        let cfg = &self.cfg;
        cfg.loss.check()?;
        cfg.train.check("KTO")?;
        let b = cfg.train.batch_size;
        if data.is_empty() {
            return Err(Error::config("KTO", "no feedback rows"));
        }
        if cfg.loss.loss_type.uses_kl() && b < 2 {
            return Err(Error::config("KTO batch size", format!("{b}: the KL term pairs prompts with other rows' completions, so a batch needs at least 2 rows")));
        }
        if matches!(reference, Reference::Precomputed) {
            return Err(Error::config("KTO reference", "precomputed reference log-probs are not supported for KTO; use a reference model or LoRA adapters"));
        }
        let run = cfg.train.loop_config(2 * b);
        Ok(trainer::train(&run, policy, &mut KtoMethod { kto: self, policy, data, reference })?.metrics)
    }

    /// Right-padded rows `prompt ++ completion` on the GPU.
    fn upload(&self, gpu: &crate::Gpu, rows: &[(&[u32], &[u32])]) -> Result<crate::align::SeqTensors> {
        let t = &self.cfg.train;
        SeqBatch::right_padded(rows, t.max_len, t.max_prompt_len, self.cfg.pad_id)?.upload(gpu)
    }
}

/// KTO's step in the training loop.
struct KtoMethod<'a> {
    kto: &'a Kto,
    policy: &'a Model,
    data: &'a dyn Completions,
    reference: Reference<'a>,
}

impl Method for KtoMethod<'_> {
    type Metrics = KtoMetrics;
    type Part = Tensor;

    fn name(&self) -> &'static str {
        "kto"
    }

    fn settings(&self) -> serde_json::Value {
        let l = &self.kto.cfg.loss;
        self.kto.cfg.train.settings(serde_json::json!({
            "beta": l.beta,
            "loss_type": l.loss_type.name(),
            "desirable_weight": l.desirable_weight,
            "undesirable_weight": l.undesirable_weight,
            "reference": self.reference.describe(),
        }))
    }

    fn backward(&mut self, mb: MicroBatch) -> Result<Tensor> {
        let (cfg, policy, reference) = (&self.kto.cfg, self.policy, &self.reference);
        let b = cfg.train.batch_size;
        let gpu = policy.params().gpu();
        // 1. the batch, and its KL rows: prompt i with completion i − 1 (row 0 with the last)
        let batch: Vec<Completion> = step_indices(cfg.train.seed, self.data.len(), mb.index(), b).map(|i| self.data.completion(i)).collect::<Result<_>>()?;
        let rows: Vec<(&[u32], &[u32])> = batch.iter().map(|c| (&c.prompt[..], &c.completion[..])).collect();
        let s = self.kto.upload(gpu, &rows)?;
        let labels: Vec<f32> = batch.iter().map(|c| f32::from(u8::from(c.label))).collect();
        let labels = Tensor::from_f32(gpu, &labels, &[b])?;
        // 2. the constants: reference log-probs, and both models' log-probs of the KL rows
        let ref_logp = reference.sequence_logps(policy, &s, None, "KTO")?;
        let kl = if cfg.loss.loss_type.uses_kl() {
            let mismatched: Vec<(&[u32], &[u32])> = (0..b).map(|i| (rows[i].0, rows[(i + b - 1) % b].1)).collect();
            let k = self.kto.upload(gpu, &mismatched)?;
            Some((sequence_logps(policy, None, &k)?.tensor().clone(), reference.sequence_logps(policy, &k, None, "KTO")?))
        } else {
            None
        };
        // 3. the policy's log-probs on the tape, the fused loss, backward
        let tape = Tape::new();
        let logp = sequence_logps(policy, Some(&tape), &s)?;
        let (loss, metrics) = kto_loss(&logp, &ref_logp, &labels, kl.as_ref().map(|(a, b)| (a, b)), &cfg.loss)?;
        tape.backward(&mb.scaled(&loss)?)?;
        Ok(metrics.tensor().clone())
    }

    /// The loss and z0 are means over the micro-batches; the reward and log-prob sums and the
    /// counts add up before TRL's division, so the means are over all the step's rows.
    fn finish(&mut self, parts: Vec<Tensor>, grad_norm: Option<Tensor>) -> Result<KtoMetrics> {
        // 4. the step's readback: the metrics
        let v = MicroMetrics::read(&parts)?;
        let stats = KtoStats {
            loss: v.mean(0),
            rewards_chosen_sum: v.sum(1),
            rewards_rejected_sum: v.sum(2),
            logps_chosen_sum: v.sum(3),
            logps_rejected_sum: v.sum(4),
            count_chosen: v.sum(5),
            count_rejected: v.sum(6),
            kl: v.mean(7),
        };
        Ok(KtoMetrics { grad_norm: read_norm(grad_norm)?, ..KtoMetrics::from_stats(&stats) })
    }

    fn loss(m: &KtoMetrics) -> f32 {
        m.loss
    }

    fn stamp(&self, m: &mut KtoMetrics, done: usize, lr: f32, elapsed_s: f64, _: usize) {
        (m.step, m.lr, m.elapsed_s) = (done, lr, elapsed_s);
    }
}
