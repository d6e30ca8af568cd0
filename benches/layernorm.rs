//! LayerNorm throughput: forward, and forward + backward (dx, dweight, dbias), at GPT-2 shapes
//! (B*T, C) = (8*128, 128) and (8*1024, 768) in the device's kernel variant; the other variant
//! (thread per row vs workgroup per row) runs at the small shape for comparison (at the large
//! one the workgroup kernels take seconds per iteration on lavapipe). Each iteration records the
//! op(s) and ends with a host read (mean after the forward, dbias after the backward), so the
//! time covers submit, GPU work and the wait.
//!
//! Throughput counts the op's minimum memory traffic, each tensor read or written once:
//!   forward:            read x, weight, bias; write out, mean, rstd
//!   forward + backward: the forward, plus read dout, x, weight, mean, rstd; write dx, dweight, dbias
//! (the kernels themselves read x and dout more than once; the numbers say how close to that
//! ideal the whole op gets).
//!
//! Run: `cargo bench --bench layernorm` (`PLUMB_KERNELS=register|tiled` picks the main variant).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use plumb::ops::norm;
use plumb::{Gpu, KernelVariant, Tensor};
use std::time::Duration;

fn values(n: usize, seed: u32) -> Vec<f32> {
    // A cheap deterministic pattern in [-1, 1).
    (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32) * 2.0 - 1.0).collect()
}

fn bench(c: &mut Criterion) {
    let gpu = match Gpu::new() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("skipping layernorm bench: {e}");
            return;
        }
    };
    eprintln!("adapter: {}", gpu.adapter().info.name);
    let main = gpu.variant();
    let other = match main {
        KernelVariant::Register => KernelVariant::Tiled,
        KernelVariant::Tiled => KernelVariant::Register,
    };
    let mut group = c.benchmark_group("layernorm");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for (rows, cols) in [(8 * 128, 128), (8 * 1024, 768)] {
        let (n, nc) = ((rows * cols) as u64, cols as u64);
        let x = Tensor::from_f32(&gpu, &values(rows * cols, 1), &[rows, cols]).unwrap();
        let w = Tensor::from_f32(&gpu, &values(cols, 2), &[cols]).unwrap();
        let b = Tensor::from_f32(&gpu, &values(cols, 3), &[cols]).unwrap();
        let dout = Tensor::from_f32(&gpu, &values(rows * cols, 4), &[rows, cols]).unwrap();
        let fwd_bytes = 4 * (2 * n + 2 * nc + 2 * rows as u64);
        let bwd_bytes = 4 * (3 * n + 3 * nc + 2 * rows as u64);
        let variants = if rows * cols <= 1 << 20 { vec![main, other] } else { vec![main] };
        for variant in variants {
            gpu.set_variant(variant);
            let id = format!("{variant:?} {rows}x{cols}");
            group.throughput(Throughput::Bytes(fwd_bytes));
            group.bench_function(BenchmarkId::new("forward", &id), |bench| {
                bench.iter(|| {
                    let (_, mean, _) = norm::layer_norm_forward(&x, &w, &b, 1e-5).unwrap();
                    mean.to_f32_vec().unwrap()
                })
            });
            group.throughput(Throughput::Bytes(fwd_bytes + bwd_bytes));
            group.bench_function(BenchmarkId::new("forward+backward", &id), |bench| {
                bench.iter(|| {
                    let (_, mean, rstd) = norm::layer_norm_forward(&x, &w, &b, 1e-5).unwrap();
                    let (_, _, db) = norm::layer_norm_backward(&dout, &x, &w, &mean, &rstd, norm::NeedGrads::ALL).unwrap();
                    db.unwrap().to_f32_vec().unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
