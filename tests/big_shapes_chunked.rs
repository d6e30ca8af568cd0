//! Storage past the binding limit, with small models: the same model laid out in one flat
//! buffer and in many segments with its embedding split into row chunks (a forced 16 KiB limit,
//! `GpuOptions::max_binding`) gives the same loss, the same gradient norm and the same weights
//! after an AdamW step with clipping, for GPT-2 (tied head) and Llama (untied head), full
//! fine-tuning and LoRA.
mod common;
use plumb::model::{presets, Model};
use plumb::ops::loss::cross_entropy;
use plumb::ops::optim::{AdamW, AdamWConfig};
use plumb::lora::LoraConfig;
use plumb::{Gpu, GpuOptions, Tape, Tensor};

fn gpu_with_limit(limit: Option<u64>) -> Option<Gpu> {
    let mut opts = GpuOptions::from_env().ok()?;
    opts.max_binding = limit;
    common::gpu()?; // skips (or fails in CI) the same way as every GPU test
    Gpu::with_options(&opts).ok()
}

/// (loss, grad norm, weights after one step, logits of generation's cached path)
fn one_step(gpu: &Gpu, preset: &str, lora: bool) -> (f32, f32, Vec<f32>, Vec<f32>) {
    let mut model = Model::new(gpu, &presets::resolve(preset).unwrap(), 7).unwrap();
    if lora {
        model.add_lora(&LoraConfig::default(), 3).unwrap();
    }
    let (b, t) = (2, 9);
    let ids: Vec<u32> = (0..b * t).map(|i| (i as u32 * 37 + 11) % 256).collect();
    let tg: Vec<u32> = (0..b * t).map(|i| (i as u32 * 53 + 5) % 256).collect();
    let ids = Tensor::from_u32(gpu, &ids, &[b, t]).unwrap();
    let tg = Tensor::from_u32(gpu, &tg, &[b * t]).unwrap();
    let cfg = AdamWConfig { max_grad_norm: Some(0.5), weight_decay: 0.1, ..Default::default() };
    let mut opt = AdamW::new(model.trainable(), cfg).unwrap();
    let tape = Tape::new();
    let loss = cross_entropy(&model.forward(Some(&tape), &ids, None).unwrap(), &tg, None).unwrap();
    tape.backward(&loss).unwrap();
    let norm = opt.step(model.trainable(), 1e-2).unwrap().unwrap();
    let weights: Vec<f32> = model.trainable().read_all().unwrap().into_iter().flat_map(|(_, _, v)| v).collect();
    let mut caches = model.new_caches(b, t).unwrap();
    let cached = model.forward_cached(&ids, &mut caches, None).unwrap().to_f32_vec().unwrap();
    (loss.tensor().scalar().unwrap(), norm.scalar().unwrap(), weights, cached)
}

fn close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0f32, f32::max);
    assert!(worst <= tol, "{what}: worst relative difference {worst:e} > {tol:e}");
}

fn compare(preset: &str, lora: bool) {
    let (Some(flat), Some(split)) = (gpu_with_limit(None), gpu_with_limit(Some(16 << 10))) else { return };
    // the forced limit really splits: the embedding is 256 x 32 f32 = 32 KiB
    let m = Model::new(&split, &presets::resolve(preset).unwrap(), 7).unwrap();
    assert!(m.params().segments().len() > 2, "{preset}: {} segments", m.params().segments().len());
    let emb = if preset.starts_with("gpt") { "transformer.wte.weight" } else { "model.embed_tokens.weight" };
    assert_eq!(m.params().value_chunks(emb).unwrap().len(), 2);
    assert!(m.params().value(emb).unwrap_err().to_string().contains("row chunks"));
    let a = one_step(&flat, preset, lora);
    let b = one_step(&split, preset, lora);
    println!("{preset} lora={lora}: loss {} vs {}, norm {} vs {}", a.0, b.0, a.1, b.1);
    close("loss", &[a.0], &[b.0], 1e-6);
    close("grad norm", &[a.1], &[b.1], 1e-5);
    // (AdamW normalises each gradient, so last-bit differences of near-zero gradients, from
    // summing the head's input gradient chunk by chunk, move a weight by up to ~lr·1e-3)
    close("weights after a step", &a.2, &b.2, 1e-4);
    close("cached logits", &a.3, &b.3, 1e-5);
}

#[test]
fn gpt_chunked_store_matches_flat() {
    compare("gpt-nano", false);
}

#[test]
fn llama_chunked_store_matches_flat() {
    compare("llama-nano", false);
}

#[test]
fn gpt_lora_over_chunked_base_matches_flat() {
    compare("gpt-nano", true);
}

#[test]
fn max_binding_parses_units() {
    use plumb::gpu::parse_bytes;
    assert_eq!(parse_bytes("x", "4MiB").unwrap(), 4 << 20);
    assert_eq!(parse_bytes("x", "16KiB").unwrap(), 16 << 10);
    assert_eq!(parse_bytes("x", "1G").unwrap(), 1 << 30);
    assert_eq!(parse_bytes("x", "4096").unwrap(), 4096);
    assert!(parse_bytes("PLUMB_MAX_BINDING", "4 parsecs").unwrap_err().to_string().contains("PLUMB_MAX_BINDING"));
    assert!(parse_bytes("x", "0").is_err());
}

#[test]
fn split_store_round_trips_weights_and_optimizer_state() {
    let Some(gpu) = gpu_with_limit(Some(16 << 10)) else { return };
    let cfg = presets::resolve("llama-nano").unwrap();
    let a = Model::new(&gpu, &cfg, 1).unwrap();
    let b = Model::new(&gpu, &cfg, 2).unwrap();
    assert!(a.params().segments().len() > 2);
    // weights: read_all / write_all across segments and row chunks
    let saved = a.params().read_all().unwrap();
    b.params().write_all(&saved).unwrap();
    assert_eq!(b.params().read_all().unwrap(), saved);
    assert_eq!(b.params().get("lm_head.weight").unwrap(), a.params().get("lm_head.weight").unwrap());
    // optimizer state: moments of every segment, saved and restored
    let ids = Tensor::from_u32(&gpu, &(0..16u32).map(|i| i * 13 % 256).collect::<Vec<_>>(), &[2, 8]).unwrap();
    let tg = Tensor::from_u32(&gpu, &(0..16u32).map(|i| i * 29 % 256).collect::<Vec<_>>(), &[16]).unwrap();
    let step = |m: &Model, opt: &mut AdamW| {
        let tape = Tape::new();
        let loss = cross_entropy(&m.forward(Some(&tape), &ids, None).unwrap(), &tg, None).unwrap();
        tape.backward(&loss).unwrap();
        opt.step(m.params(), 1e-2).unwrap();
        m.params().zero_grad().unwrap();
    };
    let cfg_opt = AdamWConfig { max_grad_norm: Some(1.0), ..Default::default() };
    let mut oa = AdamW::new(a.params(), cfg_opt).unwrap();
    step(&a, &mut oa);
    b.params().write_all(&a.params().read_all().unwrap()).unwrap();
    let mut ob = AdamW::new(b.params(), cfg_opt).unwrap();
    let state = oa.state().unwrap();
    assert_eq!(state.m.len(), a.params().padded_len());
    ob.load_state(&state).unwrap();
    step(&a, &mut oa);
    step(&b, &mut ob);
    assert_eq!(a.params().read_all().unwrap(), b.params().read_all().unwrap(), "resumed optimizer diverged");
    assert!(ob.load_state(&plumb::ops::optim::AdamWState { step: 1, m: vec![0.0; 3], v: vec![0.0; 3] }).is_err());
}
