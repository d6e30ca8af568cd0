//! W5 of BENCHMARKS.md: one LoRA-DPO step on SmolLM2-135M's shape (30 layers of 576, 9/3 heads,
//! SwiGLU 1536, vocabulary 49,152, tied) with the frozen base in GGUF Q4_1, LoRA rank 16 (alpha
//! 32) on q, k, v, o, gate, up and down, 4 pairs of 64 prompt + 64 completion tokens, the
//! reference being the policy with its adapters off. It is the on-device job on a real model:
//! its figures are pairs/s, the pool's peak GPU memory and peak RSS, and the speed as a fraction
//! of what the step's matmul FLOPs allow at W1's 1024³ rate, sampled between the timed steps
//! (this machine's speed drifts by up to 40% within minutes, so a rate from another minute than
//! the step's says little).
//!
//! [`W5Options`] switch the memory savers off one at a time (an f32 base instead of Q4_1, the
//! full (rows, V) logits instead of the chunked head, no activation checkpointing) for the
//! README's memory table; `model` runs the step on a real GGUF file in its stored form.

use super::{finite, peak_rss_mib, result, summary, timed_steps, timeit, BenchResult};
use crate::error::{Error, Result};
use crate::lora::LoraConfig;
use crate::model::{presets, LlamaConfig, Model, ModelConfig};
use crate::ops::dpo::{dpo_loss, DpoConfig, DpoRunState};
use crate::ops::elementwise::{slice_last, slice_last_forward};
use crate::ops::loss::token_logprobs;
use crate::ops::optim::{AdamW, AdamWConfig};
use crate::ops::quant::StoredType;
use crate::ops::reduce::sum_last;
use crate::ops::vocab_head::head_logprobs;
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;
use crate::Gpu;
use std::path::PathBuf;

/// How W5 is set up: the default is the benchmark itself (Q4_1 base, chunked head) without
/// checkpointing.
#[derive(Clone, Debug)]
pub struct W5Options {
    /// Recompute each block in the backward (`--checkpoint-activations`).
    pub checkpoint: bool,
    /// Keep the base in Q4_1 (false: f32, the memory table's "without quantized base").
    pub quantized: bool,
    /// Log-probs through the chunked vocabulary head (false: full (rows, V) logits).
    pub chunked_head: bool,
    /// A GGUF file (e.g. SmolLM2-135M-Instruct.Q4_1.gguf) loaded in its stored form instead of
    /// the random-init preset.
    pub model: Option<PathBuf>,
}

impl Default for W5Options {
    fn default() -> Self {
        W5Options { checkpoint: false, quantized: true, chunked_head: true, model: None }
    }
}

impl W5Options {
    /// A short name for the results: e.g. `q4_1 chunked-head checkpointed`.
    pub fn describe(&self) -> String {
        let base = match &self.model {
            Some(p) => format!("{} (stored form)", p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()),
            None if self.quantized => "random-init Q4_1 base".into(),
            None => "random-init f32 base".into(),
        };
        let head = if self.chunked_head { "chunked head" } else { "full logits" };
        let ckpt = if self.checkpoint { "checkpointed" } else { "no checkpointing" };
        format!("{base}, {head}, {ckpt}")
    }
}

/// Matmul FLOPs of one W5 step (2 per multiply-add), counted from the config: the frozen
/// projections, the LoRA products, causal attention (QKᵀ and AV over the keys each query sees)
/// and the vocabulary head over the completion positions.
#[derive(Clone, Copy, Debug)]
pub struct W5Flops {
    /// Policy forward (adapters on).
    pub forward: f64,
    /// Policy backward: dX of every product (frozen weights get no dW), dA and dB of the
    /// adapters, attention's two products, the head's recomputed logits and dX.
    pub backward: f64,
    /// Reference forward (adapters off).
    pub reference: f64,
    /// What checkpointing adds: the blocks' forward once more (not part of the bound).
    pub recompute: f64,
}

impl W5Flops {
    /// The step's FLOPs for `rows` sequences of `t` tokens, `resp` of them scored, LoRA rank `r`.
    pub fn of(c: &LlamaConfig, rows: usize, t: usize, resp: usize, r: usize) -> W5Flops {
        let (d, im, v, layers) = (c.hidden_size as f64, c.intermediate_size as f64, c.vocab_size as f64, c.num_hidden_layers as f64);
        let hq = c.num_attention_heads as f64;
        let hkv = c.num_key_value_heads.unwrap_or(c.num_attention_heads) as f64;
        let hd = d / hq;
        let kv = hkv * hd;
        let tokens = (rows * t) as f64;
        // (in, out) of q, k, v, o, gate, up, down.
        let projections = [(d, d), (d, kv), (d, kv), (d, d), (d, im), (d, im), (im, d)];
        let frozen: f64 = projections.iter().map(|(i, o)| 2.0 * i * o).sum::<f64>() * layers * tokens;
        let lora: f64 = projections.iter().map(|(i, o)| 2.0 * r as f64 * (i + o)).sum::<f64>() * layers * tokens;
        // Query p sees p + 1 keys: QKᵀ and AV are 2·hd FLOPs per (query, key, head) each.
        let pairs_seen = (t * (t + 1) / 2 * rows) as f64;
        let attention = 2.0 * 2.0 * hd * hq * pairs_seen * layers;
        let head = 2.0 * d * v * (rows * resp) as f64;
        W5Flops {
            forward: frozen + lora + attention + head,
            backward: frozen + 2.0 * lora + 2.0 * attention + 2.0 * head,
            reference: frozen + attention + head,
            recompute: frozen + lora + attention,
        }
    }

    /// Forward + backward + reference forward: the bound's FLOP count.
    pub fn total(&self) -> f64 {
        self.forward + self.backward + self.reference
    }
}

/// The W5 step: policy (frozen base + LoRA), its optimizer and the token stream.
pub struct W5 {
    gpu: Gpu,
    policy: Model,
    opt: AdamW,
    cfg: DpoConfig,
    opts: W5Options,
    step: usize,
}

impl W5 {
    /// Preference pairs per step, the unit of the pairs/s figure.
    pub const PAIRS: usize = 4;
    /// Prompt tokens, shared by chosen and rejected.
    pub const PROMPT: usize = 64;
    /// Completion tokens per answer, whose log-probs are summed.
    pub const COMPLETION: usize = 64;
    /// Tokens per sequence.
    pub const SEQ: usize = Self::PROMPT + Self::COMPLETION;
    /// LoRA rank (alpha is twice it).
    pub const RANK: usize = 16;
    /// AdamW learning rate.
    pub const LR: f32 = 5e-5;

    /// Build the policy: the smollm2-135m preset (seed 0) frozen to Q4_1 (or kept f32), or the
    /// GGUF file of `opts.model` in stored form; then attach the adapter.
    pub fn new(gpu: &Gpu, opts: &W5Options) -> Result<W5> {
        let mut policy = match &opts.model {
            Some(path) => crate::gguf::model::load_model_stored(gpu, path)?,
            None => {
                let mut m = Model::new(gpu, &presets::resolve("smollm2-135m")?, 0)?;
                if opts.quantized {
                    m.freeze_base(StoredType::Q4_1)?;
                }
                m
            }
        };
        let cfg = policy.config();
        if !matches!(cfg, ModelConfig::Llama(_)) {
            return Err(Error::config("W5", "the model must be of the Llama family (SmolLM2-135M's)"));
        }
        let lora = LoraConfig { r: Self::RANK, alpha: 2.0 * Self::RANK as f32, target_modules: LoraConfig::default_targets(&cfg) };
        policy.add_lora(&lora, 0)?;
        policy.set_checkpointing(opts.checkpoint);
        let opt = AdamW::new(policy.trainable(), AdamWConfig::default())?;
        Ok(W5 { gpu: gpu.clone(), policy, opt, cfg: DpoConfig::default(), opts: opts.clone(), step: 0 })
    }

    /// The step's matmul FLOPs.
    pub fn flops(&self) -> W5Flops {
        match self.policy.config() {
            ModelConfig::Llama(c) => W5Flops::of(&c, 2 * Self::PAIRS, Self::SEQ, Self::COMPLETION, Self::RANK),
            ModelConfig::Gpt(_) => unreachable!("checked in W5::new"),
        }
    }

    /// Token ids (2·PAIRS, SEQ), rows (chosen 0, rejected 0, chosen 1, ...) sharing their
    /// prompt, and the labels of the completion positions (2·PAIRS·COMPLETION).
    fn batch(&self) -> (Vec<u32>, Vec<u32>) {
        let v = self.policy.vocab_size() as u64;
        let tok = |i: u64| (crate::train::batch::mix(i ^ (self.step as u64) << 40) % v) as u32;
        let (t, p0) = (Self::SEQ, Self::PROMPT);
        let mut ids = Vec::with_capacity(2 * Self::PAIRS * t);
        for row in 0..2 * Self::PAIRS {
            let prompt_row = (row / 2) as u64;
            ids.extend((0..p0 as u64).map(|j| tok(prompt_row * 1000 + j)));
            ids.extend((0..(t - p0) as u64).map(|j| tok((1 << 20) | (row as u64 * 1000 + j))));
        }
        // Position p predicts token p + 1: positions PROMPT-1 .. SEQ-2 score the completion.
        let labels = ids.chunks(t).flat_map(|r| r[p0..].to_vec()).collect();
        (ids, labels)
    }

    /// Summed completion log-probs (rows): the hidden states of the positions that predict a
    /// completion token only, through the chunked head (or the full logits).
    fn completion_logps(&self, tape: Option<&Tape>, ids: &Tensor, labels: &Tensor) -> Result<Var> {
        let (rows, t, resp) = (2 * Self::PAIRS, Self::SEQ, Self::COMPLETION);
        let c = self.policy.hidden_size();
        let h = self.policy.hidden(tape, ids, None)?.reshape(&[rows, t * c])?;
        let h = slice_last(&h, (Self::PROMPT - 1) * c, resp * c)?.reshape(&[rows * resp, c])?;
        let lp = if self.opts.chunked_head {
            head_logprobs(&self.policy.token_head(tape, &h, labels)?)?
        } else {
            token_logprobs(&self.policy.lm_head(tape, &h)?, labels)?
        };
        sum_last(&lp.reshape(&[rows, resp])?)
    }

    /// One DPO step (sigmoid, β 0.1) on the next 4 pairs: reference log-probs with the adapters
    /// off, the policy's on the tape, backward, AdamW; returns the loss (the only readback).
    pub fn step(&mut self) -> Result<f32> {
        let (pairs, rows) = (Self::PAIRS, 2 * Self::PAIRS);
        let (ids, labels) = self.batch();
        self.step += 1;
        let ids = Tensor::from_u32(&self.gpu, &ids, &[rows, Self::SEQ])?;
        let labels = Tensor::from_u32(&self.gpu, &labels, &[rows * Self::COMPLETION])?;
        let refs = crate::align::reference::with_adapters_off(&self.policy, || Ok(self.completion_logps(None, &ids, &labels)?.tensor().clone()))?;
        let refs = refs.reshape(&[pairs, 2])?;
        let (rc, rr) = (slice_last_forward(&refs, 0, 1)?.reshape(&[pairs])?, slice_last_forward(&refs, 1, 1)?.reshape(&[pairs])?);
        let tape = Tape::new();
        let pol = self.completion_logps(Some(&tape), &ids, &labels)?.reshape(&[pairs, 2])?;
        let (pc, pr) = (slice_last(&pol, 0, 1)?.reshape(&[pairs])?, slice_last(&pol, 1, 1)?.reshape(&[pairs])?);
        let len = Tensor::from_f32(&self.gpu, &vec![Self::COMPLETION as f32; pairs], &[pairs])?;
        let (loss, _) = dpo_loss(&pc, &pr, &rc, &rr, &len, &len, &self.cfg, DpoRunState::default())?;
        tape.backward(&loss)?;
        self.opt.step(self.policy.trainable(), Self::LR)?;
        self.policy.trainable().zero_grad()?;
        loss.tensor().scalar()
    }
}

/// W5's figures beside the timing.
#[derive(Clone, Debug)]
pub struct W5Report {
    pub setup: String,
    pub result: BenchResult,
    /// The pool's peak over the timed steps (in use + cached), MiB.
    pub peak_gpu_mib: f64,
    /// Peak RSS while building the model (before the steps), MiB.
    pub setup_rss_mib: f64,
    pub flops: W5Flops,
    /// Whether the step recomputes each block in the backward (its FLOPs are then
    /// `flops.total() + flops.recompute`).
    pub checkpoint: bool,
    /// Seconds of each timed step, in order.
    pub step_s: Vec<f64>,
    /// W1's 1024³ rate, GFLOP/s, sampled right before the first timed step and right after
    /// each: one more sample than steps.
    pub matmul_gflops: Vec<f64>,
    /// With `PLUMB_PROFILE`: the per-kernel table of the timed steps (W1's product excluded).
    pub profile: Vec<crate::ProfileRow>,
}

impl W5Report {
    /// Step `i`'s W1 rate: the faster of the samples on either side of it (this machine's
    /// speed drifts within minutes; the faster sample is the stricter bound).
    fn rate(&self, i: usize) -> f64 {
        self.matmul_gflops[i].max(self.matmul_gflops[i + 1])
    }

    /// Each timed step's speed as a fraction of its FLOP bound: the seconds its counted
    /// FLOPs take at its W1 rate over the seconds it took. With `with_recompute`, the
    /// checkpointed blocks' second forward counts too (the FLOPs the step performs).
    pub fn fractions(&self, with_recompute: bool) -> Vec<f64> {
        let flops = self.flops.total() + if with_recompute && self.checkpoint { self.flops.recompute } else { 0.0 };
        self.step_s.iter().enumerate().map(|(i, t)| flops / (self.rate(i) * 1e9) / t).collect()
    }

    /// The median of [`Self::fractions`] (counted FLOPs only): the W5 speed figure.
    pub fn fraction_of_bound(&self) -> f64 {
        median(self.fractions(false))
    }
}

/// The median, the lower of the middle two for an even count (the slower step's fraction).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(f64::NAN)
}

impl std::fmt::Display for W5Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gf = |x: f64| x / 1e9;
        let list = |v: &[f64], scale: f64, digits: usize| v.iter().map(|x| format!("{:.*}", digits, x * scale)).collect::<Vec<_>>().join(", ");
        writeln!(f, "{}", self.result)?;
        writeln!(f, "W5 setup: {}", self.setup)?;
        writeln!(
            f,
            "W5 peak GPU memory (pool) {:.0} MiB; peak RSS over the steps {:.0} MiB (while building the model {:.0} MiB)",
            self.peak_gpu_mib, self.result.peak_rss_mib, self.setup_rss_mib
        )?;
        writeln!(
            f,
            "W5 matmul GFLOP per step: forward {:.1} + backward {:.1} + reference forward {:.1} = {:.1} (checkpointing recomputes {:.1} more, not counted)",
            gf(self.flops.forward),
            gf(self.flops.backward),
            gf(self.flops.reference),
            gf(self.flops.total()),
            gf(self.flops.recompute)
        )?;
        writeln!(f, "W5 steps {} s; W1 1024^3 before, between and after them {} GFLOP/s", list(&self.step_s, 1.0, 2), list(&self.matmul_gflops, 1.0, 1))?;
        write!(
            f,
            "W5 each step against the faster W1 sample beside it: {}% of the FLOP bound (median {:.0}%)",
            list(&self.fractions(false), 100.0, 0),
            100.0 * self.fraction_of_bound()
        )?;
        if self.checkpoint {
            write!(f, "; counting the recomputed forward too: median {:.0}%", 100.0 * median(self.fractions(true)))?;
        }
        Ok(())
    }
}

/// The stored-form linear layer at one of W5's shapes: `y = x·Wᵀ` (forward) or `dx = dy·W`
/// (backward) with x (m, k) and W (n, k) in `kind`; GFLOP/s (2·m·k·n per product). The
/// kernel-level figure beside W1's: W5's frozen projections and its head run on these kernels.
pub fn quant_matmul(gpu: &Gpu, kind: StoredType, (m, k, n): (usize, usize, usize), backward: bool, iters: usize) -> Result<BenchResult> {
    use crate::ops::quant::{quant_linear_backward, quant_linear_forward, QuantTensor};
    let wv: Vec<f32> = (0..n * k).map(|i| ((i * 7 + 3) % 13) as f32 * 0.01 - 0.06).collect();
    let w = QuantTensor::from_f32(gpu, kind, [n, k], &wv)?;
    let rows_in = if backward { n } else { k };
    let xv: Vec<f32> = (0..m * rows_in).map(|i| ((i * 5 + 1) % 11) as f32 * 0.1 - 0.5).collect();
    let x = Tensor::from_f32(gpu, &xv, &[m, rows_in])?;
    let flops = 2.0 * (m * n * k) as f64;
    let reps = ((1e9 / flops) as usize).max(1);
    let t = timeit(gpu, 2, iters, || {
        let mut last = None;
        for _ in 0..reps {
            last = Some(if backward { quant_linear_backward(&x, &w)? } else { quant_linear_forward(&x, &w, None)? });
        }
        last.expect("reps >= 1").view(0, &[1])?.scalar().map(|_| ())
    })?;
    let what = if backward { "dx = dy·W" } else { "y = x·Wᵀ" };
    Ok(result(format!("stored-form {what} {} {m}x{k}x{n}", kind.name()), t, flops * reps as f64 / 1e9, "gflops"))
}

/// Reset the process's peak RSS (Linux: `5` to /proc/self/clear_refs), so the steps' peak is
/// their own and not the model build's.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// W5 timed by the harness rule (`warmup` untimed steps, the first reported as the cold
/// start), with W1's 1024³ product timed right before the first timed step and after each, for
/// each step's bound. The W1 samples run on a second device, opened by [`Gpu::new`] (the
/// `PLUMB_*` options) and set to `gpu`'s kernel variant and feeds, so that their buffers stay
/// out of W5's pool figure.
pub fn w5(gpu: &Gpu, opts: &W5Options, warmup: usize, iters: usize) -> Result<W5Report> {
    let rate_gpu = Gpu::new()?;
    rate_gpu.set_variant(gpu.variant());
    rate_gpu.set_register_feed(gpu.register_feed());
    rate_gpu.set_subgroup_kernels(gpu.subgroup_kernels());
    rate_gpu.set_elementwise_textures(gpu.elementwise_textures());
    rate_gpu.set_stored_matmul(gpu.stored_matmul());
    let w1_rate = || -> Result<f64> {
        let r = super::w1_shape(&rate_gpu, (1024, 1024, 1024), 5)?.figure;
        rate_gpu.trim_pool();
        Ok(r)
    };
    // Compile W1's pipeline before the model is built.
    w1_rate()?;
    let mut w = W5::new(gpu, opts)?;
    let setup_rss_mib = peak_rss_mib();
    gpu.reset_peak();
    reset_peak_rss();
    let mut matmul_gflops = Vec::new();
    let (step_s, first) = timed_steps(
        gpu,
        warmup,
        iters,
        || {
            let s = w.step;
            finite(w.step()?, "W5 DPO loss", s + 1)
        },
        || {
            matmul_gflops.push(w1_rate()?);
            Ok(())
        },
    )?;
    let timing = summary(&step_s, first);
    let result = result(format!("W5 LoRA-DPO step 4 pairs ({})", opts.describe()), timing, W5::PAIRS as f64, "pairs_per_s");
    let peak_gpu_mib = gpu.peak_bytes() as f64 / (1 << 20) as f64;
    let flops = w.flops();
    let profile = if gpu.profiling() { gpu.take_profile() } else { vec![] };
    Ok(W5Report { setup: opts.describe(), result, peak_gpu_mib, setup_rss_mib, flops, checkpoint: opts.checkpoint, step_s, matmul_gflops, profile })
}
