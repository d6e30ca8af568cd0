//! The demo's data, all from the built-in movie-review sentences (VADER, MIT; about 20 people
//! rated each from -4 to +4), byte-level so no tokenizer file is needed. Every sentence starts
//! with '\n' (the separator of the SFT stream), which acts as a start-of-text token.
//!
//! Split by sentence id, so no stage sees another's held-out text:
//! - id % 20 != 0: SFT text, and the human preference pairs (reward model, offline DPO);
//! - id % 40 == 0: openings for the RL stages (PPO rollouts, on-policy DPO sampling), and the
//!   reward model's held-out pairs;
//! - id % 40 == 20: openings for the final evaluation.

use crate::align::Pair;
use crate::data::corpus::{movie_reviews, RatedSentence};
use crate::error::Result;

/// Which part of the corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// SFT text and training preference pairs.
    Train,
    /// Prompts for PPO / on-policy DPO; held-out pairs for the reward model.
    Rl,
    /// Openings for the final evaluation.
    Eval,
}

impl Split {
    pub fn of(id: u32) -> Split {
        match id % 40 {
            0 => Split::Rl,
            20 => Split::Eval,
            _ => Split::Train,
        }
    }
}

/// Bytes of `text` as token ids.
pub fn bytes(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

/// Token ids back to text (invalid UTF-8 replaced).
pub fn text(ids: &[u32]) -> String {
    String::from_utf8_lossy(&ids.iter().map(|&t| t.min(255) as u8).collect::<Vec<u8>>()).into_owned()
}

/// The start-of-sentence token.
pub const NEWLINE: u32 = b'\n' as u32;

/// All rated sentences of `split`.
pub fn sentences(split: Split) -> Result<Vec<RatedSentence>> {
    Ok(movie_reviews()?.into_iter().filter(|s| Split::of(s.id) == split).collect())
}

/// The SFT stream: the train split's sentences, each followed by '\n'.
pub fn sft_stream() -> Result<Vec<u32>> {
    Ok(sentences(Split::Train)?.iter().flat_map(|s| bytes(&s.text).into_iter().chain([NEWLINE])).collect())
}

/// Human preference pairs: sentences of `split` at most `max_chars` long are paired with
/// partners a fixed stride away; a pair is kept when the mean ratings differ by at least `gap`,
/// the better-rated sentence chosen. The prompt is the start token; completions end with '\n'.
pub fn preference_pairs(split: Split, gap: f32, max_chars: usize, max_pairs: usize) -> Result<Vec<Pair>> {
    let pick: Vec<RatedSentence> = sentences(split)?.into_iter().filter(|s| s.text.len() <= max_chars).collect();
    let mut out = vec![];
    for stride in [3usize, 11, 29, 47] {
        for (i, a) in pick.iter().enumerate() {
            let b = &pick[(i * 7 + stride) % pick.len()];
            if out.len() < max_pairs && a.id != b.id && (a.mean - b.mean).abs() >= gap {
                let (c, r) = if a.mean > b.mean { (a, b) } else { (b, a) };
                let line = |s: &RatedSentence| bytes(&s.text).into_iter().chain([NEWLINE]).collect();
                out.push(Pair { prompt: vec![NEWLINE], chosen: line(c), rejected: line(r), reference: None });
            }
        }
    }
    Ok(out)
}

/// Openings of `split`: the start token and the first `words` words of each sentence (with the
/// following space), e.g. "\nThe film ". Sentences shorter than that are skipped.
pub fn openings(split: Split, words: usize) -> Result<Vec<Vec<u32>>> {
    Ok(sentences(split)?
        .iter()
        .filter_map(|s| {
            let w: Vec<&str> = s.text.split(' ').collect();
            (w.len() > words + 2).then(|| [vec![NEWLINE], bytes(&(w[..words].join(" ") + " "))].concat())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_disjoint_and_pairs_are_ordered_by_rating() {
        let reviews = movie_reviews().unwrap();
        let n = |s| reviews.iter().filter(|r| Split::of(r.id) == s).count();
        assert_eq!(n(Split::Train) + n(Split::Rl) + n(Split::Eval), reviews.len());
        assert!(n(Split::Rl) > 200 && n(Split::Eval) > 200);
        let pairs = preference_pairs(Split::Train, 2.0, 80, 500).unwrap();
        assert_eq!(pairs.len(), 500);
        let mean: std::collections::HashMap<String, f32> = reviews.iter().map(|r| (r.text.clone(), r.mean)).collect();
        for p in &pairs {
            let m = |c: &[u32]| mean[text(&c[..c.len() - 1]).as_str()];
            assert!(m(&p.chosen) >= m(&p.rejected) + 2.0);
        }
        let o = openings(Split::Eval, 2).unwrap();
        assert!(o.len() > 200 && o.iter().all(|x| x[0] == NEWLINE && *x.last().unwrap() == b' ' as u32));
    }
}
