//! A small built-in corpus for examples and tests that need real text and a sentiment signal
//! without downloads: the 10,605 movie-review sentences rated by humans from Hutto & Gilbert's
//! VADER study (ICWSM 2014; `data/vader/`, MIT licensed, README and license kept beside), and the
//! VADER sentiment lexicon, with a deliberately simple judge (mean word valence) for reward-model
//! and RL demos.
//!
//! File quirks handled here: CRLF line ends; the lexicon has two emoticon lines that are not
//! UTF-8 (decoded lossily); the lexicon repeats 15 words with different values (the last wins, as
//! in VADER's own Python loader).

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

static GROUND_TRUTH: &str = include_str!("../../data/vader/movieReviewSnippets_GroundTruth.txt");
static RATINGS: &str = include_str!("../../data/vader/movieReviewSnippets_anonDataRatings.txt");
static LEXICON: &[u8] = include_bytes!("../../data/vader/vader_sentiment_lexicon.txt");

/// One human-rated sentence. Ratings run from -4 (extremely negative) to +4 (extremely positive).
#[derive(Clone, Debug, PartialEq)]
pub struct RatedSentence {
    /// 1-based id shared by the two source files.
    pub id: u32,
    /// Mean rating.
    pub mean: f32,
    /// Standard deviation of the ratings.
    pub std: f32,
    /// The individual raters' scores (about 20 per sentence).
    pub ratings: Vec<i8>,
    /// The sentence (the corpus writes quotes as two apostrophes: `''Conan''`).
    pub text: String,
}

/// The 10,605 rated movie-review sentences, in id order: text and mean from the ground-truth file
/// joined by id with the raters' scores from the ratings file.
pub fn movie_reviews() -> Result<Vec<RatedSentence>> {
    let gt_path = Path::new("data/vader/movieReviewSnippets_GroundTruth.txt");
    let rt_path = Path::new("data/vader/movieReviewSnippets_anonDataRatings.txt");
    let mut ratings: HashMap<u32, (f32, Vec<i8>)> = HashMap::new();
    for (i, line) in lines(RATINGS) {
        let bad = |what: &str| Error::format(rt_path, format!("line {i}: {what}"));
        let mut cols = line.split('\t');
        let (Some(id), Some(_mean), Some(std), Some(list), None) =
            (cols.next(), cols.next(), cols.next(), cols.next(), cols.next())
        else {
            return Err(bad("expected 4 tab-separated columns"));
        };
        let id: u32 = id.trim().parse().map_err(|_| bad("bad id"))?;
        let std: f32 = std.trim().parse().map_err(|_| bad("bad standard deviation"))?;
        let list = list.trim().trim_start_matches('[').trim_end_matches(']');
        let scores = list
            .split(',')
            .map(|s| s.trim().parse::<i8>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| bad("bad rating list"))?;
        ratings.insert(id, (std, scores));
    }
    let mut out = Vec::with_capacity(ratings.len());
    for (i, line) in lines(GROUND_TRUTH) {
        let bad = |what: String| Error::format(gt_path, format!("line {i}: {what}"));
        let mut cols = line.splitn(3, '\t');
        let (Some(id), Some(mean), Some(text)) = (cols.next(), cols.next(), cols.next()) else {
            return Err(bad("expected 3 tab-separated columns".into()));
        };
        let id: u32 = id.trim().parse().map_err(|_| bad("bad id".into()))?;
        let mean: f32 = mean.trim().parse().map_err(|_| bad("bad mean".into()))?;
        let (std, scores) = ratings.remove(&id).ok_or_else(|| bad(format!("id {id} has no ratings")))?;
        out.push(RatedSentence { id, mean, std, ratings: scores, text: text.trim().to_string() });
    }
    if let Some(id) = ratings.keys().min() {
        return Err(Error::format(rt_path, format!("id {id} has ratings but no sentence")));
    }
    out.sort_by_key(|s| s.id);
    Ok(out)
}

/// The VADER lexicon: lower-case word (or emoticon) -> mean valence, from -4 to +4.
pub fn vader_lexicon() -> Result<HashMap<String, f32>> {
    let path = Path::new("data/vader/vader_sentiment_lexicon.txt");
    let text = String::from_utf8_lossy(LEXICON);
    let mut map = HashMap::new();
    for (i, line) in lines(&text) {
        let mut cols = line.split('\t');
        let (Some(word), Some(mean)) = (cols.next(), cols.next()) else {
            return Err(Error::format(path, format!("line {i}: expected tab-separated columns")));
        };
        let mean: f32 =
            mean.trim().parse().map_err(|_| Error::format(path, format!("line {i}: bad valence `{mean}`")))?;
        map.insert(word.to_string(), mean);
    }
    Ok(map)
}

/// A simple sentiment judge: the mean valence of the lexicon words in `text` (lower-cased, split
/// on every character that is not a letter or an apostrophe; quote-apostrophes around a word are
/// stripped if the word is not found as is). None when no word of the text is in the lexicon.
/// No negation or intensifier rules: this is a reward signal for demos, not VADER itself.
pub fn vader_judge(text: &str, lexicon: &HashMap<String, f32>) -> Option<f32> {
    let lower = text.to_lowercase();
    let (mut sum, mut n) = (0.0f32, 0u32);
    for word in lower.split(|c: char| !(c.is_alphabetic() || c == '\'')) {
        let found = lexicon.get(word).or_else(|| lexicon.get(word.trim_matches('\'')));
        if let (false, Some(v)) = (word.is_empty(), found) {
            sum += v;
            n += 1;
        }
    }
    (n > 0).then(|| sum / n as f32)
}

/// Non-empty lines with their 1-based numbers, CR stripped.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end_matches('\r'))).filter(|(_, l)| !l.trim().is_empty())
}
