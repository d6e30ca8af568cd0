//! What the resume tests compare: the per-step losses of a run directory and the files of one
//! of its checkpoints.

use std::path::{Path, PathBuf};

/// A scratch run directory for test `name` (unique per process).
pub fn run_dir(prefix: &str, name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("plumb-{prefix}-{name}-{}", std::process::id()))
}

/// (step, loss) of every line of `out/metrics.jsonl`.
pub fn losses(out: &Path) -> Vec<(u64, f64)> {
    plumb::train::metrics::read_metrics(&out.join("metrics.jsonl")).unwrap().iter().map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap())).collect()
}

/// Every file of `out/checkpoint-{step}` except the trainer state (which records the settings)
/// and the manifest, sorted by name.
pub fn checkpoint_files(out: &Path, step: usize) -> Vec<(String, Vec<u8>)> {
    let ck = out.join(format!("checkpoint-{step}"));
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&ck)
        .unwrap_or_else(|e| panic!("{}: {e}", ck.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !["trainer_state.json", "manifest.json"].contains(&p.file_name().unwrap().to_str().unwrap()))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}
