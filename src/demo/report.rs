//! The demo's results: one row per method (judge score, win rate against SFT, KL to SFT, wall
//! time, peak GPU memory, models in memory, steps), sample completions, training curves, and the
//! files they are written to: `results.json`, `results.md` and `curves.svg`.

use super::DemoConfig;
use crate::error::{Error, Result};
use crate::weights::write_atomic;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// A method is "clearly above" SFT when its judge score beats SFT's by at least this much
/// (mean lexicon valence, on VADER's -4..4 scale), set from the demo's measured spread.
pub const CLEAR_MARGIN: f32 = 0.05;

/// One line of the table.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MethodRow {
    pub method: String,
    /// Mean judge score (lexicon valence) of completions of held-out openings.
    pub judge: f32,
    /// Share of openings where this method's completion out-scores SFT's (ties half).
    pub win_rate: f32,
    /// KL(π ‖ π_sft) per completion, on the method's own samples (nats).
    pub kl: f32,
    /// Mean score the demo's reward model gives the same completions.
    pub reward_model_score: f32,
    pub wall_s: f32,
    pub peak_gpu_mib: f32,
    pub models_in_memory: usize,
    pub steps: usize,
    pub samples: Vec<String>,
}

impl MethodRow {
    /// A row for a stage that started at `t0`, with the GPU pool's peak since its reset.
    pub fn new(method: &str, steps: usize, models_in_memory: usize, t0: Instant, gpu: &crate::Gpu) -> MethodRow {
        MethodRow {
            method: method.into(),
            steps,
            models_in_memory,
            wall_s: t0.elapsed().as_secs_f32(),
            peak_gpu_mib: gpu.peak_bytes() as f32 / (1024.0 * 1024.0),
            ..Default::default()
        }
    }
}

/// One training curve: a metric of a method, per step.
#[derive(Clone, Debug, Serialize)]
pub struct Curve {
    pub method: String,
    pub metric: String,
    pub values: Vec<f32>,
}

impl Curve {
    pub fn from_values(method: &str, metric: &str, values: &[f32]) -> Curve {
        Curve { method: method.into(), metric: metric.into(), values: values.to_vec() }
    }

    /// The `metric` field of each step's metrics record.
    pub fn from_metrics<M: Serialize>(method: &str, metric: &str, records: &[M]) -> Curve {
        let value = |r: &M| serde_json::to_value(r).ok().and_then(|v| v[metric].as_f64()).unwrap_or(f64::NAN) as f32;
        let values = records.iter().map(value).collect::<Vec<_>>();
        Curve::from_values(method, metric, &values)
    }
}

/// Everything the demo measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub adapter: String,
    pub model: String,
    #[serde(skip)]
    pub out_dir: PathBuf,
    /// SFT, PPO, DPO, on-policy DPO, each evaluated.
    pub rows: Vec<MethodRow>,
    /// Stages that are not policies (the reward model).
    pub rows_extra: Vec<MethodRow>,
    /// Reward model: held-out accuracy, mean margin, number of held-out pairs.
    pub reward_accuracy: (f32, f32, usize),
    pub curves: Vec<Curve>,
    /// One sentence per method: above SFT by the clear margin or not.
    pub verdicts: Vec<String>,
}

impl Report {
    pub fn new(cfg: &DemoConfig, adapter: String) -> Report {
        Report {
            seed: cfg.seed,
            adapter,
            model: cfg.model.clone(),
            out_dir: cfg.out_dir.clone(),
            rows: vec![],
            rows_extra: vec![],
            reward_accuracy: (0.0, 0.0, 0),
            curves: vec![],
            verdicts: vec![],
        }
    }

    /// The row of `method`.
    pub fn row(&self, method: &str) -> Option<&MethodRow> {
        self.rows.iter().find(|r| r.method == method)
    }

    /// Compute the verdicts and write results.json, results.md and curves.svg.
    pub fn finish(&mut self) -> Result<()> {
        let sft = self.row("SFT").map(|r| r.judge).unwrap_or(0.0);
        self.verdicts = self
            .rows
            .iter()
            .skip(1)
            .map(|r| {
                let d = r.judge - sft;
                if d >= CLEAR_MARGIN {
                    format!("{}: judge score {:+.3} above SFT (clear margin {CLEAR_MARGIN}): it worked.", r.method, d)
                } else {
                    format!("{}: judge score {:+.3} against SFT, below the clear margin {CLEAR_MARGIN}: it did not clearly work this time.", r.method, d)
                }
            })
            .collect();
        let json = serde_json::to_string_pretty(self).expect("report serialises");
        write_atomic(&self.out_dir.join("results.json"), json.as_bytes())?;
        write_atomic(&self.out_dir.join("results.md"), self.markdown().as_bytes())?;
        self.plot(&self.out_dir.join("curves.svg"))
    }

    /// The side-by-side table, the reward model line, verdicts and samples, as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!("# plumb demo (seed {}, {} on {})\n\n", self.seed, self.model, self.adapter);
        s += "| method | judge score | win rate vs SFT | KL to SFT | reward-model score | wall time | peak GPU memory | models in memory | steps |\n";
        s += "|---|---|---|---|---|---|---|---|---|\n";
        for r in self.rows.iter().chain(&self.rows_extra) {
            let eval = r.method != "reward model";
            let f = |v: f32, d: usize| if eval { format!("{v:.*}", d) } else { "-".into() };
            s += &format!(
                "| {} | {} | {} | {} | {} | {:.0} s | {:.0} MiB | {} | {} |\n",
                r.method,
                f(r.judge, 3),
                f(r.win_rate, 2),
                f(r.kl, 2),
                f(r.reward_model_score, 3),
                r.wall_s,
                r.peak_gpu_mib,
                r.models_in_memory,
                r.steps
            );
        }
        let (acc, margin, n) = self.reward_accuracy;
        s += &format!("\nReward model: held-out accuracy {acc:.3} on {n} human pairs (mean margin {margin:.3}).\n\n");
        for v in &self.verdicts {
            s += &format!("- {v}\n");
        }
        s += "\n## Samples (held-out openings)\n";
        for r in &self.rows {
            s += &format!("\n**{}**\n", r.method);
            for x in &r.samples {
                s += &format!("- {}\n", x.replace('\n', " "));
            }
        }
        s
    }

    /// One small chart per curve, in a grid.
    fn plot(&self, path: &std::path::Path) -> Result<()> {
        use plotters::prelude::*;
        let curves: Vec<&Curve> = self.curves.iter().filter(|c| c.values.iter().any(|v| v.is_finite())).collect();
        let cols = 3;
        let rows = curves.len().div_ceil(cols).max(1);
        let tmp = crate::weights::tmp_path(path);
        {
            let root = SVGBackend::new(&tmp, (1200, 260 * rows as u32)).into_drawing_area();
            let err = |e: String| Error::io(path, std::io::Error::other(e));
            root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
            let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
            for (i, (c, area)) in curves.iter().zip(root.split_evenly((rows, cols))).enumerate() {
                let ys: Vec<f32> = c.values.iter().copied().filter(|v| v.is_finite()).collect();
                let (lo, hi) = ys.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let pad = ((hi - lo) * 0.1).max(1e-3);
                let mut chart = ChartBuilder::on(&area)
                    .caption(format!("{}: {}", c.method, c.metric), ("sans-serif", 16))
                    .margin(8)
                    .x_label_area_size(24)
                    .y_label_area_size(48)
                    .build_cartesian_2d(0f32..c.values.len().max(2) as f32, (lo - pad)..(hi + pad))
                    .map_err(|e| err(e.to_string()))?;
                chart.configure_mesh().x_desc("step").draw().map_err(|e| err(e.to_string()))?;
                let pts = c.values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(k, &v)| (k as f32 + 1.0, v));
                chart.draw_series(LineSeries::new(pts, &colors[i % colors.len()])).map_err(|e| err(e.to_string()))?;
            }
            root.present().map_err(|e| err(e.to_string()))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }
}
