//! The demo's data, all from the built-in movie-review sentences (VADER, MIT; about 20 people
//! rated each from -4 to +4), through any tokenizer: the built-in byte-level one (the CLI's
//! default data), or the small BPE the demo trains on the training split ([`review_tokenizer`]),
//! whose tokens are mostly whole words. Every sentence starts with '\n' (the separator of the
//! SFT stream), which acts as a start-of-text token and ends completions.
//!
//! Split by sentence id, so no stage sees another's held-out text:
//! - id % 20 != 0: SFT text, and the human preference pairs (reward model, offline DPO);
//! - id % 40 == 0: openings for the RL stages (PPO rollouts, on-policy DPO sampling), and the
//!   reward model's held-out pairs;
//! - id % 40 == 20: openings for the final evaluation.

use crate::align::Pair;
use crate::data::corpus::{movie_reviews, RatedSentence};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

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

/// The id of '\n' under `tok` (a single token in byte-level tokenizers and BPEs alike).
pub fn newline(tok: &Tokenizer) -> Result<u32> {
    match tok.encode("\n")?.as_slice() {
        [id] => Ok(*id),
        other => Err(Error::config("demo tokenizer", format!("'\\n' must be one token, got {other:?}"))),
    }
}

/// A byte-level BPE of `vocab_size` ids trained on the training split (each sentence after a
/// '\n'), so that the demo's small models write whole words from the start.
pub fn review_tokenizer(vocab_size: usize) -> Result<Tokenizer> {
    let text: Vec<String> = sentences(Split::Train)?.into_iter().map(|s| format!("\n{}", s.text)).collect();
    Tokenizer::train_bpe(text.iter().map(String::as_str), vocab_size, "movie-review BPE")
}

/// The SFT stream: the train split's sentences, each after a '\n'.
pub fn sft_stream(tok: &Tokenizer) -> Result<Vec<u32>> {
    let mut out = vec![];
    for s in sentences(Split::Train)? {
        out.extend(tok.encode(&format!("\n{}", s.text))?);
    }
    Ok(out)
}

/// Human preference pairs: sentences of `split` at most `max_chars` long are paired with
/// partners a fixed stride away; a pair is kept when the mean ratings differ by at least `gap`,
/// the better-rated sentence chosen. The prompt is the start token; completions end with '\n'.
pub fn preference_pairs(tok: &Tokenizer, split: Split, gap: f32, max_chars: usize, max_pairs: usize) -> Result<Vec<Pair>> {
    let pick: Vec<RatedSentence> = sentences(split)?.into_iter().filter(|s| s.text.len() <= max_chars).collect();
    let nl = newline(tok)?;
    let line = |s: &RatedSentence| -> Result<Vec<u32>> { Ok(tok.encode(&s.text)?.into_iter().chain([nl]).collect()) };
    let mut out = vec![];
    for stride in [3usize, 11, 29, 47] {
        for (i, a) in pick.iter().enumerate() {
            let b = &pick[(i * 7 + stride) % pick.len()];
            if out.len() < max_pairs && a.id != b.id && (a.mean - b.mean).abs() >= gap {
                let (c, r) = if a.mean > b.mean { (a, b) } else { (b, a) };
                out.push(Pair { prompt: vec![nl], chosen: line(c)?, rejected: line(r)?, reference: None });
            }
        }
    }
    Ok(out)
}

/// The user turn of [`chat_preference_pairs`].
pub const REVIEW_REQUEST: &str = "Write one sentence from a movie review.";

/// The same human preference pairs as [`preference_pairs`] in chat form, for a pretrained chat
/// model: the prompt is `template`'s rendering of the user asking [`REVIEW_REQUEST`] with the
/// assistant's generation prompt, each completion the sentence and `end` (the model's
/// end-of-turn token, e.g. ChatML's `<|im_end|>`), all under `tok`.
pub fn chat_preference_pairs(tok: &Tokenizer, template: &crate::chat_template::ChatTemplate, end: u32, split: Split, gap: f32, max_chars: usize, max_pairs: usize) -> Result<Vec<Pair>> {
    let pick: Vec<RatedSentence> = sentences(split)?.into_iter().filter(|s| s.text.len() <= max_chars).collect();
    let prompt = tok.encode(&template.render(&[crate::data::chat::Message::new("user", REVIEW_REQUEST)], true)?)?;
    let line = |s: &RatedSentence| -> Result<Vec<u32>> { Ok(tok.encode(&s.text)?.into_iter().chain([end]).collect()) };
    let mut out = vec![];
    for stride in [3usize, 11, 29, 47] {
        for (i, a) in pick.iter().enumerate() {
            let b = &pick[(i * 7 + stride) % pick.len()];
            if out.len() < max_pairs && a.id != b.id && (a.mean - b.mean).abs() >= gap {
                let (c, r) = if a.mean > b.mean { (a, b) } else { (b, a) };
                out.push(Pair { prompt: prompt.clone(), chosen: line(c)?, rejected: line(r)?, reference: None });
            }
        }
    }
    Ok(out)
}

/// Thumbs-up / thumbs-down feedback (KTO's unpaired data): sentences of `split` at most
/// `max_chars` long whose mean human rating is at least `threshold` (clearly positive) are
/// desirable completions, those at most `-threshold` undesirable; at most `max_each` of each,
/// in corpus order. The prompt is the start token; completions end with '\n'.
pub fn thumbs(tok: &Tokenizer, split: Split, threshold: f32, max_chars: usize, max_each: usize) -> Result<Vec<crate::align::Completion>> {
    let nl = newline(tok)?;
    let (mut out, mut ups, mut downs) = (vec![], 0, 0);
    for s in sentences(split)? {
        let (up, down) = (s.mean >= threshold, s.mean <= -threshold);
        let room = (up && ups < max_each) || (down && downs < max_each);
        if room && s.text.len() <= max_chars {
            let completion = tok.encode(&s.text)?.into_iter().chain([nl]).collect();
            out.push(crate::align::Completion { prompt: vec![nl], completion, label: up });
            ups += usize::from(up);
            downs += usize::from(down);
        }
    }
    Ok(out)
}

/// Openings of `split`: the start token and the first `words` words of each sentence, e.g.
/// "\nThe film" (byte-level tokenizers also get the following space, so that the model starts
/// a word). Sentences shorter than `words + 3` words are skipped.
pub fn openings(tok: &Tokenizer, split: Split, words: usize) -> Result<Vec<Vec<u32>>> {
    let space = if tok.vocab_size() == 256 { " " } else { "" };
    let mut out = vec![];
    for s in sentences(split)? {
        let w: Vec<&str> = s.text.split(' ').collect();
        if w.len() > words + 2 {
            out.push(tok.encode(&format!("\n{}{space}", w[..words].join(" ")))?);
        }
    }
    Ok(out)
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
        let tok = Tokenizer::byte_level();
        let pairs = preference_pairs(&tok, Split::Train, 2.0, 80, 500).unwrap();
        assert_eq!(pairs.len(), 500);
        let mean: std::collections::HashMap<String, f32> = reviews.iter().map(|r| (r.text.clone(), r.mean)).collect();
        for p in &pairs {
            let m = |c: &[u32]| mean[text(&c[..c.len() - 1]).as_str()];
            assert!(m(&p.chosen) >= m(&p.rejected) + 2.0);
        }
        let o = openings(&tok, Split::Eval, 2).unwrap();
        assert!(o.len() > 200 && o.iter().all(|x| x[0] == NEWLINE && *x.last().unwrap() == b' ' as u32));
    }

    #[test]
    fn review_bpe_keeps_newline_whole_and_round_trips() {
        let tok = review_tokenizer(1024).unwrap();
        assert_eq!(tok.vocab_size(), 1024);
        let nl = newline(&tok).unwrap();
        let text = "\nA gorgeous, witty, seductive movie.";
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids[0], nl);
        assert!(ids.len() <= text.len() / 2, "{} tokens for {} bytes", ids.len(), text.len());
        assert_eq!(tok.decode(&ids).unwrap(), text);
        let o = openings(&tok, Split::Eval, 2).unwrap();
        assert!(o.iter().all(|x| x[0] == nl && x.len() >= 3));
    }
}
