//! Elementwise linear ops: fill, scale, add, axpby (a·x + b·y), in-place accumulate, multiply.
//! Tensor-level `*_forward`-style functions record dispatches; the Var-level functions at the
//! bottom add the tape entries. CPU references sit beside them for the gradient-check table.

use crate::error::{Error, Result};
use crate::gpu::{Kernel, ShaderSource};
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};

static LINEAR: ShaderSource = shader!("elementwise/linear.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&LINEAR];

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    a: f32,
    b: f32,
    _pad: u32,
}

fn run(entry: &'static str, out: &Tensor, inputs: &[&Tensor], a: f32, b: f32) -> Result<()> {
    out.expect_dtype(entry, DType::F32)?;
    for t in inputs {
        t.expect_dtype(entry, DType::F32)?;
        if t.len() != out.len() {
            return Err(Error::shape("elementwise", format!("{entry}: {:?} vs {:?}", t.shape(), out.shape())));
        }
    }
    let gpu = out.gpu();
    let n = out.len();
    let p = Params { n: n as u32, a, b, _pad: 0 };
    let mut binds = vec![out.binding()];
    binds.extend(inputs.iter().map(|t| t.binding()));
    gpu.dispatch(&Kernel::new(&LINEAR, entry), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(n, 256))
}

/// `t[i] = value` for every element.
pub fn fill(t: &Tensor, value: f32) -> Result<()> {
    run("fill", t, &[], value, 0.0)
}

/// `out[i] += a * x[i]` (gradient accumulation).
pub fn add_assign(out: &Tensor, x: &Tensor, a: f32) -> Result<()> {
    run("add_assign", out, &[x], a, 0.0)
}

/// A new tensor `a * x`.
pub fn scale_forward(x: &Tensor, a: f32) -> Result<Tensor> {
    let out = Tensor::empty(x.gpu(), x.shape(), DType::F32, "scale")?;
    run("scale", &out, &[x], a, 0.0)?;
    Ok(out)
}

/// A new tensor `a * x + b * y` (x and y of equal size; the result takes x's shape).
pub fn axpby(x: &Tensor, y: &Tensor, a: f32, b: f32) -> Result<Tensor> {
    let out = Tensor::empty(x.gpu(), x.shape(), DType::F32, "axpby")?;
    run("axpby", &out, &[x, y], a, b)?;
    Ok(out)
}

/// A new tensor `x * y` elementwise.
pub fn mul_forward(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let out = Tensor::empty(x.gpu(), x.shape(), DType::F32, "mul")?;
    run("mul", &out, &[x, y], 0.0, 0.0)?;
    Ok(out)
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
    pub fn scale(x: &[f64], a: f64) -> Vec<f64> {
        x.iter().map(|v| a * v).collect()
    }
}
