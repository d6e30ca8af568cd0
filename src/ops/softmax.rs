//! Softmax over the last dimension, numerically stable, for rows of any length (attention
//! scores, vocabulary distributions for sampling and metrics). The backward pass needs only the
//! output: `dx = y * (dy - sum(dy * y))`. Row kernels come in two variants chosen by
//! [`Gpu::variant`]: one thread per row (CPU adapters, rows up to 4096) and one workgroup per
//! row (GPUs, and longer rows such as a vocabulary everywhere).
//!
//! [`Gpu::variant`]: crate::Gpu::variant

use crate::error::{Error, Result};
use crate::gpu::{Kernel, ShaderSource};
use crate::ops::reduce::row_kernel;
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};

static SOFTMAX: ShaderSource = shader!("softmax/softmax.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&SOFTMAX];

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}

fn params(op: &'static str, x: &Tensor) -> Result<(usize, usize, Params)> {
    x.expect_dtype(op, DType::F32)?;
    let cols = x.last_dim();
    if x.shape().is_empty() || cols == 0 {
        return Err(Error::shape(op, format!("x must be (..., C) with C > 0, got {:?}", x.shape())));
    }
    let rows = x.len() / cols;
    Ok((rows, cols, Params { rows: rows as u32, cols: cols as u32, _pad: [0; 2] }))
}

/// Softmax over the last dimension: x (..., C) -> y (..., C).
pub fn softmax_forward(x: &Tensor) -> Result<Tensor> {
    let (rows, cols, p) = params("softmax", x)?;
    let gpu = x.gpu();
    let y = Tensor::empty(gpu, x.shape(), DType::F32, "softmax out")?;
    let (entry, groups) = row_kernel(gpu, rows, cols, "forward_thread", "forward_group");
    gpu.dispatch(&Kernel::new(&SOFTMAX, entry), bytemuck::bytes_of(&p), &[y.binding(), x.binding()], groups)?;
    Ok(y)
}

/// Softmax backward from the output y and its gradient dy (both (..., C)).
pub fn softmax_backward(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (rows, cols, p) = params("softmax_backward", y)?;
    dy.expect_dtype("softmax_backward", DType::F32)?;
    dy.expect_shape("softmax_backward", y.shape())?;
    let gpu = y.gpu();
    let dx = Tensor::empty(gpu, y.shape(), DType::F32, "softmax dx")?;
    let (entry, groups) = row_kernel(gpu, rows, cols, "backward_thread", "backward_group");
    let binds = [dx.binding(), y.binding(), dy.binding()];
    gpu.dispatch(&Kernel::new(&SOFTMAX, entry), bytemuck::bytes_of(&p), &binds, groups)?;
    Ok(dx)
}

/// Softmax over the last dimension on the tape.
pub fn softmax(x: &Var) -> Result<Var> {
    let y = softmax_forward(x.tensor())?;
    let saved = y.clone();
    Ok(Var::from_op(y, &[x], move |g| Ok(vec![Some(softmax_backward(g, &saved)?)])))
}

/// CPU reference (f64), used by the gradient-check table.
pub mod reference {
    /// Softmax over rows of `cols` values.
    pub fn softmax(x: &[f64], cols: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(cols) {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
            out.extend(row.iter().map(|v| (v - m).exp() / s));
        }
        out
    }
}
