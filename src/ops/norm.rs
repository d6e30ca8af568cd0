//! Normalisation layers over the last dimension: LayerNorm (GPT-2) and RMSNorm (Llama).
//!
//! Each is an llm.c-style pair: the forward saves exactly what the backward needs (mean and
//! rstd per row for LayerNorm, rstd for RMSNorm), and the backward gives the input gradient per
//! row plus the parameter gradients. Parameter gradients are sums over rows; they are taken in
//! blocks of 64 rows and the blocks summed by [`reduce::sum_leading_forward`], so they are
//! deterministic without atomics. Row kernels come in two variants chosen by [`Gpu::variant`]:
//! one thread per row (CPU adapters, rows up to 4096) and one workgroup per row (GPUs, and
//! longer rows everywhere). On CPU adapters LayerNorm with C a multiple of 4 reads its inputs from
//! texture copies (`*_texture.wgsl`, see `gpu::texture`): a W2 step's LayerNorms went from ~95
//! to ~30 ms on lavapipe.
//!
//! [`Gpu::variant`]: crate::Gpu::variant

use crate::error::{Error, Result};
use crate::gpu::texture::{tensor_textures, OperandTexture};
use crate::gpu::{Gpu, Kernel, KernelVariant, ShaderSource};
use crate::ops::reduce::{self, row_kernel};
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};

static LAYERNORM: ShaderSource = shader!("norm/layernorm.wgsl");
static LAYERNORM_BACKWARD: ShaderSource = shader!("norm/layernorm_backward.wgsl");
static LAYERNORM_TEXTURE: ShaderSource = shader!("norm/layernorm_texture.wgsl");
static LAYERNORM_BACKWARD_TEXTURE: ShaderSource = shader!("norm/layernorm_backward_texture.wgsl");
static LAYERNORM_PARAMS_TEXTURE: ShaderSource = shader!("norm/layernorm_params_texture.wgsl");
static RMSNORM: ShaderSource = shader!("norm/rmsnorm.wgsl");
static RMSNORM_BACKWARD: ShaderSource = shader!("norm/rmsnorm_backward.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[
    &LAYERNORM,
    &LAYERNORM_BACKWARD,
    &LAYERNORM_TEXTURE,
    &LAYERNORM_BACKWARD_TEXTURE,
    &LAYERNORM_PARAMS_TEXTURE,
    &RMSNORM,
    &RMSNORM_BACKWARD,
];

/// Rows per block in the parameter-gradient partial sums.
const ROWS_PER_BLOCK: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ForwardParams {
    rows: u32,
    cols: u32,
    eps: f32,
    /// log2 of the textures' width in texels for `layernorm_texture.wgsl`; 0 (padding) for the
    /// buffer kernels.
    shift: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BackwardParams {
    rows: u32,
    cols: u32,
    rows_per_block: u32,
    /// LayerNorm: where the dbias partials start in the partials buffer.
    db_offset: u32,
}

/// Checks x (..., C) f32 and each parameter (C) f32; returns (rows, C).
fn check(op: &'static str, x: &Tensor, params: &[&Tensor]) -> Result<(usize, usize)> {
    x.expect_dtype(op, DType::F32)?;
    let cols = x.last_dim();
    if x.shape().is_empty() || cols == 0 {
        return Err(Error::shape(op, format!("x must be (..., C) with C > 0, got {:?}", x.shape())));
    }
    for t in params {
        t.expect_dtype(op, DType::F32)?;
        t.expect_shape(op, &[cols])?;
    }
    Ok((x.len() / cols, cols))
}

/// Sum the (blocks, C) partials of a parameter gradient into (C).
fn finish_partials(partials: Tensor, blocks: usize, cols: usize) -> Result<Tensor> {
    if blocks == 1 {
        partials.reshape(&[cols])
    } else {
        reduce::sum_leading_forward(&partials)
    }
}

/// LayerNorm forward: `out = (x - mean) * rstd * weight + bias` over the last dimension.
/// x (..., C), weight and bias (C). Returns (out (..., C), mean (rows), rstd (rows)); inference
/// uses `out` only.
pub fn layer_norm_forward(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<(Tensor, Tensor, Tensor)> {
    let (rows, cols) = check("layer_norm", x, &[weight, bias])?;
    let gpu = x.gpu();
    let out = Tensor::empty(gpu, x.shape(), DType::F32, "layer_norm out")?;
    let mean = Tensor::empty(gpu, &[rows], DType::F32, "layer_norm mean")?;
    let rstd = Tensor::empty(gpu, &[rows], DType::F32, "layer_norm rstd")?;
    let p = ForwardParams { rows: rows as u32, cols: cols as u32, eps, shift: 0 };
    if let Some((tex, shift)) = row_textures(gpu, cols, &[x, weight, bias])? {
        let p = ForwardParams { shift, ..p };
        gpu.dispatch_with_textures(
            &Kernel::new(&LAYERNORM_TEXTURE, "forward"),
            bytemuck::bytes_of(&p),
            &[&tex[0].view, &tex[1].view, &tex[2].view],
            &[out.binding_vec4(), mean.binding(), rstd.binding()],
            gpu.groups_1d(rows, 64),
        )?;
        return Ok((out, mean, rstd));
    }
    let (entry, groups) = row_kernel(gpu, rows, cols, "forward_thread", "forward_group");
    let binds = [out.binding(), mean.binding(), rstd.binding(), x.binding(), weight.binding(), bias.binding()];
    gpu.dispatch(&Kernel::new(&LAYERNORM, entry), bytemuck::bytes_of(&p), &binds, groups)?;
    Ok((out, mean, rstd))
}

/// Texture copies of `tensors` for the texture-fed row kernels of CPU adapters (one thread per
/// row, C a multiple of 4), or None where those do not apply.
fn row_textures(gpu: &Gpu, cols: usize, tensors: &[&Tensor]) -> Result<Option<(Vec<OperandTexture>, u32)>> {
    // (tensor_textures itself declines on adapters that do not take the register kernels)
    if gpu.variant() != KernelVariant::Register || !cols.is_multiple_of(4) || cols > reduce::THREAD_ROW_MAX {
        return Ok(None);
    }
    tensor_textures(tensors)
}

/// [`layer_norm_backward`] on CPU adapters: `tex` holds dout, x and weight, `shift` is log2 of
/// their width.
fn layer_norm_backward_textures(
    tex: &[OperandTexture],
    shift: u32,
    x: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    need: NeedGrads,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let gpu = x.gpu();
    let cols = x.last_dim();
    let rows = x.len() / cols;
    // rows, cols, rows per block, shift (and for the partials: where dbias starts, in vec4s)
    let p = [rows as u32, cols as u32, ROWS_PER_BLOCK as u32, shift];
    let dx = if need.input {
        let dx = Tensor::empty(gpu, x.shape(), DType::F32, "layer_norm dx")?;
        gpu.dispatch_with_textures(
            &Kernel::new(&LAYERNORM_BACKWARD_TEXTURE, "backward"),
            bytemuck::cast_slice(&p),
            &[&tex[0].view, &tex[1].view, &tex[2].view],
            &[mean.binding(), rstd.binding(), dx.binding_vec4()],
            gpu.groups_1d(rows, 64),
        )?;
        Some(dx)
    } else {
        None
    };
    if !need.params {
        return Ok((dx, None, None));
    }
    let blocks = rows.div_ceil(ROWS_PER_BLOCK).max(1);
    let db_offset = (blocks * cols).div_ceil(64) * 64;
    let partials = Tensor::empty(gpu, &[db_offset + blocks * cols], DType::F32, "layer_norm param partials")?;
    let params = [p[0], p[1], p[2], p[3], (db_offset / 4) as u32, 0, 0, 0];
    gpu.dispatch_with_textures(
        &Kernel::new(&LAYERNORM_PARAMS_TEXTURE, "param_grad_partial"),
        bytemuck::cast_slice(&params),
        &[&tex[0].view, &tex[1].view],
        &[mean.binding(), rstd.binding(), partials.binding_vec4()],
        gpu.groups_1d(blocks * cols / 4, 64),
    )?;
    let dweight = finish_partials(partials.view(0, &[blocks, cols])?, blocks, cols)?;
    let dbias = finish_partials(partials.view(db_offset, &[blocks, cols])?, blocks, cols)?;
    Ok((dx, Some(dweight), Some(dbias)))
}

/// Which gradients a backward pass should compute (the others are skipped).
#[derive(Clone, Copy, Debug)]
pub struct NeedGrads {
    /// The input gradient.
    pub input: bool,
    /// The weight (and, for LayerNorm, bias) gradients.
    pub params: bool,
}

impl NeedGrads {
    /// Every gradient.
    pub const ALL: NeedGrads = NeedGrads { input: true, params: true };
}

/// LayerNorm backward: from dout (..., C) and the forward's saved x, mean, rstd, gives
/// (dx (..., C), dweight (C), dbias (C)); a gradient that `need` leaves out is `None`.
pub fn layer_norm_backward(
    dout: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    need: NeedGrads,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (rows, cols) = check("layer_norm_backward", x, &[weight])?;
    dout.expect_shape("layer_norm_backward", x.shape())?;
    let gpu = x.gpu();
    let blocks = rows.div_ceil(ROWS_PER_BLOCK).max(1);
    let p = BackwardParams { rows: rows as u32, cols: cols as u32, rows_per_block: ROWS_PER_BLOCK as u32, db_offset: 0 };
    if let Some((tex, shift)) = row_textures(gpu, cols, &[dout, x, weight])? {
        return layer_norm_backward_textures(&tex, shift, x, mean, rstd, need);
    }
    let dx = if need.input {
        let dx = Tensor::empty(gpu, x.shape(), DType::F32, "layer_norm dx")?;
        let (entry, groups) = row_kernel(gpu, rows, cols, "backward_thread", "backward_group");
        let binds = [dx.binding(), dout.binding(), x.binding(), mean.binding(), rstd.binding(), weight.binding()];
        gpu.dispatch(&Kernel::new(&LAYERNORM_BACKWARD, entry), bytemuck::bytes_of(&p), &binds, groups)?;
        Some(dx)
    } else {
        None
    };
    if !need.params {
        return Ok((dx, None, None));
    }
    // dweight and dbias: block partials of dout * norm and dout in one pass, then their column
    // sums. The dbias partials start at a 64-element (256-byte) boundary so both are views.
    let db_offset = (blocks * cols).div_ceil(64) * 64;
    let partials = Tensor::empty(gpu, &[db_offset + blocks * cols], DType::F32, "layer_norm param partials")?;
    let p = BackwardParams { db_offset: db_offset as u32, ..p };
    let binds = [partials.binding(), dout.binding(), x.binding(), mean.binding(), rstd.binding()];
    let k = Kernel::new(&LAYERNORM_BACKWARD, "param_grad_partial");
    gpu.dispatch(&k, bytemuck::bytes_of(&p), &binds, gpu.groups_1d(blocks * cols, 64))?;
    let dweight = finish_partials(partials.view(0, &[blocks, cols])?, blocks, cols)?;
    let dbias = finish_partials(partials.view(db_offset, &[blocks, cols])?, blocks, cols)?;
    Ok((dx, Some(dweight), Some(dbias)))
}

/// LayerNorm over the last dimension on the tape: x (..., C), weight and bias (C).
pub fn layer_norm(x: &Var, weight: &Var, bias: &Var, eps: f32) -> Result<Var> {
    let (out, mean, rstd) = layer_norm_forward(x.tensor(), weight.tensor(), bias.tensor(), eps)?;
    let need = NeedGrads { input: x.requires_grad(), params: weight.requires_grad() || bias.requires_grad() };
    let (xs, ws) = (x.tensor().clone(), weight.tensor().clone());
    Ok(Var::from_op(out, &[x, weight, bias], move |g| {
        let (dx, dw, db) = layer_norm_backward(g, &xs, &ws, &mean, &rstd, need)?;
        Ok(vec![dx, dw, db])
    }))
}

/// RMSNorm forward: `out = x * rstd * weight`, rstd = 1 / sqrt(mean(x^2) + eps), over the last
/// dimension. x (..., C), weight (C). Returns (out (..., C), rstd (rows)).
pub fn rms_norm_forward(x: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let (rows, cols) = check("rms_norm", x, &[weight])?;
    let gpu = x.gpu();
    let out = Tensor::empty(gpu, x.shape(), DType::F32, "rms_norm out")?;
    let rstd = Tensor::empty(gpu, &[rows], DType::F32, "rms_norm rstd")?;
    let p = ForwardParams { rows: rows as u32, cols: cols as u32, eps, shift: 0 };
    let (entry, groups) = row_kernel(gpu, rows, cols, "forward_thread", "forward_group");
    let binds = [out.binding(), rstd.binding(), x.binding(), weight.binding()];
    gpu.dispatch(&Kernel::new(&RMSNORM, entry), bytemuck::bytes_of(&p), &binds, groups)?;
    Ok((out, rstd))
}

/// RMSNorm backward: from dout (..., C) and the forward's saved x, rstd, gives
/// (dx (..., C), dweight (C)); a gradient that `need` leaves out is `None`.
pub fn rms_norm_backward(
    dout: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    rstd: &Tensor,
    need: NeedGrads,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (rows, cols) = check("rms_norm_backward", x, &[weight])?;
    dout.expect_shape("rms_norm_backward", x.shape())?;
    let gpu = x.gpu();
    let blocks = rows.div_ceil(ROWS_PER_BLOCK).max(1);
    let p = BackwardParams { rows: rows as u32, cols: cols as u32, rows_per_block: ROWS_PER_BLOCK as u32, db_offset: 0 };
    let dx = if need.input {
        let dx = Tensor::empty(gpu, x.shape(), DType::F32, "rms_norm dx")?;
        let (entry, groups) = row_kernel(gpu, rows, cols, "backward_thread", "backward_group");
        let binds = [dx.binding(), dout.binding(), x.binding(), rstd.binding(), weight.binding()];
        gpu.dispatch(&Kernel::new(&RMSNORM_BACKWARD, entry), bytemuck::bytes_of(&p), &binds, groups)?;
        Some(dx)
    } else {
        None
    };
    if !need.params {
        return Ok((dx, None));
    }
    let partials = Tensor::empty(gpu, &[blocks, cols], DType::F32, "rms_norm dweight partials")?;
    let binds = [partials.binding(), dout.binding(), x.binding(), rstd.binding()];
    let k = Kernel::new(&RMSNORM_BACKWARD, "weight_grad_partial");
    gpu.dispatch(&k, bytemuck::bytes_of(&p), &binds, gpu.groups_1d(blocks * cols, 64))?;
    Ok((dx, Some(finish_partials(partials, blocks, cols)?)))
}

/// RMSNorm over the last dimension on the tape: x (..., C), weight (C).
pub fn rms_norm(x: &Var, weight: &Var, eps: f32) -> Result<Var> {
    let (out, rstd) = rms_norm_forward(x.tensor(), weight.tensor(), eps)?;
    let need = NeedGrads { input: x.requires_grad(), params: weight.requires_grad() };
    let (xs, ws) = (x.tensor().clone(), weight.tensor().clone());
    Ok(Var::from_op(out, &[x, weight], move |g| {
        let (dx, dw) = rms_norm_backward(g, &xs, &ws, &rstd, need)?;
        Ok(vec![dx, dw])
    }))
}

/// CPU references (f64), used by the gradient-check table. x is row-major (rows, C).
pub mod reference {
    /// LayerNorm over rows of `weight.len()` values.
    pub fn layer_norm(x: &[f64], weight: &[f64], bias: &[f64], eps: f64) -> Vec<f64> {
        let c = weight.len();
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(c) {
            let mean = row.iter().sum::<f64>() / c as f64;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / c as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            out.extend(row.iter().enumerate().map(|(i, v)| (v - mean) * rstd * weight[i] + bias[i]));
        }
        out
    }

    /// RMSNorm over rows of `weight.len()` values.
    pub fn rms_norm(x: &[f64], weight: &[f64], eps: f64) -> Vec<f64> {
        let c = weight.len();
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(c) {
            let ms = row.iter().map(|v| v * v).sum::<f64>() / c as f64;
            let rstd = 1.0 / (ms + eps).sqrt();
            out.extend(row.iter().enumerate().map(|(i, v)| v * rstd * weight[i]));
        }
        out
    }
}
