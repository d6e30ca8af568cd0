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

use super::common::{run_steps, shuffled, to_json, Pair, Pairs, Reference, TrainConfig};
use super::reward::{pair_rows, split_pairs};
use super::seqs::{sequence_logps, SeqTensors};
use crate::data::PreferenceDataset;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::dpo::{dpo_loss, DpoConfig, DpoLoss, DPO_METRIC_NAMES};
use crate::ops::elementwise::slice_last_forward;
use crate::tape::Tape;
use crate::tensor::Tensor;
use std::path::Path;

/// DPO settings.
#[derive(Clone, Debug, Default)]
pub struct DpoTrainConfig {
    pub train: TrainConfig,
    /// β, loss types and their weights, label smoothing, SimPO's γ. Default: sigmoid, β = 0.1.
    pub loss: DpoConfig,
    /// Pad token id.
    pub pad_id: u32,
}

/// Trains a policy on preference pairs: `Dpo::new(cfg).train(&policy, &pairs, Reference::Model(&sft))`.
pub struct Dpo {
    pub cfg: DpoTrainConfig,
}

/// Chosen (even) and rejected (odd) values of a (2N) tensor, as two (N) tensors.
fn split_tensor(x: &Tensor, n: usize) -> Result<(Tensor, Tensor)> {
    let x = x.reshape(&[n, 2])?;
    Ok((slice_last_forward(&x, 0, 1)?.reshape(&[n])?, slice_last_forward(&x, 1, 1)?.reshape(&[n])?))
}

/// The reference's sequence log-probs (2N) for the rows of `s` (chosen, rejected interleaved).
pub(crate) fn reference_logps(policy: &Model, reference: &Reference, s: &SeqTensors, pairs: &[Pair]) -> Result<Tensor> {
    let gpu = s.ids.gpu();
    match reference {
        Reference::Model(m) => Ok(sequence_logps(m, None, s)?.tensor().clone()),
        Reference::Adapters => with_adapters_off(policy, || Ok(sequence_logps(policy, None, s)?.tensor().clone())),
        Reference::Precomputed => {
            let mut v = Vec::with_capacity(2 * pairs.len());
            for (i, p) in pairs.iter().enumerate() {
                let r = p.reference.ok_or_else(|| {
                    Error::config("reference", format!("pair {i} has no precomputed reference log-probs (run `plumb dpo --precompute-ref` first)"))
                })?;
                v.extend(r);
            }
            Tensor::from_f32(gpu, &v, &[v.len()])
        }
        Reference::None => Tensor::zeros(gpu, &[2 * pairs.len()], crate::tensor::DType::F32, "no reference"),
    }
}

pub(crate) use super::common::with_adapters_off;

impl Dpo {
    pub fn new(cfg: DpoTrainConfig) -> Dpo {
        Dpo { cfg }
    }

    /// Train `policy` on `pairs` against `reference`; returns each step's metrics with TRL's
    /// names (rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/*,
    /// logits/*), the loss and the gradient norm.
    pub fn train(&self, policy: &Model, pairs: &dyn Pairs, reference: Reference) -> Result<Vec<serde_json::Value>> {
        let cfg = &self.cfg;
        let n = pairs.len();
        if n == 0 {
            return Err(Error::config("DPO", "no preference pairs"));
        }
        let gpu = policy.params().gpu().clone();
        let b = cfg.train.batch_size;
        let mut loss_cfg = cfg.loss.clone();
        let uses_bco = loss_cfg.losses.iter().any(|(k, _)| *k == DpoLoss::BcoPair);
        let (mut reward_sum, mut reward_count) = (0.0f64, 0usize);
        let describe = serde_json::json!({
            "beta": loss_cfg.beta,
            "losses": loss_cfg.losses.iter().map(|(k, w)| format!("{}:{w}", k.name())).collect::<Vec<_>>(),
            "label_smoothing": loss_cfg.label_smoothing,
            "reference": reference.describe(),
        });
        run_steps("dpo", &cfg.train, policy, describe, |step, lr, opt| {
            let batch: Vec<Pair> = (0..b).map(|i| pairs.pair(shuffled(cfg.train.seed, n, (step * b + i) as u64))).collect::<Result<_>>()?;
            let rows = pair_rows(&batch, &cfg.train, cfg.pad_id)?;
            let s = rows.upload(&gpu)?;
            let refs = reference_logps(policy, &reference, &s, &batch)?;
            let (rc, rr) = split_tensor(&refs, b)?;
            let (lc, lr_) = split_tensor(&s.completion_len, b)?;
            let tape = Tape::new();
            let (logps, logit_sums) = logps_and_logit_sums(policy, &tape, &s)?;
            let (pc, pr) = split_pairs(&logps, b)?;
            let (loss, metrics) = dpo_loss(&pc, &pr, &rc, &rr, &lc, &lr_, &loss_cfg)?;
            tape.backward(&loss)?;
            let norm = opt.step(policy.trainable(), lr)?;
            policy.trainable().zero_grad()?;
            let stats = metrics.tensor().to_f32_vec()?; // the step's submit: [loss, metrics...]
            let m: Vec<(&str, f32)> = DPO_METRIC_NAMES.iter().copied().zip(stats[1..].iter().copied()).collect();
            let mut rec = to_json(&m);
            rec["loss"] = stats[0].into();
            let (sums, lens) = (logit_sums.to_f32_vec()?, &rows.completion_len);
            for (k, name) in ["logits/chosen", "logits/rejected"].iter().enumerate() {
                let (s, l): (f32, f32) = (k..2 * b).step_by(2).fold((0.0, 0.0), |a, i| (a.0 + sums[i], a.1 + lens[i]));
                rec[*name] = (s / l.max(1.0)).into();
            }
            if let Some(nm) = norm {
                rec["grad_norm"] = nm.scalar()?.into();
            }
            if uses_bco {
                // bco_pair's δ: the running mean of the implicit rewards seen so far.
                let get = |k: &str| m.iter().find(|(n, _)| *n == k).map(|x| x.1 as f64).unwrap_or(0.0);
                reward_sum += (get("rewards/chosen") + get("rewards/rejected")) * b as f64;
                reward_count += 2 * b;
                loss_cfg.bco_delta = (reward_sum / reward_count as f64) as f32;
            }
            Ok(rec)
        })
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
