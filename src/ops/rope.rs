//! Rotary position embeddings (RoPE) in the Hugging Face Llama convention: the pairs
//! (i, i + D/2) of each head vector rotate by `pos * inv_freq[i]`, `inv_freq[i] = theta^(-2i/D)`.
//!
//! x is (B, T, H, D). Token t of row b sits at position `offset + t`, or at
//! `offset + positions[b, t]` when a u32 (B, T) `positions` tensor is given (left-padded
//! batches: a (B, T) tensor of each row's own positions, with `offset` added for the KV-cache
//! step). Pass `offset = 0` for absolute position ids. The `*_table` functions read inv_freq from
//! a (D/2) tensor instead of computing it from theta, for scaled variants (Llama 3's rope
//! scaling, NTK) whose frequencies the model code computes once.
//!
//! The backward pass is the inverse rotation of the output gradient.

use crate::error::{Error, Result};
use crate::gpu::{Kernel, ShaderSource};
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};

static ROPE: ShaderSource = shader!("rope/rope.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&ROPE];

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    seq: u32,
    heads: u32,
    dim: u32,
    offset: u32,
    flags: u32,
    sign: f32,
    log2_theta: f32,
}

/// Where the inverse frequencies come from.
#[derive(Clone, Copy)]
enum Freqs<'a> {
    Theta(f32),
    Table(&'a Tensor),
}

/// Rotate x (B, T, H, D) forward (sign 1) or back (sign -1).
fn apply(x: &Tensor, freqs: Freqs, offset: usize, positions: Option<&Tensor>, sign: f32) -> Result<Tensor> {
    const OP: &str = "rope";
    x.expect_dtype(OP, DType::F32)?;
    let &[b, t, h, d] = x.shape() else {
        return Err(Error::shape(OP, format!("x must be (B, T, H, D), got {:?}", x.shape())));
    };
    if d == 0 || d % 2 != 0 {
        return Err(Error::shape(OP, format!("the head dimension must be even and > 0, got {d}")));
    }
    if offset > u32::MAX as usize / 2 {
        return Err(Error::shape(OP, format!("offset {offset} is too large")));
    }
    let mut flags = 0;
    if let Some(pos) = positions {
        pos.expect_dtype(OP, DType::U32)?;
        pos.expect_shape(OP, &[b, t])?;
        flags |= 1;
    }
    let log2_theta = match freqs {
        Freqs::Theta(theta) => {
            if !(theta.is_finite() && theta > 0.0) {
                return Err(Error::shape(OP, format!("theta must be positive and finite, got {theta}")));
            }
            theta.log2()
        }
        Freqs::Table(table) => {
            table.expect_dtype(OP, DType::F32)?;
            table.expect_shape(OP, &[d / 2])?;
            flags |= 2;
            0.0
        }
    };
    let gpu = x.gpu();
    let out = Tensor::empty(gpu, x.shape(), DType::F32, "rope out")?;
    let p = Params {
        batch: b as u32,
        seq: t as u32,
        heads: h as u32,
        dim: d as u32,
        offset: offset as u32,
        flags,
        sign,
        log2_theta,
    };
    // Unused inputs are bound to x (read-only, never read: the flags say so).
    let pos_bind = positions.map_or(x.binding(), |t| t.binding());
    let freq_bind = match freqs {
        Freqs::Table(table) => table.binding(),
        Freqs::Theta(_) => x.binding(),
    };
    let binds = [out.binding(), x.binding(), pos_bind, freq_bind];
    gpu.dispatch(&Kernel::new(&ROPE, "rope"), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(x.len() / 2, 256))?;
    Ok(out)
}

/// Rotate x (B, T, H, D) by inv_freq = theta^(-2i/D) at positions `offset + t` (or
/// `offset + positions[b, t]`).
pub fn rope_forward(x: &Tensor, theta: f32, offset: usize, positions: Option<&Tensor>) -> Result<Tensor> {
    apply(x, Freqs::Theta(theta), offset, positions, 1.0)
}

/// The inverse rotation of [`rope_forward`]: the gradient of x from that of the output.
pub fn rope_backward(dout: &Tensor, theta: f32, offset: usize, positions: Option<&Tensor>) -> Result<Tensor> {
    apply(dout, Freqs::Theta(theta), offset, positions, -1.0)
}

/// RoPE on the tape: x (B, T, H, D), `positions` an optional u32 (B, T) tensor.
pub fn rope(x: &Var, theta: f32, offset: usize, positions: Option<&Tensor>) -> Result<Var> {
    let out = rope_forward(x.tensor(), theta, offset, positions)?;
    let positions = positions.cloned();
    Ok(Var::from_op(out, &[x], move |g| Ok(vec![Some(rope_backward(g, theta, offset, positions.as_ref())?)])))
}

/// Like [`rope_forward`] with the inverse frequencies read from `inv_freq` (D/2).
pub fn rope_table_forward(x: &Tensor, inv_freq: &Tensor, offset: usize, positions: Option<&Tensor>) -> Result<Tensor> {
    apply(x, Freqs::Table(inv_freq), offset, positions, 1.0)
}

/// The inverse rotation of [`rope_table_forward`].
pub fn rope_table_backward(dout: &Tensor, inv_freq: &Tensor, offset: usize, positions: Option<&Tensor>) -> Result<Tensor> {
    apply(dout, Freqs::Table(inv_freq), offset, positions, -1.0)
}

/// RoPE on the tape with given inverse frequencies (D/2).
pub fn rope_table(x: &Var, inv_freq: &Tensor, offset: usize, positions: Option<&Tensor>) -> Result<Var> {
    let out = rope_table_forward(x.tensor(), inv_freq, offset, positions)?;
    let (inv_freq, positions) = (inv_freq.clone(), positions.cloned());
    Ok(Var::from_op(out, &[x], move |g| {
        Ok(vec![Some(rope_table_backward(g, &inv_freq, offset, positions.as_ref())?)])
    }))
}

/// CPU references (f64), used by the gradient-check table.
pub mod reference {
    /// `theta^(-2i/D)` for i < D/2.
    pub fn inv_freq(theta: f64, dim: usize) -> Vec<f64> {
        (0..dim / 2).map(|i| theta.powf(-((2 * i) as f64) / dim as f64)).collect()
    }

    /// RoPE of x (B, T, H, D) with the given inverse frequencies; `positions` (B*T) if given.
    pub fn rope(x: &[f64], shape: [usize; 4], inv_freq: &[f64], offset: usize, positions: Option<&[u32]>) -> Vec<f64> {
        let [b, t, h, d] = shape;
        let half = d / 2;
        let mut out = x.to_vec();
        for bt in 0..b * t {
            let pos = offset + positions.map_or(bt % t, |p| p[bt] as usize);
            for head in 0..h {
                let base = (bt * h + head) * d;
                for i in 0..half {
                    let (s, c) = (pos as f64 * inv_freq[i]).sin_cos();
                    let (x1, x2) = (x[base + i], x[base + i + half]);
                    out[base + i] = x1 * c - x2 * s;
                    out[base + i + half] = x2 * c + x1 * s;
                }
            }
        }
        out
    }
}
