//! Token rows for the alignment trainers: (prompt, completion) pairs laid out in one padded
//! batch, with the label mask that selects completion tokens, and the per-token and per-sequence
//! log-probs every method starts from (`log π(y|x) = Σ_t log π(y_t | x, y_<t)`).
//!
//! Two layouts. Right-padded rows (`prompt ++ completion ++ pad`) for offline data (reward
//! model, DPO), as TRL pads them. Left-padded rows (`pad ++ prompt ++ completion`) for on-policy
//! rollouts (PPO, GRPO), exactly the layout the KV-cache sampler generated them in, with the
//! padding masked out of attention, so scoring sees what sampling saw.

use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::elementwise::mul;
use crate::ops::vocab_head::head_logprobs;
use crate::ops::reduce::sum_last;
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;
use crate::Gpu;

/// A padded batch of B rows of T tokens, on the CPU.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqBatch {
    /// Rows B.
    pub rows: usize,
    /// Tokens per row T.
    pub seq: usize,
    /// Token ids (B·T).
    pub ids: Vec<u32>,
    /// Next-token labels (B·T): `labels[t] = ids[t + 1]`, pad at the end.
    pub labels: Vec<u32>,
    /// 1 where `labels[t]` is a completion token, else 0 (B·T).
    pub mask: Vec<f32>,
    /// Completion tokens per row (B).
    pub completion_len: Vec<f32>,
    /// Flat index `row·T + t` of each row's last real token (B): where a reward model reads.
    pub last: Vec<u32>,
    /// 1 for real tokens, 0 for padding (B·T); only set for left-padded batches.
    pub key_mask: Option<Vec<u32>>,
}

/// Cut a (prompt, completion) row to `max_len` tokens: the prompt keeps its last
/// `max_prompt` tokens, then the completion keeps its first tokens (TRL's keep_end/keep_start).
fn truncate<'a>(prompt: &'a [u32], completion: &'a [u32], max_len: usize, max_prompt: usize) -> (&'a [u32], &'a [u32]) {
    let p = &prompt[prompt.len().saturating_sub(max_prompt.min(max_len))..];
    let c = &completion[..completion.len().min(max_len - p.len())];
    (p, c)
}

impl SeqBatch {
    /// Right-padded rows `prompt ++ completion`, at most `max_len` tokens each (T = the longest).
    /// Errors when a row keeps no completion token.
    pub fn right_padded(rows: &[(&[u32], &[u32])], max_len: usize, max_prompt: usize, pad: u32) -> Result<SeqBatch> {
        let cut: Vec<(&[u32], &[u32])> = rows.iter().map(|(p, c)| truncate(p, c, max_len, max_prompt)).collect();
        if let Some(i) = cut.iter().position(|(p, c)| c.is_empty() || p.is_empty()) {
            return Err(Error::config(
                "alignment batch",
                format!("row {i}: needs a non-empty prompt and completion within {max_len} tokens (prompt {} + completion {} tokens)", rows[i].0.len(), rows[i].1.len()),
            ));
        }
        let t = cut.iter().map(|(p, c)| p.len() + c.len()).max().unwrap_or(0);
        let mut b = SeqBatch::empty(rows.len(), t, false);
        for (r, (p, c)) in cut.iter().enumerate() {
            let toks: Vec<u32> = p.iter().chain(c.iter()).copied().collect();
            b.fill_row(r, 0, &toks, p.len(), pad);
        }
        Ok(b)
    }

    /// Left-padded rows `pad ++ prompt ++ completion`: every prompt ends at column P (the longest
    /// prompt), completions start there and are right-padded. This is the sampler's layout.
    pub fn left_padded(prompts: &[&[u32]], completions: &[&[u32]], pad: u32) -> Result<SeqBatch> {
        if prompts.len() != completions.len() || prompts.is_empty() {
            return Err(Error::config("rollout batch", format!("{} prompts for {} completions", prompts.len(), completions.len())));
        }
        let p = prompts.iter().map(|x| x.len()).max().unwrap_or(0);
        let c = completions.iter().map(|x| x.len()).max().unwrap_or(0);
        if p == 0 || c == 0 {
            return Err(Error::config("rollout batch", "empty prompts or completions"));
        }
        let mut b = SeqBatch::empty(prompts.len(), p + c, true);
        for (r, (pr, co)) in prompts.iter().zip(completions).enumerate() {
            let toks: Vec<u32> = pr.iter().chain(co.iter()).copied().collect();
            b.fill_row(r, p - pr.len(), &toks, pr.len(), pad);
        }
        Ok(b)
    }

    fn empty(rows: usize, seq: usize, keyed: bool) -> SeqBatch {
        SeqBatch {
            rows,
            seq,
            ids: vec![0; rows * seq],
            labels: vec![0; rows * seq],
            mask: vec![0.0; rows * seq],
            completion_len: vec![0.0; rows],
            last: vec![0; rows],
            key_mask: keyed.then(|| vec![0; rows * seq]),
        }
    }

    /// Row `r`: `toks` (prompt of `prompt_len` then completion) placed from column `start`.
    fn fill_row(&mut self, r: usize, start: usize, toks: &[u32], prompt_len: usize, pad: u32) {
        let (t, o) = (self.seq, r * self.seq);
        for s in 0..t {
            let k = s as isize - start as isize; // index into toks
            let at = |k: isize| if k >= 0 && (k as usize) < toks.len() { Some(toks[k as usize]) } else { None };
            self.ids[o + s] = at(k).unwrap_or(pad);
            self.labels[o + s] = at(k + 1).unwrap_or(pad);
            let completion = at(k + 1).is_some() && k + 1 >= prompt_len as isize;
            self.mask[o + s] = f32::from(u8::from(completion));
            if let Some(km) = self.key_mask.as_mut() {
                km[o + s] = u32::from(at(k).is_some());
            }
        }
        self.completion_len[r] = (toks.len() - prompt_len) as f32;
        self.last[r] = (o + start + toks.len() - 1) as u32;
    }

    /// Upload to the GPU.
    pub fn upload(&self, gpu: &Gpu) -> Result<SeqTensors> {
        let (b, t) = (self.rows, self.seq);
        Ok(SeqTensors {
            rows: b,
            seq: t,
            ids: Tensor::from_u32(gpu, &self.ids, &[b, t])?,
            labels: Tensor::from_u32(gpu, &self.labels, &[b * t])?,
            mask: Tensor::from_f32(gpu, &self.mask, &[b, t])?,
            completion_len: Tensor::from_f32(gpu, &self.completion_len, &[b])?,
            last: Tensor::from_u32(gpu, &self.last, &[b, 1])?,
            key_mask: match &self.key_mask {
                Some(k) => Some(Tensor::from_u32(gpu, k, &[b, t])?),
                None => None,
            },
        })
    }
}

/// A [`SeqBatch`] on the GPU.
pub struct SeqTensors {
    pub rows: usize,
    pub seq: usize,
    /// (B, T) u32.
    pub ids: Tensor,
    /// (B·T) u32.
    pub labels: Tensor,
    /// (B, T) f32, 1 on completion labels.
    pub mask: Tensor,
    /// (B) f32.
    pub completion_len: Tensor,
    /// (B, 1) u32 flat indices of each row's last real token.
    pub last: Tensor,
    /// (B, T) u32 attention key mask (left-padded batches).
    pub key_mask: Option<Tensor>,
}

/// Log-probs of the completion tokens from hidden states (B, T, C): `(B, T)`, 0 outside the
/// completion. Uses the chunked vocabulary head: the (B·T, V) logits never exist.
pub fn logps_from_hidden(model: &Model, tape: Option<&Tape>, hidden: &Var, s: &SeqTensors) -> Result<Var> {
    let head = model.token_head(tape, hidden, &s.labels)?; // (B·T, 3)
    let lp = head_logprobs(&head)?.reshape(&[s.rows, s.seq])?; // (B, T)
    mul(&lp, &Var::constant(s.mask.clone()))
}

/// Per-token completion log-probs `(B, T)` (0 elsewhere) of `model`, on `tape` when given.
pub fn token_logps(model: &Model, tape: Option<&Tape>, s: &SeqTensors) -> Result<Var> {
    let hidden = model.hidden(tape, &s.ids, s.key_mask.as_ref())?;
    logps_from_hidden(model, tape, &hidden, s)
}

/// Per-sequence sums of completion log-probs `(B)`: `log π(completion | prompt)`.
pub fn sequence_logps(model: &Model, tape: Option<&Tape>, s: &SeqTensors) -> Result<Var> {
    sum_last(&token_logps(model, tape, s)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_padded_masks_completion_labels() {
        let b = SeqBatch::right_padded(&[(&[1, 2], &[3, 4]), (&[5], &[6])], 8, 4, 0).unwrap();
        assert_eq!(b.seq, 4);
        assert_eq!(b.ids, vec![1, 2, 3, 4, 5, 6, 0, 0]);
        assert_eq!(b.labels, vec![2, 3, 4, 0, 6, 0, 0, 0]);
        assert_eq!(b.mask, vec![0., 1., 1., 0., 1., 0., 0., 0.]);
        assert_eq!(b.completion_len, vec![2., 1.]);
        assert_eq!(b.last, vec![3, 5]);
    }

    #[test]
    fn left_padded_lines_prompts_up() {
        let b = SeqBatch::left_padded(&[&[1, 2], &[5]], &[&[3], &[6, 7]], 9).unwrap();
        assert_eq!(b.seq, 4);
        assert_eq!(b.ids, vec![1, 2, 3, 9, 9, 5, 6, 7]);
        assert_eq!(b.labels, vec![2, 3, 9, 9, 5, 6, 7, 9]);
        assert_eq!(b.mask, vec![0., 1., 0., 0., 0., 1., 1., 0.]);
        assert_eq!(b.key_mask.unwrap(), vec![1, 1, 1, 0, 0, 1, 1, 1]);
        assert_eq!(b.last, vec![2, 7]);
    }

    #[test]
    fn truncation_keeps_prompt_end_and_completion_start() {
        let b = SeqBatch::right_padded(&[(&[1, 2, 3, 4], &[5, 6, 7])], 4, 2, 0).unwrap();
        assert_eq!(b.ids, vec![3, 4, 5, 6]);
        assert!(SeqBatch::right_padded(&[(&[1], &[])], 4, 2, 0).is_err());
    }
}
