//! The CPU-adapter operand choices are per device ([`GpuOptions`]), not process globals: two
//! devices opened in one process with different options run different kernel variants (their
//! pipeline caches show which) and give the same results, also when their work interleaves.

mod common;

use common::{assert_close, rand_vec};
use plumb::gpu::{RegisterFeed, StoredMatmul};
use plumb::ops::{elementwise, matmul};
use plumb::{Gpu, GpuOptions, KernelVariant, Tensor};

/// A device with the register kernels and the given operand choices (other options from the
/// environment, so `PLUMB_BACKEND` still picks the backend).
fn open(feed: RegisterFeed, elementwise_textures: bool, subgroup_kernels: bool) -> Gpu {
    let mut o = GpuOptions::from_env().unwrap();
    o.kernels = Some(KernelVariant::Register);
    o.register_feed = feed;
    o.elementwise_textures = elementwise_textures;
    o.subgroup_kernels = subgroup_kernels;
    Gpu::with_options(&o).unwrap()
}

/// A 128x64 by 64x96 product with bias, and `2x - 3y` and `x += 0.5 y` over 16,384 elements
/// (past the texture threshold): results as host vectors.
fn work(gpu: &Gpu) -> [Vec<f32>; 3] {
    let (m, k, n) = (128, 64, 96);
    let a = Tensor::from_f32(gpu, &rand_vec(m * k, 1, -1.0, 1.0), &[m, k]).unwrap();
    let b = Tensor::from_f32(gpu, &rand_vec(k * n, 2, -1.0, 1.0), &[k, n]).unwrap();
    let bias = Tensor::from_f32(gpu, &rand_vec(n, 3, -1.0, 1.0), &[n]).unwrap();
    let c = matmul::matmul_forward(&a, &b, Some(&bias), false, false).unwrap();
    let len = 16384;
    let x = Tensor::from_f32(gpu, &rand_vec(len, 4, -1.0, 1.0), &[len]).unwrap();
    let y = Tensor::from_f32(gpu, &rand_vec(len, 5, -1.0, 1.0), &[len]).unwrap();
    let z = elementwise::axpby(&x, &y, 2.0, -3.0).unwrap();
    elementwise::add_assign(&x, &y, 0.5).unwrap();
    [c.to_f32_vec().unwrap(), z.to_f32_vec().unwrap(), x.to_f32_vec().unwrap()]
}

fn ran(gpu: &Gpu, part: &str) -> bool {
    gpu.pipeline_keys().iter().any(|k| k.contains(part))
}

#[test]
fn two_devices_with_different_feeds_run_different_kernels_alike() {
    if common::gpu().is_none() {
        return;
    }
    let buffers = open(RegisterFeed::Buffer, false, false);
    let textures = open(RegisterFeed::Texture, true, true);
    // Interleaved: a process-wide switch set for one device would show in the other's kernels.
    let first = work(&buffers);
    let tex = work(&textures);
    let again = work(&buffers);
    for ((what, b), t) in ["matmul", "axpby", "add_assign"].iter().zip(&first).zip(&tex) {
        let want: Vec<f64> = b.iter().map(|&v| v as f64).collect();
        assert_close(&format!("{what}: texture-fed vs buffer-fed"), t, &want, 1e-5, 1e-5);
    }
    assert_eq!(first, again, "the buffer-fed device's results changed");

    // The buffer-fed device: the matmul reads buffers, no texture-fed or subgroup kernel at all.
    assert!(ran(&buffers, "matmul/register.wgsl#matmul") && ran(&buffers, "FROM_TEXTURE=0"), "{:?}", buffers.pipeline_keys());
    assert!(!ran(&buffers, "_texture") && !ran(&buffers, "FROM_TEXTURE=1") && !ran(&buffers, "subgroup"), "{:?}", buffers.pipeline_keys());
    assert!(!buffers.feed_textures() && !buffers.elementwise_textures() && !buffers.subgroup_kernels());

    // The texture-fed device: the elementwise entries from textures, the matmul from textures
    // (through its subgroup variant where the adapter has 8-lane subgroups).
    assert!(ran(&textures, "core/linear.wgsl#axpby_texture") && ran(&textures, "core/linear.wgsl#add_assign_texture"), "{:?}", textures.pipeline_keys());
    let matmul_kernel = if textures.subgroup_kernels() { "matmul/register_subgroup.wgsl#matmul" } else { "FROM_TEXTURE=1" };
    assert!(ran(&textures, matmul_kernel), "no {matmul_kernel} in {:?}", textures.pipeline_keys());
    assert!(!ran(&textures, "FROM_TEXTURE=0"), "{:?}", textures.pipeline_keys());
}

#[test]
fn a_device_switches_its_feed_without_touching_another() {
    if common::gpu().is_none() {
        return;
    }
    let a = open(RegisterFeed::Auto, true, true);
    let b = open(RegisterFeed::Auto, true, true);
    a.set_register_feed(RegisterFeed::Buffer);
    a.set_elementwise_textures(false);
    a.set_subgroup_kernels(false);
    assert_eq!((a.register_feed(), a.elementwise_textures()), (RegisterFeed::Buffer, false));
    assert_eq!((b.register_feed(), b.elementwise_textures()), (RegisterFeed::Auto, true));
    assert!(!a.subgroup_kernels());
    let info = &b.adapter().info;
    let eight_lanes = info.subgroup_min_size == 8 && info.subgroup_max_size == 8;
    assert_eq!(b.subgroup_kernels(), b.has_subgroups() && eight_lanes);
}

#[test]
fn feed_settings_parse_and_name_themselves_in_errors() {
    assert_eq!(RegisterFeed::parse("PLUMB_REGISTER_FEED", "Texture").unwrap(), RegisterFeed::Texture);
    assert_eq!(RegisterFeed::parse("PLUMB_REGISTER_FEED", "buffer").unwrap(), RegisterFeed::Buffer);
    let e = RegisterFeed::parse("PLUMB_REGISTER_FEED", "sideways").unwrap_err().to_string();
    assert!(e.contains("PLUMB_REGISTER_FEED") && e.contains("sideways"), "{e}");
    let d = GpuOptions::default();
    assert_eq!((d.register_feed, d.elementwise_textures, d.subgroup_kernels), (RegisterFeed::Auto, true, true));
    assert_eq!(d.stored_matmul, StoredMatmul::Auto);
    assert_eq!(StoredMatmul::parse("PLUMB_STORED_MATMUL", "Decode").unwrap(), StoredMatmul::Decode);
    assert_eq!(StoredMatmul::parse("PLUMB_STORED_MATMUL", "fused").unwrap(), StoredMatmul::Fused);
    let e = StoredMatmul::parse("PLUMB_STORED_MATMUL", "both").unwrap_err().to_string();
    assert!(e.contains("PLUMB_STORED_MATMUL") && e.contains("both"), "{e}");
}
