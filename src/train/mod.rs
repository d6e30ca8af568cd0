//! Trainers and what they share: batches, schedules, checkpoints, metrics, progress bars.

pub mod batch;
pub mod checkpoint;
pub mod control;
pub mod metrics;
pub mod rundir;
pub mod schedule;
pub mod sft;
pub mod trainer;

/// A progress bar with ETA, or a hidden one when `show` is false (library use, tests).
pub fn progress_bar(show: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>6} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}
