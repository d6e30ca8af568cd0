//! W4 of BENCHMARKS.md under criterion: batched generation with the KV cache from the gpt-w2
//! preset, 8 prompts of 16 tokens, 64 new tokens each at temperature 1, tokens read back. The
//! step is `plumb::bench::W4::step`, the same code `plumb bench w4` times; criterion reports
//! elem/s with one element per generated token, i.e. tokens/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use plumb::bench::W4;
use plumb::Gpu;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let gpu = Gpu::new().expect("GPU adapter");
    let mut w4 = W4::new(&gpu).expect("W4 setup");
    // The first generation compiles every shader: report it as the cold start.
    let t = std::time::Instant::now();
    let out = w4.step().expect("W4 step");
    assert_eq!(out.len(), W4::BATCH, "one output per prompt");
    println!("W4 on {}: cold first generation {:.2} s", gpu.adapter().info.name, t.elapsed().as_secs_f64());
    let mut group = c.benchmark_group("W4");
    group.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(W4::TOKENS as u64));
    group.bench_function("generate_8x64", |b| b.iter(|| w4.step().expect("W4 step")));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
