//! `plumb bench`: the standard workloads W1-W4 (../shared/BENCHMARKS.md) on this machine's GPU,
//! printed as `RESULT {json}` lines that sit beside the peers' figures.

use plumb::{bench, format_profile, Gpu, Result};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  plumb bench            # all four workloads
  plumb bench w2 --iters 20
  PLUMB_PROFILE=1 plumb bench w2 --iters 3   # time per kernel (each dispatch waited for)
Run each workload in its own process for its own peak memory figure.")]
pub struct BenchArgs {
    /// Workloads to run: w1, w2, w3, w4 or all.
    #[arg(default_value = "all")]
    workloads: Vec<String>,
    /// Timed iterations (default: W1 7, W2 20, W3 10, W4 7, as the peers).
    #[arg(long)]
    iters: Option<usize>,
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
    Ok(())
}

/// With `PLUMB_PROFILE=1`: the per-kernel table of the workload just run.
fn profile(gpu: &Gpu) {
    if gpu.profiling() {
        print!("{}", format_profile(&gpu.take_profile()));
    }
}
