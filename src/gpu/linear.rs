//! The engine core's own kernels: fill, `a·x + b·y` and in-place accumulation
//! (`shaders/core/linear.wgsl`). Tensors are zeroed, the tape seeds and sums gradients and
//! parameter stores reset theirs with them, so they sit beside the runtime rather than in an op
//! family: the core never calls into `ops`. The elementwise family re-exports them and runs
//! its own products through [`dispatch_linear`].
//!
//! On CPU adapters axpby and in-place accumulation of large tensors read their inputs from
//! texture copies (see [`super::texture`]).

use super::texture::texture_elementwise;
use super::{Kernel, ShaderSource};
use crate::error::{Error, Result};
use crate::shader;
use crate::tensor::{DType, Tensor};

pub(crate) static LINEAR: ShaderSource = shader!("core/linear.wgsl");

/// The uniform of `linear.wgsl` (and of the elementwise family's products, same layout).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LinearParams {
    /// Elements, or vec4s for the texture-fed entries.
    n: u32,
    a: f32,
    b: f32,
    /// log2 of the textures' width in texels for the texture-fed entries; 0 for the others.
    shift: u32,
}

/// Run `shader`'s `entry` with the linear-kernel layout: `out` at binding 1, `inputs` from
/// binding 2 on, uniform `(n, a, b)`, one thread per element. All f32 and of `out`'s length.
pub(crate) fn dispatch_linear(shader: &'static ShaderSource, entry: &'static str, out: &Tensor, inputs: &[&Tensor], a: f32, b: f32) -> Result<()> {
    out.expect_dtype(entry, DType::F32)?;
    for t in inputs {
        t.expect_dtype(entry, DType::F32)?;
        if t.len() != out.len() {
            return Err(Error::shape("elementwise", format!("{entry}: {:?} vs {:?}", t.shape(), out.shape())));
        }
    }
    let gpu = out.gpu();
    let n = out.len();
    let p = LinearParams { n: n as u32, a, b, shift: 0 };
    let mut binds = vec![out.binding()];
    binds.extend(inputs.iter().map(|t| t.binding()));
    gpu.dispatch(&Kernel::new(shader, entry), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(n, 256))
}

/// On CPU adapters, a texture-fed entry of linear.wgsl (see [`texture_elementwise`]); false,
/// with nothing recorded, where it does not apply.
fn dispatch_texture(entry: &'static str, out: &Tensor, ins: &[&Tensor], a: f32, b: f32) -> Result<bool> {
    let params = |n, shift| bytemuck::bytes_of(&LinearParams { n, a, b, shift }).to_vec();
    texture_elementwise(&Kernel::new(&LINEAR, entry), out, ins, params)
}

/// `t[i] = value` for every element.
pub fn fill(t: &Tensor, value: f32) -> Result<()> {
    // Zeroing a large tensor on a CPU adapter: the driver's memset (a transfer command) instead
    // of a kernel storing one lane at a time (a W2 gradient reset went from 3.5 ms to well
    // under 1 ms on lavapipe).
    let gpu = t.gpu();
    if value == 0.0 && t.dtype() == DType::F32 && gpu.is_cpu() && t.len() >= 65536 {
        let b = t.binding();
        gpu.with_encoder(|enc| enc.clear_buffer(b.buffer, b.offset, Some(b.size)));
        return Ok(());
    }
    dispatch_linear(&LINEAR, "fill", t, &[], value, 0.0)
}

/// `out[i] += a * x[i]` (gradient accumulation).
pub fn add_assign(out: &Tensor, x: &Tensor, a: f32) -> Result<()> {
    if dispatch_texture("add_assign_texture", out, &[out, x], a, 0.0)? {
        return Ok(());
    }
    dispatch_linear(&LINEAR, "add_assign", out, &[x], a, 0.0)
}

/// A new tensor `a * x + b * y` (x and y of equal size; the result takes x's shape).
pub fn axpby(x: &Tensor, y: &Tensor, a: f32, b: f32) -> Result<Tensor> {
    let out = Tensor::empty(x.gpu(), x.shape(), DType::F32, "axpby")?;
    if dispatch_texture("axpby_texture", &out, &[x, y], a, b)? {
        return Ok(out);
    }
    dispatch_linear(&LINEAR, "axpby", &out, &[x, y], a, b)?;
    Ok(out)
}
