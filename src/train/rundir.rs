//! A run directory belongs to one run. Every trainer opens its `--out` through [`RunDir::open`],
//! which (1) takes an advisory lock on `out/plumb.lock` (released by the OS when the process
//! dies, so a killed run never leaves a stale lock) and fails at once, naming the holder's pid,
//! when another process holds it; (2) refuses a fresh run into a directory that holds another
//! run's checkpoints or metrics unless `overwrite` (which clears them) or `resume` is set; and
//! (3) on `resume`, finds a valid checkpoint or fails: never a silent fresh start.
//! [`check_settings`] compares the settings a checkpoint was written with against the resuming
//! run's and refuses changes that alter the run's meaning unless explicitly allowed.

use super::checkpoint::{self, TrainerState};
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The lock file inside every run directory; it holds the pid of the run that owns it.
pub const LOCK_FILE: &str = "plumb.lock";

/// What a trainer may do with a directory that already holds a run (whether it resumes is the
/// trainer's own `resume` setting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Replace the run in the directory: its checkpoints, `latest` and metrics are deleted first.
    pub overwrite: bool,
    /// On resume, accept settings that differ from the checkpoint's (each change is printed).
    pub allow_changed_settings: bool,
}

/// Settings a resumed run may change without changing what the run computes up to now.
const FREE_ON_RESUME: &[&str] =
    &["steps", "schedule.total", "eval_every", "eval_batches", "save_every", "out_dir", "resume", "progress", "run", "checkpoint_activations"];

/// An open, locked run directory. The lock lasts as long as this value.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: File,
}

impl RunDir {
    /// Create (if needed) and lock `path`, then apply the overwrite / resume rules above.
    pub fn open(path: &Path, resume: bool, opts: &RunOptions) -> Result<RunDir> {
        if resume && opts.overwrite {
            return Err(Error::config("--resume", "conflicts with --overwrite: continue the run or replace it, not both"));
        }
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        let lock_path = path.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
                let holder = holder.trim();
                let holder = if holder.is_empty() { "unknown" } else { holder };
                return Err(Error::config(
                    "--out",
                    format!(
                        "{} is in use by another plumb run (pid {holder}, lock {}); wait for it or choose another --out",
                        path.display(),
                        lock_path.display()
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        lock.set_len(0).map_err(|e| Error::io(&lock_path, e))?;
        write!(lock, "{}", std::process::id()).map_err(|e| Error::io(&lock_path, e))?;
        let run = RunDir { path: path.to_path_buf(), _lock: lock };
        let previous = run.previous_run()?;
        if !resume && !previous.is_empty() {
            if !opts.overwrite {
                return Err(Error::config(
                    "--out",
                    format!(
                        "{} holds another run ({}); pass --resume to continue it, --overwrite to replace it, or choose another --out",
                        path.display(),
                        previous.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            for p in &previous {
                let r = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
                r.map_err(|e| Error::io(p, e))?;
            }
        }
        Ok(run)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What an earlier run left here: checkpoints, `latest`, metrics (sorted).
    fn previous_run(&self) -> Result<Vec<PathBuf>> {
        let entries = std::fs::read_dir(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let mut found = vec![];
        for e in entries {
            let e = e.map_err(|e| Error::io(&self.path, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("checkpoint-") || name == "latest" || name == "metrics.jsonl" {
                found.push(e.path());
            }
        }
        found.sort();
        Ok(found)
    }

    /// The checkpoint `--resume` continues from, with its state: `latest` must name a complete
    /// checkpoint (trainer state readable, files matching their manifest) written by `trainer`.
    pub fn resume_point(&self, trainer: &str) -> Result<(PathBuf, TrainerState)> {
        let latest = self.path.join("latest");
        let name = match std::fs::read_to_string(&latest) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::config(
                    "--resume",
                    format!("{} has no checkpoint to resume from (no `latest` file); start without --resume", self.path.display()),
                ))
            }
            Err(e) => return Err(Error::io(&latest, e)),
        };
        let name = name.trim();
        let dir = self.path.join(name);
        let plain = !name.is_empty() && Path::new(name).components().count() == 1 && name.starts_with("checkpoint-");
        if !plain || !dir.is_dir() {
            return Err(Error::format(&latest, format!("names `{name}`, which is not a checkpoint directory of this run; cannot resume")));
        }
        let state = checkpoint::read_state(&dir)?;
        if state.trainer != trainer {
            return Err(Error::config(
                "--resume",
                format!("{} was written by `plumb {}`, not `plumb {trainer}`", dir.display(), state.trainer),
            ));
        }
        checkpoint::verify_manifest(&dir)?;
        Ok((dir, state))
    }
}

/// Compare the settings `saved` with a checkpoint against the resuming run's `now` (both JSON
/// objects); returns the changes as `field: saved -> now`. Changes outside [`FREE_ON_RESUME`]
/// are an error unless `allow` is set.
pub fn check_settings(saved: &serde_json::Value, now: &serde_json::Value, allow: bool) -> Result<Vec<String>> {
    let (mut a, mut b) = (vec![], vec![]);
    flatten("", saved, &mut a);
    flatten("", now, &mut b);
    let free = |k: &str| FREE_ON_RESUME.iter().any(|f| k == *f || k.ends_with(&format!(".{f}")) || k.starts_with(&format!("{f}.")));
    let mut keys: Vec<&String> = a.iter().chain(b.iter()).map(|(k, _)| k).filter(|k| !free(k)).collect();
    keys.sort();
    keys.dedup();
    let get = |v: &[(String, String)], k: &str| v.iter().find(|(x, _)| x == k).map(|(_, s)| s.clone()).unwrap_or_else(|| "(absent)".into());
    let changes: Vec<String> =
        keys.into_iter().filter(|k| get(&a, k) != get(&b, k)).map(|k| format!("{k}: {} -> {}", get(&a, k), get(&b, k))).collect();
    if !changes.is_empty() && !allow {
        return Err(Error::config(
            "--resume",
            format!(
                "the checkpoint was written with other settings ({}); resume with the same settings, or pass --allow-changed-settings",
                changes.join("; ")
            ),
        ));
    }
    Ok(changes)
}

/// `{"a": {"b": 1}}` -> `[("a.b", "1")]`.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, x, out);
            }
        }
        // Settings are f32: compare at f32 precision (a JSON round trip may change the 17th digit).
        serde_json::Value::Number(n) if n.is_f64() => out.push((prefix.to_string(), (n.as_f64().unwrap_or(f64::NAN) as f32).to_string())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// Refuse to write `output` when it is one of `inputs`, or links to one (symlink or hard link):
/// writing it would destroy the input. Paths that do not exist yet are compared by their
/// resolved parent directory and name.
pub fn check_output_not_input(output: &Path, inputs: &[&Path]) -> Result<()> {
    let out = resolve(output);
    for input in inputs {
        let same_path = out.is_some() && out == resolve(input);
        if same_path || same_inode(output, input) {
            return Err(Error::config(
                "output",
                format!("{} is the input {} (or links to it); writing it would destroy the input: choose another output path", output.display(), input.display()),
            ));
        }
    }
    Ok(())
}

/// The canonical path of `p`, or of its parent joined with its name when `p` does not exist.
fn resolve(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.canonicalize().ok()?,
        _ => std::env::current_dir().ok()?,
    };
    Some(parent.join(p.file_name()?))
}

#[cfg(unix)]
fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_inode(_: &Path, _: &Path) -> bool {
    false
}
