//! `plumb data inspect`: what a dataset file holds (kind, counts, length percentiles per
//! segment, reference log-probs) and its first rows, decoded when a tokenizer is given.

use std::path::{Path, PathBuf};

use super::dataset::{Dataset, Tokens};
use super::format::{DatasetKind, TokenDType, FLAG_REFERENCE_FILLED};
use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// Length distribution of one segment (or of whole rows), in tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct LengthStats {
    /// `prompt`, `completion`, ..., or `row` for whole rows.
    pub name: String,
    /// Mean length.
    pub mean: f64,
    /// Shortest.
    pub min: usize,
    /// Median (nearest rank).
    pub p50: usize,
    /// 90th percentile.
    pub p90: usize,
    /// 99th percentile.
    pub p99: usize,
    /// Longest.
    pub max: usize,
}

impl LengthStats {
    /// Statistics of `lengths` (sorted here).
    pub fn from_lengths(name: &str, mut lengths: Vec<usize>) -> LengthStats {
        lengths.sort_unstable();
        let n = lengths.len();
        let rank = |p: f64| if n == 0 { 0 } else { lengths[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1] };
        let mean = if n == 0 { 0.0 } else { lengths.iter().sum::<usize>() as f64 / n as f64 };
        LengthStats {
            name: name.to_string(),
            mean,
            min: lengths.first().copied().unwrap_or(0),
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: lengths.last().copied().unwrap_or(0),
        }
    }
}

/// One shown row: each segment decoded (or as ids when no tokenizer was given).
#[derive(Clone, Debug, PartialEq)]
pub struct SampleRow {
    /// Row index.
    pub index: usize,
    /// (segment name, text) pairs.
    pub segments: Vec<(String, String)>,
}

/// What [`inspect`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct InspectReport {
    /// The file.
    pub path: PathBuf,
    /// File size in bytes.
    pub file_bytes: u64,
    /// Dataset kind.
    pub kind: DatasetKind,
    /// Token storage type.
    pub dtype: TokenDType,
    /// Vocabulary size recorded at prepare time.
    pub vocab_size: u32,
    /// EOS id recorded at prepare time.
    pub eos_id: Option<u32>,
    /// Number of rows.
    pub rows: usize,
    /// Number of tokens.
    pub tokens: usize,
    /// Largest token id present.
    pub max_token_id: Option<u32>,
    /// Per segment, then `row` (whole rows) for kinds with more than one segment.
    pub lengths: Vec<LengthStats>,
    /// `none`, `reserved (not filled)` or `filled`.
    pub reference_logps: &'static str,
    /// The first rows.
    pub samples: Vec<SampleRow>,
    /// Problems worth a look (ids out of range, tokenizer mismatch).
    pub warnings: Vec<String>,
}

/// Open `path`, gather statistics over every row and show the first `n_rows`.
pub fn inspect(path: &Path, tokenizer: Option<&Tokenizer>, n_rows: usize) -> Result<InspectReport> {
    let ds = Dataset::open(path)?;
    let kind = ds.kind();
    let names = kind.segment_names();
    let mut lengths = Vec::new();
    for (s, name) in names.iter().enumerate() {
        let lens = (0..ds.n_rows()).map(|r| ds.segment(r, s).map_or(0, |t| t.len())).collect();
        lengths.push(LengthStats::from_lengths(name, lens));
    }
    if names.len() > 1 {
        let lens = (0..ds.n_rows()).map(|r| ds.row(r).map_or(0, |t| t.len())).collect();
        lengths.push(LengthStats::from_lengths("row", lens));
    }
    let mut warnings = Vec::new();
    if !ds.verify_tokens()? {
        warnings.push("no checksum of the token ids (file written before plumb recorded one); re-run `plumb data prepare` to add it".into());
    }
    let max_token_id = ds.max_token_id();
    if let Some(m) = max_token_id.filter(|&m| m >= ds.vocab_size()) {
        warnings
            .push(format!("token id {m} is outside the recorded vocabulary of {} (corrupted tokens)", ds.vocab_size()));
    }
    if let Some(t) = tokenizer {
        if ds.tokenizer_id().is_some_and(|id| id != t.identity()) {
            warnings.push(format!("tokenizer `{}` is not the one the file was prepared with (different vocabulary)", t.name()));
        }
        if t.vocab_size() != ds.vocab_size() as usize {
            warnings.push(format!(
                "tokenizer `{}` has {} ids but the file was prepared with a vocabulary of {}",
                t.name(),
                t.vocab_size(),
                ds.vocab_size()
            ));
        }
    }
    let show = |t: Tokens<'_>| -> String {
        let ids = t.to_vec();
        match tokenizer.map(|tok| tok.decode(&ids)) {
            Some(Ok(text)) => text,
            Some(Err(e)) => format!("<cannot decode: {e}>"),
            None => format!("{ids:?}"),
        }
    };
    let samples = (0..n_rows.min(ds.n_rows()))
        .map(|r| SampleRow {
            index: r,
            segments: names
                .iter()
                .enumerate()
                .map(|(s, name)| (name.to_string(), ds.segment(r, s).map(show).unwrap_or_default()))
                .collect(),
        })
        .collect();
    let reference_logps = match (ds.has_reference_section(), ds.header().flags & FLAG_REFERENCE_FILLED != 0) {
        (false, _) => "none",
        (true, false) => "reserved (not filled)",
        (true, true) => "filled",
    };
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(InspectReport {
        path: path.to_path_buf(),
        file_bytes,
        kind,
        dtype: ds.dtype(),
        vocab_size: ds.vocab_size(),
        eos_id: ds.eos_id(),
        rows: ds.n_rows(),
        tokens: ds.n_tokens(),
        max_token_id,
        lengths,
        reference_logps,
        samples,
        warnings,
    })
}

/// Longest text shown per sample segment, in characters.
const SHOW_CHARS: usize = 400;

impl std::fmt::Display for InspectReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} ({} bytes)", self.path.display(), self.file_bytes)?;
        writeln!(f, "kind:       {}", self.kind.name())?;
        let eos = self.eos_id.map_or("none".to_string(), |e| e.to_string());
        writeln!(f, "tokens:     {} ({:?}, vocabulary {}, EOS {eos})", self.tokens, self.dtype, self.vocab_size)?;
        writeln!(f, "rows:       {}", self.rows)?;
        if self.kind == DatasetKind::Preference {
            writeln!(f, "reference:  {}", self.reference_logps)?;
        }
        writeln!(f, "{:<12} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7}", "length", "mean", "min", "p50", "p90", "p99", "max")?;
        for l in &self.lengths {
            writeln!(
                f,
                "{:<12} {:>9.1} {:>7} {:>7} {:>7} {:>7} {:>7}",
                l.name, l.mean, l.min, l.p50, l.p90, l.p99, l.max
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        for s in &self.samples {
            writeln!(f, "--- row {}", s.index)?;
            for (name, text) in &s.segments {
                let shown: String = text.chars().take(SHOW_CHARS).collect();
                let more = if text.chars().count() > SHOW_CHARS { " [...]" } else { "" };
                writeln!(f, "[{name}] {shown:?}{more}")?;
            }
        }
        Ok(())
    }
}
