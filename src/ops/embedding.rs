//! Embeddings: the token lookup `table[ids]`, the tied output head `x · tableᵀ`, and GPT-2's
//! learned position embeddings.
//!
//! A table bigger than one storage binding comes as [`RowChunks`] (see src/params.rs): the
//! lookup runs once per chunk, each writing the rows of the ids it holds (the first also zeroes
//! the rest), the backward computes the token links once and fills each chunk's gradient, and
//! the tied head is one product per chunk written side by side into the logits.
//!
//! Token ids at or beyond the vocabulary size never read out of bounds: their output row is
//! zero and they contribute no gradient. The table gradient is deterministic and uses no
//! atomics (WGSL has no portable float atomics): a link pass chains the tokens that share an id
//! (O(N^2) u32 compares for N tokens, cheap next to the matmuls up to N ~ 10^4 to 10^5), then
//! one thread per (first token of an id, channel) sums its chain in token order. Total work is
//! N^2 compares + N*C adds + the V*C zero fill of the gradient, instead of V*N*C for the
//! one-thread-per-vocabulary-row scan. On CPU adapters one backward call takes at most 65535
//! tokens (llvmpipe's cap on loop iterations per shader invocation).

use crate::error::{Error, Result};
use crate::gpu::{Kernel, ShaderSource};
use crate::shader;
use crate::ops::elementwise::{add_into_last, slice_last_forward};
use crate::ops::matmul::linear;
use crate::params::RowChunks;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};

static EMBEDDING: ShaderSource = shader!("embedding/embedding.wgsl");
static EMBEDDING_BACKWARD: ShaderSource = shader!("embedding/embedding_backward.wgsl");
static POSITIONS: ShaderSource = shader!("embedding/positions.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&EMBEDDING, &EMBEDDING_BACKWARD, &POSITIONS];

/// Most tokens per backward call on CPU adapters: each link thread scans every token once and
/// llvmpipe ends a shader invocation after 65535 loop iterations.
const CPU_MAX_TOKENS: usize = 65535;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TokenParams {
    tokens: u32,
    cols: u32,
    /// First table row of the chunk.
    row_start: u32,
    /// Rows in the chunk.
    rows: u32,
    /// 1: outputs of ids outside the chunk are written as 0 (the first chunk).
    zero_outside: u32,
    _pad: [u32; 3],
}

impl TokenParams {
    fn new(tokens: usize, cols: usize, row_start: usize, rows: usize, first: bool) -> TokenParams {
        TokenParams {
            tokens: tokens as u32,
            cols: cols as u32,
            row_start: row_start as u32,
            rows: rows as u32,
            zero_outside: first as u32,
            _pad: [0; 3],
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PositionParams {
    batch: u32,
    seq: u32,
    cols: u32,
    offset: u32,
    table_rows: u32,
    _pad: [u32; 3],
}

/// Checks a (V, C) f32 table; returns (V, C).
fn table_dims(op: &'static str, table: &Tensor) -> Result<(usize, usize)> {
    table.expect_dtype(op, DType::F32)?;
    match *table.shape() {
        [v, c] => Ok((v, c)),
        _ => Err(Error::shape(op, format!("the table must be (V, C), got {:?}", table.shape()))),
    }
}

/// `out[..., :] = table[ids[...], :]`: ids u32 (...), table (V, C), out (..., C). Ids >= V give
/// rows of zeros.
pub fn embedding_forward(ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    embedding_forward_chunks(ids, &RowChunks::whole(table.clone()))
}

/// [`embedding_forward`] over a table split into row chunks: one gather per chunk.
pub fn embedding_forward_chunks(ids: &Tensor, table: &RowChunks) -> Result<Tensor> {
    ids.expect_dtype("embedding", DType::U32)?;
    let mut cols = 0;
    for t in table.tensors() {
        cols = table_dims("embedding", t)?.1;
    }
    let gpu = ids.gpu();
    let mut shape = ids.shape().to_vec();
    shape.push(cols);
    let out = Tensor::empty(gpu, &shape, DType::F32, "embedding out")?;
    for (k, (t, &start)) in table.tensors().iter().zip(table.starts()).enumerate() {
        let p = TokenParams::new(ids.len(), cols, start, t.shape()[0], k == 0);
        let binds = [out.binding(), ids.binding(), t.binding()];
        gpu.dispatch(&Kernel::new(&EMBEDDING, "gather"), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(out.len(), 256))?;
    }
    Ok(out)
}

/// The table gradient (V, C) from dout (..., C) and the ids (...). Deterministic, no atomics.
pub fn embedding_backward(dout: &Tensor, ids: &Tensor, vocab: usize) -> Result<Tensor> {
    Ok(embedding_backward_chunks(dout, ids, &[(0, vocab)])?.remove(0))
}

/// The gradient of each row chunk `(first row, rows)` of the table, from dout (..., C) and the
/// ids (...): the token links are computed once, then one pass per chunk.
pub fn embedding_backward_chunks(dout: &Tensor, ids: &Tensor, chunks: &[(usize, usize)]) -> Result<Vec<Tensor>> {
    const OP: &str = "embedding_backward";
    ids.expect_dtype(OP, DType::U32)?;
    dout.expect_dtype(OP, DType::F32)?;
    let cols = dout.last_dim();
    let mut want = ids.shape().to_vec();
    want.push(cols);
    dout.expect_shape(OP, &want)?;
    let gpu = dout.gpu();
    let tokens = ids.len();
    if gpu.is_cpu() && tokens > CPU_MAX_TOKENS {
        return Err(Error::shape(OP, format!(
            "{tokens} tokens: CPU adapters (llvmpipe stops a shader invocation after 65535 loop \
             iterations) take at most {CPU_MAX_TOKENS} tokens per backward call"
        )));
    }
    let links = Tensor::empty(gpu, &[tokens, 2], DType::U32, "embedding token links")?;
    let p = TokenParams::new(tokens, cols, 0, 0, false);
    let link = Kernel::new(&EMBEDDING_BACKWARD, "link");
    gpu.dispatch(&link, bytemuck::bytes_of(&p), &[links.binding(), ids.binding()], gpu.groups_1d(tokens, 64))?;
    let mut grads = Vec::with_capacity(chunks.len());
    for &(start, rows) in chunks {
        let dtable = Tensor::zeros(gpu, &[rows, cols], DType::F32, "embedding dtable")?;
        let p = TokenParams::new(tokens, cols, start, rows, false);
        let binds = [links.binding(), ids.binding(), dtable.binding(), dout.binding()];
        let k = Kernel::new(&EMBEDDING_BACKWARD, "accumulate");
        gpu.dispatch(&k, bytemuck::bytes_of(&p), &binds, gpu.groups_1d(tokens * cols, 256))?;
        grads.push(dtable);
    }
    Ok(grads)
}

/// Token embedding on the tape: ids u32 (...) (no gradient), table (V, C) -> (..., C).
pub fn embedding(ids: &Tensor, table: &Var) -> Result<Var> {
    embedding_chunks(ids, std::slice::from_ref(table))
}

/// Token embedding from a table given as row chunks (each a Var (rows_k, C), in row order):
/// each chunk gets the gradient of its own rows.
pub fn embedding_chunks(ids: &Tensor, chunks: &[Var]) -> Result<Var> {
    let table = RowChunks::new(chunks.iter().map(|v| v.tensor().clone()).collect())?;
    let out = embedding_forward_chunks(ids, &table)?;
    let ids = ids.clone();
    let ranges: Vec<(usize, usize)> = table.tensors().iter().zip(table.starts()).map(|(t, &s)| (s, t.shape()[0])).collect();
    let inputs: Vec<&Var> = chunks.iter().collect();
    Ok(Var::from_op(out, &inputs, move |g| Ok(embedding_backward_chunks(g, &ids, &ranges)?.into_iter().map(Some).collect())))
}

/// The tied output head: logits (rows, V) = x (rows, C) · tableᵀ, with the (V, C) table given
/// as row chunks. One chunk is one matmul; several are one matmul each, written side by side
/// into the logits (whose backward hands each product its own columns).
pub fn tied_head(x: &Var, chunks: &[Var]) -> Result<Var> {
    let parts: Vec<Var> = chunks.iter().map(|w| linear(x, w, None)).collect::<Result<_>>()?;
    match &parts[..] {
        [one] => Ok(one.clone()),
        _ => concat_last(&parts),
    }
}

/// Tensors (rows, w_k) side by side as (rows, sum w_k); the gradient is sliced back.
fn concat_last(parts: &[Var]) -> Result<Var> {
    let rows = parts[0].shape()[0];
    let widths: Vec<usize> = parts.iter().map(|p| p.tensor().last_dim()).collect();
    let total: usize = widths.iter().sum();
    let gpu = parts[0].tensor().gpu();
    let out = Tensor::zeros(gpu, &[rows, total], DType::F32, "tied head logits")?;
    let mut start = 0;
    for p in parts {
        add_into_last(&out, p.tensor(), start)?;
        start += p.tensor().last_dim();
    }
    let inputs: Vec<&Var> = parts.iter().collect();
    Ok(Var::from_op(out, &inputs, move |g| {
        let mut start = 0;
        let mut grads = Vec::with_capacity(widths.len());
        for &w in &widths {
            grads.push(Some(slice_last_forward(g, start, w)?));
            start += w;
        }
        Ok(grads)
    }))
}

/// Checks x (..., T, C) against a (rows, C) position table and the offset; returns (batch, T).
fn position_dims(op: &'static str, x: &Tensor, rows: usize, cols: usize, offset: usize) -> Result<(usize, usize)> {
    x.expect_dtype(op, DType::F32)?;
    let s = x.shape();
    if s.len() < 2 || s[s.len() - 1] != cols {
        return Err(Error::shape(op, format!("x must be (..., T, {cols}), got {s:?}")));
    }
    let seq = s[s.len() - 2];
    if offset + seq > rows {
        return Err(Error::shape(op, format!("positions {offset}..{} exceed the table's {rows} rows", offset + seq)));
    }
    let batch = x.len().checked_div(seq * cols).unwrap_or(0);
    Ok((batch, seq))
}

/// `out[..., t, :] = x[..., t, :] + wpe[offset + t, :]`: x (..., T, C), wpe (P, C).
pub fn add_positions_forward(x: &Tensor, wpe: &Tensor, offset: usize) -> Result<Tensor> {
    let (rows, cols) = table_dims("add_positions", wpe)?;
    let (batch, seq) = position_dims("add_positions", x, rows, cols, offset)?;
    let gpu = x.gpu();
    let out = Tensor::empty(gpu, x.shape(), DType::F32, "add_positions out")?;
    let p = PositionParams {
        batch: batch as u32,
        seq: seq as u32,
        cols: cols as u32,
        offset: offset as u32,
        table_rows: rows as u32,
        _pad: [0; 3],
    };
    let binds = [out.binding(), x.binding(), wpe.binding()];
    gpu.dispatch(&Kernel::new(&POSITIONS, "add"), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(out.len(), 256))?;
    Ok(out)
}

/// The position-table gradient (P, C): rows offset..offset+T hold dout (..., T, C) summed over
/// the leading dimensions in order, the other rows zero.
pub fn add_positions_backward(dout: &Tensor, table_rows: usize, offset: usize) -> Result<Tensor> {
    const OP: &str = "add_positions_backward";
    let (rows, cols) = (table_rows, dout.last_dim());
    let (batch, seq) = position_dims(OP, dout, rows, cols, offset)?;
    let gpu = dout.gpu();
    let dwpe = Tensor::empty(gpu, &[rows, cols], DType::F32, "add_positions dwpe")?;
    let p = PositionParams {
        batch: batch as u32,
        seq: seq as u32,
        cols: cols as u32,
        offset: offset as u32,
        table_rows: rows as u32,
        _pad: [0; 3],
    };
    let binds = [dwpe.binding(), dout.binding()];
    gpu.dispatch(&Kernel::new(&POSITIONS, "backward"), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(dwpe.len(), 256))?;
    Ok(dwpe)
}

/// Learned position embedding on the tape: `x[..., t, :] + wpe[offset + t, :]`.
pub fn add_positions(x: &Var, wpe: &Var, offset: usize) -> Result<Var> {
    let out = add_positions_forward(x.tensor(), wpe.tensor(), offset)?;
    let rows = wpe.shape()[0];
    Ok(Var::from_op(out, &[x, wpe], move |g| {
        Ok(vec![Some(g.clone()), Some(add_positions_backward(g, rows, offset)?)])
    }))
}

/// CPU references (f64), used by the gradient-check table.
pub mod reference {
    /// Rows of a (V, C) table; ids >= V give zero rows.
    pub fn embedding(ids: &[u32], table: &[f64], cols: usize) -> Vec<f64> {
        let vocab = table.len() / cols;
        let mut out = Vec::with_capacity(ids.len() * cols);
        for &id in ids {
            if (id as usize) < vocab {
                out.extend_from_slice(&table[id as usize * cols..(id as usize + 1) * cols]);
            } else {
                out.extend(std::iter::repeat_n(0.0, cols));
            }
        }
        out
    }

    /// Logits (rows, V) = x (rows, C) · tableᵀ for a (V, C) table.
    pub fn tied_head(x: &[f64], table: &[f64], cols: usize) -> Vec<f64> {
        let vocab = table.len() / cols;
        x.chunks(cols)
            .flat_map(|r| (0..vocab).map(move |v| r.iter().zip(&table[v * cols..(v + 1) * cols]).map(|(a, b)| a * b).sum::<f64>()))
            .collect()
    }

    /// `x[b, t, :] + wpe[offset + t, :]` for x (B, T, C).
    pub fn add_positions(x: &[f64], wpe: &[f64], seq: usize, cols: usize, offset: usize) -> Vec<f64> {
        x.iter()
            .enumerate()
            .map(|(i, v)| v + wpe[offset * cols + i % (seq * cols)])
            .collect()
    }
}
