//! `plumb info`: what wgpu sees on this machine and which adapter plumb picks, so a user can
//! tell at a glance whether a GPU driver is installed and whether f16 is available.

use plumb::gpu::{list_adapters, GpuOptions};
use plumb::Gpu;

#[derive(clap::Args)]
pub struct InfoArgs {
    /// Only list adapters of this backend (vulkan, metal, dx12, gl); default: PLUMB_BACKEND or all.
    #[arg(long)]
    backend: Option<String>,
}

pub fn run(args: InfoArgs) -> plumb::Result<()> {
    let mut opts = GpuOptions::from_env()?;
    if args.backend.is_some() {
        opts.backend = args.backend;
    }
    let adapters = list_adapters(opts.backend.as_deref())?;
    println!("adapters seen: {}", adapters.len());
    for (i, a) in adapters.iter().enumerate() {
        println!("[{i}] {a}");
    }
    let gpu = Gpu::with_options(&opts)?;
    println!();
    println!("chosen: {} ({:?}, {:?})", gpu.adapter().info.name, gpu.adapter().info.backend, gpu.adapter().info.device_type);
    println!("kernel variant: {:?} (override with PLUMB_KERNELS=register|tiled)", gpu.variant());
    println!("f16 matmul: {}", if gpu.has_f16() { "available" } else { "not available (f32 path)" });
    Ok(())
}
