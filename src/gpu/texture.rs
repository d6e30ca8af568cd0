//! Operand textures for CPU adapters. On lavapipe a storage-buffer load is built one SIMD lane
//! and one component at a time (~20 cycles each) while a texel fetch is a vector gather, so
//! kernels that read much (matmul, normalisation, elementwise ops) read their inputs from
//! rgba32float copies: vec4 number i of a tensor is texel (i mod W, i / W), W a power of two.
//! The buffer-to-texture copy is a memcpy there and is recorded in order with the step.
//!
//! Textures (these operand copies, and attention's sequence textures) are pooled by size and go
//! back to the pool as soon as the dispatch that reads them is recorded: a later copy into the
//! same texture is ordered after that dispatch by wgpu's barriers, so a step needs one texture
//! per size in flight, not one per product (this keeps the peak memory of a W2 step ~130 MiB
//! lower on lavapipe, and skips the allocations).
//!
//! A copy ends the open compute pass, so small operands are packed by a kernel instead
//! (`shaders/core/texture_pack.wgsl`), and while a [`FrozenTextures`] guard lives the texture
//! copies of one buffer (a model's weights during generation) are kept and reused: a decode step
//! then records no copies at all.

use super::{Gpu, Kernel, ShaderSource};
use crate::error::Result;
use crate::shader;
use crate::tensor::Tensor;
use std::collections::HashMap;

/// Fills an operand texture from a buffer inside the compute pass.
pub(crate) static TEXTURE_PACK: ShaderSource = shader!("core/texture_pack.wgsl");

/// Operands of at most this many vec4s are packed by a kernel inside the pass rather than
/// copied: on lavapipe a copy and the pass it ends cost ~60 us, about what packing 2,048
/// texels takes.
const PACK_MAX_VECS: usize = 2048;

/// Most bytes of idle textures the pool keeps; past this, returned textures are freed.
const POOL_MAX_BYTES: u64 = 64 << 20;

/// Idle textures by (width, height, layers), and the kept copies of a frozen buffer.
#[derive(Default)]
pub(crate) struct TexturePool {
    free: HashMap<(u32, u32, u32), Vec<wgpu::Texture>>,
    bytes: u64,
    /// The buffer frozen by a [`FrozenTextures`] guard, and its copies by (offset, vec4s, width).
    frozen: Option<wgpu::Buffer>,
    kept: HashMap<(u64, usize, usize), wgpu::TextureView>,
}

impl TexturePool {
    /// Free every idle texture.
    pub(crate) fn trim(&mut self) {
        self.free.clear();
        self.bytes = 0;
    }
}

/// An rgba32float texture from the pool; it goes back to the pool when dropped, so keep it (or
/// a view's owner) until the dispatches that use it are recorded. A later user of the same
/// texture in the step is ordered after them by wgpu's barriers.
pub(crate) struct PooledTexture {
    texture: Option<wgpu::Texture>,
    gpu: Gpu,
}

impl PooledTexture {
    pub(crate) fn texture(&self) -> &wgpu::Texture {
        self.texture.as_ref().expect("pooled texture used after drop")
    }

    /// Keep the texture out of the pool for good (dropping the returned one frees it).
    fn unpooled(mut self) -> wgpu::Texture {
        self.texture.take().expect("pooled texture used after drop")
    }
}

impl Drop for PooledTexture {
    fn drop(&mut self) {
        if let Some(tex) = self.texture.take() {
            let bytes = texture_bytes(&tex);
            let mut pool = self.gpu.0.textures.lock().unwrap_or_else(|e| e.into_inner());
            if pool.bytes + bytes <= POOL_MAX_BYTES {
                pool.bytes += bytes;
                pool.free.entry((tex.width(), tex.height(), tex.depth_or_array_layers())).or_default().push(tex);
            }
        }
    }
}

/// A texture copy of an operand; a pooled texture returns to the pool when this is dropped, so
/// keep it until the dispatch that reads it is recorded.
pub(crate) struct OperandTexture {
    pub(crate) view: wgpu::TextureView,
    _pooled: Option<PooledTexture>,
}

fn texture_bytes(t: &wgpu::Texture) -> u64 {
    t.width() as u64 * t.height() as u64 * t.depth_or_array_layers() as u64 * 16
}

/// While this lives, texture copies of ranges of one buffer are made once and reused (see
/// [`Gpu::freeze_textures`]); dropping it frees them.
pub struct FrozenTextures {
    gpu: Gpu,
}

impl Drop for FrozenTextures {
    fn drop(&mut self) {
        let mut pool = self.gpu.0.textures.lock().unwrap_or_else(|e| e.into_inner());
        pool.frozen = None;
        pool.kept.clear();
    }
}

impl Gpu {
    /// Promise that `t`'s buffer (e.g. a model's flat weight store) is not written until the
    /// returned guard is dropped, so that the operand textures of CPU adapters made from it
    /// can be kept and reused instead of copied at every call. Generation does this for the
    /// model's weights; elsewhere it changes nothing but memory. One buffer at a time: a second
    /// guard replaces the first's buffer.
    pub fn freeze_textures(&self, t: &Tensor) -> FrozenTextures {
        let mut pool = self.0.textures.lock().unwrap_or_else(|e| e.into_inner());
        pool.kept.clear();
        pool.frozen = Some(t.binding().buffer.clone());
        FrozenTextures { gpu: self.clone() }
    }
}

/// An rgba32float texture of `width` x `height` texels and `layers` layers from the pool, or a
/// new one; sampled, written as a storage texture or copied into.
pub(crate) fn pooled_texture(gpu: &Gpu, width: u32, height: u32, layers: u32) -> PooledTexture {
    let reused = {
        let mut pool = gpu.0.textures.lock().unwrap_or_else(|e| e.into_inner());
        let t = pool.free.get_mut(&(width, height, layers)).and_then(|v| v.pop());
        if let Some(t) = &t {
            pool.bytes -= texture_bytes(t);
        }
        t
    };
    let texture = reused.unwrap_or_else(|| {
        gpu.device().create_texture(&wgpu::TextureDescriptor {
            label: Some("pooled texture"),
            size: wgpu::Extent3d { width, height, depth_or_array_layers: layers },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST | wgpu::TextureUsages::STORAGE_BINDING,
            view_formats: &[],
        })
    });
    PooledTexture { texture: Some(texture), gpu: gpu.clone() }
}

/// The width (a power of two, in texels) of textures holding `a_vecs` and `b_vecs` vec4s, or
/// None if they do not fit. Preferably one that divides both counts, so that the copies fill
/// whole rows (a partly written texture is cleared first); at least 16 texels, since texture
/// copies move rows of a multiple of 256 bytes.
pub(crate) fn texture_width(gpu: &Gpu, a_vecs: usize, b_vecs: usize) -> Option<usize> {
    let max = gpu.limits().max_texture_dimension_2d as usize;
    if a_vecs == 0 || b_vecs == 0 || max < 16 {
        return None;
    }
    let mut w = 1024.min(max);
    while w > 16 && (!a_vecs.is_multiple_of(w) || !b_vecs.is_multiple_of(w)) {
        w /= 2;
    }
    while a_vecs.max(b_vecs).div_ceil(w) > max {
        if w * 2 > max {
            return None;
        }
        w *= 2;
    }
    Some(w)
}

/// Texture copies of the first `vecs` vec4s of each tensor, `width` texels wide (from the
/// pool): vec4 number i is texel (i mod width, i / width), recorded in order with the step's
/// dispatches. Copies of a frozen buffer are reused (see [`Gpu::freeze_textures`]). If every
/// operand left to upload is small they are packed inside the pass; otherwise all are copied,
/// since one copy ends the pass anyway.
pub(crate) fn upload_textures(operands: &[(&Tensor, usize)], width: usize) -> Result<Vec<OperandTexture>> {
    let Some((first, _)) = operands.first() else { return Ok(vec![]) };
    let gpu = first.gpu();
    // (kept view, frozen) per operand
    let found: Vec<(Option<wgpu::TextureView>, bool)> = {
        let pool = gpu.0.textures.lock().unwrap_or_else(|e| e.into_inner());
        operands
            .iter()
            .map(|(t, vecs)| {
                let b = t.binding();
                let frozen = pool.frozen.as_ref() == Some(b.buffer);
                (pool.kept.get(&(b.offset, *vecs, width)).filter(|_| frozen).cloned(), frozen)
            })
            .collect()
    };
    let pack = operands.iter().zip(&found).all(|((_, vecs), (kept, frozen))| kept.is_some() || (*vecs <= PACK_MAX_VECS && !frozen));
    let mut out = Vec::with_capacity(operands.len());
    for ((t, vecs), (kept, frozen)) in operands.iter().zip(found) {
        if let Some(view) = kept {
            out.push(OperandTexture { view, _pooled: None });
            continue;
        }
        let tex = pooled_texture(gpu, width as u32, vecs.div_ceil(width) as u32, 1);
        let view = tex.texture().create_view(&wgpu::TextureViewDescriptor::default());
        if pack {
            // In the pass: vec4 i of the tensor to texel (i mod width, i / width).
            let p = [*vecs as u32, width.trailing_zeros(), 0, 0];
            let k = Kernel::new(&TEXTURE_PACK, "pack");
            gpu.dispatch_with_textures(&k, bytemuck::cast_slice(&p), &[&view], &[t.binding_vec4()], gpu.groups_1d(*vecs, 64))?;
        } else {
            copy_to_texture(tex.texture(), t, *vecs, width);
        }
        if frozen {
            // Kept until the guard is dropped (the view holds the texture); never pooled again.
            drop(tex.unpooled());
            let b = t.binding();
            let mut pool = gpu.0.textures.lock().unwrap_or_else(|e| e.into_inner());
            pool.kept.insert((b.offset, *vecs, width), view.clone());
            out.push(OperandTexture { view, _pooled: None });
        } else {
            out.push(OperandTexture { view, _pooled: Some(tex) });
        }
    }
    Ok(out)
}

/// [`upload_textures`] for one operand.
pub(crate) fn upload_texture(t: &Tensor, vecs: usize, width: usize) -> Result<OperandTexture> {
    let mut v = upload_textures(&[(t, vecs)], width)?;
    Ok(v.remove(0))
}

/// Record the copy of the first `vecs` vec4s of `t` into `tex`, `width` texels wide.
fn copy_to_texture(tex: &wgpu::Texture, t: &Tensor, vecs: usize, width: usize) {
    let gpu = t.gpu();
    let (full_rows, rest) = (vecs / width, vecs % width);
    let b = t.binding();
    let row_bytes = (width * 16) as u64;
    gpu.with_encoder(|enc| {
        // Whole rows, then the partial last one.
        if full_rows > 0 {
            enc.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo {
                    buffer: b.buffer,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: b.offset,
                        bytes_per_row: Some(row_bytes as u32),
                        rows_per_image: None,
                    },
                },
                tex.as_image_copy(),
                wgpu::Extent3d { width: width as u32, height: full_rows as u32, depth_or_array_layers: 1 },
            );
        }
        if rest > 0 {
            enc.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo {
                    buffer: b.buffer,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: b.offset + full_rows as u64 * row_bytes,
                        bytes_per_row: None,
                        rows_per_image: None,
                    },
                },
                wgpu::TexelCopyTextureInfo {
                    texture: tex,
                    mip_level: 0,
                    origin: wgpu::Origin3d { x: 0, y: full_rows as u32, z: 0 },
                    aspect: wgpu::TextureAspect::All,
                },
                wgpu::Extent3d { width: rest as u32, height: 1, depth_or_array_layers: 1 },
            );
        }
    });
}

/// A 1x1 texture for the texture bindings of the buffer-fed path (never read).
pub(crate) fn dummy_texture(gpu: &Gpu) -> OperandTexture {
    let view = gpu
        .device()
        .create_texture(&wgpu::TextureDescriptor {
            label: Some("unused texture"),
            size: wgpu::Extent3d { width: 1, height: 1, depth_or_array_layers: 1 },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            usage: wgpu::TextureUsages::TEXTURE_BINDING,
            view_formats: &[],
        })
        .create_view(&wgpu::TextureViewDescriptor::default());
    OperandTexture { view, _pooled: None }
}


/// Below this many elements the texture-fed elementwise and row kernels do not pay: a copy ends
/// the open compute pass, and on lavapipe an axpby of 1,024 elements took 82 us through
/// textures against 43 us from the buffers, while at 16,384 it took 128 us against 219 us.
/// (Generation's decode steps, with a few rows, went from 625 to 807 tokens/s with this bound.)
pub(crate) const MIN_TEXTURE_ELEMENTS: usize = 8192;

/// Texture copies of `tensors` (f32), all `width` texels wide so that one shift addresses them:
/// the width fits the largest; None on adapters that do not take the register kernels, where
/// [`Gpu::elementwise_textures`] is off, the first has fewer than [`MIN_TEXTURE_ELEMENTS`], a
/// length is not a multiple of 4 or a copy would pass the adapter's texture limits. Returns the views and log2 of the width.
pub(crate) fn tensor_textures(tensors: &[&Tensor]) -> Result<Option<(Vec<OperandTexture>, u32)>> {
    let Some(first) = tensors.first() else { return Ok(None) };
    let gpu = first.gpu();
    if !gpu.elementwise_textures() || gpu.variant() != super::KernelVariant::Register || first.len() < MIN_TEXTURE_ELEMENTS {
        return Ok(None);
    }
    if tensors.iter().any(|t| t.dtype() != crate::tensor::DType::F32 || !t.len().is_multiple_of(4) || t.is_empty()) {
        return Ok(None);
    }
    let largest = tensors.iter().map(|t| t.len() / 4).max().unwrap_or(0);
    let Some(width) = texture_width(gpu, largest, largest) else { return Ok(None) };
    let operands: Vec<(&Tensor, usize)> = tensors.iter().map(|t| (*t, t.len() / 4)).collect();
    let views = upload_textures(&operands, width)?;
    Ok(Some((views, width.trailing_zeros())))
}

/// A texture-fed elementwise entry point: one thread per vec4 of `out`, texture copies of `ins`
/// at bindings 4 and 5 and `out` at 6 (the layout of gelu.wgsl and linear.wgsl); `params` builds
/// the uniform from (vec4s, textures' shift). False, with nothing recorded, where the texture
/// form does not apply (see [`tensor_textures`]).
pub(crate) fn texture_elementwise(k: &Kernel, out: &Tensor, ins: &[&Tensor], params: impl FnOnce(u32, u32) -> Vec<u8>) -> Result<bool> {
    if out.dtype() != crate::tensor::DType::F32 || !out.len().is_multiple_of(4) || ins.iter().any(|t| t.len() != out.len()) {
        return Ok(false);
    }
    let Some((tex, shift)) = tensor_textures(ins)? else { return Ok(false) };
    let gpu = out.gpu();
    let n4 = out.len() / 4;
    let views: Vec<&wgpu::TextureView> = tex.iter().map(|t| &t.view).collect();
    gpu.dispatch_at(k, &params(n4 as u32, shift), (4, &views), (6, &[out.binding_vec4()]), gpu.groups_1d(n4, 256))?;
    Ok(true)
}
