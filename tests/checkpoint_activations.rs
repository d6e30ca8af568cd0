//! Activation checkpointing per transformer block: with `Model::set_checkpointing(true)` the
//! loss and every gradient equal those of the plain run bit for bit (GPT-2 with a padding mask,
//! Llama, and LoRA where the first block's input needs no gradient), and the pool's peak
//! memory of a training step is lower.
mod common;
use plumb::lora::LoraConfig;
use plumb::model::{presets, Model, ModelConfig};
use plumb::ops::loss::cross_entropy;
use plumb::{Gpu, Tape, Tensor};

/// (loss, every trainable gradient, pool peak bytes of the step)
fn step(gpu: &Gpu, model: &Model, b: usize, t: usize, masked: bool) -> (f32, Vec<f32>, u64) {
    let v = model.vocab_size() as u32;
    let ids: Vec<u32> = (0..b * t).map(|i| (i as u32 * 31 + 7) % v).collect();
    let tg: Vec<u32> = (0..b * t).map(|i| (i as u32 * 17 + 3) % v).collect();
    let ids = Tensor::from_u32(gpu, &ids, &[b, t]).unwrap();
    let tg = Tensor::from_u32(gpu, &tg, &[b * t]).unwrap();
    // the last two keys of the first row are padding
    let mask = masked.then(|| {
        let m: Vec<u32> = (0..b * t).map(|i| (i >= t - 2 && i < t) as u32 ^ 1).collect();
        Tensor::from_u32(gpu, &m, &[b, t]).unwrap()
    });
    model.trainable().zero_grad().unwrap();
    gpu.reset_peak();
    let tape = Tape::new();
    let loss = cross_entropy(&model.forward(Some(&tape), &ids, mask.as_ref()).unwrap(), &tg, None).unwrap();
    tape.backward(&loss).unwrap();
    let l = loss.tensor().scalar().unwrap();
    let peak = gpu.peak_bytes();
    let grads = model.trainable().segments().iter().flat_map(|s| s.grads.to_f32_vec().unwrap()).collect();
    (l, grads, peak)
}

fn same_with_and_without(cfg: &ModelConfig, lora: bool, masked: bool, what: &str) -> (u64, u64) {
    let gpu = common::gpu().expect("checked by the caller");
    let mut model = Model::new(&gpu, cfg, 4).unwrap();
    if lora {
        model.add_lora(&LoraConfig::default(), 9).unwrap();
        // B starts at zero; give the adapter a non-zero update so every gradient flows
        let names: Vec<String> = model.trainable().entries().iter().map(|e| e.name.clone()).collect();
        for (k, n) in names.iter().enumerate() {
            let len = model.trainable().get(n).unwrap().len();
            let vals: Vec<f32> = (0..len).map(|i| ((i * 7 + k * 13) % 17) as f32 * 0.01 - 0.08).collect();
            model.trainable().set(n, &vals).unwrap();
        }
    }
    let (b, t) = (3, 24);
    let (l0, g0, p0) = step(&gpu, &model, b, t, masked);
    model.set_checkpointing(true);
    let (l1, g1, p1) = step(&gpu, &model, b, t, masked);
    model.set_checkpointing(false);
    let (l2, g2, _) = step(&gpu, &model, b, t, masked);
    println!("{what}: loss {l0} / {l1}, peak {p0} -> {p1} bytes with checkpointing");
    assert_eq!(l0.to_bits(), l1.to_bits(), "{what}: loss differs with checkpointing");
    assert!(g0.iter().any(|&g| g != 0.0), "{what}: no gradient flowed");
    let differ = g0.iter().zip(&g1).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(differ, 0, "{what}: {differ} of {} gradients differ with checkpointing", g0.len());
    assert!(l2 == l0 && g2 == g0, "{what}: switching checkpointing off again changed the run");
    (p0, p1)
}

#[test]
fn gpt_checkpointing_is_bit_identical_and_saves_memory() {
    if common::gpu().is_none() {
        return;
    }
    let mut cfg = presets::resolve("gpt-nano").unwrap();
    if let ModelConfig::Gpt(c) = &mut cfg {
        c.n_layer = 6;
    }
    let (plain, ckpt) = same_with_and_without(&cfg, false, true, "gpt 6 layers, masked");
    assert!(ckpt < plain, "checkpointing should lower the peak: {ckpt} vs {plain} bytes");
    same_with_and_without(&cfg, true, false, "gpt LoRA");
}

#[test]
fn llama_checkpointing_is_bit_identical() {
    if common::gpu().is_none() {
        return;
    }
    let cfg = presets::resolve("llama-nano").unwrap();
    same_with_and_without(&cfg, false, false, "llama");
    same_with_and_without(&cfg, true, true, "llama LoRA, masked");
}
