//! Fused losses over logits (..., V): cross-entropy, per-token log-probabilities and entropy.
//!
//! Like llm.c's classifier, cross-entropy computes each row's max, logsumexp, loss and the
//! logits' gradient `w_i / sum(w) * (softmax - onehot)` in one pass over the row; the softmax is
//! never stored. The backward closure only scales the stored gradient by the upstream gradient,
//! which stays on the GPU as a one-element tensor. Every reduction is deterministic: per-row
//! values first, then one workgroup sums them in a fixed order; no atomics.
//!
//! Targets (labels) `>= V` cannot be reported without reading them back, so they mark ignored
//! rows: weight 0 in cross-entropy, log-probability 0 and no gradient in `token_logprobs`.
//!
//! Row kernels come in two variants (see `shaders/loss/row_softmax.wgsl`): one thread per row
//! for CPU adapters, one workgroup per row for GPUs, chosen by [`Gpu::variant`](crate::Gpu::variant).

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, KernelVariant, ShaderSource};
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};

static ROW_SOFTMAX: ShaderSource = shader!("loss/row_softmax.wgsl");
static CE_WEIGHTS: ShaderSource = shader!("loss/ce_weights.wgsl");
static SCALAR: ShaderSource = shader!("loss/scalar.wgsl");
static LOGPROBS_BACKWARD: ShaderSource = shader!("loss/logprobs_backward.wgsl");
static ENTROPY: ShaderSource = shader!("loss/entropy.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&ROW_SOFTMAX, &CE_WEIGHTS, &SCALAR, &LOGPROBS_BACKWARD, &ENTROPY];

/// Rows per workgroup of the register (thread-per-row) kernels; matches `RWG` in the shaders.
const ROWS_PER_GROUP: u32 = 64;
/// Threads of the one-workgroup reductions and elementwise kernels; matches `WG`.
const WG: u32 = 256;

/// Uniform of every kernel in this family: two sizes, padded to 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    a: u32,
    b: u32,
    _pad: [u32; 2],
}

fn params(a: usize, b: usize) -> Params {
    Params { a: a as u32, b: b as u32, _pad: [0; 2] }
}

/// (rows N, row length V) of f32 logits (..., V); sizes must index in u32.
fn rows_of(op: &'static str, logits: &Tensor) -> Result<(usize, usize)> {
    logits.expect_dtype(op, DType::F32)?;
    let v = logits.last_dim();
    if logits.shape().is_empty() || logits.is_empty() {
        return Err(Error::shape(op, format!("logits must be a non-empty (..., V) array, got {:?}", logits.shape())));
    }
    if logits.len() > u32::MAX as usize {
        return Err(Error::shape(op, format!("logits {:?} have more than 2^32 elements", logits.shape())));
    }
    Ok((logits.len() / v, v))
}

fn check_rows(op: &'static str, what: &str, t: &Tensor, dtype: DType, n: usize) -> Result<()> {
    if t.dtype() != dtype || t.len() != n {
        return Err(Error::shape(op, format!("{what} must be {dtype:?} with {n} elements (one per row), got {:?} {:?}", t.dtype(), t.shape())));
    }
    Ok(())
}

/// Longest row the register kernels take. llvmpipe (lavapipe) stops an invocation after 65535
/// loop iterations over all its loops; a register thread walks its row twice, 8 elements per
/// iteration, so it stays far below that up to here. Longer rows go to the tiled kernel.
const REGISTER_MAX_ROW: usize = 200_000;

/// Entry point and workgroup grid of a row kernel: `register` (one thread per row) or `tiled`
/// (one workgroup per row), by the device's kernel variant and the row length `v`.
fn row_kernel(gpu: &Gpu, register: &'static str, tiled: &'static str, n: usize, v: usize) -> (&'static str, [u32; 3]) {
    match gpu.variant() {
        KernelVariant::Register if v <= REGISTER_MAX_ROW => (register, gpu.groups_1d(n, ROWS_PER_GROUP)),
        _ => (tiled, gpu.groups_1d(n, 1)),
    }
}

/// Sum of all elements into a new one-element tensor (one workgroup, fixed order).
pub fn sum_to_scalar(x: &Tensor) -> Result<Tensor> {
    x.expect_dtype("sum_to_scalar", DType::F32)?;
    let out = Tensor::empty(x.gpu(), &[1], DType::F32, "sum")?;
    let p = params(x.len(), 0);
    x.gpu().dispatch(&Kernel::new(&SCALAR, "sum_all"), bytemuck::bytes_of(&p), &[out.binding(), x.binding()], [1, 1, 1])?;
    Ok(out)
}

/// A new tensor `x * s[0]`, where `s` is a one-element GPU tensor (no readback).
pub fn scale_by_scalar(x: &Tensor, s: &Tensor) -> Result<Tensor> {
    x.expect_dtype("scale_by_scalar", DType::F32)?;
    check_rows("scale_by_scalar", "the scale", s, DType::F32, 1)?;
    let gpu = x.gpu();
    let out = Tensor::empty(gpu, x.shape(), DType::F32, "scaled")?;
    let p = params(x.len(), 0);
    let binds = [out.binding(), x.binding(), s.binding()];
    gpu.dispatch(&Kernel::new(&SCALAR, "scale_by_scalar"), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(x.len(), WG))?;
    Ok(out)
}

/// Cross-entropy forward: the scalar mean loss `sum(w_i * loss_i) / sum(w_i)` as a `[1]` tensor
/// (0 when the weights sum to 0) and, with `with_grad`, `dlogits` (shape of `logits`) already
/// scaled by `w_i / sum(w)`. `targets`: u32, one per row; `mask`: f32 non-negative weights, one
/// per row (0 ignores a row). Targets `>= V` are ignored (weight 0).
pub fn cross_entropy_forward(
    logits: &Tensor,
    targets: &Tensor,
    mask: Option<&Tensor>,
    with_grad: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    const OP: &str = "cross_entropy";
    let (n, v) = rows_of(OP, logits)?;
    check_rows(OP, "targets", targets, DType::U32, n)?;
    if let Some(m) = mask {
        check_rows(OP, "mask", m, DType::F32, n)?;
    }
    let gpu = logits.gpu();
    let p = params(n, v);
    // Pass 1: per-row weights (0 for ignored targets) and their sum.
    let weights = Tensor::empty(gpu, &[n], DType::F32, "cross_entropy weights")?;
    let weight_sum = Tensor::empty(gpu, &[1], DType::F32, "cross_entropy weight sum")?;
    let mut binds = vec![targets.binding(), weights.binding(), weight_sum.binding()];
    let entry = match mask {
        Some(m) => {
            binds.push(m.binding());
            "weights_masked"
        }
        None => "weights_unmasked",
    };
    gpu.dispatch(&Kernel::new(&CE_WEIGHTS, entry), bytemuck::bytes_of(&p), &binds, [1, 1, 1])?;
    // Pass 2: per-row loss (and dlogits) in one sweep of each row. The per-row logsumexp is
    // written too (the kernel shares its bindings with token_logprobs); it is not kept.
    let lse = Tensor::empty(gpu, &[n], DType::F32, "cross_entropy logsumexp")?;
    let row_loss = Tensor::empty(gpu, &[n], DType::F32, "cross_entropy row losses")?;
    let dlogits = if with_grad { Some(Tensor::empty(gpu, logits.shape(), DType::F32, "dlogits")?) } else { None };
    let (entry, groups) = match dlogits {
        Some(_) => row_kernel(gpu, "ce_register", "ce_tiled", n, v),
        None => row_kernel(gpu, "ce_register_nograd", "ce_tiled_nograd", n, v),
    };
    let mut binds = vec![
        logits.binding(),
        targets.binding(),
        lse.binding(),
        row_loss.binding(),
        weights.binding(),
        weight_sum.binding(),
    ];
    if let Some(d) = &dlogits {
        binds.push(d.binding());
    }
    gpu.dispatch(&Kernel::new(&ROW_SOFTMAX, entry), bytemuck::bytes_of(&p), &binds, groups)?;
    // Pass 3: the rows' weighted losses summed in a fixed order.
    let loss = sum_to_scalar(&row_loss)?;
    Ok((loss, dlogits))
}

/// Cross-entropy backward: `dlogits * g[0]` (g is the loss's one-element gradient).
pub fn cross_entropy_backward(dlogits: &Tensor, g: &Tensor) -> Result<Tensor> {
    scale_by_scalar(dlogits, g)
}

/// Mean cross-entropy of `logits` (..., V) against u32 `targets` (one per row), weighted by an
/// optional f32 `mask` (one non-negative weight per row, 0 = ignore): a `[1]` Var.
/// Targets `>= V` are ignored, since checking them would need a readback.
pub fn cross_entropy(logits: &Var, targets: &Tensor, mask: Option<&Tensor>) -> Result<Var> {
    let (loss, dlogits) = cross_entropy_forward(logits.tensor(), targets, mask, logits.requires_grad())?;
    Ok(Var::from_op(loss, &[logits], move |g| {
        let d = dlogits.ok_or_else(|| Error::shape("cross_entropy", "backward without a saved gradient"))?;
        Ok(vec![Some(cross_entropy_backward(&d, g)?)])
    }))
}

/// Per-token log-probabilities forward: `(logprobs, lse)`, both with the logits' leading shape:
/// `logit[label] - logsumexp(row)` and the row's logsumexp (saved for backward).
/// Labels `>= V` give log-probability 0.
pub fn token_logprobs_forward(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "token_logprobs";
    let (n, v) = rows_of(OP, logits)?;
    check_rows(OP, "labels", labels, DType::U32, n)?;
    let gpu = logits.gpu();
    let lead = &logits.shape()[..logits.shape().len() - 1];
    let lse = Tensor::empty(gpu, lead, DType::F32, "logsumexp")?;
    let out = Tensor::empty(gpu, lead, DType::F32, "token logprobs")?;
    let (entry, groups) = row_kernel(gpu, "logprobs_register", "logprobs_tiled", n, v);
    let binds = [logits.binding(), labels.binding(), lse.binding(), out.binding()];
    gpu.dispatch(&Kernel::new(&ROW_SOFTMAX, entry), bytemuck::bytes_of(&params(n, v)), &binds, groups)?;
    Ok((out, lse))
}

/// Per-token log-probabilities backward: `dlogits[i, j] = g_i * (onehot(label_i)_j - softmax_ij)`,
/// the softmax recomputed from `logits` and the saved `lse`; 0 on rows with labels `>= V`.
pub fn token_logprobs_backward(logits: &Tensor, labels: &Tensor, lse: &Tensor, g: &Tensor) -> Result<Tensor> {
    const OP: &str = "token_logprobs backward";
    let (n, v) = rows_of(OP, logits)?;
    check_rows(OP, "labels", labels, DType::U32, n)?;
    check_rows(OP, "logsumexp", lse, DType::F32, n)?;
    check_rows(OP, "gradient", g, DType::F32, n)?;
    let gpu = logits.gpu();
    let d = Tensor::empty(gpu, logits.shape(), DType::F32, "dlogits")?;
    let binds = [d.binding(), logits.binding(), labels.binding(), lse.binding(), g.binding()];
    let p = params(n * v, v);
    gpu.dispatch(&Kernel::new(&LOGPROBS_BACKWARD, "logprobs_backward"), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(n * v, WG))?;
    Ok(d)
}

/// Log-probability of each row's label under softmax(logits): logits (..., V), u32 labels (one
/// per row) to (...). The building block of DPO, PPO and GRPO losses. Labels `>= V` give 0.
pub fn token_logprobs(logits: &Var, labels: &Tensor) -> Result<Var> {
    let (out, lse) = token_logprobs_forward(logits.tensor(), labels)?;
    let (x, labels) = (logits.tensor().clone(), labels.clone());
    Ok(Var::from_op(out, &[logits], move |g| Ok(vec![Some(token_logprobs_backward(&x, &labels, &lse, g)?)])))
}

/// Entropy of softmax(logits) per row: logits (..., V) to (...). Forward only (a PPO metric).
pub fn token_entropy(logits: &Tensor) -> Result<Tensor> {
    let (n, v) = rows_of("token_entropy", logits)?;
    let gpu = logits.gpu();
    let out = Tensor::empty(gpu, &logits.shape()[..logits.shape().len() - 1], DType::F32, "token entropy")?;
    let (entry, groups) = row_kernel(gpu, "entropy_register", "entropy_tiled", n, v);
    let binds = [logits.binding(), out.binding()];
    gpu.dispatch(&Kernel::new(&ENTROPY, entry), bytemuck::bytes_of(&params(n, v)), &binds, groups)?;
    Ok(out)
}

/// CPU references in f64: `logits` row-major (N, V), one target/label per row.
pub mod reference {
    /// logsumexp of one row.
    pub fn logsumexp(row: &[f64]) -> f64 {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    }

    /// Weight of each row: the mask (or 1), 0 where the target is `>= v`.
    fn weights(targets: &[u32], mask: Option<&[f64]>, v: usize) -> Vec<f64> {
        targets
            .iter()
            .enumerate()
            .map(|(i, &t)| if (t as usize) < v { mask.map_or(1.0, |m| m[i]) } else { 0.0 })
            .collect()
    }

    /// `sum(w_i * (lse_i - x_i[t_i])) / sum(w)`, 0 when the weights sum to 0.
    pub fn cross_entropy(logits: &[f64], targets: &[u32], mask: Option<&[f64]>, v: usize) -> f64 {
        let w = weights(targets, mask, v);
        let total: f64 = w.iter().sum();
        if total <= 0.0 {
            return 0.0;
        }
        let mut loss = 0.0;
        for (i, row) in logits.chunks(v).enumerate() {
            if w[i] != 0.0 {
                loss += w[i] * (logsumexp(row) - row[targets[i] as usize]);
            }
        }
        loss / total
    }

    /// The analytic gradient of [`cross_entropy`] with respect to the logits.
    pub fn cross_entropy_grad(logits: &[f64], targets: &[u32], mask: Option<&[f64]>, v: usize) -> Vec<f64> {
        let w = weights(targets, mask, v);
        let total: f64 = w.iter().sum();
        let mut d = vec![0.0; logits.len()];
        if total <= 0.0 {
            return d;
        }
        for (i, row) in logits.chunks(v).enumerate() {
            let lse = logsumexp(row);
            for (j, &x) in row.iter().enumerate() {
                let onehot = if j == targets[i] as usize { 1.0 } else { 0.0 };
                d[i * v + j] = w[i] / total * ((x - lse).exp() - onehot);
            }
        }
        d
    }

    /// `x_i[label_i] - lse_i` per row; 0 for labels `>= v`.
    pub fn token_logprobs(logits: &[f64], labels: &[u32], v: usize) -> Vec<f64> {
        logits
            .chunks(v)
            .zip(labels)
            .map(|(row, &t)| if (t as usize) < v { row[t as usize] - logsumexp(row) } else { 0.0 })
            .collect()
    }

    /// Entropy of softmax(row) per row.
    pub fn token_entropy(logits: &[f64], v: usize) -> Vec<f64> {
        logits
            .chunks(v)
            .map(|row| {
                let lse = logsumexp(row);
                -row.iter().map(|x| (x - lse).exp() * (x - lse)).sum::<f64>()
            })
            .collect()
    }
}
