//! Attention kernels at W2's training shape (B=8, T=128, Hq=Hkv=4, D=32, causal): forward and
//! forward+backward, and W4's decode step (B=8, one query against an 80-token KV cache, H=4,
//! D=32). Each iteration records the dispatches, submits them and waits for the GPU.
//! Throughput is reported as effective FLOP/s ("elem/s" in criterion's output): 4 D flops per
//! visible (query, key) pair forward, 2.5 times that backward (the usual flash-attention count).
//! `PLUMB_KERNELS=tiled` runs the workgroup-memory forward instead of the register one.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use plumb::ops::attention::{attention_backward, attention_forward, AttentionConfig, KvCache};
use plumb::{Gpu, Tensor};

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    // xorshift: deterministic values in [-1, 1) without pulling rand into the bench.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn wait(gpu: &Gpu) {
    gpu.flush().expect("submit");
    gpu.device().poll(wgpu::PollType::wait_indefinitely()).expect("wait");
}

fn bench(c: &mut Criterion) {
    let gpu = match Gpu::new() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("skipping attention bench: {e}");
            return;
        }
    };
    let (b, t, h, d) = (8usize, 128usize, 4usize, 32usize);
    let shape = [b, t, h, d];
    let n = b * t * h * d;
    let q = Tensor::from_f32(&gpu, &rand_vec(n, 1), &shape).unwrap();
    let k = Tensor::from_f32(&gpu, &rand_vec(n, 2), &shape).unwrap();
    let v = Tensor::from_f32(&gpu, &rand_vec(n, 3), &shape).unwrap();
    let dout = Tensor::from_f32(&gpu, &rand_vec(n, 4), &shape).unwrap();
    let cfg = AttentionConfig::default();
    let pairs = (b * h * t * (t + 1) / 2) as u64;
    let fwd_flops = 4 * d as u64 * pairs;

    let mut g = c.benchmark_group(format!("attention {:?}", gpu.variant()));
    g.sample_size(20);
    g.throughput(Throughput::Elements(fwd_flops));
    g.bench_function("forward B8 T128 H4 D32 causal", |bench| {
        bench.iter(|| {
            let (out, _lse) = attention_forward(&q, &k, &v, None, &cfg).unwrap();
            wait(&gpu);
            out
        })
    });
    g.throughput(Throughput::Elements(fwd_flops * 7 / 2));
    g.bench_function("forward+backward B8 T128 H4 D32 causal", |bench| {
        bench.iter(|| {
            let (out, lse) = attention_forward(&q, &k, &v, None, &cfg).unwrap();
            let grads = attention_backward(&q, &k, &v, &out, &lse, &dout, None, &cfg).unwrap();
            wait(&gpu);
            grads
        })
    });

    // Decode: 79 tokens cached, append one new token per sequence and attend over all 80.
    let s = 80;
    let mut cache = KvCache::new(&gpu, b, 256, h, d).unwrap();
    let kc = Tensor::from_f32(&gpu, &rand_vec(b * (s - 1) * h * d, 5), &[b, s - 1, h, d]).unwrap();
    let vc = Tensor::from_f32(&gpu, &rand_vec(b * (s - 1) * h * d, 6), &[b, s - 1, h, d]).unwrap();
    cache.append(&kc, &vc).unwrap();
    let q1 = Tensor::from_f32(&gpu, &rand_vec(b * h * d, 7), &[b, 1, h, d]).unwrap();
    let k1 = Tensor::from_f32(&gpu, &rand_vec(b * h * d, 8), &[b, 1, h, d]).unwrap();
    let v1 = Tensor::from_f32(&gpu, &rand_vec(b * h * d, 9), &[b, 1, h, d]).unwrap();
    wait(&gpu);
    g.throughput(Throughput::Elements((4 * d * b * h * s) as u64));
    g.bench_function("decode step (append + attend) B8 S80 H4 D32", |bench| {
        bench.iter(|| {
            cache.truncate(s - 1);
            cache.append(&k1, &v1).unwrap();
            let out = cache.attend(&q1, None).unwrap();
            wait(&gpu);
            out
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
