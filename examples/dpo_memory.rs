//! Peak GPU memory of DPO on W3's model (gpt-w2; 8 pairs of 64 prompt + 64 response tokens) with
//! the three ways to get reference log-probs: a live frozen model, values precomputed into the
//! data, and LoRA adapters whose base model is the reference. Measured from plumb's buffer pool
//! (everything plumb allocates on the GPU: weights, gradients, AdamW moments, activations).
//!
//!     cargo run --release --example dpo_memory

use plumb::align::{Dpo, DpoTrainConfig, Pair, Reference, TrainConfig};
use plumb::model::{presets, Model};
use plumb::train::schedule::Schedule;
use plumb::{Gpu, Result};

fn pairs(reference: bool) -> Vec<Pair> {
    let tok = |i: usize, n: usize| (0..n).map(|k| ((i * 131 + k * 17) % 200 + 32) as u32).collect::<Vec<u32>>();
    (0..8)
        .map(|i| Pair { prompt: tok(i, 64), chosen: tok(i + 50, 64), rejected: tok(i + 90, 64), reference: reference.then_some([-300.0, -310.0]) })
        .collect()
}

fn main() -> Result<()> {
    let gpu = Gpu::new()?;
    let cfg = presets::resolve("gpt-w2")?;
    let train = TrainConfig { steps: 2, batch_size: 8, max_len: 128, max_prompt_len: 64, schedule: Schedule::constant(1e-4), ..Default::default() };
    let dpo = Dpo::new(DpoTrainConfig { train, ..Default::default() });
    println!("adapter: {}", gpu.adapter().info.name);
    for mode in ["live reference model", "precomputed reference", "LoRA r=8, base as reference"] {
        gpu.reset_peak();
        let mut policy = Model::new(&gpu, &cfg, 0)?;
        let t0 = std::time::Instant::now();
        match mode {
            "live reference model" => {
                let reference = Model::new(&gpu, &cfg, 0)?;
                dpo.train(&policy, &pairs(false), Reference::Model(&reference))?;
            }
            "precomputed reference" => {
                dpo.train(&policy, &pairs(true), Reference::Precomputed)?;
            }
            _ => {
                policy.add_lora(&plumb::lora::LoraConfig { r: 8, alpha: 16.0, ..Default::default() }, 0)?;
                dpo.train(&policy, &pairs(false), Reference::Adapters)?;
            }
        }
        let mib = gpu.peak_bytes() as f64 / (1 << 20) as f64;
        println!("{mode:<30} peak GPU memory {mib:7.1} MiB  ({} trainable parameters, {:.1} s for 2 steps)", policy.trainable().numel(), t0.elapsed().as_secs_f64());
    }
    Ok(())
}
