//! Direct Preference Optimization (TRL's DPOTrainer): no reward model, no sampling. For a pair
//! (x, y_c, y_r) the policy's log-probs `π_c = log π(y_c|x)`, `π_r` and the reference's `ρ_c`,
//! `ρ_r` give the implicit reward margin
//!
//! ```text
//! h = β [(π_c − ρ_c) − (π_r − ρ_r)],   sigmoid loss: L = −log σ(h)
//! ```
//!
//! and the other loss types of [`DpoLoss`] (hinge, ipo, robust, bco_pair, apo_zero, apo_down,
//! sigmoid_norm, sft, and weighted mixtures), all in one fused kernel
//! ([`crate::ops::dpo::dpo_loss`]). Chosen and rejected rows of a batch go through the model in
//! one forward pass; the reference comes from a frozen model, from the policy with its adapters
//! switched off, or from values precomputed into the preference file
//! ([`precompute_reference`]), so that training holds one model in memory.

use super::batching::{pair_rows, split_pair_tensor, split_pairs, step_indices, Pair, Pairs};
use super::common::TrainConfig;
use super::reference::Reference;
use super::seqs::{sequence_logps, SeqTensors};
use crate::train::trainer::{self, read_norm, Method, MethodState, MicroBatch, MicroMetrics};
use crate::data::PreferenceDataset;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::dpo::{dpo_loss, DpoConfig, DpoLoss, DpoRunState, DPO_METRIC_NAMES};
use crate::tape::Tape;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// DPO settings.
#[derive(Clone, Debug)]
pub struct DpoTrainConfig {
    /// Default: 200 steps of 8 pairs, peak learning rate 5e-5.
    pub train: TrainConfig,
    /// β, loss types and their weights, label smoothing, SimPO's γ. Default: sigmoid, β = 0.1.
    /// (bco_pair's δ is no setting: the trainer keeps the running mean of the rewards as per-run
    /// state, saved in checkpoints, and passes it to the loss as a [`DpoRunState`].)
    pub loss: DpoConfig,
    /// Pad token id.
    pub pad_id: u32,
}

impl Default for DpoTrainConfig {
    fn default() -> Self {
        DpoTrainConfig { train: TrainConfig { steps: 200, ..TrainConfig::default() }, loss: DpoConfig::default(), pad_id: 0 }
    }
}

/// One DPO step's metrics, with TRL's names in `metrics.jsonl` (means over the step's pairs, all
/// its micro-batches').
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DpoMetrics {
    pub step: usize,
    pub loss: f32,
    pub lr: f32,
    /// Global gradient norm before clipping (absent without clipping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f32>,
    /// Mean implicit reward β(π_c − ρ_c) of the chosen completions.
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f32,
    /// Mean implicit reward β(π_r − ρ_r) of the rejected completions.
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f32,
    /// Mean of `rewards/chosen − rewards/rejected` per pair.
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f32,
    /// Share of pairs whose chosen reward is above the rejected one.
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f32,
    /// Mean sequence log-prob of the chosen completions.
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f32,
    /// Mean sequence log-prob of the rejected completions.
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f32,
    /// Mean vocabulary logit over the chosen completions' tokens.
    #[serde(rename = "logits/chosen")]
    pub logits_chosen: f32,
    /// Mean vocabulary logit over the rejected completions' tokens.
    #[serde(rename = "logits/rejected")]
    pub logits_rejected: f32,
    #[serde(default)]
    pub elapsed_s: f64,
}

/// Trains a policy on preference pairs: `Dpo::new(cfg).train(&policy, &pairs, Reference::Model(&sft))`.
pub struct Dpo {
    pub cfg: DpoTrainConfig,
}

impl Dpo {
    pub fn new(cfg: DpoTrainConfig) -> Dpo {
        Dpo { cfg }
    }

    /// Train `policy` on `pairs` against `reference`; returns each step's metrics with TRL's
    /// names (rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/*,
    /// logits/*), the loss and the gradient norm.
    pub fn train(&self, policy: &Model, pairs: &dyn Pairs, reference: Reference) -> Result<Vec<DpoMetrics>> {
        let cfg = &self.cfg;
        cfg.train.check("DPO")?;
        if pairs.is_empty() {
            return Err(Error::config("DPO", "no preference pairs"));
        }
        let run = cfg.train.loop_config(2 * cfg.train.batch_size);
        let mut method = DpoMethod { policy, pairs, reference, cfg, bco: BcoMean::default() };
        Ok(trainer::train(&run, policy, &mut method)?.metrics)
    }
}

/// bco_pair's δ: the running mean of every implicit reward seen so far (per-run state, saved in
/// checkpoints; TRL's `RunningMoments`).
#[derive(Clone, Copy, Debug, Default)]
struct BcoMean {
    sum: f64,
    count: u64,
}

impl BcoMean {
    /// What the loss takes from the run so far: δ, the same for every micro-batch of a step.
    fn run_state(&self) -> DpoRunState {
        DpoRunState { bco_delta: if self.count == 0 { 0.0 } else { (self.sum / self.count as f64) as f32 } }
    }
}

/// What a DPO micro-batch leaves for the step's metrics: `[loss, DPO_METRIC_NAMES...]` and each
/// row's sum of mean logits (on the GPU), and each row's completion length.
struct DpoPart {
    stats: Tensor,
    logit_sums: Tensor,
    completion_len: Vec<f32>,
}

/// DPO's step in the training loop: the pairs' log-probs, the reference's, the fused loss.
struct DpoMethod<'a> {
    policy: &'a Model,
    pairs: &'a dyn Pairs,
    reference: Reference<'a>,
    cfg: &'a DpoTrainConfig,
    bco: BcoMean,
}

impl Method for DpoMethod<'_> {
    type Metrics = DpoMetrics;
    type Part = DpoPart;

    fn name(&self) -> &'static str {
        "dpo"
    }

    fn settings(&self) -> serde_json::Value {
        let l = &self.cfg.loss;
        self.cfg.train.settings(serde_json::json!({
            "beta": l.beta,
            "losses": l.losses.iter().map(|(k, w)| format!("{}:{w}", k.name())).collect::<Vec<_>>(),
            "label_smoothing": l.label_smoothing,
            "reference": self.reference.describe(),
        }))
    }

    fn backward(&mut self, mb: MicroBatch) -> Result<DpoPart> {
        let (cfg, policy, b) = (self.cfg, self.policy, self.cfg.train.batch_size);
        // 1. the batch: chosen and rejected rows side by side, and the reference's log-probs
        let batch: Vec<Pair> = step_indices(cfg.train.seed, self.pairs.len(), mb.index(), b).map(|i| self.pairs.pair(i)).collect::<Result<_>>()?;
        let rows = pair_rows(&batch, &cfg.train, cfg.pad_id)?;
        let s = rows.upload(policy.params().gpu())?;
        let stored: Option<Vec<f32>> = batch.iter().map(|p| p.reference).collect::<Option<Vec<[f32; 2]>>>().map(|v| v.concat());
        if matches!(self.reference, Reference::Precomputed) && stored.is_none() {
            let i = batch.iter().position(|p| p.reference.is_none()).unwrap_or(0);
            return Err(Error::config("reference", format!("pair {i} has no precomputed reference log-probs (run `plumb dpo --precompute-ref` first)")));
        }
        let refs = self.reference.sequence_logps(policy, &s, stored.as_deref(), "DPO")?;
        let (rc, rr) = split_pair_tensor(&refs, b)?;
        let (lc, lr_) = split_pair_tensor(&s.completion_len, b)?;
        // 2. the policy's log-probs on the tape, the fused loss (bco_pair's δ from the run so far)
        let tape = Tape::new();
        let (logps, logit_sums) = logps_and_logit_sums(policy, &tape, &s)?;
        let (pc, pr) = split_pairs(&logps, b)?;
        let (loss, metrics) = dpo_loss(&pc, &pr, &rc, &rr, &lc, &lr_, &cfg.loss, self.bco.run_state())?;
        tape.backward(&mb.scaled(&loss)?)?;
        Ok(DpoPart { stats: metrics.tensor().clone(), logit_sums, completion_len: rows.completion_len })
    }

    /// Means over the micro-batches; logits/* over all the step's completion tokens.
    fn finish(&mut self, parts: Vec<DpoPart>, grad_norm: Option<Tensor>) -> Result<DpoMetrics> {
        // 3. the metrics: the step's readback, [loss, the metrics of DPO_METRIC_NAMES] each
        let stats = MicroMetrics::read(&parts.iter().map(|p| p.stats.clone()).collect::<Vec<_>>())?;
        let (mut sums, mut lens) = (vec![], vec![]);
        for p in &parts {
            sums.extend(p.logit_sums.to_f32_vec()?);
            lens.extend_from_slice(&p.completion_len);
        }
        let mean_logit = |k: usize| {
            let (s, l): (f32, f32) = (k..sums.len()).step_by(2).fold((0.0, 0.0), |a, i| (a.0 + sums[i], a.1 + lens[i]));
            s / l.max(1.0)
        };
        debug_assert_eq!(DPO_METRIC_NAMES[..4], ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"]);
        let m = DpoMetrics {
            loss: stats.mean(0),
            grad_norm: read_norm(grad_norm)?,
            rewards_chosen: stats.mean(1),
            rewards_rejected: stats.mean(2),
            rewards_margins: stats.mean(3),
            rewards_accuracies: stats.mean(4),
            logps_chosen: stats.mean(5),
            logps_rejected: stats.mean(6),
            logits_chosen: mean_logit(0),
            logits_rejected: mean_logit(1),
            ..Default::default()
        };
        if self.cfg.loss.losses.iter().any(|(k, _)| *k == DpoLoss::BcoPair) {
            let pairs = sums.len() / 2; // the step's, over its micro-batches
            self.bco.sum += (m.rewards_chosen as f64 + m.rewards_rejected as f64) * pairs as f64;
            self.bco.count += 2 * pairs as u64;
        }
        Ok(m)
    }

    fn loss(m: &DpoMetrics) -> f32 {
        m.loss
    }

    fn stamp(&self, m: &mut DpoMetrics, done: usize, lr: f32, elapsed_s: f64, _: usize) {
        (m.step, m.lr, m.elapsed_s) = (done, lr, elapsed_s);
    }

    fn state(&self) -> Result<MethodState> {
        Ok(MethodState { values: serde_json::json!({"bco_reward_sum": self.bco.sum, "bco_reward_count": self.bco.count}), tensors: vec![] })
    }

    fn restore(&mut self, s: MethodState) -> Result<()> {
        let sum = s.values["bco_reward_sum"].as_f64();
        let count = s.values["bco_reward_count"].as_u64();
        if let (Some(sum), Some(count)) = (sum, count) {
            self.bco = BcoMean { sum, count };
        }
        Ok(())
    }
}

/// Sequence log-probs (2N, on the tape) and, per row, the sum over completion tokens of the mean
/// vocabulary logit (TRL's logits/* metrics), from one pass through the chunked vocabulary head:
/// the (B·T, V) logits never exist.
fn logps_and_logit_sums(model: &Model, tape: &Tape, s: &SeqTensors) -> Result<(crate::tape::Var, Tensor)> {
    use crate::ops::elementwise::{mul, mul_forward};
    use crate::ops::reduce::{sum_last, sum_last_forward};
    use crate::ops::vocab_head::{head_logprobs, head_mean_logits};
    let hidden = model.hidden(Some(tape), &s.ids, s.key_mask.as_ref())?;
    let head = model.token_head(Some(tape), &hidden, &s.labels)?; // (B·T, 3)
    let means = head_mean_logits(&head)?.tensor().reshape(&[s.rows, s.seq])?; // (B, T)
    let logit_sums = sum_last_forward(&mul_forward(&means, &s.mask)?)?; // (B)
    let lp = head_logprobs(&head)?.reshape(&[s.rows, s.seq])?;
    let logps = sum_last(&mul(&lp, &crate::tape::Var::constant(s.mask.clone()))?)?; // (B)
    Ok((logps, logit_sums))
}

/// Compute the reference model's log-probs of every pair in the preference file at `path` once
/// and store them in the file (atomically), so DPO can train with `Reference::Precomputed` and
/// one model in memory. Returns the number of pairs.
pub fn precompute_reference(reference: &Model, path: &Path, cfg: &DpoTrainConfig) -> Result<usize> {
    let gpu = reference.params().gpu().clone();
    let (values, provenance) = {
        let data = PreferenceDataset::open(path)?;
        let provenance = super::provenance::ReferenceProvenance::of(reference, data.dataset(), cfg)?;
        let mut values = Vec::with_capacity(data.len());
        let all: Vec<Pair> = (0..data.len()).map(|i| data.pair(i)).collect::<Result<_>>()?;
        let bar = crate::train::progress_bar(cfg.train.progress, all.len() as u64, "ref");
        for chunk in all.chunks(cfg.train.batch_size.max(1)) {
            let s = pair_rows(chunk, &cfg.train, cfg.pad_id)?.upload(&gpu)?;
            let v = sequence_logps(reference, None, &s)?.to_f32_vec()?;
            values.extend(v.chunks(2).map(|c| [c[0], c[1]]));
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        (values, provenance)
    }; // the dataset's mmap is closed before the file is rewritten
    super::provenance::remove_reference_provenance(path)?;
    crate::data::write_reference_logps(path, &values)?;
    super::provenance::write_reference_provenance(path, &provenance)?;
    Ok(values.len())
}
