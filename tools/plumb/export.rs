//! `plumb export`: a model (Hugging Face directory or GGUF file) with a PEFT adapter merged in,
//! written as a Hugging Face directory (safetensors) or a GGUF file (the GGUF base's own types,
//! quantized again on the CPU after the merge; or f16 / f32 matrices); or the
//! adapter alone as a llama.cpp GGUF LoRA adapter (`--format lora-gguf`, loaded by llama.cpp's
//! `--lora`).

use plumb::gguf::model::{save_lora_gguf, save_model_gguf, save_model_gguf_like};
use plumb::gguf::{GgmlType, GgufFile};
use plumb::model::Model;
use plumb::{Error, Gpu, Result};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// A Hugging Face directory: config.json + model.safetensors (+ tokenizer).
    Safetensors,
    /// One GGUF file in the GGUF base's own types tensor by tensor (Q4_1 stays Q4_1, a Q8_0
    /// embedding Q8_0; adapted matrices quantized again after the merge); f16 for other bases.
    Gguf,
    /// One GGUF file, matrices in f16 (norms and biases f32), as llama.cpp's converter writes.
    GgufF16,
    /// One GGUF file in f32.
    GgufF32,
    /// The adapter alone, as llama.cpp's GGUF LoRA adapter (no merge).
    LoraGguf,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  plumb export SmolLM2-135M-Instruct.Q4_1.gguf --adapter runs/dpo/adapter --out merged --format safetensors
  plumb export SmolLM2-135M-Instruct.Q4_1.gguf --adapter runs/dpo/adapter --out merged.Q4_1.gguf --format gguf
  plumb export SmolLM2-135M-Instruct.Q4_1.gguf --adapter runs/dpo/adapter --out adapter.gguf --format lora-gguf
  llama-cli -m SmolLM2-135M-Instruct.Q4_1.gguf --lora adapter.gguf -p 'Hi'")]
pub struct ExportArgs {
    /// The base model: a Hugging Face directory or a .gguf file.
    model: PathBuf,
    /// A PEFT adapter directory (adapter_config.json + adapter_model.safetensors) to merge or convert.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Output directory (safetensors) or file (gguf, gguf-f16, gguf-f32, lora-gguf).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "safetensors")]
    format: ExportFormat,
}

fn is_gguf(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "gguf")
}

pub fn run(a: ExportArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    let mut model = Model::load(&gpu, &a.model)?;
    if let Some(dir) = &a.adapter {
        model.load_lora(dir)?;
    }
    let src = if is_gguf(&a.model) { Some(GgufFile::open(&a.model)?) } else { None };
    match a.format {
        ExportFormat::LoraGguf => {
            if a.adapter.is_none() {
                return Err(Error::config("--format lora-gguf", "needs --adapter DIR"));
            }
            save_lora_gguf(&model, GgmlType::F32, &a.out)?;
        }
        fmt => {
            if model.lora().is_some() {
                model.merge_lora()?;
            }
            match fmt {
                ExportFormat::Safetensors => {
                    model.save(&a.out)?;
                    let tok = match &src {
                        Some(g) if g.get("tokenizer.ggml.model").is_some() => {
                            Some(plumb::gguf::tokenizer::tokenizer_from_gguf(g)?)
                        }
                        Some(_) => None, // a GGUF without a vocabulary: weights only
                        None if a.model.join("tokenizer.json").is_file() => {
                            Some(plumb::tokenizer::Tokenizer::from_file(a.model.join("tokenizer.json"))?)
                        }
                        None => None,
                    };
                    if let Some(t) = tok {
                        t.save(a.out.join("tokenizer.json"))?;
                    }
                }
                ExportFormat::Gguf => match &src {
                    Some(g) => save_model_gguf_like(&model, g, &a.out)?,
                    None => save_model_gguf(&model, None, GgmlType::F16, &a.out)?,
                },
                ExportFormat::GgufF16 => save_model_gguf(&model, src.as_ref(), GgmlType::F16, &a.out)?,
                ExportFormat::GgufF32 => save_model_gguf(&model, src.as_ref(), GgmlType::F32, &a.out)?,
                ExportFormat::LoraGguf => unreachable!("handled above"),
            }
        }
    }
    println!("wrote {}", a.out.display());
    Ok(())
}
