//! A device check for a real GPU: writes plumb checkpoints (GPT-2, Llama, a reward model, a LoRA
//! adapter and its merged model) with plumb's logits, loss and gradients under both kernel
//! variants, for `tools/device/check_hf.py` to compare with `transformers` and `peft` in f64.
//!
//!     cargo run --release --example device_check -- OUT_DIR
//!     python3 tools/device/check_hf.py OUT_DIR

use plumb::align::{RewardModel, SeqBatch};
use plumb::model::{presets, Model};
use plumb::ops::loss::cross_entropy;
use plumb::ops::optim::{AdamW, AdamWConfig};
use plumb::weights::save_f32;
use plumb::{Gpu, KernelVariant, Result, Tape, Tensor};
use std::collections::HashMap;
use std::path::Path;

const B: usize = 2;
const T: usize = 16;

/// A deterministic batch of ids in 1..255 (0 is the pad id) and next-token targets.
fn batch(vocab: usize) -> (Vec<u32>, Vec<u32>) {
    let seq: Vec<u32> = (0..B * (T + 1)).map(|i| 1 + ((i * 37 + 11) % (vocab - 1)) as u32).collect();
    let ids = seq.chunks(T + 1).flat_map(|c| c[..T].to_vec()).collect();
    let tg = seq.chunks(T + 1).flat_map(|c| c[1..].to_vec()).collect();
    (ids, tg)
}

type Named = (String, Vec<usize>, Vec<f32>);

/// Logits, loss and every gradient of one cross-entropy step of `model` on the batch.
fn step_dump(gpu: &Gpu, model: &Model, ids: &[u32], tg: &[u32]) -> Result<Vec<Named>> {
    let v = model.vocab_size();
    let idt = Tensor::from_u32(gpu, ids, &[B, T])?;
    let tgt = Tensor::from_u32(gpu, tg, &[B * T])?;
    let tape = Tape::new();
    let logits = model.forward(Some(&tape), &idt, None)?;
    let loss = cross_entropy(&logits, &tgt, None)?;
    tape.backward(&loss)?;
    let mut out: Vec<Named> = vec![("logits".into(), vec![B * T, v], logits.to_f32_vec()?), ("loss".into(), vec![1], loss.to_f32_vec()?)];
    let store = model.trainable();
    for e in store.entries() {
        out.push((format!("grad.{}", e.name), e.shape.clone(), store.grad(&e.name)?.to_f32_vec()?));
    }
    store.zero_grad()?;
    Ok(out)
}

fn save(path: &Path, t: Vec<Named>) -> Result<()> {
    save_f32(path, &t, HashMap::new())
}

fn main() -> Result<()> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "device-check".into());
    let out = Path::new(&out);
    let gpu = Gpu::new()?;
    println!("adapter: {} ({:?}, {:?})", gpu.adapter().info.name, gpu.adapter().info.backend, gpu.adapter().info.device_type);
    for (name, preset) in [("gpt", "gpt-demo"), ("llama", "llama-nano")] {
        let dir = out.join(name);
        let mut model = Model::new(&gpu, &presets::resolve(preset)?, 1)?;
        model.save(&dir)?;
        let (ids, tg) = batch(model.vocab_size());
        let as_f32 = |x: &[u32]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        save(&dir.join("batch.safetensors"), vec![("ids".into(), vec![B, T], as_f32(&ids)), ("targets".into(), vec![B, T], as_f32(&tg))])?;
        for v in [KernelVariant::Register, KernelVariant::Tiled] {
            gpu.set_variant(v);
            save(&dir.join(format!("plumb_{v:?}.safetensors").to_lowercase()), step_dump(&gpu, &model, &ids, &tg)?)?;
        }
        // LoRA: a few steps so that B != 0, then the adapter, its logits, and the merged model.
        model.add_lora(&plumb::lora::LoraConfig { r: 4, alpha: 8.0, ..Default::default() }, 3)?;
        let mut opt = AdamW::new(model.trainable(), AdamWConfig::default())?;
        for _ in 0..3 {
            step_dump(&gpu, &model, &ids, &tg)?;
            let idt = Tensor::from_u32(&gpu, &ids, &[B, T])?;
            let tape = Tape::new();
            let loss = cross_entropy(&model.forward(Some(&tape), &idt, None)?, &Tensor::from_u32(&gpu, &tg, &[B * T])?, None)?;
            tape.backward(&loss)?;
            opt.step(model.trainable(), 1e-2)?;
            model.trainable().zero_grad()?;
        }
        let lora_logits = step_dump(&gpu, &model, &ids, &tg)?.remove(0);
        model.save_lora(&dir.join("lora"))?;
        save(&dir.join("plumb_lora.safetensors"), vec![lora_logits])?;
        model.merge_lora()?;
        model.save(&dir.join("merged"))?;
        // Reward model on right-padded rows of different lengths (pad id 0).
        let base = Model::load(&gpu, &dir)?;
        let rm = RewardModel::from_model(&base, 5)?;
        rm.save(&dir.join("rm"))?;
        let rows: Vec<(&[u32], &[u32])> = vec![(&ids[..3], &ids[3..T]), (&ids[T..T + 2], &ids[T + 2..T + 9])];
        let s = SeqBatch::right_padded(&rows, T, T, 0)?;
        let scores = rm.scores(None, &s.upload(&gpu)?)?.to_f32_vec()?;
        save(&dir.join("rm/plumb_scores.safetensors"), vec![("ids".into(), vec![s.rows, s.seq], as_f32(&s.ids)), ("scores".into(), vec![s.rows], scores)])?;
        println!("{name}: wrote {}", dir.display());
    }
    Ok(())
}
