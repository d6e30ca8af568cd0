//! `plumb bench`: the standard workloads W1-W5 (../shared/BENCHMARKS.md) on this machine's GPU,
//! printed as `RESULT {json}` lines that sit beside the peers' figures.

use plumb::bench::{self, W5Options};
use plumb::{format_profile, Gpu, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  plumb bench            # W1-W4 (W5 takes minutes on a CPU adapter: name it)
  plumb bench w2 --iters 20
  plumb bench w5 --checkpoint-activations --iters 3
  plumb bench w5 --model ~/.cache/plumb/SmolLM2-135M-Instruct.Q4_1.gguf
  plumb bench w5 --f32-base            # the memory table: one saver off at a time
  PLUMB_PROFILE=1 plumb bench w2 --iters 3   # time per kernel (each dispatch waited for)
Run each workload in its own process for its own peak memory figure.")]
pub struct BenchArgs {
    /// Workloads to run: w1, w2, w3, w4, w5, quant (W5's stored-form products), lora (W5's LoRA products) or all (W1-W4).
    #[arg(default_value = "all")]
    workloads: Vec<String>,
    /// Timed iterations (default: W1 7, W2 20, W3 10, W4 7, W5 3).
    #[arg(long)]
    iters: Option<usize>,
    /// W5: untimed warm-up steps, the first reported as the cold start (default 3; 1 on a slow
    /// adapter is enough once the shader cache is warm).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// W5: recompute each block in the backward instead of keeping its activations.
    #[arg(long)]
    checkpoint_activations: bool,
    /// W5: a GGUF file of the SmolLM2-135M family, loaded in its stored form (default: the
    /// smollm2-135m preset, random init, frozen to Q4_1).
    #[arg(long, value_name = "PATH.gguf")]
    model: Option<PathBuf>,
    /// W5: keep the random-init base in f32 (without the quantized base).
    #[arg(long, conflicts_with = "model")]
    f32_base: bool,
    /// W5: full (rows, V) logits instead of the chunked vocabulary head.
    #[arg(long)]
    full_logits: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    println!("adapter: {} ({:?}), kernels {:?}", gpu.adapter().info.name, gpu.adapter().info.backend, gpu.variant());
    let all = a.workloads.iter().any(|w| w == "all");
    let want = |w: &str| all || a.workloads.iter().any(|x| x.eq_ignore_ascii_case(w));
    if want("w1") {
        for r in bench::w1(&gpu, a.iters.unwrap_or(7))? {
            println!("{r}");
        }
        profile(&gpu);
    }
    if want("w2") {
        println!("{}", bench::w2(&gpu, a.iters.unwrap_or(20))?);
        profile(&gpu);
    }
    if want("w3") {
        println!("{}", bench::w3(&gpu, a.iters.unwrap_or(10))?);
        profile(&gpu);
    }
    if want("w4") {
        println!("{}", bench::w4(&gpu, a.iters.unwrap_or(7))?);
        profile(&gpu);
    }
    // The stored-form (Q4_1) products at W5's MLP shape, forward and backward: W5's kernels.
    if a.workloads.iter().any(|x| x.eq_ignore_ascii_case("quant")) {
        for (shape, backward) in [((1024, 576, 1536), false), ((1024, 576, 1536), true), ((512, 576, 4096), false)] {
            println!("{}", bench::quant_matmul(&gpu, plumb::ops::quant::StoredType::Q4_1, shape, backward, a.iters.unwrap_or(5))?);
        }
        profile(&gpu);
    }
    // W5's LoRA products (rank 16), each shape on its own.
    if a.workloads.iter().any(|x| x.eq_ignore_ascii_case("lora")) {
        for ((m, k, n, ta, tb), what) in bench::w5_lora_products() {
            let r = bench::matmul_shape(&gpu, (m, k, n), (ta, tb), a.iters.unwrap_or(5))?;
            println!("{what:<11} {r}");
        }
        profile(&gpu);
    }
    // W5 only when named: minutes on a CPU adapter.
    if a.workloads.iter().any(|x| x.eq_ignore_ascii_case("w5")) {
        let opts = W5Options { checkpoint: a.checkpoint_activations, quantized: !a.f32_base, chunked_head: !a.full_logits, model: a.model.clone() };
        let report = bench::w5(&gpu, &opts, a.warmup, a.iters.unwrap_or(3))?;
        // The per-kernel table covers W5's timed steps (W1's samples run on a device of their own).
        if gpu.profiling() {
            print!("{}", format_profile(&report.profile));
        }
        println!("{report}");
    }
    Ok(())
}

/// With `PLUMB_PROFILE=1`: the per-kernel table of the workload just run.
fn profile(gpu: &Gpu) {
    if gpu.profiling() {
        print!("{}", format_profile(&gpu.take_profile()));
    }
}
