//! LoRA in a few lines (README's library tour): attach an adapter to a small Llama, train it
//! with the SFT trainer, take a reference pass with the adapter off, save it in PEFT's layout,
//! merge it into the weights. `cargo run --release --example lora`
use plumb::lora::LoraConfig;
use plumb::model::{presets, Model};
use plumb::train::{batch::StreamSource, sft};

fn main() -> plumb::Result<()> {
    let gpu = plumb::Gpu::new()?;
    let data = StreamSource::from_tokens(b"hello plumb\n".repeat(500).iter().map(|&b| b as u32).collect(), 0, "toy");
    let mut model = Model::new(&gpu, &presets::resolve("llama-nano")?, 0)?;
    model.add_lora(&LoraConfig { r: 8, alpha: 16.0, target_modules: vec!["q_proj".into(), "v_proj".into()] }, 0)?;
    println!("training {} of {} parameters", model.trainable().numel(), model.params().numel());
    let report = sft::train(&model, &data, None, &sft::SftConfig { steps: 50, seq_len: 32, ..Default::default() })?;
    println!("loss {:.3} -> {:.3}", report.losses[0], report.losses[report.losses.len() - 1]);
    let ids = plumb::Tensor::from_u32(&gpu, &[104, 101, 108, 108, 111], &[1, 5])?; // "hello"
    model.set_adapters_enabled(false); // a reference pass: the base model
    let reference = model.forward(None, &ids, None)?;
    model.set_adapters_enabled(true);
    let adapted = model.forward(None, &ids, None)?;
    let diff = reference.to_f32_vec()?.iter().zip(adapted.to_f32_vec()?).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    println!("largest logit change from the adapter: {diff:.3}");
    let dir = std::env::temp_dir().join("plumb-lora-example");
    model.save_lora(&dir)?; // adapter_model.safetensors + adapter_config.json, PEFT layout
    println!("adapter saved to {}", dir.display());
    model.merge_lora()?; // W += (alpha/r)·B·A; the adapter is dropped
    Ok(())
}
