//! The reference policy every KL-anchored method compares against, in one place: a frozen
//! model, the policy with its LoRA adapters switched off (one copy of the weights), values
//! precomputed into a preference file (DPO), or none (reference-free losses, β = 0). Its
//! per-token log-probs (PPO's and GRPO's KL, of the tempered policy that sampled) and its
//! per-sequence log-probs (DPO, KTO) both come from here.

use super::seqs::{sequence_logps, SeqTensors};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::elementwise::{mul, scale};
use crate::ops::vocab_head::{head_entropy, head_logprobs};
use crate::tape::{Tape, Var};
use crate::tensor::{DType, Tensor};

/// Where the reference policy's log-probs come from (DPO, KTO, PPO's KL, GRPO's KL).
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

    /// The reference's sequence log-probs (B) of the rows of `s`: from the live reference, zeros
    /// for `None`, and for `Precomputed` the values `precomputed` gives (one per row, in row
    /// order; `what` names the method in the error when it has none).
    pub fn sequence_logps(&self, policy: &Model, s: &SeqTensors, precomputed: Option<&[f32]>, what: &str) -> Result<Tensor> {
        match self {
            Reference::Model(m) => Ok(sequence_logps(m, None, s)?.tensor().clone()),
            Reference::Adapters => with_adapters_off(policy, || Ok(sequence_logps(policy, None, s)?.tensor().clone())),
            Reference::None => Tensor::zeros(s.ids.gpu(), &[s.rows], DType::F32, "no reference"),
            Reference::Precomputed => match precomputed {
                Some(v) => Tensor::from_f32(s.ids.gpu(), v, &[v.len()]),
                None => Err(Error::config(what, "precomputed reference log-probs exist for DPO's preference files only; use a reference model or LoRA adapters")),
            },
        }
    }

    /// The reference's completion log-probs (B, T) of the tempered policy (`temperature`, as
    /// the rollout sampled), 0 outside the completion. Needs a live reference.
    pub fn token_logps(&self, policy: &Model, s: &SeqTensors, temperature: f32) -> Result<Tensor> {
        let run = |m: &Model| -> Result<Tensor> {
            let h = m.hidden(None, &s.ids, s.key_mask.as_ref())?;
            Ok(tempered_logps(m, None, &h, s, temperature)?.0.tensor().clone())
        };
        match self {
            Reference::Model(m) => run(m),
            Reference::Adapters => with_adapters_off(policy, || run(policy)),
            Reference::Precomputed | Reference::None => {
                Err(Error::config("reference", "PPO and GRPO need a live reference (a frozen model or the policy without its adapters)"))
            }
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

/// Completion log-probs (B, T) of the tempered policy, 0 outside the completion, and the
/// per-token entropy (B·T) of the tempered distribution (policy and reference alike, for PPO and
/// GRPO), through the chunked vocabulary head: the (B·T, V) logits never exist. The temperature
/// τ scales the hidden states by 1/τ (the LM head has no bias, so its logits are exactly z/τ).
pub(crate) fn tempered_logps(model: &Model, tape: Option<&Tape>, hidden: &Var, s: &SeqTensors, temperature: f32) -> Result<(Var, Var)> {
    let hidden = if temperature != 1.0 { scale(hidden, 1.0 / temperature)? } else { hidden.clone() };
    let head = model.token_head(tape, &hidden, &s.labels)?; // (B·T, 3)
    let lp = head_logprobs(&head)?.reshape(&[s.rows, s.seq])?;
    Ok((mul(&lp, &Var::constant(s.mask.clone()))?, head_entropy(&head)?))
}
