//! What the alignment subcommands (reward, dpo, kto, ppo, grpo, rloo) share: the flags every one has, finding
//! the starting checkpoint, the built-in byte-level data and its checks, tokenizers, samples.

use plumb::align::{Pair, TrainConfig};
use plumb::data::{Dataset, DatasetKind, DatasetWriter, PreferenceDataset, PromptDataset};
use plumb::demo::data::{self as demo, Split};
use plumb::generate::{generate, GenerateConfig};
use plumb::model::Model;
use plumb::ops::sample::SamplingConfig;
use plumb::tokenizer::Tokenizer;
use plumb::train::{checkpoint, schedule::Schedule};
use plumb::{Error, Gpu, Result};
use std::path::{Path, PathBuf};

/// Flags with the same meaning and default in every alignment command.
#[derive(clap::Args)]
pub struct CommonArgs {
    /// Starting model: a checkpoint directory, a run directory (its newest checkpoint), or a
    /// llama.cpp `.gguf` file (with --lora its matrices stay in their stored types on the GPU).
    #[arg(long, alias = "model", default_value = "runs/sft")]
    pub init: PathBuf,
    /// Longest row (prompt + completion) in tokens; default: min(128, the model's positions).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Longest prompt kept (its end); default: min(64, max-len / 2).
    #[arg(long)]
    pub max_prompt_len: Option<usize>,
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    pub seed: u64,
    /// Micro-batches per optimizer step (TRL's gradient_accumulation_steps): each step learns
    /// from grad-accum × --batch-size items with the memory of --batch-size.
    #[arg(long, default_value_t = TrainConfig::default().grad_accum)]
    pub grad_accum: usize,
    /// Replace a finished or killed run in --out (its checkpoints and metrics are deleted first).
    #[arg(long)]
    pub overwrite: bool,
    /// Continue the run in --out from its latest checkpoint, exactly where it stopped (or was
    /// killed): weights, adapter, optimizer moments, the method's state, data position.
    #[arg(long)]
    pub resume: bool,
    /// With --resume: accept settings other than the checkpoint's (each change is printed).
    #[arg(long)]
    pub allow_changed_settings: bool,
    /// Save a checkpoint every N steps (default: only at the end).
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Skip the checksum check of the data file's token ids (a full read) before training.
    #[arg(long)]
    pub no_verify: bool,
    /// Recompute each transformer block in the backward instead of keeping its activations:
    /// less GPU memory, one more forward per step, the same losses and gradients.
    #[arg(long)]
    pub checkpoint_activations: bool,
}

/// The checkpoint `dir` names: itself when it holds config.json, else the run's newest.
pub fn resolve_init(dir: &Path) -> Result<PathBuf> {
    if dir.join("config.json").is_file() || (dir.is_file() && dir.extension().is_some_and(|e| e == "gguf")) {
        return Ok(dir.to_path_buf());
    }
    checkpoint::latest(dir).ok_or_else(|| {
        Error::config(
            "--init",
            format!("{}: no checkpoint (config.json) and no run with a `latest` checkpoint there; run `plumb sft` first or pass --init DIR", dir.display()),
        )
    })
}

/// Resolve `--init` (before touching the GPU), open the GPU and load the model; returns the
/// checkpoint path too, so a frozen reference can be loaded from it a second time. A `.gguf`
/// file to be trained with a LoRA adapter (`lora`) loads in stored form: its quantized matrices
/// stay as the file holds them, frozen, and no f32 copy is made; without an adapter (full
/// fine-tuning) every weight is dequantized to f32 parameters.
pub fn load_init(dir: &Path, lora: bool) -> Result<(Gpu, PathBuf, Model)> {
    let path = resolve_init(dir)?;
    let gpu = Gpu::new()?;
    let model = load_model(&gpu, &path, lora)?;
    let kind = if model.frozen().is_some() { "f32 parameters beside the frozen matrices" } else { "parameters" };
    println!("init: {} ({} {kind}) on {}", path.display(), model.params().numel(), gpu.adapter().info.name);
    Ok((gpu, path, model))
}

/// Whether `p` names a llama.cpp GGUF file.
pub fn is_gguf(p: &Path) -> bool {
    p.is_file() && p.extension().is_some_and(|e| e == "gguf")
}

/// Load a checkpoint, Hugging Face directory or GGUF file; a GGUF file in stored form when
/// `stored` (the base of a LoRA adapter, or generation), else dequantized to f32.
pub fn load_model(gpu: &Gpu, path: &Path, stored: bool) -> Result<Model> {
    if !(stored && is_gguf(path)) {
        return Model::load(gpu, path);
    }
    let model = plumb::gguf::model::load_model_stored(gpu, path)?;
    if let Some(f) = model.frozen() {
        eprintln!("base: {} in stored form, {:.1} MiB of frozen matrices on the GPU", path.display(), f.bytes() as f64 / (1u64 << 20) as f64);
    }
    Ok(model)
}

/// The row length limits for `model`: (max_len, max_prompt_len).
pub fn lengths(c: &CommonArgs, model: &Model) -> Result<(usize, usize)> {
    let max_len = c.max_len.unwrap_or(128.min(model.max_len()));
    if max_len < 2 || max_len > model.max_len() {
        return Err(Error::config("--max-len", format!("{max_len} must be between 2 and the model's {} positions", model.max_len())));
    }
    let prompt = c.max_prompt_len.unwrap_or(64.min(max_len / 2));
    if prompt == 0 || prompt >= max_len {
        return Err(Error::config("--max-prompt-len", format!("{prompt} must be positive and below --max-len {max_len}")));
    }
    Ok((max_len, prompt))
}

/// The trainers' shared settings; `warmup` steps of linear warmup, then cosine to lr/10.
pub fn train_config(c: &CommonArgs, model: &Model, steps: usize, batch_size: usize, schedule: Schedule, out: &Path) -> Result<TrainConfig> {
    let (max_len, max_prompt_len) = lengths(c, model)?;
    let run = plumb::train::rundir::RunOptions { overwrite: c.overwrite, allow_changed_settings: c.allow_changed_settings };
    let d = TrainConfig::default();
    Ok(TrainConfig {
        steps,
        batch_size,
        grad_accum: c.grad_accum,
        max_len,
        max_prompt_len,
        schedule,
        seed: c.seed,
        out_dir: Some(out.to_path_buf()),
        save_every: c.save_every.unwrap_or(d.save_every),
        resume: c.resume,
        progress: true,
        run,
        checkpoint_activations: c.checkpoint_activations,
        ..d
    })
}

/// Warmup over the first tenth of the run (at most 10 steps), cosine to lr/10.
pub fn cosine(lr: f32, steps: usize) -> Schedule {
    Schedule { lr, warmup: (steps / 10).min(10), total: steps, min_lr: lr / 10.0 }
}

/// The built-in data is byte-level: the model must have 256 token ids.
pub fn check_byte_level(model: &Model) -> Result<()> {
    if model.vocab_size() != 256 {
        return Err(Error::config(
            "--init",
            format!("the built-in data is byte-level but the model has {} token ids, not 256; pass --data FILE from `plumb data prepare`", model.vocab_size()),
        ));
    }
    Ok(())
}

/// A data file must fit the model before step 0: its token ids intact (checksum, unless
/// `verify` is off), prepared with a vocabulary no larger than the model's, every id below the
/// model's vocabulary, and the same tokenizer as the model's `tokenizer.json` when both are known.
pub fn check_dataset(d: &Dataset, model: &Model, model_dir: Option<&Path>, verify: bool) -> Result<()> {
    let path = d.path();
    if verify && !d.verify_tokens()? {
        eprintln!("warning: {}: no checksum of the token ids (prepared by an older plumb); re-run `plumb data prepare` to add one", path.display());
    }
    let mismatch = |msg: String| Err(Error::config("--data", format!("{}: {msg}", path.display())));
    if d.vocab_size() as usize > model.vocab_size() {
        return mismatch(format!(
            "prepared with a tokenizer of {} token ids but the model has {} (another tokenizer?); prepare the data with the model's tokenizer",
            d.vocab_size(),
            model.vocab_size()
        ));
    }
    if let Some(m) = d.max_token_id().filter(|&m| m as usize >= model.vocab_size()) {
        return mismatch(format!("holds token id {m} but the model has {} token ids (another tokenizer?)", model.vocab_size()));
    }
    let model_tok = model_dir.map(|dir| dir.join("tokenizer.json")).filter(|t| t.is_file());
    if let (Some(id), Some(t)) = (d.tokenizer_id(), model_tok) {
        if Tokenizer::from_file(&t)?.identity() != id {
            return mismatch(format!("was prepared with another tokenizer than the model's {}", t.display()));
        }
    }
    // a GGUF model's tokenizer is in the file itself
    if let (Some(id), Some(g)) = (d.tokenizer_id(), model_dir.filter(|p| is_gguf(p))) {
        if load_tokenizer(&g.display().to_string())?.identity() != id {
            return mismatch(format!("was prepared with another tokenizer than the one in {}; prepare it with --tokenizer {}", g.display(), g.display()));
        }
    }
    Ok(())
}

/// Built-in human preference pairs of `split` (movie reviews whose mean ratings differ by at
/// least 2 of 8 points) that fit in `max_len` tokens, at most `max`.
pub fn builtin_pairs(split: Split, max_len: usize, max: usize) -> Result<Vec<Pair>> {
    demo::preference_pairs(&plumb::tokenizer::Tokenizer::byte_level(), split, 2.0, max_len.saturating_sub(2).min(120), max)
}

/// Preference pairs from a prepared file, checked against the model.
pub fn open_pairs(path: &Path, model: &Model, c: &CommonArgs) -> Result<PreferenceDataset> {
    let d = PreferenceDataset::open(path)?;
    if d.is_empty() {
        return Err(Error::format(path, "no preference pairs"));
    }
    check_dataset(d.dataset(), model, Some(&resolve_init(&c.init)?), !c.no_verify)?;
    Ok(d)
}

/// The built-in human preference pairs of `split` in chat form for a GGUF model (`init`): the
/// model's tokenizer and chat template, the user asking for a movie-review sentence, the
/// better-rated sentence chosen, each completion ending with the model's EOS (end of turn);
/// pairs longer than `max_len` tokens left out, at most `max`. None when `init` is no GGUF file.
pub fn builtin_chat_pairs(init: &Path, split: Split, max_len: usize, max: usize) -> Result<Option<Vec<Pair>>> {
    if !is_gguf(init) {
        return Ok(None);
    }
    let tok = load_tokenizer(&init.display().to_string())?;
    let template = plumb::chat_template::ChatTemplate::for_tokenizer(&tok)?;
    let end = tok.eos_id().ok_or_else(|| Error::format(init, "the built-in chat pairs end each answer with EOS, and the tokenizer has none"))?;
    let all = demo::chat_preference_pairs(&tok, &template, end, split, 2.0, 120, usize::MAX)?;
    let fits = |p: &Pair| p.prompt.len() + p.chosen.len().max(p.rejected.len()) <= max_len;
    Ok(Some(all.into_iter().filter(fits).take(max).collect()))
}

/// Write pairs to a preference file of `vocab` token ids (room reserved for reference log-probs).
pub fn write_pairs(path: &Path, pairs: &[Pair], vocab: usize) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut w = DatasetWriter::create(path, DatasetKind::Preference, vocab as u32, None)?;
    w.reserve_reference_logps()?;
    for p in pairs {
        w.push_row(&[&p.prompt, &p.chosen, &p.rejected])?;
    }
    w.finish()
}

/// Prompts for PPO / GRPO and the token that ends a completion: the built-in review openings
/// ("\nThe film ", stop at '\n') or a prompts file (stop at its EOS, if any). Prompts keep their
/// last `max_prompt` tokens.
pub fn prompts(data: Option<&Path>, model: &Model, max_prompt: usize, c: &CommonArgs) -> Result<(Vec<Vec<u32>>, Vec<u32>)> {
    let (all, stop) = match data {
        None => {
            check_byte_level(model)?;
            let o = demo::openings(&plumb::tokenizer::Tokenizer::byte_level(), Split::Rl, 2)?;
            println!("data: {} built-in movie-review openings", o.len());
            (o, vec![demo::NEWLINE])
        }
        Some(path) => {
            let d = PromptDataset::open(path)?;
            check_dataset(d.dataset(), model, Some(&resolve_init(&c.init)?), !c.no_verify)?;
            let all: Vec<Vec<u32>> = (0..d.len()).filter_map(|i| d.get(i)).map(|t| t.to_vec()).filter(|p| !p.is_empty()).collect();
            if all.is_empty() {
                return Err(Error::format(path, "no non-empty prompts"));
            }
            println!("data: {} prompts from {}", all.len(), path.display());
            (all, d.dataset().eos_id().into_iter().collect())
        }
    };
    Ok((all.into_iter().map(|p| p[p.len().saturating_sub(max_prompt)..].to_vec()).collect(), stop))
}

/// A PPO / GRPO rollout must fit the model: longest prompt + new tokens ≤ positions.
pub fn check_rollout_fits(prompts: &[Vec<u32>], max_new: usize, model: &Model) -> Result<()> {
    let p = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if p + max_new > model.max_len() {
        return Err(Error::config("--max-new-tokens", format!("prompts of up to {p} tokens + {max_new} new tokens exceed the model's {} positions", model.max_len())));
    }
    Ok(())
}

/// `byte`, `gpt2` (built in), or a tokenizer.json path (or a directory holding one).
pub fn load_tokenizer(spec: &str) -> Result<Tokenizer> {
    match spec {
        "byte" => Ok(Tokenizer::byte_level()),
        "gpt2" => Tokenizer::gpt2_builtin(),
        path if path.ends_with(".gguf") => plumb::gguf::tokenizer::tokenizer_from_gguf(&plumb::gguf::GgufFile::open(path)?),
        path => Tokenizer::from_file(path),
    }
}

/// Token ids to text: bytes for byte-level models, else a tokenizer; None: print the ids.
pub struct Decoder(Option<Tokenizer>, bool);

impl Decoder {
    /// From `--tokenizer` if given, else bytes when the vocabulary is 256.
    pub fn new(spec: Option<&str>, model: &Model) -> Result<Decoder> {
        Ok(Decoder(spec.map(load_tokenizer).transpose()?, model.vocab_size() == 256))
    }

    /// Whether text can be recovered at all.
    pub fn can_decode(&self) -> bool {
        self.0.is_some() || self.1
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        match (&self.0, self.1) {
            (Some(t), _) => t.decode(ids).unwrap_or_else(|e| format!("<{e}>")),
            (None, true) => demo::text(ids),
            (None, false) => format!("{ids:?}"),
        }
    }
}

/// Sample one completion for each of the first `n` prompts (temperature 0.8) and print them.
pub fn print_samples(model: &Model, prompts: &[Vec<u32>], n: usize, max_new: usize, stop: &[u32], dec: &Decoder, seed: u64) -> Result<()> {
    let ids: Vec<Vec<u32>> = prompts.iter().take(n).cloned().collect();
    if ids.is_empty() {
        return Ok(());
    }
    let cfg = GenerateConfig {
        max_new_tokens: max_new,
        sampling: SamplingConfig { temperature: 0.8, top_k: 0, top_p: 0.95 },
        stop_ids: stop.to_vec(),
        seed,
        pad_id: 0,
    };
    println!("samples:");
    for (p, out) in ids.iter().zip(generate(model, &ids, &cfg)?) {
        let body: Vec<u32> = out.into_iter().filter(|t| !stop.contains(t)).collect();
        println!("  {}|{}", dec.decode(p).trim_start(), dec.decode(&body));
    }
    Ok(())
}

/// The first and last value of metric `key` (its name in metrics.jsonl) over a run.
pub fn first_last<M: serde::Serialize>(m: &[M], key: &str) -> (f64, f64) {
    let get = |v: Option<&M>| v.and_then(|r| serde_json::to_value(r).ok()).and_then(|r| r[key].as_f64()).unwrap_or(f64::NAN);
    (get(m.first()), get(m.last()))
}

/// Print `key: first -> last` for each key.
pub fn print_first_last<M: serde::Serialize>(m: &[M], keys: &[&str]) {
    for k in keys {
        let (a, b) = first_last(m, k);
        println!("  {k:<28} {a:>9.4} -> {b:.4}");
    }
}

/// Where run_steps put the final checkpoint.
pub fn final_checkpoint(out: &Path) -> String {
    checkpoint::latest(out).map(|p| p.display().to_string()).unwrap_or_else(|| out.display().to_string())
}

/// A reward model directory: `dir` itself (config.json + model.safetensors), its `model/`
/// (a `plumb reward` run directory), or the run's newest checkpoint.
pub fn resolve_reward_model(dir: &Path) -> Result<PathBuf> {
    if dir.join("model.safetensors").is_file() {
        return Ok(dir.to_path_buf());
    }
    if dir.join("model").join("model.safetensors").is_file() {
        return Ok(dir.join("model"));
    }
    checkpoint::latest(dir).ok_or_else(|| {
        Error::config("--reward-model", format!("{}: no reward model (model.safetensors) there; run `plumb reward` first or pass --reward-model DIR", dir.display()))
    })
}

/// Load a reward model for `policy`'s tokens.
pub fn load_reward_model(gpu: &Gpu, dir: &Path, policy: &Model) -> Result<plumb::align::RewardModel> {
    let path = resolve_reward_model(dir)?;
    let rm = plumb::align::RewardModel::load(gpu, &path)?;
    if rm.model.vocab_size() != policy.vocab_size() {
        return Err(Error::config("--reward-model", format!("{} reads {} token ids, the policy writes {}", path.display(), rm.model.vocab_size(), policy.vocab_size())));
    }
    println!("reward model: {}", path.display());
    Ok(rm)
}

/// The line every trainer prints after attaching a LoRA adapter: its rank and how many of the
/// model's parameters (a frozen stored-form base included) train.
pub fn lora_line(model: &plumb::model::Model, r: usize) -> String {
    let frozen = model.frozen().map_or(0, |f| f.numel());
    format!("LoRA: rank {r}, {} trainable of {} parameters", model.trainable().numel(), model.params().numel() + frozen)
}
