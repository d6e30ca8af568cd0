//! W3 of BENCHMARKS.md under criterion: one DPO step (sigmoid loss, beta 0.1) on 8 pairs of
//! 64 prompt + 64 response tokens, with a frozen reference copy of the gpt-w2 policy. The step
//! is `plumb::bench::W3::step`, the same code `plumb bench w3` times; criterion reports elem/s
//! with one element per pair, i.e. pairs/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use plumb::bench::W3;
use plumb::Gpu;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let gpu = Gpu::new().expect("GPU adapter");
    let mut w3 = W3::new(&gpu).expect("W3 setup");
    // The first step compiles every shader: report it as the cold start, outside the samples.
    let t = std::time::Instant::now();
    let loss = w3.step().expect("W3 step");
    println!("W3 on {}: cold first step {:.2} s, loss {loss:.4}", gpu.adapter().info.name, t.elapsed().as_secs_f64());
    let mut group = c.benchmark_group("W3");
    group.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(W3::PAIRS as u64));
    group.bench_function("dpo_step_8_pairs", |b| b.iter(|| w3.step().expect("W3 step")));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
