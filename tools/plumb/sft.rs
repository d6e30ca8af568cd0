//! `plumb sft`: supervised fine-tuning / pretraining. With no data it trains a small byte-level
//! GPT on the built-in movie-review sentences and prints samples that read like reviews.

use plumb::data::corpus::movie_reviews;
use plumb::data::{Dataset, DatasetKind, SftDataset, TokenStream};
use plumb::generate::{generate, GenerateConfig};
use plumb::model::{presets, Model};
use plumb::ops::sample::SamplingConfig;
use plumb::train::batch::{BatchSource, SftSource, StreamSource};
use plumb::train::rundir::RunOptions;
use plumb::train::schedule::Schedule;
use plumb::train::sft::{self, SftConfig};
use plumb::{Error, Gpu, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  plumb sft                                   # built-in movie reviews, byte-level GPT (gpt-w2)
  plumb sft --steps 2000 --out runs/reviews    # longer, with checkpoints
  plumb sft --out runs/reviews --resume        # continue a killed run exactly
  plumb sft --data train.bin --model models/presets/gpt-w2  # a file from `plumb data prepare`
  plumb sft --model SmolLM2-135M-Instruct.Q4_1.gguf --lora 16 --data chat.bin --lr 2e-4  # LoRA on a GGUF base")]
pub struct SftArgs {
    /// Model: a preset (gpt-w2, gpt-nano, llama-nano), a Hugging Face directory, or a llama.cpp
    /// `.gguf` file (its weights are the start; with --lora they stay in their stored types).
    #[arg(long, default_value = "gpt-w2")]
    model: String,
    /// Start from a checkpoint directory's weights instead of a fresh model.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Training data from `plumb data prepare` (token stream or prompt/completion); default: the
    /// built-in movie-review corpus.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Held-out data (same kind); default: a held-out slice of the built-in corpus.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    #[arg(long, default_value_t = SftConfig::default().steps)]
    steps: usize,
    #[arg(long, default_value_t = SftConfig::default().batch_size)]
    batch_size: usize,
    #[arg(long, default_value_t = SftConfig::default().seq_len)]
    seq_len: usize,
    #[arg(long, default_value_t = SftConfig::default().grad_accum)]
    grad_accum: usize,
    /// Peak learning rate (warmup, then cosine to a tenth).
    #[arg(long, default_value_t = SftConfig::default().schedule.lr)]
    lr: f32,
    #[arg(long, default_value_t = SftConfig::default().schedule.warmup)]
    warmup: usize,
    #[arg(long, default_value_t = SftConfig::default().eval_every)]
    eval_every: usize,
    #[arg(long, default_value_t = SftConfig::default().save_every)]
    save_every: usize,
    /// Output directory for checkpoints and metrics.jsonl.
    #[arg(long, default_value = "runs/sft")]
    out: PathBuf,
    /// Continue from `<out>/latest` (an error when there is no valid checkpoint there).
    #[arg(long)]
    resume: bool,
    /// Replace a finished or killed run in --out (its checkpoints and metrics are deleted first).
    #[arg(long)]
    overwrite: bool,
    /// With --resume: accept settings (lr, batch, data, model, ...) other than the checkpoint's.
    #[arg(long)]
    allow_changed_settings: bool,
    /// Skip the checksum check of the data files' token ids (a full read) before training.
    #[arg(long)]
    no_verify: bool,
    /// Recompute each transformer block in the backward instead of keeping its activations:
    /// less GPU memory, one more forward per step, the same losses and gradients.
    #[arg(long)]
    checkpoint_activations: bool,
    #[arg(long, default_value_t = SftConfig::default().seed)]
    seed: u64,
    /// Train a LoRA adapter of this rank on the frozen base instead of every weight; saved in
    /// PEFT's layout to <out>/adapter.
    #[arg(long)]
    lora: Option<usize>,
    /// LoRA alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = plumb::lora::LoraConfig::default().alpha)]
    lora_alpha: f32,
    /// Samples to print at the end.
    #[arg(long, default_value_t = 4)]
    samples: usize,
}

/// Byte-level corpus of the built-in sentences, one per line; (train, held-out) split 95/5.
pub fn builtin_corpus() -> Result<(Vec<u32>, Vec<u32>, Vec<String>)> {
    let (mut train, mut held, mut held_text) = (vec![], vec![], vec![]);
    for s in movie_reviews()? {
        let bytes = s.text.bytes().map(u32::from).chain(std::iter::once(b'\n' as u32));
        if s.id % 20 == 0 {
            held.extend(bytes);
            held_text.push(s.text);
        } else {
            train.extend(bytes);
        }
    }
    Ok((train, held, held_text))
}

/// A training source from a prepared file, checked against the model first (ids, vocabulary,
/// tokenizer, token checksum unless `verify` is off).
fn source(path: &PathBuf, seed: u64, model: &Model, model_dir: Option<&std::path::Path>, verify: bool) -> Result<Box<dyn BatchSource>> {
    let ds = Dataset::open(path)?;
    crate::common::check_dataset(&ds, model, model_dir, verify)?;
    let kind = ds.kind();
    Ok(match kind {
        DatasetKind::TokenStream => Box::new(StreamSource::from_file(TokenStream::open(path)?, seed)),
        DatasetKind::PromptCompletion => Box::new(SftSource::new(SftDataset::open(path)?, seed, 0)?),
        k => return Err(Error::config("--data", format!("{} holds {} rows; sft takes a token stream or prompt/completion rows", path.display(), k.name()))),
    })
}

pub fn run(a: SftArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    // a GGUF file as --model starts from its weights, as --init would
    let init = a.init.clone().or_else(|| Some(PathBuf::from(&a.model)).filter(|p| crate::common::is_gguf(p)));
    let mut model = match &init {
        Some(dir) => crate::common::load_model(&gpu, dir, a.lora.is_some())?,
        None => Model::new(&gpu, &presets::resolve(&a.model)?, a.seed)?,
    };
    println!("model: {} parameters on {}", model.params().numel(), gpu.adapter().info.name);
    if let Some(r) = a.lora {
        model.add_lora(&plumb::lora::LoraConfig { r, alpha: a.lora_alpha, ..Default::default() }, a.seed)?;
        println!("{}", crate::common::lora_line(&model, r));
    }
    let model = model;
    let model_dir = init.clone().or_else(|| Some(PathBuf::from(&a.model)).filter(|p| p.is_dir()));
    let source = |p: &PathBuf, seed: u64| source(p, seed, &model, model_dir.as_deref(), !a.no_verify);
    let (train, eval, prompts): (Box<dyn BatchSource>, Option<Box<dyn BatchSource>>, Vec<String>) = match &a.data {
        Some(p) => (source(p, a.seed)?, a.eval_data.as_ref().map(|e| source(e, a.seed ^ 1)).transpose()?, vec![]),
        None => {
            if model.vocab_size() != 256 {
                return Err(Error::config("--model", "the built-in corpus is byte-level: use a model with vocab_size 256"));
            }
            let (tr, ev, text) = builtin_corpus()?;
            println!("data: built-in movie reviews, {} training bytes, {} held-out bytes", tr.len(), ev.len());
            (
                Box::new(StreamSource::from_tokens(tr, a.seed, "movie reviews (train)")),
                Some(Box::new(StreamSource::from_tokens(ev, a.seed ^ 1, "movie reviews (held out)"))),
                text.iter().take(a.samples).map(|t| t.split(' ').take(3).collect::<Vec<_>>().join(" ")).collect(),
            )
        }
    };
    let cfg = SftConfig {
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        steps: a.steps,
        grad_accum: a.grad_accum,
        schedule: Schedule { lr: a.lr, warmup: a.warmup, total: a.steps, min_lr: a.lr / 10.0 },
        eval_every: a.eval_every,
        save_every: a.save_every,
        out_dir: Some(a.out.clone()),
        resume: a.resume,
        run: RunOptions { overwrite: a.overwrite, allow_changed_settings: a.allow_changed_settings },
        seed: a.seed,
        progress: true,
        checkpoint_activations: a.checkpoint_activations,
        ..SftConfig::default()
    };
    let report = sft::train(&model, train.as_ref(), eval.as_deref(), &cfg)?;
    if let (Some(first), Some(last)) = (report.losses.first(), report.losses.last()) {
        println!("train loss {first:.3} -> {last:.3} over steps {}..{}, {:.0} tokens/s", report.start_step, a.steps, report.tokens_per_s);
    }
    for (s, l) in &report.evals {
        println!("held-out loss at step {s}: {l:.3}");
    }
    println!("checkpoint: {}", crate::common::final_checkpoint(&a.out));
    if a.lora.is_some() {
        model.save_lora(&a.out.join("adapter"))?;
        println!("adapter (PEFT layout): {}", a.out.join("adapter").display());
    }
    if !prompts.is_empty() {
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.bytes().map(u32::from).collect()).collect();
        let gen = GenerateConfig {
            max_new_tokens: 96.min(model.max_len().saturating_sub(ids.iter().map(|x| x.len()).max().unwrap_or(0))),
            sampling: SamplingConfig { temperature: 0.8, top_k: 0, top_p: 0.95 },
            stop_ids: vec![b'\n' as u32],
            seed: a.seed,
            pad_id: b' ' as u32,
        };
        println!("samples:");
        for (p, out) in prompts.iter().zip(generate(&model, &ids, &gen)?) {
            let bytes: Vec<u8> = out.iter().filter(|&&t| t != b'\n' as u32).map(|&t| t as u8).collect();
            let text = String::from_utf8_lossy(&bytes);
            println!("  {p}{text}");
        }
    }
    Ok(())
}
