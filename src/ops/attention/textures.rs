//! Textures for the register (CPU-adapter) attention kernels. On lavapipe a storage-buffer load
//! is built one SIMD lane at a time while a texel fetch is a vector gather, about fifteen times
//! cheaper (measured), and attention reads every key row once per query row; so on CPU adapters
//! q, k, v (and dout in the backward) are first copied into rgba32float array textures that
//! mirror their buffers: texel (x, t, b) holds elements 4x..4x+3 of token t of batch b. The copy
//! is a buffer-to-texture copy where the row pitch is a multiple of 256 bytes, else a small pack
//! kernel.

use super::{u32_of, Layout, PACK};
use crate::error::Result;
use crate::gpu::texture::{pooled_texture, PooledTexture};
use crate::gpu::{Gpu, Kernel};
use crate::tensor::Tensor;
use std::sync::Arc;

/// The pack kernel's uniform (mirrors `struct Params` in pack.wgsl).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PackParams {
    batch: u32,
    rows: u32,
    width: u32,
    row0: u32,
    tstride: u32,
    bstride: u32,
    dst_row0: u32,
    src_off: u32,
}

/// An rgba32float array texture the kernels sample and the pack kernel or a copy fills. It comes
/// from the GPU's texture pool and goes back when the last clone is dropped, so the textures of
/// one layer's attention serve the next layers' within a step.
#[derive(Clone)]
pub(super) struct SeqTexture {
    texture: Arc<PooledTexture>,
    pub(super) view: wgpu::TextureView,
}

/// A texture of `width` x `height` texels and `layers` layers; None where it passes the
/// adapter's limits.
pub(super) fn new_texture(gpu: &Gpu, width: usize, height: usize, layers: usize) -> Result<Option<SeqTexture>> {
    let l = gpu.limits();
    let (max_2d, max_layers) = (l.max_texture_dimension_2d as usize, l.max_texture_array_layers as usize);
    // wgpu's GL backend treats a one-layer array texture as a plain 2-D one, so the
    // texture-fed kernels would read nothing there: GL takes the buffer-fed path.
    let gl = gpu.adapter().info.backend == wgpu::Backend::Gl;
    if gl || width == 0 || height == 0 || layers == 0 || width > max_2d || height > max_2d || layers > max_layers {
        return Ok(None);
    }
    let texture = pooled_texture(gpu, width as u32, height as u32, layers as u32);
    let view = texture
        .texture()
        .create_view(&wgpu::TextureViewDescriptor { dimension: Some(wgpu::TextureViewDimension::D2Array), ..Default::default() });
    Ok(Some(SeqTexture { texture: Arc::new(texture), view }))
}

/// A 1x1 texture for the texture bindings of the buffer-fed path (never read or written).
pub(super) fn dummy_texture(gpu: &Gpu) -> wgpu::TextureView {
    let tex = gpu.device().create_texture(&wgpu::TextureDescriptor {
        label: Some("attention unused texture"),
        size: wgpu::Extent3d { width: 1, height: 1, depth_or_array_layers: 1 },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Float,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::STORAGE_BINDING,
        view_formats: &[],
    });
    tex.create_view(&wgpu::TextureViewDescriptor { dimension: Some(wgpu::TextureViewDimension::D2Array), ..Default::default() })
}

/// Record a copy of `width` texels from element `lay.off` of rows [row0, row0 + rows) of each
/// batch of the sequence `t` into rows [dst_row0, ..) of the texture `dst`: a buffer-to-texture
/// copy (a memcpy on CPU drivers) where the row pitch allows, else the pack kernel.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_rows(dst: &SeqTexture, t: &Tensor, lay: Layout, width: usize, batch: usize, rows: usize, row0: usize, dst_row0: usize) -> Result<()> {
    const OP: &str = "attention pack";
    let gpu = t.gpu();
    let pitch = lay.tstride * 4;
    let src = t.binding();
    let offset = src.offset + ((row0 * lay.tstride + lay.off) * 4) as u64;
    let aligned = pitch.is_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT as usize) && offset.is_multiple_of(16);
    if aligned && lay.bstride.is_multiple_of(lay.tstride) {
        gpu.with_encoder(|enc| {
            enc.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo {
                    buffer: src.buffer,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset,
                        bytes_per_row: Some(pitch as u32),
                        rows_per_image: Some((lay.bstride / lay.tstride) as u32),
                    },
                },
                wgpu::TexelCopyTextureInfo {
                    texture: dst.texture.texture(),
                    mip_level: 0,
                    origin: wgpu::Origin3d { x: 0, y: dst_row0 as u32, z: 0 },
                    aspect: wgpu::TextureAspect::All,
                },
                wgpu::Extent3d { width: width as u32, height: rows as u32, depth_or_array_layers: batch as u32 },
            )
        });
        return Ok(());
    }
    let p = PackParams {
        batch: u32_of(OP, batch)?,
        rows: u32_of(OP, rows)?,
        width: u32_of(OP, width)?,
        row0: u32_of(OP, row0)?,
        tstride: u32_of(OP, lay.tstride)?,
        bstride: u32_of(OP, lay.bstride)?,
        dst_row0: u32_of(OP, dst_row0)?,
        src_off: u32_of(OP, lay.off)?,
    };
    let groups = gpu.groups_1d(batch * rows * width, 64);
    gpu.dispatch_with_textures(&Kernel::new(&PACK, "pack"), bytemuck::bytes_of(&p), &[&dst.view], &[t.binding_vec4()], groups)
}

/// A texture holding the whole token rows of a (B, rows) sequence, or None if it does not fit.
/// Kernels find a head at texel (lay.off + h * D) / 4 of its token's row.
pub(super) fn pack_sequence(t: &Tensor, lay: Layout, batch: usize, rows: usize) -> Result<Option<SeqTexture>> {
    let width = lay.tstride / 4;
    let Some(tex) = new_texture(t.gpu(), width, rows, batch)? else { return Ok(None) };
    pack_rows(&tex, t, Layout { off: 0, ..lay }, width, batch, rows, 0, 0)?;
    Ok(Some(tex))
}
