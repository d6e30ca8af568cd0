//! Checkpoints a killed run can resume from exactly: `out/checkpoint-<step>/` holds the model in
//! Hugging Face layout (config.json, model.safetensors, tokenizer.json when known), the AdamW
//! moments (optimizer.safetensors) and `trainer_state.json` (step, seed, data position). The
//! directory is written under a temporary name and renamed whole; `out/latest` names the newest.
//! With a LoRA adapter attached the moments are the adapter's, and the adapter is saved beside
//! the (unchanged) base weights in PEFT's layout (adapter_model.safetensors, adapter_config.json).
//! `manifest.json` lists every other file with its size and FNV-1a checksum; loading checks it
//! (a checkpoint from before manifests loads with a warning). A failed save (disk full) deletes
//! its temporary directory.

use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::optim::{AdamW, AdamWState};
use crate::weights::{save_f32, write_atomic, WeightFile};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where a run stands: enough to continue it bit-for-bit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    /// The run's seed (batches are a function of seed and batch index).
    pub seed: u64,
    /// Micro-batches drawn so far, steps × grad_accum (the data position).
    pub batches_seen: u64,
    /// Which trainer wrote it ("sft", "reward", "dpo", ...).
    pub trainer: String,
    /// Free-form trainer settings, so a resume can check it continues the same run.
    pub config: serde_json::Value,
}

/// Write a checkpoint for `state.step` under `out`; returns its directory.
pub fn save(out: &Path, model: &Model, opt: &AdamW, state: &TrainerState, tokenizer_json: Option<&Path>) -> Result<PathBuf> {
    save_with(out, model, opt, state, tokenizer_json, &|_: &Path| Ok(()))
}

/// [`save`], with `extra` writing more files (a method's own state) into the checkpoint's
/// temporary directory before the manifest is written.
pub fn save_with(out: &Path, model: &Model, opt: &AdamW, state: &TrainerState, tokenizer_json: Option<&Path>, extra: &dyn Fn(&Path) -> Result<()>) -> Result<PathBuf> {
    let name = format!("checkpoint-{}", state.step);
    let dir = out.join(&name);
    let tmp = out.join(format!("{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    if let Err(e) = write_files(&tmp, model, opt, state, tokenizer_json).and_then(|()| extra(&tmp)).and_then(|()| write_manifest(&tmp)) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    write_atomic(&out.join("latest"), name.as_bytes())?;
    Ok(dir)
}

/// The model, adapter, optimizer, trainer state and tokenizer files of a checkpoint into `tmp`
/// (the manifest is written by the caller, last).
fn write_files(tmp: &Path, model: &Model, opt: &AdamW, state: &TrainerState, tokenizer_json: Option<&Path>) -> Result<()> {
    if model.frozen().is_some() {
        // A base frozen in stored form (a GGUF file's quantized matrices) is not copied into
        // every checkpoint: only its f32 rest (norms, biases), which `load_weights` restores.
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
        save_f32(tmp.join("model.safetensors"), &model.params().read_all()?, meta)?;
    } else {
        model.save(tmp)?;
    }
    if model.lora().is_some() {
        model.save_lora(tmp)?;
    }
    let s = opt.state()?;
    let n = s.m.len();
    save_f32(
        tmp.join("optimizer.safetensors"),
        &[("exp_avg".into(), vec![n], s.m), ("exp_avg_sq".into(), vec![n], s.v)],
        HashMap::from([("step".to_string(), s.step.to_string())]),
    )?;
    let js = serde_json::to_string_pretty(state).expect("state serialises");
    write_atomic(&tmp.join("trainer_state.json"), js.as_bytes())?;
    if let Some(t) = tokenizer_json {
        std::fs::copy(t, tmp.join("tokenizer.json")).map_err(|e| Error::io(t, e))?;
    }
    Ok(())
}

/// Name of the per-file checksum list inside a checkpoint.
pub const MANIFEST: &str = "manifest.json";

/// Size and FNV-1a checksum of one file, as the manifest stores them.
fn file_entry(path: &Path) -> Result<serde_json::Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(serde_json::json!({"bytes": bytes.len(), "fnv1a64": format!("{:016x}", crate::data::format::checksum(&bytes))}))
}

/// Write `dir/manifest.json`: every regular file of `dir` (sub-directories included) with its
/// size and checksum.
pub fn write_manifest(dir: &Path) -> Result<()> {
    let mut files = serde_json::Map::new();
    for rel in list_files(dir, Path::new(""))? {
        files.insert(rel.to_string_lossy().into_owned(), file_entry(&dir.join(&rel))?);
    }
    let js = serde_json::to_string_pretty(&serde_json::json!({"format": "plumb checkpoint manifest 1", "files": files})).expect("manifest serialises");
    write_atomic(&dir.join(MANIFEST), js.as_bytes())
}

fn list_files(root: &Path, rel: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join(rel);
    let mut out = vec![];
    for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let e = e.map_err(|e| Error::io(&dir, e))?;
        let name = rel.join(e.file_name());
        if e.path().is_dir() {
            out.extend(list_files(root, &name)?);
        } else if name != Path::new(MANIFEST) && !name.to_string_lossy().ends_with(".tmp") {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Check every file listed in `dir/manifest.json` against its size and checksum. A directory
/// without a manifest (older checkpoints, Hugging Face downloads) passes with a warning when it
/// holds `trainer_state.json`, silently otherwise.
pub fn verify_manifest(dir: &Path) -> Result<()> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join("trainer_state.json").is_file() {
                eprintln!("warning: {} has no {MANIFEST} (written before plumb checked checkpoints); its files are not verified", dir.display());
            }
            return Ok(());
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&path, format!("invalid JSON: {e}")))?;
    let files = v.get("files").and_then(|f| f.as_object()).ok_or_else(|| Error::format(&path, "no `files` object"))?;
    for (name, want) in files {
        let rel = Path::new(name);
        if rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(Error::format(&path, format!("file name `{name}` leaves the checkpoint directory")));
        }
        let got = file_entry(&dir.join(rel)).map_err(|e| Error::format(&path, format!("lists `{name}`, which cannot be read: {e}")))?;
        if &got != want {
            return Err(Error::format(
                dir.join(rel),
                format!("does not match {MANIFEST} (expected {want}, found {got}): the checkpoint is corrupted or was edited"),
            ));
        }
    }
    Ok(())
}

/// The newest complete checkpoint under `out`, if any.
pub fn latest(out: &Path) -> Option<PathBuf> {
    let name = std::fs::read_to_string(out.join("latest")).ok()?;
    let dir = out.join(name.trim());
    dir.join("trainer_state.json").exists().then_some(dir)
}

/// Read the trainer state of a checkpoint directory.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let p = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(&p, e.to_string()))
}

/// Load the optimizer moments of a checkpoint into `opt`.
pub fn load_optimizer(dir: &Path, opt: &mut AdamW) -> Result<()> {
    let f = WeightFile::open(dir.join("optimizer.safetensors"))?;
    let n = f.shape("exp_avg").and_then(|s| s.first().copied()).unwrap_or(0);
    let step = f
        .metadata()
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::format(f.path(), "missing `step` in the metadata"))?;
    let state = AdamWState { step, m: f.get_f32("exp_avg", &[n])?, v: f.get_f32("exp_avg_sq", &[n])? };
    opt.load_state(&state)
}

/// Copy a checkpoint's weights into an existing model (same architecture and sizes), and its
/// adapter's into the model's attached LoRA adapter (same targets and rank).
pub fn load_weights(dir: &Path, model: &Model) -> Result<()> {
    verify_manifest(dir)?;
    let f = WeightFile::open(dir.join("model.safetensors"))?;
    for e in model.params().entries() {
        model.params().set(&e.name, &f.get_f32(&e.name, &e.shape)?)?;
    }
    if let Some(lora) = model.lora() {
        let f = WeightFile::open(dir.join(crate::lora::WEIGHTS_FILE))?;
        for e in lora.params.entries() {
            lora.params.set(&e.name, &f.get_f32(&e.name, &e.shape)?)?;
        }
    }
    Ok(())
}
