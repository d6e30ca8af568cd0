//! Per-kernel timing for finding where a step's time goes: with `PLUMB_PROFILE=1` (or
//! [`Gpu::set_profiling`]) every dispatch is submitted on its own and waited for, and its wall
//! time is added to its kernel's row. Steps run much slower this way (a submit and a wait per
//! dispatch), so the rows show shares, not real step times. `plumb bench` prints the table at
//! the end of each workload when profiling is on.

use super::Gpu;
use std::collections::HashMap;
use std::time::Instant;

/// Time and calls of one kernel (shader, entry point, override constants).
#[derive(Clone, Debug)]
pub struct ProfileRow {
    pub kernel: String,
    pub calls: u64,
    pub seconds: f64,
}

#[derive(Default)]
pub(crate) struct Profiler {
    pub(crate) on: bool,
    rows: HashMap<String, (u64, f64)>,
}

impl Profiler {
    pub(crate) fn from_env() -> Self {
        let on = std::env::var("PLUMB_PROFILE").map(|v| !v.is_empty() && v != "0").unwrap_or(false);
        Profiler { on, rows: HashMap::new() }
    }
}

impl Gpu {
    /// Turn per-dispatch profiling on or off (see the module docs); turning it on clears the
    /// table.
    pub fn set_profiling(&self, on: bool) {
        let mut p = self.0.profiler.lock().unwrap_or_else(|e| e.into_inner());
        p.on = on;
        p.rows.clear();
    }

    /// True while every dispatch is timed on its own.
    pub fn profiling(&self) -> bool {
        self.0.profiler.lock().unwrap_or_else(|e| e.into_inner()).on
    }

    /// The table so far, slowest kernel first, and clear it.
    pub fn take_profile(&self) -> Vec<ProfileRow> {
        let mut p = self.0.profiler.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<ProfileRow> =
            p.rows.drain().map(|(kernel, (calls, seconds))| ProfileRow { kernel, calls, seconds }).collect();
        rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        rows
    }

    /// Submit what is recorded (the dispatch just added and copies before it), wait for it and
    /// charge the time to `kernel`.
    pub(crate) fn profile_dispatch(&self, kernel: String) -> crate::error::Result<()> {
        let t = Instant::now();
        self.flush()?;
        let _ = self.0.device.poll(wgpu::PollType::wait_indefinitely());
        let dt = t.elapsed().as_secs_f64();
        let mut p = self.0.profiler.lock().unwrap_or_else(|e| e.into_inner());
        let row = p.rows.entry(kernel).or_insert((0, 0.0));
        row.0 += 1;
        row.1 += dt;
        Ok(())
    }
}

/// The table as text: seconds, share, calls and mean milliseconds per kernel.
pub fn format_profile(rows: &[ProfileRow]) -> String {
    let total: f64 = rows.iter().map(|r| r.seconds).sum();
    let mut s = format!("{:>9} {:>6} {:>7} {:>9}  kernel\n", "seconds", "share", "calls", "ms/call");
    for r in rows {
        s.push_str(&format!(
            "{:9.3} {:5.1}% {:7} {:9.3}  {}\n",
            r.seconds,
            100.0 * r.seconds / total.max(1e-12),
            r.calls,
            1e3 * r.seconds / r.calls.max(1) as f64,
            r.kernel
        ));
    }
    s
}
