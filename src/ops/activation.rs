//! Activations of the transformer MLPs, elementwise, each with its backward: GELU in the tanh
//! form (GPT-2) and the exact erf form, SiLU, and SwiGLU = silu(gate) * up (the Llama MLP).
//! WGSL has no `erf`; the kernels use a Chebyshev fit of erfc with fractional error below
//! 1.2e-7 (see `shaders/activation/gelu.wgsl`). On CPU adapters GELU of large tensors reads its
//! inputs from texture copies (see `gpu::texture`).

use crate::error::{Error, Result};
use crate::gpu::texture::texture_elementwise;
use crate::gpu::{Kernel, ShaderSource};
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};

static GELU: ShaderSource = shader!("activation/gelu.wgsl");
static SILU: ShaderSource = shader!("activation/silu.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&GELU, &SILU];

/// Which GELU formula to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluKind {
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`: GPT-2's `gelu_new`.
    Tanh,
    /// `x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))`: the exact GELU.
    Erf,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    /// log2 of the textures' width in texels for the texture-fed entries; 0 for the others.
    shift: u32,
    _pad: [u32; 2],
}

/// Dispatch an elementwise kernel writing `outs` from `ins` (all f32 of one shape).
fn run(shader: &'static ShaderSource, entry: &'static str, outs: &[&Tensor], ins: &[&Tensor]) -> Result<()> {
    let first = outs[0];
    for t in outs.iter().chain(ins) {
        t.expect_dtype(entry, DType::F32)?;
        if t.shape() != first.shape() {
            return Err(Error::shape("activation", format!("{entry}: {:?} vs {:?}", t.shape(), first.shape())));
        }
    }
    let gpu = first.gpu();
    let p = Params { n: first.len() as u32, shift: 0, _pad: [0; 2] };
    // Binding order: the first output, the inputs, then any second output (see the shaders).
    let mut binds = vec![first.binding()];
    binds.extend(ins.iter().map(|t| t.binding()));
    binds.extend(outs[1..].iter().map(|t| t.binding()));
    gpu.dispatch(&Kernel::new(shader, entry), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(first.len(), 256))
}

/// [`run`] for an entry with one thread per vec4 (bindings from 6 on, the same order), where
/// the length is a multiple of 4; false, with nothing recorded, where it is not.
fn run_vec4(shader: &'static ShaderSource, entry: &'static str, outs: &[&Tensor], ins: &[&Tensor]) -> Result<bool> {
    let first = outs[0];
    if !first.len().is_multiple_of(4) || outs.iter().chain(ins).any(|t| t.dtype() != DType::F32 || t.shape() != first.shape()) {
        return Ok(false);
    }
    let gpu = first.gpu();
    let n4 = first.len() / 4;
    let p = Params { n: n4 as u32, shift: 0, _pad: [0; 2] };
    let binds: Vec<_> = std::iter::once(first).chain(ins.iter().copied()).chain(outs[1..].iter().copied()).map(|t| t.binding_vec4()).collect();
    gpu.dispatch_at(&Kernel::new(shader, entry), bytemuck::bytes_of(&p), (6, &[]), (6, &binds), gpu.groups_1d(n4, 256))?;
    Ok(true)
}

/// The uniform of the texture-fed GELU entries: vec4s, the textures' shift.
fn texture_params(n4: u32, shift: u32) -> Vec<u8> {
    bytemuck::bytes_of(&Params { n: n4, shift, _pad: [0; 2] }).to_vec()
}

fn like(x: &Tensor, what: &str) -> Result<Tensor> {
    Tensor::empty(x.gpu(), x.shape(), DType::F32, what)
}

/// GELU of every element.
pub fn gelu_forward(x: &Tensor, kind: GeluKind) -> Result<Tensor> {
    let y = like(x, "gelu out")?;
    let (entry, texture_entry) = match kind {
        GeluKind::Tanh => ("forward_tanh", "forward_tanh_texture"),
        GeluKind::Erf => ("forward_erf", "forward_erf_texture"),
    };
    if !texture_elementwise(&Kernel::new(&GELU, texture_entry), &y, &[x], texture_params)? {
        run(&GELU, entry, &[&y], &[x])?;
    }
    Ok(y)
}

/// GELU backward: `dx = dout * gelu'(x)`.
pub fn gelu_backward(dout: &Tensor, x: &Tensor, kind: GeluKind) -> Result<Tensor> {
    let dx = like(x, "gelu dx")?;
    let (entry, texture_entry) = match kind {
        GeluKind::Tanh => ("backward_tanh", "backward_tanh_texture"),
        GeluKind::Erf => ("backward_erf", "backward_erf_texture"),
    };
    // On CPU adapters (x and dout shaped alike, checked by `run` otherwise) from textures.
    if dout.shape() == x.shape() && texture_elementwise(&Kernel::new(&GELU, texture_entry), &dx, &[x, dout], texture_params)? {
        return Ok(dx);
    }
    run(&GELU, entry, &[&dx], &[x, dout])?;
    Ok(dx)
}

/// GELU on the tape.
pub fn gelu(x: &Var, kind: GeluKind) -> Result<Var> {
    let y = gelu_forward(x.tensor(), kind)?;
    let xs = x.tensor().clone();
    Ok(Var::from_op(y, &[x], move |g| Ok(vec![Some(gelu_backward(g, &xs, kind)?)])))
}

/// SiLU (swish) of every element: `x * sigmoid(x)`.
pub fn silu_forward(x: &Tensor) -> Result<Tensor> {
    let y = like(x, "silu out")?;
    run(&SILU, "silu_forward", &[&y], &[x])?;
    Ok(y)
}

/// SiLU backward: `dx = dout * silu'(x)`.
pub fn silu_backward(dout: &Tensor, x: &Tensor) -> Result<Tensor> {
    let dx = like(x, "silu dx")?;
    run(&SILU, "silu_backward", &[&dx], &[x, dout])?;
    Ok(dx)
}

/// SiLU on the tape.
pub fn silu(x: &Var) -> Result<Var> {
    let y = silu_forward(x.tensor())?;
    let xs = x.tensor().clone();
    Ok(Var::from_op(y, &[x], move |g| Ok(vec![Some(silu_backward(g, &xs)?)])))
}

/// SwiGLU: `silu(gate) * up` (same shapes).
pub fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let y = like(gate, "swiglu out")?;
    if !run_vec4(&SILU, "swiglu_forward_vec4", &[&y], &[gate, up])? {
        run(&SILU, "swiglu_forward", &[&y], &[gate, up])?;
    }
    Ok(y)
}

/// SwiGLU backward: (dgate, dup) = (dout * up * silu'(gate), dout * silu(gate)).
pub fn swiglu_backward(dout: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    let dgate = like(gate, "swiglu dgate")?;
    let dup = like(gate, "swiglu dup")?;
    if !run_vec4(&SILU, "swiglu_backward_vec4", &[&dgate, &dup], &[gate, up, dout])? {
        run(&SILU, "swiglu_backward", &[&dgate, &dup], &[gate, up, dout])?;
    }
    Ok((dgate, dup))
}

/// SwiGLU on the tape.
pub fn swiglu(gate: &Var, up: &Var) -> Result<Var> {
    let y = swiglu_forward(gate.tensor(), up.tensor())?;
    let (gs, us) = (gate.tensor().clone(), up.tensor().clone());
    Ok(Var::from_op(y, &[gate, up], move |g| {
        let (dgate, dup) = swiglu_backward(g, &gs, &us)?;
        Ok(vec![Some(dgate), Some(dup)])
    }))
}

/// CPU references (f64), used by the gradient-check table.
pub mod reference {
    use super::GeluKind;

    /// erf in f64: `2/sqrt(pi) e^(-x^2) sum_n (2x^2)^n x / (2n+1)!!`, a series of positive terms
    /// (no cancellation), accurate to ~1e-15 for |x| < 6; beyond, erf is +-1 in f64 to 2e-17.
    pub fn erf(x: f64) -> f64 {
        if x.abs() >= 6.0 {
            return x.signum();
        }
        let (mut term, mut sum) = (x, x);
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= 2.0 * x * x / (2.0 * n + 1.0);
            sum += term;
        }
        2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
    }

    /// GELU of every element.
    pub fn gelu(x: &[f64], kind: GeluKind) -> Vec<f64> {
        x.iter()
            .map(|&v| match kind {
                GeluKind::Tanh => {
                    0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
                }
                GeluKind::Erf => 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2)),
            })
            .collect()
    }

    /// `x * sigmoid(x)`.
    pub fn silu(x: &[f64]) -> Vec<f64> {
        x.iter().map(|&v| v / (1.0 + (-v).exp())).collect()
    }

    /// `silu(gate) * up`.
    pub fn swiglu(gate: &[f64], up: &[f64]) -> Vec<f64> {
        silu(gate).iter().zip(up).map(|(s, u)| s * u).collect()
    }
}
