//! `plumb generate`: sample continuations from a checkpoint with the KV-cache generator. A GGUF
//! model keeps its matrices in their stored types on the GPU (as `plumb dpo --lora` trains on
//! it), with an adapter from such a run on top; `--f32` dequantizes it instead.

use plumb::generate::{generate, GenerateConfig};
use plumb::ops::sample::SamplingConfig;
use plumb::tokenizer::Tokenizer;
use plumb::{Error, Gpu, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  plumb generate runs/sft/checkpoint-300 --prompt 'This movie' --prompt 'The acting'
  plumb generate DIR --prompt 'Once' --temperature 0     # greedy
  plumb generate DIR --prompt 'Hello' --tokenizer gpt2 --top-p 0.9 --seed 3
  plumb generate SmolLM2-135M-Instruct.Q4_1.gguf --chat 'Write one sentence about a good movie.' --temperature 0
  plumb generate SmolLM2-135M-Instruct.Q4_1.gguf --adapter runs/dpo/adapter --chat 'Write one sentence from a movie review.'")]
pub struct GenerateArgs {
    /// A checkpoint or Hugging Face directory (config.json + model.safetensors), or a .gguf file.
    model: PathBuf,
    /// Prompt text; repeat for a batch.
    #[arg(long, required_unless_present = "chat")]
    prompt: Vec<String>,
    /// A user message, rendered with the model's own chat template (built-in ChatML when it has
    /// none) and the assistant's generation prompt; repeat for a batch.
    #[arg(long)]
    chat: Vec<String>,
    /// A PEFT adapter directory to apply (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Dequantize a GGUF model's matrices to f32 parameters instead of sampling from them in
    /// their stored types (4x the memory for a Q4 file, the same tokens up to rounding).
    #[arg(long)]
    f32: bool,
    /// byte, gpt2, or a tokenizer.json; default: the directory's tokenizer.json, else byte.
    #[arg(long)]
    tokenizer: Option<String>,
    #[arg(long, default_value_t = GenerateConfig::default().max_new_tokens)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = SamplingConfig::READABLE.temperature)]
    temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = SamplingConfig::READABLE.top_k)]
    top_k: usize,
    #[arg(long, default_value_t = SamplingConfig::READABLE.top_p)]
    top_p: f32,
    #[arg(long, default_value_t = GenerateConfig::default().seed)]
    seed: u64,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let tok = match a.tokenizer.as_deref() {
        Some("byte") => Tokenizer::byte_level(),
        Some("gpt2") => Tokenizer::gpt2_builtin()?,
        Some(p) => crate::common::load_tokenizer(p)?,
        None if a.model.extension().is_some_and(|e| e == "gguf") => {
            plumb::gguf::tokenizer::tokenizer_from_gguf(&plumb::gguf::GgufFile::open(&a.model)?)?
        }
        None if a.model.join("tokenizer.json").exists() => Tokenizer::from_file(a.model.join("tokenizer.json"))?,
        None => Tokenizer::byte_level(),
    };
    let gpu = Gpu::new()?;
    let mut model = crate::common::load_model(&gpu, &a.model, !a.f32)?;
    if let Some(dir) = &a.adapter {
        model.load_lora(dir)?;
        eprintln!("adapter: {}", dir.display());
    }
    let own = a.model.join("tokenizer.json");
    if a.tokenizer.is_some() && own.is_file() && Tokenizer::from_file(&own)?.identity() != tok.identity() {
        return Err(Error::config(
            "--tokenizer",
            format!("{} is not the model's tokenizer ({}); omit --tokenizer to use the model's", tok.name(), own.display()),
        ));
    }
    if tok.vocab_size() > model.vocab_size() {
        return Err(Error::config("--tokenizer", format!("{} tokens, the model has {}", tok.vocab_size(), model.vocab_size())));
    }
    let template = plumb::chat_template::ChatTemplate::for_tokenizer(&tok)?;
    let mut texts = a.prompt.clone();
    for c in &a.chat {
        texts.push(template.render(&[plumb::data::chat::Message::new("user", c.as_str())], true)?);
    }
    let prompts = texts.iter().map(|p| tok.encode(p)).collect::<Result<Vec<_>>>()?;
    // Byte-level models trained on plumb's corpus end sentences with a newline.
    let stop: Vec<u32> = match tok.eos_id() {
        Some(e) => vec![e],
        None if tok.vocab_size() == 256 => vec![b'\n' as u32],
        None => vec![],
    };
    let cfg = GenerateConfig {
        max_new_tokens: a.max_new_tokens,
        sampling: SamplingConfig { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p },
        stop_ids: stop.clone(),
        seed: a.seed,
        pad_id: tok.pad_id().or(tok.eos_id()).unwrap_or(0),
    };
    for (p, out) in texts.iter().zip(generate(&model, &prompts, &cfg)?) {
        let body: Vec<u32> = out.into_iter().filter(|t| !stop.contains(t)).collect();
        println!("{p}{}", tok.decode(&body)?);
    }
    Ok(())
}
