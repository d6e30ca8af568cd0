//! Training metrics: one JSON object per step appended to a JSONL file (TRL's metric names where
//! they exist), flushed every line so a killed run keeps everything it logged.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An append-only JSONL metrics log.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Open (creating or appending) `path`.
    pub fn open(path: &Path) -> Result<MetricsLog> {
        if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(MetricsLog { path: path.to_path_buf(), file })
    }

    /// Append one record (an object of metric name -> value).
    pub fn log(&mut self, record: &serde_json::Value) -> Result<()> {
        let mut line = serde_json::to_string(record).expect("JSON value serialises");
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }

    /// Drop records whose "step" is after `step` (a run resumed from the checkpoint of `step`
    /// logs those steps again), and a torn last line of a killed run (not valid JSON).
    pub fn truncate_after(path: &Path, step: u64) -> Result<()> {
        let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                    .is_some_and(|s| s <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        crate::weights::write_atomic(path, kept.as_bytes())
    }
}

/// Read every record of a metrics file.
pub fn read_metrics(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::format(path, format!("line {}: {e}", i + 1))))
        .collect()
}
