//! Elementwise ops: scale, add, sub, multiply and column slices. Tensor-level `*_forward`-style
//! functions record dispatches; the Var-level functions at the bottom add the tape entries. CPU
//! references sit beside them for the gradient-check table. add and sub run the engine core's
//! axpby (`gpu::linear`, re-exported here with fill and add_assign), which on CPU adapters reads
//! large inputs from texture copies (see `gpu::texture`).

use crate::error::{Error, Result};
use crate::gpu::linear::dispatch_linear;
use crate::gpu::{Kernel, ShaderSource};
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};

/// fill, axpby and add_assign are the engine core's (the tape and tensors use them); re-exported
/// here, where the other elementwise ops are.
pub use crate::gpu::linear::{add_assign, axpby, fill};

static LINEAR: ShaderSource = shader!("elementwise/linear.wgsl");
static SLICE: ShaderSource = shader!("elementwise/slice.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&LINEAR, &SLICE];

fn run(entry: &'static str, out: &Tensor, inputs: &[&Tensor], a: f32, b: f32) -> Result<()> {
    dispatch_linear(&LINEAR, entry, out, inputs, a, b)
}

/// A new tensor `a * x`.
pub fn scale_forward(x: &Tensor, a: f32) -> Result<Tensor> {
    let out = Tensor::empty(x.gpu(), x.shape(), DType::F32, "scale")?;
    run("scale", &out, &[x], a, 0.0)?;
    Ok(out)
}

/// A new tensor `x * y` elementwise.
pub fn mul_forward(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let out = Tensor::empty(x.gpu(), x.shape(), DType::F32, "mul")?;
    run("mul", &out, &[x, y], 0.0, 0.0)?;
    Ok(out)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SliceParams {
    rows: u32,
    cols: u32,
    start: u32,
    width: u32,
}

fn slice_params(op: &'static str, shape: &[usize], start: usize, width: usize) -> Result<SliceParams> {
    let cols = shape.last().copied().unwrap_or(1);
    if start + width > cols || width == 0 {
        return Err(Error::shape(op, format!("columns [{start}, {}) of {shape:?}", start + width)));
    }
    let rows = shape.iter().product::<usize>() / cols.max(1);
    Ok(SliceParams { rows: rows as u32, cols: cols as u32, start: start as u32, width: width as u32 })
}

/// Columns `start .. start + width` of the last dimension, as a new contiguous tensor.
pub fn slice_last_forward(x: &Tensor, start: usize, width: usize) -> Result<Tensor> {
    x.expect_dtype("slice_last", DType::F32)?;
    let p = slice_params("slice_last", x.shape(), start, width)?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("non-scalar") = width;
    let out = Tensor::empty(x.gpu(), &shape, DType::F32, "slice_last")?;
    let n = p.rows as usize * width;
    let k = Kernel::new(&SLICE, "slice_cols");
    x.gpu().dispatch(&k, bytemuck::bytes_of(&p), &[out.binding(), x.binding()], x.gpu().groups_1d(n, 256))?;
    Ok(out)
}

/// `out[..., start + j] += x[..., j]`: the adjoint of [`slice_last_forward`].
pub fn add_into_last(out: &Tensor, x: &Tensor, start: usize) -> Result<()> {
    let p = slice_params("add_into_last", out.shape(), start, x.last_dim())?;
    if p.rows as usize * x.last_dim() != x.len() {
        return Err(Error::shape("add_into_last", format!("{:?} into {:?}", x.shape(), out.shape())));
    }
    let n = x.len();
    let k = Kernel::new(&SLICE, "add_into_cols");
    out.gpu().dispatch(&k, bytemuck::bytes_of(&p), &[out.binding(), x.binding()], out.gpu().groups_1d(n, 256))
}

/// Columns `start .. start + width` of the last dimension (gradient scattered back).
pub fn slice_last(x: &Var, start: usize, width: usize) -> Result<Var> {
    let out = slice_last_forward(x.tensor(), start, width)?;
    let shape = x.shape().to_vec();
    let gpu = x.tensor().gpu().clone();
    Ok(Var::from_op(out, &[x], move |g| {
        let dx = Tensor::zeros(&gpu, &shape, DType::F32, "slice_last grad")?;
        add_into_last(&dx, g, start)?;
        Ok(vec![Some(dx)])
    }))
}

fn same_shape(op: &'static str, a: &Var, b: &Var) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(op, format!("{:?} vs {:?}", a.shape(), b.shape())));
    }
    Ok(())
}

/// `x + y` (same shape): residual adds.
pub fn add(x: &Var, y: &Var) -> Result<Var> {
    same_shape("add", x, y)?;
    let out = axpby(x.tensor(), y.tensor(), 1.0, 1.0)?;
    Ok(Var::from_op(out, &[x, y], |g| Ok(vec![Some(g.clone()), Some(g.clone())])))
}

/// `x - y` (same shape).
pub fn sub(x: &Var, y: &Var) -> Result<Var> {
    same_shape("sub", x, y)?;
    let out = axpby(x.tensor(), y.tensor(), 1.0, -1.0)?;
    Ok(Var::from_op(out, &[x, y], |g| Ok(vec![Some(g.clone()), Some(scale_forward(g, -1.0)?)])))
}

/// `x * y` elementwise (same shape).
pub fn mul(x: &Var, y: &Var) -> Result<Var> {
    same_shape("mul", x, y)?;
    let out = mul_forward(x.tensor(), y.tensor())?;
    let (xs, ys) = (x.tensor().clone(), y.tensor().clone());
    Ok(Var::from_op(out, &[x, y], move |g| {
        Ok(vec![Some(mul_forward(g, &ys)?), Some(mul_forward(g, &xs)?)])
    }))
}

/// `a * x`.
pub fn scale(x: &Var, a: f32) -> Result<Var> {
    let out = scale_forward(x.tensor(), a)?;
    Ok(Var::from_op(out, &[x], move |g| Ok(vec![Some(scale_forward(g, a)?)])))
}

/// CPU references (f64), used by the gradient-check table.
pub mod reference {
    pub fn add(x: &[f64], y: &[f64]) -> Vec<f64> {
        x.iter().zip(y).map(|(a, b)| a + b).collect()
    }
    pub fn sub(x: &[f64], y: &[f64]) -> Vec<f64> {
        x.iter().zip(y).map(|(a, b)| a - b).collect()
    }
    pub fn mul(x: &[f64], y: &[f64]) -> Vec<f64> {
        x.iter().zip(y).map(|(a, b)| a * b).collect()
    }
    /// Columns [start, start + width) of the last dimension `cols`.
    pub fn slice_last(x: &[f64], cols: usize, start: usize, width: usize) -> Vec<f64> {
        x.chunks(cols).flat_map(|r| r[start..start + width].to_vec()).collect()
    }
    pub fn scale(x: &[f64], a: f64) -> Vec<f64> {
        x.iter().map(|v| a * v).collect()
    }
}
