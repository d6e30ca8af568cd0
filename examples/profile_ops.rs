//! Rough per-op timing on the current adapter (each op 20 times, then one readback).
use plumb::ops::*;
use plumb::*;
use std::time::Instant;

fn time(gpu: &Gpu, name: &str, mut f: impl FnMut() -> Result<Tensor>) {
    let t = f().unwrap();
    t.to_f32_vec().unwrap();
    let (d0, s0) = gpu.counters();
    let t0 = Instant::now();
    let mut last = None;
    for _ in 0..20 {
        last = Some(f().unwrap());
    }
    last.unwrap().to_f32_vec().unwrap();
    let (d1, s1) = gpu.counters();
    println!("{name:40} {:8.3} ms/iter  ({} dispatches, {} submits per 20)", t0.elapsed().as_secs_f64() * 1e3 / 20.0, d1 - d0, s1 - s0);
}

fn main() {
    let gpu = Gpu::new().unwrap();
    let r = |n: usize| (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect::<Vec<f32>>();
    let x = Tensor::from_f32(&gpu, &r(1024 * 128), &[1024, 128]).unwrap();
    let w = Tensor::from_f32(&gpu, &r(128 * 384), &[128, 384]).unwrap();
    let x8 = Tensor::from_f32(&gpu, &r(8 * 128), &[8, 128]).unwrap();
    let wte = Tensor::from_f32(&gpu, &r(256 * 128), &[256, 128]).unwrap();
    time(&gpu, "matmul 1024x128x384", || matmul::matmul_forward(&x, &w, None, false, false));
    time(&gpu, "matmul 8x128x384", || matmul::matmul_forward(&x8, &w, None, false, false));
    time(&gpu, "matmul 1024x128 . 256x128^T (lm head)", || matmul::matmul_forward(&x, &wte, None, false, true));
    let ln_w = Tensor::from_f32(&gpu, &vec![1.0; 128], &[128]).unwrap();
    time(&gpu, "layernorm 1024x128", || Ok(norm::layer_norm_forward(&x, &ln_w, &ln_w, 1e-5)?.0));
    time(&gpu, "gelu 1024x512", || activation::gelu_forward(&Tensor::from_f32(&gpu, &r(1024 * 512), &[1024, 512])?, activation::GeluKind::Erf));
    let qkv = Tensor::from_f32(&gpu, &r(8 * 128 * 384), &[8, 128, 384]).unwrap();
    let q = Tensor::from_f32(&gpu, &r(8 * 128 * 128), &[8, 128, 4, 32]).unwrap();
    time(&gpu, "attention fwd 8x128x4x32", || Ok(attention::attention_forward(&q, &q, &q, None, &Default::default())?.0));
    let _ = qkv;
    let ids = Tensor::from_u32(&gpu, &(0..1024).map(|i| (i * 31 % 256) as u32).collect::<Vec<_>>(), &[8, 128]).unwrap();
    time(&gpu, "embedding fwd", || embedding::embedding_forward(&ids, &wte));
    let dout = Tensor::from_f32(&gpu, &r(1024 * 128), &[8, 128, 128]).unwrap();
    time(&gpu, "embedding bwd", || embedding::embedding_backward(&dout, &ids, 256));
    let logits = Tensor::from_f32(&gpu, &r(1024 * 256), &[1024, 256]).unwrap();
    let tg = Tensor::from_u32(&gpu, &(0..1024).map(|i| (i % 256) as u32).collect::<Vec<_>>(), &[1024]).unwrap();
    time(&gpu, "cross entropy fwd+grad 1024x256", || Ok(loss::cross_entropy_forward(&logits, &tg, None, true)?.0));
    time(&gpu, "axpby 131072", || elementwise::axpby(&x, &x, 1.0, 1.0));
}
