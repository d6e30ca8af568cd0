//! Proof on a real shape, on the adapter's real limits (lavapipe: 128 MiB per binding): a
//! randomly initialised model with GPT-2 124M's shape (vocab 50,257, 12 layers of 768) has a
//! 154 MB embedding, split into row chunks over several parameter segments. Its forward pass
//! matches a plain-Rust f64 forward on a few positions; one full fine-tuning step (AdamW with
//! clipping over every segment) and one LoRA step each lower the loss on their batch. The same
//! for Qwen2.5-0.5B's shape (vocab 151,936, 24 layers, GQA 14/2, tied; a 544 MB embedding):
//! forward against f64, and a checkpointed LoRA step. Both shapes also decode greedily (the KV
//! cache of `plumb::generate`) to the f64 reference's tokens. Slow on lavapipe (minutes): short
//! sequences, one test per shape.
mod common;
use common::f64_ops::*;
use plumb::generate::{generate, GenerateConfig};
use plumb::lora::LoraConfig;
use plumb::ops::sample::SamplingConfig;
use plumb::model::{Model, ModelConfig};
use plumb::ops::loss::cross_entropy;
use plumb::ops::optim::{AdamW, AdamWConfig};
use plumb::{Gpu, Tape, Tensor};
use std::collections::HashMap;
use std::time::Instant;

struct Weights(HashMap<String, (Vec<usize>, Vec<f64>)>);

impl Weights {
    fn get(&self, name: &str, shape: &[usize]) -> &[f64] {
        let (s, v) = &self.0[name];
        assert_eq!(s, shape, "shape of `{name}`");
        v
    }
}

/// GPT-2 logits of positions `at` (rows of the (T, V) logits), as Hugging Face computes them.
fn gpt2_forward(w: &Weights, ids: &[u32], v: usize, c: usize, nh: usize, layers: usize, at: &[usize]) -> Vec<Vec<f64>> {
    let (t, eps) = (ids.len(), 1e-5);
    let wte = w.get("transformer.wte.weight", &[v, c]);
    let wpe = &w.0["transformer.wpe.weight"].1;
    let mut x = embed(wte, ids, c);
    for (r, row) in x.chunks_mut(c).enumerate() {
        add_into(row, &wpe[r * c..][..c]);
    }
    for l in 0..layers {
        let g = |n: &str, shape: &[usize]| w.get(&format!("transformer.h.{l}.{n}"), shape);
        let h = layer_norm(&x, g("ln_1.weight", &[c]), g("ln_1.bias", &[c]), eps);
        let qkv = conv1d(&h, g("attn.c_attn.weight", &[c, 3 * c]), Some(g("attn.c_attn.bias", &[3 * c])), c, 3 * c);
        let part = |k: usize| -> Vec<f64> { qkv.chunks(3 * c).flat_map(|r| r[k * c..(k + 1) * c].to_vec()).collect() };
        let a = causal_attention(&part(0), &part(1), &part(2), t, nh, nh, c / nh);
        add_into(&mut x, &conv1d(&a, g("attn.c_proj.weight", &[c, c]), Some(g("attn.c_proj.bias", &[c])), c, c));
        let h = layer_norm(&x, g("ln_2.weight", &[c]), g("ln_2.bias", &[c]), eps);
        let m: Vec<f64> = conv1d(&h, g("mlp.c_fc.weight", &[c, 4 * c]), Some(g("mlp.c_fc.bias", &[4 * c])), c, 4 * c).into_iter().map(gelu_new).collect();
        add_into(&mut x, &conv1d(&m, g("mlp.c_proj.weight", &[4 * c, c]), Some(g("mlp.c_proj.bias", &[c])), 4 * c, c));
    }
    let x = layer_norm(&x, w.get("transformer.ln_f.weight", &[c]), w.get("transformer.ln_f.bias", &[c]), eps);
    at.iter().map(|&r| linear(&x[r * c..(r + 1) * c], wte, None, c, v)).collect()
}

fn loss_of(model: &Model, tape: Option<&Tape>, ids: &Tensor, tg: &Tensor) -> plumb::Var {
    cross_entropy(&model.forward(tape, ids, None).unwrap(), tg, None).unwrap()
}

/// One optimizer step on (ids, tg); returns the loss before and after it.
fn train_step(gpu: &Gpu, model: &Model, ids: &Tensor, tg: &Tensor, lr: f32) -> (f32, f32) {
    gpu.reset_peak();
    let mut opt = AdamW::new(model.trainable(), AdamWConfig { max_grad_norm: Some(1.0), ..Default::default() }).unwrap();
    let tape = Tape::new();
    let loss = loss_of(model, Some(&tape), ids, tg);
    tape.backward(&loss).unwrap();
    let norm = opt.step(model.trainable(), lr).unwrap().unwrap().scalar().unwrap();
    model.trainable().zero_grad().unwrap();
    let before = loss.tensor().scalar().unwrap();
    let after = loss_of(model, None, ids, tg).tensor().scalar().unwrap();
    println!("  step: loss {before:.5} -> {after:.5}, gradient norm {norm:.4}, pool peak {} MiB", gpu.peak_bytes() >> 20);
    assert!(norm.is_finite() && norm > 0.0);
    (before, after)
}

/// Qwen2 logits of positions `at`: rms norms, q/k/v with biases, rotary, GQA, SwiGLU, tied head.
#[allow(clippy::too_many_arguments)]
fn qwen2_forward(w: &Weights, ids: &[u32], v: usize, c: usize, im: usize, (hq, hkv): (usize, usize), layers: usize, at: &[usize]) -> Vec<Vec<f64>> {
    let (t, d, eps, theta) = (ids.len(), c / hq, 1e-6, 1_000_000.0);
    let embed_w = w.get("model.embed_tokens.weight", &[v, c]);
    let mut x = embed(embed_w, ids, c);
    for l in 0..layers {
        let g = |n: &str, shape: &[usize]| w.get(&format!("model.layers.{l}.{n}"), shape);
        let h = rms_norm(&x, g("input_layernorm.weight", &[c]), eps);
        let mut q = linear(&h, g("self_attn.q_proj.weight", &[hq * d, c]), Some(g("self_attn.q_proj.bias", &[hq * d])), c, hq * d);
        let mut k = linear(&h, g("self_attn.k_proj.weight", &[hkv * d, c]), Some(g("self_attn.k_proj.bias", &[hkv * d])), c, hkv * d);
        let vv = linear(&h, g("self_attn.v_proj.weight", &[hkv * d, c]), Some(g("self_attn.v_proj.bias", &[hkv * d])), c, hkv * d);
        rope(&mut q, t, hq, d, theta);
        rope(&mut k, t, hkv, d, theta);
        let a = causal_attention(&q, &k, &vv, t, hq, hkv, d);
        add_into(&mut x, &linear(&a, g("self_attn.o_proj.weight", &[c, hq * d]), None, hq * d, c));
        let h = rms_norm(&x, g("post_attention_layernorm.weight", &[c]), eps);
        let gate = linear(&h, g("mlp.gate_proj.weight", &[im, c]), None, c, im);
        let up = linear(&h, g("mlp.up_proj.weight", &[im, c]), None, c, im);
        let m: Vec<f64> = gate.iter().zip(&up).map(|(&a, &b)| silu(a) * b).collect();
        add_into(&mut x, &linear(&m, g("mlp.down_proj.weight", &[c, im]), None, im, c));
    }
    let x = rms_norm(&x, w.get("model.norm.weight", &[c]), eps);
    at.iter().map(|&r| linear(&x[r * c..(r + 1) * c], embed_w, None, c, v)).collect()
}

fn check_positions(logits: &[f32], want: &[Vec<f64>], at: &[usize], v: usize) {
    for (row, r) in at.iter().zip(want) {
        let got = &logits[row * v..(row + 1) * v];
        let scale = r.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let worst = got.iter().zip(r).map(|(g, r)| (*g as f64 - r).abs()).fold(0.0f64, f64::max);
        println!("  position {row}: max |logit| {scale:.4e}, max error {worst:.3e}");
        assert!(worst <= 1e-3 * scale + 1e-5, "position {row}: error {worst:e} against logits of size {scale:e}");
    }
}

/// The engine's greedy continuation of `ids` (`plumb::generate`, with its KV cache) is the one
/// the f64 reference picks, token by token; `last_logits` is the reference's logits of the last
/// position of a sequence.
fn check_greedy(model: &Model, ids: &[u32], n: usize, last_logits: impl Fn(&[u32]) -> Vec<f64>) {
    let cfg = GenerateConfig { max_new_tokens: n, sampling: SamplingConfig::greedy(), ..Default::default() };
    let clock = Instant::now();
    let engine = generate(model, &[ids.to_vec()], &cfg).unwrap().remove(0);
    println!("engine: {n} greedy tokens in {:.1} s: {engine:?}", clock.elapsed().as_secs_f64());
    let mut seq = ids.to_vec();
    for _ in 0..n {
        let l = last_logits(&seq);
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        println!("  reference: token {} by {:.3e} over the next", order[0], l[order[0]] - l[order[1]]);
        seq.push(order[0] as u32);
    }
    assert_eq!(engine, seq[ids.len()..].to_vec(), "the engine's greedy tokens are the f64 reference's");
}

#[test]
fn qwen25_05b_shape_forward_and_lora_step_past_the_binding_limit() {
    let Some(gpu) = common::gpu() else { return };
    let (v, c, im, layers) = (151_936usize, 896usize, 4864usize, 24usize);
    let cfg = ModelConfig::from_json(
        &format!(
            r#"{{"model_type":"qwen2","vocab_size":{v},"hidden_size":{c},"intermediate_size":{im},"num_hidden_layers":{layers},
            "num_attention_heads":14,"num_key_value_heads":2,"max_position_embeddings":32768,"rms_norm_eps":1e-6,
            "rope_theta":1000000.0,"tie_word_embeddings":true,"hidden_act":"silu"}}"#
        ),
        std::path::Path::new("qwen2.5-0.5b.json"),
    )
    .unwrap();
    let clock = Instant::now();
    let mut model = Model::new(&gpu, &cfg, 3).unwrap();
    let store = model.params();
    let chunks = store.value_chunks("model.embed_tokens.weight").unwrap().len();
    println!("Qwen2.5-0.5B shape: {} parameters in {} segments, embedding in {chunks} row chunks ({:.1} s)",
        store.numel(), store.segments().len(), clock.elapsed().as_secs_f64());
    if gpu.max_binding_bytes() < (v * c * 4) as u64 {
        assert!(chunks >= 2, "the 544 MB embedding must be split into row chunks");
    }
    let ids: Vec<u32> = vec![151_935, 13, 90_000, 151_000, 42];
    let t = ids.len();
    let idt = Tensor::from_u32(&gpu, &ids, &[1, t]).unwrap();
    let clock = Instant::now();
    let logits = model.forward(None, &idt, None).unwrap().to_f32_vec().unwrap();
    println!("forward (1 x {t}): {:.1} s", clock.elapsed().as_secs_f64());
    let w = Weights(store.read_all().unwrap().into_iter().map(|(n, s, d)| (n, (s, d.into_iter().map(f64::from).collect()))).collect());
    let at = [0usize, t - 1];
    let clock = Instant::now();
    let want = qwen2_forward(&w, &ids, v, c, im, (14, 2), layers, &at);
    println!("f64 reference on positions {at:?}: {:.1} s", clock.elapsed().as_secs_f64());
    check_positions(&logits, &want, &at, v);
    check_greedy(&model, &ids, 3, |s| qwen2_forward(&w, s, v, c, im, (14, 2), layers, &[s.len() - 1]).remove(0));
    drop(w);
    model.add_lora(&LoraConfig::default(), 4).unwrap();
    model.set_checkpointing(true);
    let tgt = Tensor::from_u32(&gpu, &[13, 90_000, 151_000, 42, 7], &[t]).unwrap();
    let clock = Instant::now();
    let (before, after) = train_step(&gpu, &model, &idt, &tgt, 1e-2);
    println!("LoRA step (checkpointed): {:.1} s", clock.elapsed().as_secs_f64());
    assert!(after < before, "a LoRA step should lower the loss on its batch: {before} -> {after}");
}

#[test]
fn gpt2_124m_shape_forward_and_training_steps_past_the_binding_limit() {
    let Some(gpu) = common::gpu() else { return };
    let (v, c, nh, layers) = (50257usize, 768usize, 12usize, 12usize);
    let cfg = ModelConfig::from_json(
        &format!(r#"{{"model_type":"gpt2","vocab_size":{v},"n_positions":1024,"n_embd":{c},"n_layer":{layers},"n_head":{nh}}}"#),
        std::path::Path::new("gpt2-124m.json"),
    )
    .unwrap();
    let clock = Instant::now();
    let model = Model::new(&gpu, &cfg, 1).unwrap();
    let store = model.params();
    let chunks = store.value_chunks("transformer.wte.weight").unwrap().len();
    println!("GPT-2 124M shape: {} parameters in {} segments, wte in {chunks} row chunks, binding limit {} MiB ({:.1} s)",
        store.numel(), store.segments().len(), gpu.max_binding_bytes() >> 20, clock.elapsed().as_secs_f64());
    assert!(store.numel() > 124_000_000);
    if gpu.max_binding_bytes() < (v * c * 4) as u64 {
        assert!(chunks >= 2, "the 154 MB embedding must be split into row chunks");
    }
    // ids in the first and in the last chunk of the table
    let ids: Vec<u32> = vec![50256, 11, 4000, 30001, 50100, 464, 262, 7];
    let t = ids.len();
    let idt = Tensor::from_u32(&gpu, &ids, &[1, t]).unwrap();
    let clock = Instant::now();
    let logits = model.forward(None, &idt, None).unwrap().to_f32_vec().unwrap();
    println!("forward (1 x {t}): {:.1} s", clock.elapsed().as_secs_f64());
    let w = Weights(store.read_all().unwrap().into_iter().map(|(n, s, d)| (n, (s, d.into_iter().map(f64::from).collect()))).collect());
    let at = [0usize, 3, t - 1];
    let clock = Instant::now();
    let want = gpt2_forward(&w, &ids, v, c, nh, layers, &at);
    println!("f64 reference on positions {at:?}: {:.1} s", clock.elapsed().as_secs_f64());
    check_positions(&logits, &want, &at, v);
    check_greedy(&model, &ids, 3, |s| gpt2_forward(&w, s, v, c, nh, layers, &[s.len() - 1]).remove(0));
    drop(w);
    // one full fine-tuning step: every parameter, every segment, the chunked tied head
    let tg: Vec<u32> = vec![11, 4000, 30001, 50100, 464, 262, 7, 50256];
    let tgt = Tensor::from_u32(&gpu, &tg, &[t]).unwrap();
    let clock = Instant::now();
    let (before, after) = train_step(&gpu, &model, &idt, &tgt, 1e-3);
    println!("full fine-tuning step: {:.1} s", clock.elapsed().as_secs_f64());
    assert!((before - (v as f32).ln()).abs() < 0.5, "initial loss {before} should be near ln(V)");
    assert!(after < before, "a full fine-tuning step should lower the loss on its batch: {before} -> {after}");
    // one LoRA step over the (now frozen) chunked base
    let mut model = model;
    model.add_lora(&LoraConfig::default(), 2).unwrap();
    let clock = Instant::now();
    let (before, after) = train_step(&gpu, &model, &idt, &tgt, 1e-2);
    println!("LoRA step: {:.1} s", clock.elapsed().as_secs_f64());
    assert!(after < before, "a LoRA step should lower the loss on its batch: {before} -> {after}");
}
