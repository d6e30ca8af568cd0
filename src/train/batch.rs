//! Batches for language-model training. A [`BatchSource`] turns a batch *index* into a batch
//! deterministically (from its seed), so resuming at step N needs only N: the data position and
//! the sampling randomness are both functions of (seed, index).

use crate::data::{SftDataset, TokenStream};
use crate::error::{Error, Result};

/// One batch on the host: inputs, next-token targets and a loss weight per position, (B, T) each.
#[derive(Clone, Debug, PartialEq)]
pub struct LmBatch {
    pub ids: Vec<u32>,
    pub targets: Vec<u32>,
    pub mask: Vec<f32>,
    pub batch: usize,
    pub seq: usize,
}

/// Where training batches come from.
pub trait BatchSource {
    /// Batch number `index` of `batch` rows of `seq` tokens (deterministic).
    fn batch(&self, index: u64, batch: usize, seq: usize) -> Result<LmBatch>;
    /// A one-line description for logs.
    fn describe(&self) -> String;
}

/// SplitMix64: a small, well-mixed hash of (seed, index, row) for data sampling.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

enum Stream {
    Memory(Vec<u32>),
    File(TokenStream),
}

/// Random windows of a token stream (pretraining): row r of batch i starts at a position drawn
/// from (seed, i, r); every position has a target and weight 1.
pub struct StreamSource {
    stream: Stream,
    seed: u64,
    name: String,
}

impl StreamSource {
    /// Windows over tokens held in memory.
    pub fn from_tokens(tokens: Vec<u32>, seed: u64, name: impl Into<String>) -> StreamSource {
        StreamSource { stream: Stream::Memory(tokens), seed, name: name.into() }
    }

    /// Windows over a memory-mapped token-stream file.
    pub fn from_file(stream: TokenStream, seed: u64) -> StreamSource {
        let name = stream.dataset().path().display().to_string();
        StreamSource { stream: Stream::File(stream), seed, name }
    }

    fn len(&self) -> usize {
        match &self.stream {
            Stream::Memory(t) => t.len(),
            Stream::File(f) => f.tokens().len(),
        }
    }

    fn window(&self, start: usize, n: usize) -> Vec<u32> {
        match &self.stream {
            Stream::Memory(t) => t[start..start + n].to_vec(),
            Stream::File(f) => f.tokens().slice(start, start + n).map(|s| s.to_vec()).unwrap_or_default(),
        }
    }
}

impl BatchSource for StreamSource {
    fn batch(&self, index: u64, batch: usize, seq: usize) -> Result<LmBatch> {
        let len = self.len();
        if len < seq + 2 {
            return Err(Error::config("training data", format!("{} has {len} tokens, fewer than a window of {}", self.name, seq + 1)));
        }
        let mut b = LmBatch { ids: vec![], targets: vec![], mask: vec![1.0; batch * seq], batch, seq };
        for r in 0..batch {
            let h = mix(self.seed ^ mix(index.wrapping_mul(1_000_003).wrapping_add(r as u64)));
            let start = (h % (len - seq - 1) as u64) as usize;
            let w = self.window(start, seq + 1);
            b.ids.extend_from_slice(&w[..seq]);
            b.targets.extend_from_slice(&w[1..]);
        }
        Ok(b)
    }

    fn describe(&self) -> String {
        format!("{} ({} tokens, random windows)", self.name, self.len())
    }
}

/// Prompt/completion rows (SFT): each row is prompt ++ completion, cut to `seq + 1` tokens and
/// padded; the loss covers completion tokens only. Rows are visited in a shuffled order that is
/// new every epoch and fixed by the seed.
pub struct SftSource {
    data: SftDataset,
    seed: u64,
    pad: u32,
}

impl SftSource {
    /// Rows of `data`, padded with `pad`.
    pub fn new(data: SftDataset, seed: u64, pad: u32) -> Result<SftSource> {
        if data.is_empty() {
            return Err(Error::config("training data", format!("{} has no rows", data.dataset().path().display())));
        }
        Ok(SftSource { data, seed, pad })
    }

    /// Row at global position `k` of the epoch-shuffled sequence of rows.
    fn row_at(&self, k: u64) -> usize {
        let n = self.data.len() as u64;
        let (epoch, pos) = (k / n, k % n);
        // A random permutation by sorting (hash, index) pairs would cost O(n) per call;
        // an affine map with a multiplier coprime to n is a permutation, re-drawn each epoch.
        let mut a = mix(self.seed ^ epoch) % n.max(1);
        while gcd(a, n) != 1 {
            a = (a + 1) % n.max(1);
        }
        let c = mix(self.seed.wrapping_add(epoch).wrapping_mul(31)) % n;
        ((a.max(1) * pos + c) % n) as usize
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl BatchSource for SftSource {
    fn batch(&self, index: u64, batch: usize, seq: usize) -> Result<LmBatch> {
        let mut b = LmBatch { ids: vec![], targets: vec![], mask: vec![], batch, seq };
        for r in 0..batch {
            let row = self.row_at(index * batch as u64 + r as u64);
            let ex = self.data.get(row).ok_or_else(|| Error::config("training data", format!("row {row} missing")))?;
            let (p, c) = (ex.prompt.to_vec(), ex.completion.to_vec());
            let mut toks = p.clone();
            toks.extend_from_slice(&c);
            toks.truncate(seq + 1);
            let n = toks.len();
            for t in 0..seq {
                let valid = t + 1 < n;
                b.ids.push(if t < n { toks[t] } else { self.pad });
                b.targets.push(if valid { toks[t + 1] } else { self.pad });
                // Target position t+1 is a completion token when t+1 >= prompt length.
                b.mask.push(if valid && t + 1 >= p.len() { 1.0 } else { 0.0 });
            }
        }
        Ok(b)
    }

    fn describe(&self) -> String {
        format!("{} ({} prompt/completion rows)", self.data.dataset().path().display(), self.data.len())
    }
}
