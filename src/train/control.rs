//! How a caller follows and stops a training run from outside the trainer: a callback after
//! every step (step, loss, metrics) that may ask to stop, and a cancel flag that any thread may
//! raise while the run goes on. Every trainer checks both once per optimizer step; a run that
//! stops early saves a checkpoint of the step it reached (when it has an `out_dir`), so a later
//! run with `resume` continues exactly there. This is what an app embedding plumb needs to keep
//! its UI thread free: train on a worker thread, show progress, cancel on demand.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One finished optimizer step, as a [`RunControl`] callback sees it.
#[derive(Clone, Copy, Debug)]
pub struct StepInfo<'a> {
    /// Steps completed, counting from the start of the run (after a resume: from step 0 of the
    /// first run). Example: 12.
    pub step: usize,
    /// Steps the run has in all. Example: 100.
    pub total: usize,
    /// The step's training loss.
    pub loss: f32,
    /// Learning rate of the step.
    pub lr: f32,
    /// Every metric of the step as one JSON object (the same record as `metrics.jsonl`).
    pub metrics: &'a serde_json::Value,
}

/// The callback's type: returns `false` to stop the run after this step.
pub type OnStep = dyn Fn(&StepInfo) -> bool + Send + Sync;

/// A per-step callback and a cancel flag, shared by clones (hand one clone to the trainer's
/// config, keep another to call [`RunControl::cancel`] from any thread).
#[derive(Clone, Default)]
pub struct RunControl {
    cancel: Arc<AtomicBool>,
    on_step: Option<Arc<OnStep>>,
}

impl std::fmt::Debug for RunControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunControl").field("cancelled", &self.is_cancelled()).field("on_step", &self.on_step.is_some()).finish()
    }
}

impl RunControl {
    /// A control with no callback and the flag down.
    pub fn new() -> RunControl {
        RunControl::default()
    }

    /// The same flag, with `f` called after every step.
    pub fn with_on_step(mut self, f: impl Fn(&StepInfo) -> bool + Send + Sync + 'static) -> RunControl {
        self.on_step = Some(Arc::new(f));
        self
    }

    /// Ask the run to stop after the step it is in (safe from any thread).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Lower the flag again (before reusing the control for the next run).
    pub fn reset(&self) {
        self.cancel.store(false, Ordering::SeqCst);
    }

    /// True once [`RunControl::cancel`] was called or the callback asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Called by trainers after each step: runs the callback and returns true when the run
    /// must stop (the flag was raised, or the callback returned false, which raises it).
    pub fn should_stop(&self, info: &StepInfo) -> bool {
        if let Some(f) = &self.on_step {
            if !f(info) {
                self.cancel();
            }
        }
        self.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_false_and_cancel_both_stop() {
        let m = serde_json::json!({});
        let info = StepInfo { step: 1, total: 3, loss: 0.5, lr: 1e-3, metrics: &m };
        let c = RunControl::new().with_on_step(|s| s.step < 2);
        assert!(!c.should_stop(&info));
        assert!(c.should_stop(&StepInfo { step: 2, ..info }));
        c.reset();
        let other = c.clone();
        assert!(!c.should_stop(&info));
        other.cancel();
        assert!(c.should_stop(&info));
    }
}
