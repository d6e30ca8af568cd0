//! W5 of BENCHMARKS.md under criterion: one LoRA-DPO step on SmolLM2-135M's shape (Q4_1 frozen
//! base, rank-16 adapters on every projection, 4 pairs of 64 + 64 tokens, reference = adapters
//! off), with and without activation checkpointing. The step is `plumb::bench::W5::step`, the
//! same code `plumb bench w5` times; criterion reports elem/s with one element per pair, i.e.
//! pairs/s. A step takes tens of seconds on lavapipe: ten samples, no more.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use plumb::bench::{W5Options, W5};
use plumb::Gpu;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    // `cargo test --all-targets` runs every bench once without `--bench`; W5's steps take
    // minutes on a CPU adapter, so they run under `cargo bench` only.
    if !std::env::args().any(|a| a == "--bench") {
        println!("W5: skipped outside `cargo bench` (minutes a step on a CPU adapter)");
        return;
    }
    let gpu = Gpu::new().expect("GPU adapter");
    let mut group = c.benchmark_group("W5");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(60));
    group.throughput(Throughput::Elements(W5::PAIRS as u64));
    for checkpoint in [false, true] {
        let opts = W5Options { checkpoint, ..Default::default() };
        let mut w5 = W5::new(&gpu, &opts).expect("W5 setup");
        gpu.reset_peak();
        // The first step compiles every shader: report it as the cold start, outside the samples.
        let t = std::time::Instant::now();
        let loss = w5.step().expect("W5 step");
        println!("W5 ({}) on {}: cold first step {:.2} s, loss {loss:.4}", opts.describe(), gpu.adapter().info.name, t.elapsed().as_secs_f64());
        let name = if checkpoint { "lora_dpo_step_4_pairs_checkpointed" } else { "lora_dpo_step_4_pairs" };
        group.bench_function(name, |b| b.iter(|| w5.step().expect("W5 step")));
        println!("W5 ({}): peak GPU memory (pool) {} MiB", opts.describe(), gpu.peak_bytes() >> 20);
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
