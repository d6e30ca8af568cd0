//! W1: `C = A·B` f32 at the standard shapes, plus the transposed forms the backward pass runs
//! (dx = dy·w is A·B, the forward x·wᵀ is A·Bᵀ, dw = dyᵀ·x is Aᵀ·B) and a decode-time product.
//! Criterion reports elem/s with one element per FLOP (2·M·N·K), i.e. FLOP/s; every iteration
//! ends with a host read so the GPU work is inside the timing. A plain summary line per shape
//! follows the W1 rule: 3 untimed warm-ups, the median of 7 timed runs, GFLOP/s = 2MNK/t.
//! `PLUMB_KERNELS=register|tiled` picks the kernel variant, `PLUMB_REGISTER_FEED=buffer|texture`
//! (or this bench's older `PLUMB_MATMUL_FEED`) how the register kernels read their operands
//! (default: by CPU, see `gpu::feed`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use plumb::ops::matmul::{matmul_forward, RegisterFeed};
use plumb::{Gpu, Tensor};
use std::time::{Duration, Instant};

/// (label, M, K, N, trans_a, trans_b)
const SHAPES: &[(&str, usize, usize, usize, bool, bool)] = &[
    ("W1 A·B", 256, 256, 256, false, false),
    ("W1 A·B", 512, 512, 512, false, false),
    ("W1 A·B", 1024, 1024, 1024, false, false),
    ("W1 A·B", 1024, 128, 512, false, false),
    ("W1 A·B", 1024, 512, 128, false, false),
    ("fwd x·wᵀ A·Bᵀ", 1024, 128, 512, false, true),
    ("fwd x·wᵀ A·Bᵀ", 1024, 512, 128, false, true),
    ("bwd dyᵀ·x Aᵀ·B", 512, 1024, 128, true, false),
    ("bwd dyᵀ·x Aᵀ·B", 128, 1024, 512, true, false),
    ("decode A·Bᵀ", 8, 128, 384, false, true),
];

struct Operands {
    a: Tensor,
    b: Tensor,
    ta: bool,
    tb: bool,
}

impl Operands {
    fn new(gpu: &Gpu, m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Operands {
        let fill = |len: usize, seed: usize| -> Vec<f32> { (0..len).map(|i| ((i * seed) % 17) as f32 / 17.0 - 0.5).collect() };
        let sa = if ta { [k, m] } else { [m, k] };
        let sb = if tb { [n, k] } else { [k, n] };
        let a = Tensor::from_f32(gpu, &fill(m * k, 7), &sa).expect("upload A");
        let b = Tensor::from_f32(gpu, &fill(k * n, 5), &sb).expect("upload B");
        Operands { a, b, ta, tb }
    }

    /// One product, then a 16-byte read of C so the timing waits for the GPU.
    fn run(&self) {
        let c = matmul_forward(&self.a, &self.b, None, self.ta, self.tb).expect("matmul");
        c.view(0, &[1]).expect("view").to_f32_vec().expect("readback");
    }
}

/// CPU time used by this process so far (Linux), for the idle-machine estimate.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn summary(gpu: &Gpu) {
    let cores = std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1);
    println!("matmul on {} ({:?} kernels, feed {:?})", gpu.adapter().info.name, gpu.variant(), gpu.register_feed());
    for &(label, m, k, n, ta, tb) in SHAPES {
        let ops = Operands::new(gpu, m, k, n, ta, tb);
        for _ in 0..3 {
            ops.run();
        }
        let cpu0 = cpu_seconds();
        let mut times: Vec<f64> = (0..7)
            .map(|_| {
                let t = Instant::now();
                ops.run();
                t.elapsed().as_secs_f64()
            })
            .collect();
        let cpu = cpu_seconds().map(|c| c - cpu0.unwrap_or(0.0));
        times.sort_by(|x, y| x.total_cmp(y));
        let flop = 2.0 * (m * n * k) as f64;
        // On a shared machine the wall clock undercounts; GFLOP per CPU-second of this process
        // times the core count estimates the figure on an idle machine.
        let idle = cpu.filter(|&c| c > 0.0).map(|c| format!(", {:.1} per CPU-s x {cores}", 7.0 * flop / c * cores as f64 / 1e9));
        println!(
            "  {label:<16} M={m:<5} K={k:<5} N={n:<5} {:>7.2} GFLOP/s (median {:.3} ms, best {:.2}{})",
            flop / times[3] / 1e9,
            times[3] * 1e3,
            flop / times[0] / 1e9,
            idle.unwrap_or_default()
        );
    }
}

fn bench(c: &mut Criterion) {
    let gpu = Gpu::new().expect("GPU adapter");
    // The older name of `PLUMB_REGISTER_FEED` (which `Gpu::new` reads), for this bench.
    match std::env::var("PLUMB_MATMUL_FEED").as_deref() {
        Ok("buffer") => gpu.set_register_feed(RegisterFeed::Buffer),
        Ok("texture") => gpu.set_register_feed(RegisterFeed::Texture),
        _ => {}
    }
    summary(&gpu);
    let mut group = c.benchmark_group("matmul");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for &(label, m, k, n, ta, tb) in SHAPES {
        let ops = Operands::new(&gpu, m, k, n, ta, tb);
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let id = BenchmarkId::new(label.replace(' ', "_"), format!("{m}x{k}x{n}"));
        group.bench_function(id, |bch| bch.iter(|| ops.run()));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
