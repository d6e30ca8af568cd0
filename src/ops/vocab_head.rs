//! The chunked vocabulary head: the output projection fused with log-softmax, so the
//! (tokens x vocabulary) logits never exist. For hidden states x (R, C), a head W (V, C) given
//! as row chunks (each a contiguous range of vocabulary rows, as the parameter store splits
//! tensors bigger than one binding) and labels (R), it returns per row
//! `[log p(label), entropy, mean logit]`: what SFT's cross-entropy, DPO/KTO/GRPO's sequence
//! log-probs, PPO's logged entropy and DPO's `logits/*` metrics need (TRL's "all they actually
//! need is per-token log-probs of the selected tokens"). A sampling temperature τ is applied by
//! the caller as hidden states x/τ (the head has no bias, so the logits are z/τ exactly).
//!
//! Forward: the vocabulary is walked in slices of at most `slice` rows; each slice's logits
//! (R, slice) come from the matmul family (its register or tiled kernels, per adapter) and are
//! folded into per-row running statistics with an online log-sum-exp (`shaders/vocab_head/`),
//! then dropped. Backward: each slice's logits are recomputed, turned into their gradient in
//! place (`dz = a·(onehot − p) − b·p·(log p + H) + c/V` for output gradients a, b, c), and multiplied
//! into dX (and into the slice's rows of dW when the head trains, e.g. tied to a trained
//! embedding). Peak extra memory is one (R, slice) buffer, ~32 MiB by default.

use crate::error::{Error, Result};
use crate::gpu::{Binding, Gpu, Kernel, ShaderSource};
use crate::ops::elementwise::add_assign;
use crate::ops::loss::sum_to_scalar;
use crate::ops::matmul::matmul_forward;
use crate::ops::quant::{quant_linear_backward, quant_linear_forward, QuantTensor};
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};

static VOCAB_HEAD: ShaderSource = shader!("vocab_head/vocab_head.wgsl");
static CROSS_ENTROPY: ShaderSource = shader!("vocab_head/cross_entropy.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&VOCAB_HEAD, &CROSS_ENTROPY];

/// Bytes of one slice's logits the default slice width aims at.
const SLICE_BYTES: usize = 32 << 20;
/// Widest slice. The backward's dX += dZ·W_slice sums over the slice's width, and a sum over
/// 16,384 vocabulary rows streams its operands past a CPU's caches once per output tile: W5's
/// 512x16384x576 ran at 15 GFLOP/s on lavapipe, 512x4096x576 at 23, while the forward's
/// logits ran at 26 either way. (llvmpipe also ends an invocation after 65,535 loop iterations,
/// and the row kernels loop over a slice twice.)
const MAX_SLICE: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    v0: u32,
    vocab: u32,
    first: u32,
    /// The output column `column` / `column_grad` read and write.
    column: u32,
    _pad: [u32; 2],
}

impl Params {
    fn new(rows: usize, cols: usize, v0: usize, vocab: usize, first: bool) -> Params {
        Params { rows: rows as u32, cols: cols as u32, v0: v0 as u32, vocab: vocab as u32, first: first as u32, column: 0, _pad: [0; 2] }
    }
}

/// Columns of the head's output per row: log p(label), entropy, mean logit.
pub const HEAD_COLUMNS: usize = 3;

/// The default slice width for `rows` tokens: ~[`SLICE_BYTES`] of logits, a multiple of 64 rows
/// (so each slice of a chunk starts at an aligned offset), at most [`MAX_SLICE`].
pub fn default_slice(rows: usize) -> usize {
    (SLICE_BYTES / 4 / rows.max(1) / 64 * 64).clamp(64, MAX_SLICE)
}

/// The head's weight (V, C): f32 row chunks (trainable), or one frozen stored-form matrix.
#[derive(Clone, Copy, Debug)]
pub enum Head<'a> {
    /// Contiguous ranges of vocabulary rows, in order, each (V_i, C) f32.
    Rows(&'a [Tensor]),
    /// A frozen matrix in a stored type (f16, bf16, GGUF blocks), dequantized in the products.
    Stored(&'a QuantTensor),
}

impl Head<'_> {
    /// (rows, C) of each chunk.
    fn chunk_shapes(&self) -> Vec<[usize; 2]> {
        match self {
            Head::Rows(chunks) => chunks.iter().map(|w| [w.shape().first().copied().unwrap_or(0), w.shape().get(1).copied().unwrap_or(0)]).collect(),
            Head::Stored(w) => vec![w.shape],
        }
    }

    /// Logits of `x2` (R, C) against rows `s0..s0 + width` of chunk `i`: (R, width).
    fn logits(&self, x2: &Tensor, i: usize, s0: usize, width: usize) -> Result<Tensor> {
        match self {
            Head::Rows(chunks) => matmul_forward(x2, &rows_view(&chunks[i], s0, width)?, None, false, true),
            Head::Stored(w) => quant_linear_forward(x2, w.rows(s0, width)?, None),
        }
    }

    /// dZ (R, width) times those rows: (R, C).
    fn back(&self, dz: &Tensor, i: usize, s0: usize, width: usize) -> Result<Tensor> {
        match self {
            Head::Rows(chunks) => matmul_forward(dz, &rows_view(&chunks[i], s0, width)?, None, false, false),
            Head::Stored(w) => quant_linear_backward(dz, w.rows(s0, width)?),
        }
    }
}

/// Checks; returns (rows, C, vocabulary).
fn dims(op: &'static str, x: &Tensor, head: Head, labels: &Tensor) -> Result<(usize, usize, usize)> {
    x.expect_dtype(op, DType::F32)?;
    labels.expect_dtype(op, DType::U32)?;
    let c = x.last_dim();
    if let Head::Rows(chunks) = head {
        for w in chunks.iter() {
            w.expect_dtype(op, DType::F32)?;
        }
    }
    let shapes = head.chunk_shapes();
    if x.shape().is_empty() || shapes.is_empty() {
        return Err(Error::shape(op, format!("need hidden states (..., C) and at least one head chunk, got {:?}", x.shape())));
    }
    let rows = x.len() / c.max(1);
    if labels.len() != rows {
        return Err(Error::shape(op, format!("{} labels for {rows} rows", labels.len())));
    }
    let mut vocab = 0;
    for (i, [n, wc]) in shapes.into_iter().enumerate() {
        if wc != c {
            return Err(Error::shape(op, format!("head chunk {i} is ({n}, {wc}), need (rows, {c})")));
        }
        vocab += n;
    }
    if let Head::Rows(chunks) = head {
        if let Some(w) = chunks.iter().find(|w| w.shape().len() != 2) {
            return Err(Error::shape(op, format!("head chunk {:?} must be (rows, {c})", w.shape())));
        }
    }
    if vocab >= u32::MAX as usize / 2 {
        return Err(Error::shape(op, format!("vocabulary {vocab} too large")));
    }
    Ok((rows, c, vocab))
}

/// Every slice of the head: (vocabulary offset, offset within its chunk, width, chunk index).
fn slices(head: Head, slice: usize) -> Vec<(usize, usize, usize, usize)> {
    let mut out = Vec::new();
    let mut v0 = 0;
    for (i, [n, _]) in head.chunk_shapes().into_iter().enumerate() {
        for s0 in (0..n).step_by(slice) {
            out.push((v0 + s0, s0, slice.min(n - s0), i));
        }
        v0 += n;
    }
    out
}

fn dispatch(gpu: &Gpu, entry: &'static str, p: &Params, bufs: &[(u32, Binding)], threads: usize) -> Result<()> {
    gpu.dispatch_bound(&Kernel::new(&VOCAB_HEAD, entry), bytemuck::bytes_of(p), &[], bufs, gpu.groups_1d(threads, 64))
}

/// Rows `s0..s0 + width` of a (n, C) chunk.
fn rows_view(w: &Tensor, s0: usize, width: usize) -> Result<Tensor> {
    let c = w.shape()[1];
    w.view(s0 * c, &[width, c])
}

/// Forward: `(out, saved)`, out (R, 3) = [log p(label), entropy, mean logit] per row (log p is
/// 0 for labels past the vocabulary), saved (R, 2) = [lse, entropy] for the backward. x (..., C) f32, chunks (V_i, C) f32
/// whose rows together are the vocabulary in order, labels (...) u32. `slice`: vocabulary rows
/// per step, a multiple of 64 ([`default_slice`]).
pub fn vocab_head_forward(x: &Tensor, head: Head, labels: &Tensor, slice: usize) -> Result<(Tensor, Tensor)> {
    const OP: &str = "vocab_head";
    let (rows, c, vocab) = dims(OP, x, head, labels)?;
    if slice == 0 || !slice.is_multiple_of(64) {
        return Err(Error::shape(OP, format!("slice {slice} must be a positive multiple of 64")));
    }
    let gpu = x.gpu();
    let x2 = x.reshape(&[rows, c])?;
    let state = Tensor::empty(gpu, &[rows, 8], DType::F32, "vocab_head state")?;
    let out = Tensor::empty(gpu, &[rows, HEAD_COLUMNS], DType::F32, "vocab_head out")?;
    let saved = Tensor::empty(gpu, &[rows, 2], DType::F32, "vocab_head saved")?;
    if rows == 0 {
        return Ok((out, saved));
    }
    for (k, &(v0, s0, width, i)) in slices(head, slice).iter().enumerate() {
        // This slice's logits (R, width), folded into the running state, then dropped.
        let logits = head.logits(&x2, i, s0, width)?;
        let p = Params::new(rows, width, v0, vocab, k == 0);
        dispatch(gpu, "slice_stats", &p, &[(1, logits.binding()), (2, labels.binding()), (3, state.binding())], rows)?;
    }
    let p = Params::new(rows, 0, 0, vocab, false);
    let bufs = [(2, labels.binding()), (3, state.binding()), (4, out.binding()), (5, saved.binding())];
    dispatch(gpu, "finish", &p, &bufs, rows)?;
    Ok((out, saved))
}

/// Backward: `(dx, dchunks)` from `g` (R, 3), the gradient of [`vocab_head_forward`]'s output;
/// dchunks only when `need_w` (shaped like the chunks). Each slice's logits are recomputed.
pub fn vocab_head_backward(
    x: &Tensor,
    head: Head,
    labels: &Tensor,
    saved: &Tensor,
    g: &Tensor,
    slice: usize,
    need_w: bool,
) -> Result<(Tensor, Option<Vec<Tensor>>)> {
    const OP: &str = "vocab_head backward";
    let (rows, c, vocab) = dims(OP, x, head, labels)?;
    g.expect_shape(OP, &[rows, HEAD_COLUMNS])?;
    let gpu = x.gpu();
    let x2 = x.reshape(&[rows, c])?;
    let dx = Tensor::zeros(gpu, &[rows, c], DType::F32, "vocab_head dx")?;
    let dw = match head {
        Head::Rows(chunks) if need_w => Some(chunks.iter().map(|w| Tensor::zeros(gpu, w.shape(), DType::F32, "vocab_head dW")).collect::<Result<Vec<_>>>()?),
        _ => None,
    };
    for &(v0, s0, width, i) in &slices(head, slice) {
        // Recompute the slice's logits and turn them into their gradient in place.
        let dz = head.logits(&x2, i, s0, width)?;
        let p = Params::new(rows, width, v0, vocab, false);
        let bufs = [(1, dz.binding()), (2, labels.binding()), (5, saved.binding()), (6, g.binding())];
        dispatch(gpu, "slice_grad", &p, &bufs, rows * width)?;
        // dX += dZ·W_slice; dW_slice = dZᵀ·X.
        add_assign(&dx, &head.back(&dz, i, s0, width)?, 1.0)?;
        if let Some(dw) = &dw {
            add_assign(&rows_view(&dw[i], s0, width)?, &matmul_forward(&dz, &x2, None, true, false)?, 1.0)?;
        }
    }
    Ok((dx.reshape(x.shape())?, dw))
}

/// The chunked head on the tape: x (..., C), chunks (V_i, C), labels (...) u32 -> (rows, 3) =
/// [log p(label), entropy, mean logit]. Gradients reach x and every chunk that requires one (a trained
/// head); a frozen head (constant chunks) gets none computed.
pub fn vocab_head(x: &Var, chunks: &[Var], labels: &Tensor) -> Result<Var> {
    let rows = x.tensor().len() / x.tensor().last_dim().max(1);
    vocab_head_sliced(x, chunks, labels, default_slice(rows))
}

/// [`vocab_head`] with a given slice width (a multiple of 64): tests force several slices.
pub fn vocab_head_sliced(x: &Var, chunks: &[Var], labels: &Tensor, slice: usize) -> Result<Var> {
    let ws: Vec<Tensor> = chunks.iter().map(|w| w.tensor().clone()).collect();
    let (out, saved) = vocab_head_forward(x.tensor(), Head::Rows(&ws), labels, slice)?;
    let need_w = chunks.iter().any(|w| w.requires_grad());
    let need_x = x.requires_grad();
    let (xt, labels) = (x.tensor().clone(), labels.clone());
    let inputs: Vec<&Var> = std::iter::once(x).chain(chunks.iter()).collect();
    Ok(Var::from_op(out, &inputs, move |g| {
        let (dx, dw) = vocab_head_backward(&xt, Head::Rows(&ws), &labels, &saved, g, slice, need_w)?;
        let mut grads = vec![if need_x { Some(dx) } else { None }];
        match dw {
            Some(dw) => grads.extend(dw.into_iter().map(Some)),
            None => grads.extend(ws.iter().map(|_| None)),
        }
        Ok(grads)
    }))
}

/// [`vocab_head`] with a frozen stored-form head (e.g. a GGUF model's tied embedding under
/// LoRA): gradients reach x only.
pub fn vocab_head_stored(x: &Var, w: &QuantTensor, labels: &Tensor) -> Result<Var> {
    let rows = x.tensor().len() / x.tensor().last_dim().max(1);
    vocab_head_stored_sliced(x, w, labels, default_slice(rows))
}

/// [`vocab_head_stored`] with a given slice width (a multiple of 64).
pub fn vocab_head_stored_sliced(x: &Var, w: &QuantTensor, labels: &Tensor, slice: usize) -> Result<Var> {
    let (out, saved) = vocab_head_forward(x.tensor(), Head::Stored(w), labels, slice)?;
    let (xt, w, labels) = (x.tensor().clone(), w.clone(), labels.clone());
    Ok(Var::from_op(out, &[x], move |g| {
        let (dx, _) = vocab_head_backward(&xt, Head::Stored(&w), &labels, &saved, g, slice, false)?;
        Ok(vec![Some(dx)])
    }))
}

/// Column `column` (0 log p(label), 1 entropy, 2 mean logit) of the head's output (rows, 3)
/// as a (rows) Var, on the tape.
pub fn head_column(head: &Var, column: usize) -> Result<Var> {
    let t = head.tensor();
    if t.shape().len() != 2 || t.shape()[1] != HEAD_COLUMNS || column >= HEAD_COLUMNS {
        return Err(Error::shape("head_column", format!("need the head's (rows, 3) output and a column < 3, got {:?} column {column}", t.shape())));
    }
    let rows = t.shape()[0];
    let gpu = t.gpu().clone();
    let p = Params { column: column as u32, ..Params::new(rows, 0, 0, 0, false) };
    let col = Tensor::empty(&gpu, &[rows], DType::F32, "head column")?;
    if rows > 0 {
        dispatch(&gpu, "column", &p, &[(6, t.binding()), (7, col.binding())], rows)?;
    }
    Ok(Var::from_op(col, &[head], move |g| {
        let d = Tensor::empty(&gpu, &[rows, HEAD_COLUMNS], DType::F32, "head column gradient")?;
        if rows > 0 {
            dispatch(&gpu, "column_grad", &p, &[(4, d.binding()), (8, g.binding())], rows)?;
        }
        Ok(vec![Some(d)])
    }))
}

/// The log-probabilities column of the head's output: what DPO, KTO and GRPO need per token.
pub fn head_logprobs(head: &Var) -> Result<Var> {
    head_column(head, 0)
}

/// The entropy column of the head's output: what PPO logs.
pub fn head_entropy(head: &Var) -> Result<Var> {
    head_column(head, 1)
}

/// The mean-logit column of the head's output: DPO's `logits/chosen` and `logits/rejected`.
pub fn head_mean_logits(head: &Var) -> Result<Var> {
    head_column(head, 2)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CeParams {
    rows: u32,
    vocab: u32,
    has_mask: u32,
    _pad: u32,
}

/// Mean cross-entropy `-Σ w_r·log p(label_r) / Σ w_r` from the head's output (rows, 3), with
/// w_r the optional f32 `mask` (1 without), 0 for labels past `vocab`; a `[1]` Var (0 when
/// the weights sum to 0).
pub fn head_cross_entropy(head: &Var, labels: &Tensor, mask: Option<&Tensor>, vocab: usize) -> Result<Var> {
    const OP: &str = "head_cross_entropy";
    let rows = labels.len();
    head.tensor().expect_shape(OP, &[rows, HEAD_COLUMNS])?;
    if let Some(m) = mask {
        m.expect_dtype(OP, DType::F32)?;
        if m.len() != rows {
            return Err(Error::shape(OP, format!("mask of {} for {rows} rows", m.len())));
        }
    }
    let gpu = labels.gpu().clone();
    let p = CeParams { rows: rows as u32, vocab: vocab as u32, has_mask: mask.is_some() as u32, _pad: 0 };
    let weight_sum = Tensor::empty(&gpu, &[1], DType::F32, "head_cross_entropy weight sum")?;
    let row_loss = Tensor::empty(&gpu, &[rows.max(1)], DType::F32, "head_cross_entropy rows")?;
    // Without a mask, bind something read-only the kernels never read as one.
    let mask_bind = mask.unwrap_or(labels).binding();
    let ce = |entry: &'static str, bufs: &[(u32, Binding)], groups: [u32; 3]| {
        gpu.dispatch_bound(&Kernel::new(&CROSS_ENTROPY, entry), bytemuck::bytes_of(&p), &[], bufs, groups)
    };
    ce("weights", &[(1, labels.binding()), (2, mask_bind), (3, weight_sum.binding())], [1, 1, 1])?;
    let bufs = [(1, labels.binding()), (2, mask_bind), (3, weight_sum.binding()), (4, head.tensor().binding()), (5, row_loss.binding())];
    ce("rows", &bufs, gpu.groups_1d(rows, 64))?;
    let loss = sum_to_scalar(&row_loss)?;
    let (labels, mask) = (labels.clone(), mask.cloned());
    Ok(Var::from_op(loss, &[head], move |g| {
        let gpu = labels.gpu();
        let dhead = Tensor::empty(gpu, &[rows, HEAD_COLUMNS], DType::F32, "head_cross_entropy dhead")?;
        let mask_bind = mask.as_ref().unwrap_or(&labels).binding();
        let bufs = [(1, labels.binding()), (2, mask_bind), (3, weight_sum.binding()), (6, g.binding()), (7, dhead.binding())];
        gpu.dispatch_bound(&Kernel::new(&CROSS_ENTROPY, "grad"), bytemuck::bytes_of(&p), &[], &bufs, gpu.groups_1d(rows, 64))?;
        Ok(vec![Some(dhead)])
    }))
}

/// Mean cross-entropy of the head's logits against `labels` (masked as in
/// [`head_cross_entropy`]) without ever holding the logits: SFT's loss.
pub fn vocab_cross_entropy(x: &Var, chunks: &[Var], labels: &Tensor, mask: Option<&Tensor>) -> Result<Var> {
    let vocab = chunks.iter().map(|w| w.shape()[0]).sum();
    head_cross_entropy(&vocab_head(x, chunks, labels)?, labels, mask, vocab)
}

/// CPU reference (f64).
pub mod reference {
    /// Per row [log p(label), entropy, mean logit] (log p 0 for labels past v) of x (rows, c)
    /// against the head w (v, c).
    pub fn vocab_head(x: &[f64], w: &[f64], labels: &[f64], rows: usize, c: usize, v: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(2 * rows);
        for r in 0..rows {
            let z: Vec<f64> = (0..v).map(|j| (0..c).map(|k| x[r * c + k] * w[j * c + k]).sum()).collect();
            let m = z.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + z.iter().map(|&q| (q - m).exp()).sum::<f64>().ln();
            let h = -z.iter().map(|&q| (q - lse).exp() * (q - lse)).sum::<f64>();
            let label = labels[r] as usize;
            out.push(if label < v { z[label] - lse } else { 0.0 });
            out.push(h);
            out.push(z.iter().sum::<f64>() / v as f64);
        }
        out
    }
}
