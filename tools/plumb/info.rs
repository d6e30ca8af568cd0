//! `plumb info`: what wgpu sees on this machine and which adapter plumb picks, so a user can
//! tell at a glance whether a GPU driver is installed and whether f16 is available. With
//! `--model` it prints the memory plan of a training step on the chosen adapter (weights,
//! gradients, moments, activations, largest temporaries) and whether it fits.

use plumb::gpu::{list_adapters, GpuOptions};
use plumb::model::memory::{plan, PlanOptions};
use plumb::model::presets;
use plumb::Gpu;

#[derive(clap::Args)]
pub struct InfoArgs {
    /// Only list adapters of this backend (vulkan, metal, dx12, gl); default: PLUMB_BACKEND or all.
    #[arg(long)]
    backend: Option<String>,
    /// Print the memory plan of training this model: a preset name, a checkpoint directory, a
    /// config.json, or a llama.cpp .gguf file (with --lora: its matrices in their stored types).
    #[arg(long)]
    model: Option<String>,
    /// Plan for a LoRA adapter of this rank (default targets) instead of full fine-tuning.
    #[arg(long)]
    lora: Option<usize>,
    /// Sequences per step for the plan [default: plumb sft's].
    #[arg(long, default_value_t = plumb::train::sft::SftConfig::default().batch_size)]
    batch_size: usize,
    /// Tokens per sequence for the plan [default: plumb sft's].
    #[arg(long, default_value_t = plumb::train::sft::SftConfig::default().seq_len)]
    seq_len: usize,
    /// Plan with activation checkpointing.
    #[arg(long)]
    checkpoint_activations: bool,
}

pub fn run(args: InfoArgs) -> plumb::Result<()> {
    let mut opts = GpuOptions::from_env()?;
    if args.backend.is_some() {
        opts.backend = args.backend;
    }
    let adapters = list_adapters(opts.backend.as_deref())?;
    println!("adapters seen: {}", adapters.len());
    for (i, a) in adapters.iter().enumerate() {
        println!("[{i}] {a}");
    }
    let gpu = Gpu::with_options(&opts)?;
    println!();
    println!("chosen: {} ({:?}, {:?})", gpu.adapter().info.name, gpu.adapter().info.backend, gpu.adapter().info.device_type);
    println!("kernel variant: {:?} (override with PLUMB_KERNELS=register|tiled)", gpu.variant());
    println!("f16 matmul: {}", if gpu.has_f16() { "available" } else { "not available (f32 path)" });
    if let Some(m) = &args.model {
        let path = std::path::Path::new(m);
        let gguf = path.is_file() && path.extension().is_some_and(|e| e == "gguf");
        let footprint = if gguf { Some(plumb::gguf::model::stored_footprint(path)?) } else { None };
        let cfg = match &footprint {
            Some((cfg, ..)) => cfg.clone(),
            None => presets::resolve(m)?,
        };
        // `plumb dpo --model FILE.gguf --lora R` keeps the file's matrices as they are stored.
        let stored_base = match (&footprint, args.lora) {
            (Some((_, stored, types, _)), Some(_)) => Some((*stored, types.join(" + "))),
            _ => None,
        };
        let opts = PlanOptions {
            batch_size: args.batch_size,
            seq_len: args.seq_len,
            lora_rank: args.lora,
            checkpoint_activations: args.checkpoint_activations,
            stored_base,
        };
        let p = plan(&cfg, &opts, gpu.max_binding_bytes(), gpu.memory_budget());
        println!();
        println!("memory plan: {m}, batch {} x {} tokens, {}", args.batch_size, args.seq_len, match args.lora {
            Some(r) => format!("LoRA r={r}"),
            None => "full fine-tuning".into(),
        });
        println!("{p}");
    }
    Ok(())
}
