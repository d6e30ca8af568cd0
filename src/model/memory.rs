//! The memory plan: what a training step of a model needs on the GPU, before it starts. Bytes
//! of weights, gradients, AdamW moments, the activations kept for the backward, and the
//! largest temporaries, from the config alone (f32 everywhere, as plumb stores them), plus
//! the checks that decide whether it fits: every single tensor within one storage binding (a
//! parameter past it is split into row chunks; an activation cannot be) and the total within
//! the memory budget. `plumb info --model` prints it; out-of-memory errors quote it.
//!
//! Activations are counted per token from the ops each block records (what their backward
//! closures hold): GPT-2 keeps x, ln_1(x), qkv, the attention output and its per-head
//! log-sum-exp, x + attn, ln_2(x), the 4C MLP input (GELU is recomputed); Llama keeps x, the
//! norm, q, k, v and their rotated copies, the attention output, x + attn, the norm, gate, up
//! and their SwiGLU. With checkpointing only each block's input stays, plus one block's worth
//! while it is recomputed. The vocabulary head is chunked (`ops::vocab_head`): the (B·T, V)
//! logits never exist, only one slice of them and its gradient at a time (about 32 MiB each).
//! A base frozen in stored form (`Model::freeze_base`, a GGUF base) counts its matrices as
//! stored, plus one matrix decoded to f32 at a time (`ops::quant`'s decode-first products).

use super::config::ModelConfig;
use super::Model;
use crate::lora::{LoraConfig, LoraModule};
/// The system's available memory (the engine core reads it for CPU adapters' budget).
pub use crate::gpu::system_available;
use crate::ops::vocab_head::default_slice;
use crate::params::ALIGN_ELEMS;

/// What to plan for.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// Sequences per step. Example: 8.
    pub batch_size: usize,
    /// Tokens per sequence. Example: 512.
    pub seq_len: usize,
    /// Train a LoRA adapter of this rank on the architecture's default targets (the base then
    /// needs no gradients or moments); None: full fine-tuning.
    pub lora_rank: Option<usize>,
    /// Activation checkpointing per block.
    pub checkpoint_activations: bool,
    /// The base's matrices frozen in stored form: (their bytes on the GPU, a name for them such
    /// as "Q8_0 + Q4_1"); the f32 rest (norms, biases) is counted from the config. None: f32.
    pub stored_base: Option<(u64, String)>,
}

/// One line of the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanItem {
    /// What it is, e.g. "weights (f32)".
    pub what: String,
    /// Bytes.
    pub bytes: u64,
}

/// A training step's memory, item by item.
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// Weights, gradients, moments, activations (held through the step).
    pub held: Vec<PlanItem>,
    /// The largest temporaries (alive for part of the step), largest first.
    pub temporaries: Vec<PlanItem>,
    /// The biggest single tensor that cannot be split by rows (an activation), for the
    /// binding check.
    pub largest_activation: PlanItem,
    /// Most bytes per storage binding on the adapter.
    pub max_binding: u64,
    /// The memory budget, if known (the pool's cap, or the system memory of a CPU adapter).
    pub budget: Option<u64>,
}

impl MemoryPlan {
    /// Everything held plus the largest temporaries: the planned peak.
    pub fn total(&self) -> u64 {
        self.held.iter().chain(&self.temporaries).map(|i| i.bytes).sum()
    }

    /// Why it does not fit, or None when it fits (or the budget is unknown and every tensor
    /// fits its binding).
    pub fn problem(&self) -> Option<String> {
        let a = &self.largest_activation;
        if a.bytes > self.max_binding {
            return Some(format!(
                "{} needs {} in one storage binding, the adapter allows {}: lower --batch-size or --seq-len",
                a.what,
                mib(a.bytes),
                mib(self.max_binding)
            ));
        }
        match self.budget {
            Some(b) if self.total() > b => Some(format!("the step needs {} of the {} available", mib(self.total()), mib(b))),
            _ => None,
        }
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

impl std::fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for i in &self.held {
            writeln!(f, "  {:<44} {:>12}", i.what, mib(i.bytes))?;
        }
        for i in &self.temporaries {
            writeln!(f, "  {:<44} {:>12}", format!("temporary: {}", i.what), mib(i.bytes))?;
        }
        writeln!(f, "  {:<44} {:>12}", "planned peak", mib(self.total()))?;
        writeln!(f, "  {:<44} {:>12}", "largest activation (one binding)", mib(self.largest_activation.bytes))?;
        match self.budget {
            Some(b) => writeln!(f, "  {:<44} {:>12}", "memory available", mib(b))?,
            None => writeln!(f, "  memory available: unknown (wgpu does not report it; PLUMB_MAX_MEMORY sets a budget)")?,
        }
        match self.problem() {
            None if self.budget.is_some() => write!(f, "fits"),
            None => write!(f, "every tensor fits its binding; the total is not checked"),
            Some(p) => write!(f, "does NOT fit: {p}"),
        }
    }
}

fn padded(n: usize) -> u64 {
    (n.div_ceil(ALIGN_ELEMS) * ALIGN_ELEMS * 4) as u64
}

/// The memory plan of one training step of `cfg` with `opts`, on an adapter allowing
/// `max_binding` bytes per binding, with `budget` bytes in all if known.
pub fn plan(cfg: &ModelConfig, opts: &PlanOptions, max_binding: u64, budget: Option<u64>) -> MemoryPlan {
    let specs = Model::param_specs(cfg);
    let weights: u64 = specs.iter().map(|s| padded(s.shape.iter().product())).sum();
    let (b, t) = (opts.batch_size.max(1), opts.seq_len.max(1));
    let tokens = (b * t) as u64;
    let (vocab, c, layers, per_token, block_peak) = match cfg {
        ModelConfig::Gpt(g) => {
            let (c, h) = (g.n_embd as u64, g.n_head as u64);
            // x, ln_1 + (mean, rstd), qkv, attn out + lse, x + attn, ln_2 + stats, h (4C)
            let per = c + (c + 2) + 3 * c + (c + h) + c + (c + 2) + 4 * c;
            (g.vocab_size as u64, c, g.n_layer as u64, per, per)
        }
        ModelConfig::Llama(l) => {
            let c = l.hidden_size as u64;
            let hq = l.num_attention_heads as u64;
            let kv = l.num_key_value_heads.unwrap_or(l.num_attention_heads) as u64 * (c / hq);
            let i = l.intermediate_size as u64;
            // x, norm + rstd, q k v, rotated q k, attn out + lse, x + attn, norm + rstd, gate, up, swiglu
            let per = c + (c + 1) + (c + 2 * kv) + (c + kv) + (c + hq) + c + (c + 1) + 3 * i;
            (l.vocab_size as u64, c, l.num_hidden_layers as u64, per, per)
        }
    };
    let (c_in, i_out) = match cfg {
        ModelConfig::Gpt(g) => (g.n_embd, 4 * g.n_embd),
        ModelConfig::Llama(l) => (l.hidden_size, l.intermediate_size),
    };
    let mut held = vec![];
    let mut temporaries = vec![];
    match &opts.stored_base {
        Some((bytes, types)) => {
            let (names, _) = Model::frozen_names(cfg);
            let rest: u64 = specs.iter().filter(|s| !names.contains(&s.name)).map(|s| padded(s.shape.iter().product())).sum();
            held.push(PlanItem { what: format!("frozen matrices ({types}, as stored)"), bytes: *bytes });
            held.push(PlanItem { what: "norms and other f32 weights".into(), bytes: rest });
            // Products of many rows decode the rows of W they read to f32 first: the biggest
            // is an MLP matrix or one head slice.
            let slice = default_slice(b * t).min(vocab as usize);
            let decoded = (c_in * i_out).max(slice * c_in);
            temporaries.push(PlanItem { what: format!("one matrix decoded ({decoded} f32)"), bytes: 4 * decoded as u64 });
        }
        None => held.push(PlanItem { what: "weights (f32)".into(), bytes: weights }),
    }
    let trainable = match opts.lora_rank {
        Some(r) => {
            let targets = LoraConfig { r, target_modules: LoraConfig::default_targets(cfg), ..LoraConfig::default() };
            let modules: Vec<LoraModule> = lora_modules(cfg);
            let hits = |m: &LoraModule| targets.target_modules.iter().any(|t| m.name == *t || m.name.ends_with(&format!(".{t}")));
            let n: u64 = modules.iter().filter(|m| hits(m)).map(|m| padded(r * m.in_features) + padded(m.out_features * r)).sum();
            held.push(PlanItem { what: format!("LoRA adapter r={r} (f32)"), bytes: n });
            n
        }
        None => weights,
    };
    held.push(PlanItem { what: "gradients (f32)".into(), bytes: trainable });
    held.push(PlanItem { what: "AdamW moments m, v (f32)".into(), bytes: 2 * trainable });
    let kept = if opts.checkpoint_activations { layers * c + block_peak } else { layers * per_token };
    held.push(PlanItem {
        what: format!("activations ({b}x{t} tokens{})", if opts.checkpoint_activations { ", checkpointed" } else { "" }),
        bytes: 4 * tokens * (kept + 4 * c),
    });
    // The chunked head: one slice of logits and its gradient at a time.
    let slice = default_slice(b * t).min(vocab as usize) as u64;
    let slice_bytes = 4 * tokens * slice;
    temporaries.push(PlanItem { what: format!("logits slice + grad ({}x{slice})", b * t), bytes: 2 * slice_bytes });
    if opts.lora_rank.is_none() {
        temporaries.push(PlanItem { what: format!("embedding gradient ({vocab} x {c})"), bytes: 4 * vocab * c });
    }
    temporaries.sort_by_key(|i| std::cmp::Reverse(i.bytes));
    // The biggest activation, which cannot be split into row chunks: the MLP's hidden layer or
    // a head slice.
    let mlp = 4 * tokens * i_out as u64;
    let largest_activation = if mlp >= slice_bytes {
        PlanItem { what: format!("the MLP's hidden activation ({} x {i_out} f32)", b * t), bytes: mlp }
    } else {
        PlanItem { what: format!("a head slice of logits ({} x {slice} f32)", b * t), bytes: slice_bytes }
    };
    MemoryPlan {
        held,
        temporaries,
        largest_activation,
        max_binding,
        budget,
    }
}

fn lora_modules(cfg: &ModelConfig) -> Vec<LoraModule> {
    match cfg {
        ModelConfig::Gpt(c) => super::Gpt::lora_modules(c),
        ModelConfig::Llama(c) => super::Llama::lora_modules(c),
    }
}

/// Plan a step of `model` as it stands (its config, its adapter's rank) and hand the plan to
/// its device, so that an out-of-memory error quotes it. Trainers call this before the first
/// step.
pub fn remember_plan(model: &Model, batch_size: usize, seq_len: usize, checkpoint_activations: bool) {
    let gpu = model.params().gpu();
    let stored_base = model.frozen().map(|f| (f.bytes() as u64, "stored form".to_string()));
    let opts = PlanOptions { batch_size, seq_len, lora_rank: model.lora().map(|l| l.cfg.r), checkpoint_activations, stored_base };
    gpu.set_memory_plan(plan(&model.config(), &opts, gpu.max_binding_bytes(), gpu.memory_budget()).to_string());
}
