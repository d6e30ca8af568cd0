//! Where precomputed reference log-probs came from. `precompute_reference` writes, beside the
//! preference file, `<file>.reference.json`: the reference model's identity (a checksum of its
//! config and every weight), the data's token checksum and tokenizer, and every setting the
//! values depend on (max-len, prompt truncation, pad id), plus the loss settings of the run that
//! made them (for the record: the stored values are summed log-probs, which no loss setting
//! changes). [`check_reference_provenance`] compares it with the run about to use the values,
//! so log-probs made at another max-len or by another model are an error, not a silent
//! miscomputed loss.

use super::dpo::DpoTrainConfig;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::Model;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What precomputed reference log-probs depend on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReferenceProvenance {
    /// FNV-1a over the model's config.json and every named weight (hex).
    pub model: String,
    /// The model's vocabulary size.
    pub vocab_size: usize,
    /// FNV-1a of the data file's token ids (hex; None: file without a token checksum).
    pub data_tokens: Option<String>,
    /// Identity of the tokenizer that wrote the data (hex), when recorded.
    pub tokenizer: Option<String>,
    /// Longest row (prompt + completion) in tokens.
    pub max_len: usize,
    /// Longest prompt kept.
    pub max_prompt_len: usize,
    /// How over-long rows were cut.
    pub truncation: String,
    /// Pad token id.
    pub pad_id: u32,
    /// The loss settings of the run that computed them (recorded, not compared).
    pub loss: String,
}

/// Fields that change the stored values; `loss` is only recorded.
const COMPARED: &[&str] = &["model", "vocab_size", "data_tokens", "tokenizer", "max_len", "max_prompt_len", "truncation", "pad_id"];

/// A checksum of a model's config and weights, as 16 hex digits.
pub fn model_identity(model: &Model) -> Result<String> {
    let mut bytes = serde_json::to_vec(&model.config().to_json()).expect("config serialises");
    for (name, shape, values) in model.params().read_all()? {
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend(shape.iter().flat_map(|d| (*d as u64).to_le_bytes()));
        bytes.extend_from_slice(bytemuck::cast_slice(&values));
    }
    Ok(format!("{:016x}", crate::data::format::checksum(&bytes)))
}

impl ReferenceProvenance {
    /// The provenance of log-probs `reference` computes on `data` with `cfg`.
    pub fn of(reference: &Model, data: &Dataset, cfg: &DpoTrainConfig) -> Result<ReferenceProvenance> {
        Ok(ReferenceProvenance {
            model: model_identity(reference)?,
            vocab_size: reference.vocab_size(),
            data_tokens: data.header().tokens_checksum.map(|c| format!("{c:016x}")),
            tokenizer: data.tokenizer_id().map(|c| format!("{c:016x}")),
            max_len: cfg.train.max_len,
            max_prompt_len: cfg.train.max_prompt_len,
            truncation: "prompt keeps its end; completion cut at max_len".into(),
            pad_id: cfg.pad_id,
            loss: format!("{:?}", cfg.loss),
        })
    }
}

/// `<data>.reference.json`.
pub fn provenance_path(data: &Path) -> PathBuf {
    let mut s = data.as_os_str().to_owned();
    s.push(".reference.json");
    PathBuf::from(s)
}

/// Write the provenance of the log-probs stored in `data` (atomically).
pub fn write_reference_provenance(data: &Path, p: &ReferenceProvenance) -> Result<()> {
    let js = serde_json::to_string_pretty(p).expect("provenance serialises");
    crate::weights::write_atomic(&provenance_path(data), js.as_bytes())
}

/// Delete a provenance file (before its values are rewritten).
pub fn remove_reference_provenance(data: &Path) -> Result<()> {
    let p = provenance_path(data);
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&p, e)),
        _ => Ok(()),
    }
}

/// The stored log-probs of `data` must have been made the way `now` would make them; the
/// error lists every difference and says how to recompute.
pub fn check_reference_provenance(data: &Path, now: &ReferenceProvenance) -> Result<()> {
    let path = provenance_path(data);
    let redo = "recompute them with `plumb dpo --precompute-ref` (same --init, --max-len and --max-prompt-len as the training run)";
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::format(data, format!("its reference log-probs have no provenance ({} is missing); {redo}", path.display())))
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    let saved: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&path, format!("invalid JSON: {e}")))?;
    let now = serde_json::to_value(now).expect("provenance serialises");
    let diffs: Vec<String> = COMPARED
        .iter()
        .filter(|k| saved.get(**k) != now.get(**k))
        .map(|k| format!("{k}: {} when computed, {} now", saved.get(*k).unwrap_or(&serde_json::Value::Null), now[*k]))
        .collect();
    if !diffs.is_empty() {
        return Err(Error::format(data, format!("reference log-probs were computed under other settings ({}); {redo}", diffs.join("; "))));
    }
    Ok(())
}
