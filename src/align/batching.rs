//! How the alignment methods draw their batches, in one place: a seeded shuffled order over the
//! data (a function of seed and position only, so a resumed run draws exactly what the killed
//! one would have), preference pairs as chosen/rejected rows side by side (reward model, DPO),
//! and prompt groups (each prompt G times, groups consecutive: GRPO, RLOO).

use super::seqs::SeqBatch;
use super::TrainConfig;
use crate::data::PreferenceDataset;
use crate::error::{Error, Result};
use crate::ops::elementwise::{slice_last, slice_last_forward};
use crate::tape::Var;
use crate::tensor::Tensor;

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

/// The data indices of step `step`'s batch of `b` items out of `n` (seeded shuffled order).
pub fn step_indices(seed: u64, n: usize, step: usize, b: usize) -> impl Iterator<Item = usize> {
    (0..b).map(move |i| shuffled(seed, n, (step * b + i) as u64))
}

/// The seed of step `step`'s sampling (PPO, GRPO rollouts): a function of the run's seed and
/// the step, so a resumed run samples what the killed one would have.
pub fn sampling_seed(seed: u64, step: usize) -> u64 {
    crate::train::batch::mix(seed ^ (step as u64 + 1))
}

/// Step `step`'s prompts, each `g` times, groups consecutive (GRPO, RLOO; `g` = 1 for PPO).
pub fn prompt_groups(prompts: &[Vec<u32>], seed: u64, step: usize, b: usize, g: usize) -> Vec<Vec<u32>> {
    step_indices(seed, prompts.len(), step, b).flat_map(|i| std::iter::repeat_n(prompts[i].clone(), g)).collect()
}

/// Two right-padded rows per pair: chosen at even rows, rejected at odd rows.
pub fn pair_rows(pairs: &[Pair], cfg: &TrainConfig, pad: u32) -> Result<SeqBatch> {
    let rows: Vec<(&[u32], &[u32])> =
        pairs.iter().flat_map(|p| [(p.prompt.as_slice(), p.chosen.as_slice()), (p.prompt.as_slice(), p.rejected.as_slice())]).collect();
    SeqBatch::right_padded(&rows, cfg.max_len, cfg.max_prompt_len, pad)
}

/// Every other element of a (2N) Var: even (chosen) and odd (rejected) rows, as two (N).
pub fn split_pairs(x: &Var, n: usize) -> Result<(Var, Var)> {
    let x = x.reshape(&[n, 2])?;
    Ok((slice_last(&x, 0, 1)?.reshape(&[n])?, slice_last(&x, 1, 1)?.reshape(&[n])?))
}

/// [`split_pairs`] for a tensor off the tape.
pub fn split_pair_tensor(x: &Tensor, n: usize) -> Result<(Tensor, Tensor)> {
    let x = x.reshape(&[n, 2])?;
    Ok((slice_last_forward(&x, 0, 1)?.reshape(&[n])?, slice_last_forward(&x, 1, 1)?.reshape(&[n])?))
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
