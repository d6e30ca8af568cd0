//! W2 of BENCHMARKS.md under criterion: one training step of the gpt-w2 preset on 8 x 128
//! tokens (forward, cross-entropy, backward, AdamW, loss read back). The step is
//! `plumb::bench::W2::step`, the same code `plumb bench w2` times; criterion reports elem/s
//! with one element per token, i.e. tokens/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use plumb::bench::W2;
use plumb::Gpu;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let gpu = Gpu::new().expect("GPU adapter");
    let mut w2 = W2::new(&gpu).expect("W2 setup");
    // The first step compiles every shader: report it as the cold start, outside the samples.
    let t = std::time::Instant::now();
    let loss = w2.step().expect("W2 step");
    println!("W2 on {}: cold first step {:.2} s, loss {loss:.3}", gpu.adapter().info.name, t.elapsed().as_secs_f64());
    let mut group = c.benchmark_group("W2");
    group.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(W2::TOKENS as u64));
    group.bench_function("train_step_8x128", |b| b.iter(|| w2.step().expect("W2 step")));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
