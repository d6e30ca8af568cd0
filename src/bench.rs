//! The standard workloads W1-W5 of BENCHMARKS.md, measured exactly as the peers' harness does:
//! in-process, 3 untimed warm-up iterations, then the median of N timed ones, each ending with a
//! host read; the first iteration (shader compilation included) is reported as the cold start.
//! `plumb bench` times them with [`w2`], [`w3`], [`w4`]; the criterion benches
//! `benches/{train_step,dpo_step,generate}.rs` time the same [`W2`], [`W3`], [`W4`] steps.
//! W5, the LoRA-DPO step on SmolLM2-135M's shape, lives in `bench/w5.rs` ([`w5`], [`W5`];
//! `benches/lora_dpo_step.rs`).

mod w5;

pub use w5::{quant_matmul, w5, W5Flops, W5Options, W5Report, W5};

use crate::error::Result;
use crate::model::{presets, Model};
use crate::ops::dpo::{dpo_loss, DpoConfig, DpoRunState};
use crate::ops::elementwise::slice_last;
use crate::ops::loss::{cross_entropy, token_logprobs};
use crate::ops::matmul::matmul_forward;
use crate::ops::optim::{AdamW, AdamWConfig};
use crate::ops::reduce::sum_last;
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;
use crate::Gpu;
use std::time::Instant;

/// One measured figure.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub workload: String,
    /// Median seconds per iteration.
    pub median_s: f64,
    pub best_s: f64,
    /// First iteration (cold start, shader compilation included).
    pub first_s: f64,
    /// The workload's figure (GFLOP/s, tokens/s, pairs/s) and its unit.
    pub figure: f64,
    pub unit: &'static str,
    /// Peak resident memory of the process so far, MiB (Linux).
    pub peak_rss_mib: f64,
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RESULT {{\"engine\": \"plumb\", \"workload\": \"{}\", \"{}\": {:.2}, \"median_s\": {:.5}, \"best_s\": {:.5}, \"first_iter_s\": {:.2}, \"peak_rss_mib\": {:.1}}}",
            self.workload, self.unit, self.figure, self.median_s, self.best_s, self.first_s, self.peak_rss_mib
        )
    }
}

/// Peak resident set size (VmHWM) in MiB; 0 where /proc is absent.
pub fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn timeit(gpu: &Gpu, warmup: usize, iters: usize, f: impl FnMut() -> Result<()>) -> Result<(f64, f64, f64)> {
    let (ts, first) = timed_steps(gpu, warmup, iters, f, || Ok(()))?;
    Ok(summary(&ts, first))
}

/// The harness rule, every timed iteration kept: `warmup` untimed runs of `f` (at least one, the
/// first timed as the cold start), then `iters` timed ones, with `between` run (untimed) right
/// before the first timed one and right after each. Returns (seconds of each, cold start).
fn timed_steps(gpu: &Gpu, warmup: usize, iters: usize, mut f: impl FnMut() -> Result<()>, mut between: impl FnMut() -> Result<()>) -> Result<(Vec<f64>, f64)> {
    let mut first = 0.0;
    for w in 0..warmup.max(1) {
        let t = Instant::now();
        f()?;
        if w == 0 {
            first = t.elapsed().as_secs_f64();
        }
    }
    // With PLUMB_PROFILE, the per-kernel table covers the timed iterations only.
    if gpu.profiling() {
        gpu.take_profile();
    }
    between()?;
    let mut ts = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64());
        between()?;
    }
    Ok((ts, first))
}

/// (median, best, cold start) of timed iterations.
fn summary(ts: &[f64], first: f64) -> (f64, f64, f64) {
    let mut sorted = ts.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    (sorted[sorted.len() / 2], sorted[0], first)
}

fn result(workload: String, (median, best, first): (f64, f64, f64), work: f64, unit: &'static str) -> BenchResult {
    BenchResult { workload, median_s: median, best_s: best, first_s: first, figure: work / median, unit, peak_rss_mib: peak_rss_mib() }
}

/// W1: C = A·B for the five shapes; GFLOP/s.
pub fn w1(gpu: &Gpu, iters: usize) -> Result<Vec<BenchResult>> {
    [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (1024, 128, 512), (1024, 512, 128)].into_iter().map(|s| w1_shape(gpu, s, iters)).collect()
}

/// W1's C = A·B for one (M, K, N); GFLOP/s.
pub fn w1_shape(gpu: &Gpu, (m, k, n): (usize, usize, usize), iters: usize) -> Result<BenchResult> {
    let mut r = matmul_shape(gpu, (m, k, n), (false, false), iters)?;
    r.workload = format!("W1 {m}x{k}x{n}");
    Ok(r)
}

/// One f32 product `op(A)·op(B)` of (M, K)·(K, N), A stored (K, M) with `trans_a` and B stored
/// (N, K) with `trans_b`; GFLOP/s. Enough products a timed iteration for about 2 GFLOP.
pub fn matmul_shape(gpu: &Gpu, (m, k, n): (usize, usize, usize), (trans_a, trans_b): (bool, bool), iters: usize) -> Result<BenchResult> {
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 + 3) % 13) as f32 * 0.1 - 0.6).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 + 1) % 11) as f32 * 0.1 - 0.5).collect();
    let a_shape = if trans_a { [k, m] } else { [m, k] };
    let b_shape = if trans_b { [n, k] } else { [k, n] };
    let (a, b) = (Tensor::from_f32(gpu, &a, &a_shape)?, Tensor::from_f32(gpu, &b, &b_shape)?);
    let flops = 2.0 * (m * n * k) as f64;
    let reps = ((2e9 / flops) as usize).max(1);
    let t = timeit(gpu, 3, iters, || {
        let mut last = None;
        for _ in 0..reps {
            last = Some(matmul_forward(&a, &b, None, trans_a, trans_b)?);
        }
        // A one-element readback: waits for every product.
        last.expect("reps >= 1").view(0, &[1])?.scalar().map(|_| ())
    })?;
    let t_ = |x: bool| if x { "ᵀ" } else { "" };
    Ok(result(format!("matmul A{}·B{} {m}x{k}x{n}", t_(trans_a), t_(trans_b)), t, flops * reps as f64 / 1e9, "gflops"))
}

/// One product's `(m, k, n, trans_a, trans_b)`, as [`matmul_shape`] takes it.
pub type ProductShape = (usize, usize, usize, bool, bool);

/// W5's LoRA products (rank 16 over 1,024 rows; q/o, k/v, gate/up and down), each shape once,
/// and what each computes.
pub fn w5_lora_products() -> Vec<(ProductShape, &'static str)> {
    const ROWS: usize = 1024;
    const RANK: usize = 16;
    let mut out = Vec::new();
    for (d_in, d_out) in [(576, 576), (576, 192), (576, 1536), (1536, 576)] {
        for p in [
            ((ROWS, d_in, RANK, false, true), "h = x·Aᵀ"),
            ((ROWS, RANK, d_out, false, true), "y = h·Bᵀ"),
            ((ROWS, d_out, RANK, false, false), "dh = dy·B"),
            ((d_out, ROWS, RANK, true, false), "dB = dyᵀ·h"),
            ((ROWS, RANK, d_in, false, false), "dx = dh·A"),
            ((RANK, ROWS, d_in, true, false), "dA = dhᵀ·x"),
        ] {
            if !out.iter().any(|(q, _)| *q == p.0) {
                out.push(p);
            }
        }
    }
    out
}

fn w2_model(gpu: &Gpu) -> Result<Model> {
    Model::new(gpu, &presets::resolve("gpt-w2")?, 0)
}

fn corpus(n: usize) -> Vec<u32> {
    let text = std::fs::read("/usr/share/common-licenses/GPL-3").unwrap_or_default();
    if text.len() > n {
        text.iter().map(|&b| b as u32).collect()
    } else {
        (0..n as u64).map(|i| (crate::train::batch::mix(i) % 256) as u32).collect()
    }
}

fn rows(data: &[u32], step: usize, rows: usize, len: usize) -> Vec<u32> {
    let mut v = Vec::with_capacity(rows * len);
    for r in 0..rows {
        let off = ((step * rows + r) * 9973) % (data.len() - len - 1);
        v.extend_from_slice(&data[off..off + len]);
    }
    v
}

/// W2: one training step of the benchmark GPT on 8 x 128 tokens. `plumb bench` times
/// [`W2::step`] with [`w2`]; `benches/train_step.rs` times the same step with criterion.
pub struct W2 {
    gpu: Gpu,
    model: Model,
    opt: AdamW,
    data: Vec<u32>,
    step: usize,
}

impl W2 {
    /// Rows per step.
    pub const BATCH: usize = 8;
    /// Tokens per row.
    pub const SEQ: usize = 128;
    /// Tokens per step, the unit of the tokens/s figure.
    pub const TOKENS: usize = Self::BATCH * Self::SEQ;

    /// The gpt-w2 model (seed 0), AdamW (lr 3e-4, weight decay 0.01) and the corpus.
    pub fn new(gpu: &Gpu) -> Result<W2> {
        let model = w2_model(gpu)?;
        let opt = AdamW::new(model.params(), AdamWConfig { weight_decay: 0.01, ..Default::default() })?;
        Ok(W2 { gpu: gpu.clone(), model, opt, data: corpus(1 << 16), step: 0 })
    }

    /// One step on the next batch: forward, cross-entropy, backward, AdamW; returns the loss
    /// (the step's only readback).
    pub fn step(&mut self) -> Result<f32> {
        let (b, t) = (Self::BATCH, Self::SEQ);
        let r = rows(&self.data, self.step, b, t + 1);
        self.step += 1;
        let ids: Vec<u32> = r.chunks(t + 1).flat_map(|c| c[..t].to_vec()).collect();
        let tg: Vec<u32> = r.chunks(t + 1).flat_map(|c| c[1..].to_vec()).collect();
        let ids = Tensor::from_u32(&self.gpu, &ids, &[b, t])?;
        let tg = Tensor::from_u32(&self.gpu, &tg, &[b * t])?;
        let tape = Tape::new();
        let loss = cross_entropy(&self.model.forward(Some(&tape), &ids, None)?, &tg, None)?;
        tape.backward(&loss)?;
        self.opt.step(self.model.params(), 3e-4)?;
        self.model.params().zero_grad()?;
        loss.tensor().scalar()
    }
}

/// A benchmark whose loss turned NaN or infinite measured nothing worth printing.
fn finite(loss: f32, what: &str, step: usize) -> Result<()> {
    if !loss.is_finite() {
        return Err(crate::error::Error::NonFinite { what: format!("{what} (tensor `loss`) at benchmark step {step}"), value: loss as f64 });
    }
    Ok(())
}

/// W2 timed by the harness rule; tokens/s.
pub fn w2(gpu: &Gpu, iters: usize) -> Result<BenchResult> {
    let mut w = W2::new(gpu)?;
    let mut step = 0;
    let tm = timeit(gpu, 3, iters, || {
        step += 1;
        finite(w.step()?, "W2 training loss", step)
    })?;
    Ok(result("W2 train step 8x128".into(), tm, W2::TOKENS as f64, "tokens_per_s"))
}

/// Summed log-probs of the last `resp` tokens of each of the rows (rows, T): (rows).
fn response_logps(model: &Model, tape: Option<&Tape>, ids: &Tensor, labels: &Tensor, t: usize, resp: usize) -> Result<Var> {
    let rows = ids.shape()[0];
    let lp = token_logprobs(&model.forward(tape, ids, None)?, labels)?.reshape(&[rows, t])?; // (rows, T)
    sum_last(&slice_last(&lp, t - resp - 1, resp)?)
}

/// W3: one DPO step (sigmoid, beta 0.1) on 8 pairs of 64 + 64 tokens with a frozen reference
/// copy of the policy. `plumb bench` times [`W3::step`] with [`w3`]; `benches/dpo_step.rs`
/// with criterion.
pub struct W3 {
    gpu: Gpu,
    policy: Model,
    reference: Model,
    opt: AdamW,
    cfg: DpoConfig,
    data: Vec<u32>,
    step: usize,
}

impl W3 {
    /// Preference pairs per step, the unit of the pairs/s figure.
    pub const PAIRS: usize = 8;
    /// Tokens per sequence: a 64-token prompt shared by both answers, then 64 response tokens.
    pub const SEQ: usize = 128;
    /// Response tokens whose log-probs are summed.
    pub const RESPONSE: usize = 64;

    /// Policy and reference (both gpt-w2, seed 0), AdamW and the corpus.
    pub fn new(gpu: &Gpu) -> Result<W3> {
        let policy = w2_model(gpu)?;
        let reference = w2_model(gpu)?;
        let opt = AdamW::new(policy.params(), AdamWConfig { weight_decay: 0.01, ..Default::default() })?;
        Ok(W3 { gpu: gpu.clone(), policy, reference, opt, cfg: DpoConfig::default(), data: corpus(1 << 16), step: 0 })
    }

    /// One DPO step on the next 8 pairs; returns the loss (the step's only readback).
    pub fn step(&mut self) -> Result<f32> {
        let (pairs, t, resp) = (Self::PAIRS, Self::SEQ, Self::RESPONSE);
        let gpu = &self.gpu;
        // Rows ordered (chosen 0, rejected 0, chosen 1, ...): both share the prompt.
        let mut seqs = rows(&self.data, self.step, 2 * pairs, t + 1);
        self.step += 1;
        for p in 0..pairs {
            let (c, rj) = (2 * p * (t + 1), (2 * p + 1) * (t + 1));
            let prompt: Vec<u32> = seqs[c..c + (t - resp)].to_vec();
            seqs[rj..rj + (t - resp)].copy_from_slice(&prompt);
        }
        let ids: Vec<u32> = seqs.chunks(t + 1).flat_map(|c| c[..t].to_vec()).collect();
        let lab: Vec<u32> = seqs.chunks(t + 1).flat_map(|c| c[1..].to_vec()).collect();
        let ids = Tensor::from_u32(gpu, &ids, &[2 * pairs, t])?;
        let lab = Tensor::from_u32(gpu, &lab, &[2 * pairs * t])?;
        let refs = response_logps(&self.reference, None, &ids, &lab, t, resp)?.tensor().reshape(&[pairs, 2])?;
        let tape = Tape::new();
        let pol = response_logps(&self.policy, Some(&tape), &ids, &lab, t, resp)?.reshape(&[pairs, 2])?;
        let (pc, pr) = (slice_last(&pol, 0, 1)?.reshape(&[pairs])?, slice_last(&pol, 1, 1)?.reshape(&[pairs])?);
        let rc = crate::ops::elementwise::slice_last_forward(&refs, 0, 1)?.reshape(&[pairs])?;
        let rr = crate::ops::elementwise::slice_last_forward(&refs, 1, 1)?.reshape(&[pairs])?;
        let len = Tensor::from_f32(gpu, &vec![resp as f32; pairs], &[pairs])?;
        let (loss, _) = dpo_loss(&pc, &pr, &rc, &rr, &len, &len, &self.cfg, DpoRunState::default())?;
        tape.backward(&loss)?;
        self.opt.step(self.policy.params(), 3e-4)?;
        self.policy.params().zero_grad()?;
        loss.tensor().scalar()
    }
}

/// W3 timed by the harness rule; pairs/s.
pub fn w3(gpu: &Gpu, iters: usize) -> Result<BenchResult> {
    let mut w = W3::new(gpu)?;
    let mut step = 0;
    let tm = timeit(gpu, 3, iters, || {
        step += 1;
        finite(w.step()?, "W3 DPO loss", step)
    })?;
    Ok(result("W3 DPO step 8 pairs".into(), tm, W3::PAIRS as f64, "pairs_per_s"))
}

/// W4: generation with the KV cache, batch 8, 16-token prompts, 64 new tokens at T = 1.
/// `plumb bench` times [`W4::step`] with [`w4`]; `benches/generate.rs` with criterion.
pub struct W4 {
    model: Model,
    data: Vec<u32>,
    step: usize,
}

impl W4 {
    /// Sequences generated at once.
    pub const BATCH: usize = 8;
    /// Prompt tokens per sequence.
    pub const PROMPT: usize = 16;
    /// New tokens per sequence.
    pub const NEW: usize = 64;
    /// Tokens generated per step, the unit of the tokens/s figure.
    pub const TOKENS: usize = Self::BATCH * Self::NEW;

    /// The gpt-w2 model (seed 0) and the corpus the prompts come from.
    pub fn new(gpu: &Gpu) -> Result<W4> {
        Ok(W4 { model: w2_model(gpu)?, data: corpus(1 << 16), step: 0 })
    }

    /// One batched generation from the next 8 prompts (seeded by the step number); returns the
    /// generated tokens, which are read back.
    pub fn step(&mut self) -> Result<Vec<Vec<u32>>> {
        use crate::generate::{generate, GenerateConfig};
        let r = rows(&self.data, self.step, Self::BATCH, Self::PROMPT);
        self.step += 1;
        let prompts: Vec<Vec<u32>> = r.chunks(Self::PROMPT).map(|c| c.to_vec()).collect();
        let cfg = GenerateConfig { max_new_tokens: Self::NEW, seed: self.step as u64, ..Default::default() };
        generate(&self.model, &prompts, &cfg)
    }
}

/// W4 timed by the harness rule; tokens/s.
pub fn w4(gpu: &Gpu, iters: usize) -> Result<BenchResult> {
    let mut w = W4::new(gpu)?;
    let tm = timeit(gpu, 3, iters, || w.step().map(|_| ()))?;
    Ok(result("W4 generate 8x64".into(), tm, W4::TOKENS as f64, "tokens_per_s"))
}
