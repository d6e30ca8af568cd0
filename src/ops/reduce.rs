//! Reductions: sums, means and maxima over the last dimension, column sums over all leading
//! dimensions, and the sum of a whole tensor. They feed losses, metrics and the parameter
//! gradients of other ops (a bias gradient is a column sum). Every sum is deterministic: one
//! thread (or one workgroup) per output, and multi-pass block sums instead of atomics.
//!
//! Row reductions come in two variants chosen by [`Gpu::variant`]: one thread per row for CPU
//! adapters (rows up to 4096 values), one workgroup per row with a tree reduction for GPUs and
//! for longer rows everywhere. [`row_kernel`] makes that choice for every row-wise family.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, KernelVariant, ShaderSource};
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};

static ROWS: ShaderSource = shader!("reduce/rows.wgsl");
static COLUMNS: ShaderSource = shader!("reduce/columns.wgsl");
static SPREAD: ShaderSource = shader!("reduce/spread.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&ROWS, &COLUMNS, &SPREAD];

/// Elements summed per block by `sum_all` (per thread or per workgroup).
const SUM_ALL_BLOCK: usize = 1024;
/// Rows per block in the column sums.
const ROWS_PER_BLOCK: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RowParams {
    rows: u32,
    cols: u32,
    n: u32,
    scale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ColumnParams {
    rows: u32,
    cols: u32,
    rows_per_block: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SpreadParams {
    n: u32,
    cols: u32,
    scale: f32,
    _pad: u32,
}

/// The longest row a thread-per-row kernel handles. llvmpipe (lavapipe) stops a shader
/// invocation after 65535 loop iterations in total, and a thread-per-row kernel makes up to ~3
/// passes over its row; longer rows also leave too few threads to fill the CPU. Longer rows
/// use the workgroup-per-row kernel in both variants.
pub(crate) const THREAD_ROW_MAX: usize = 4096;

/// The entry point and workgroup counts of a row kernel over `rows` rows of `cols` values:
/// one thread per row (64 rows per workgroup) for the register variant and rows of at most
/// [`THREAD_ROW_MAX`], otherwise one 256-thread workgroup per row.
pub(crate) fn row_kernel(gpu: &Gpu, rows: usize, cols: usize, thread: &'static str, group: &'static str) -> (&'static str, [u32; 3]) {
    if gpu.variant() == KernelVariant::Register && cols <= THREAD_ROW_MAX {
        (thread, gpu.groups_1d(rows, 64))
    } else {
        (group, gpu.groups_1d(rows, 1))
    }
}

/// Error unless `x` is f32 with at least one dimension.
fn check_f32(op: &'static str, x: &Tensor) -> Result<()> {
    x.expect_dtype(op, DType::F32)?;
    if x.shape().is_empty() {
        return Err(Error::shape(op, "needs at least one dimension"));
    }
    Ok(())
}

/// The shape left after dropping the last dimension (`[1]` instead of a rank-0 shape).
fn without_last(shape: &[usize]) -> Vec<usize> {
    if shape.len() <= 1 {
        vec![1]
    } else {
        shape[..shape.len() - 1].to_vec()
    }
}

/// `out[r] = scale * sum(x[r*cols .. min((r+1)*cols, n)])` for `rows` rows.
fn sum_rows_ragged(x: &Tensor, rows: usize, cols: usize, scale: f32, out_shape: &[usize]) -> Result<Tensor> {
    let gpu = x.gpu();
    let out = Tensor::empty(gpu, out_shape, DType::F32, "row sums")?;
    let p = RowParams { rows: rows as u32, cols: cols as u32, n: x.len() as u32, scale };
    let (entry, groups) = row_kernel(gpu, rows, cols, "sum_thread", "sum_group");
    gpu.dispatch(&Kernel::new(&ROWS, entry), bytemuck::bytes_of(&p), &[out.binding(), x.binding()], groups)?;
    Ok(out)
}

/// Sum over the last dimension: (..., C) -> (...). A 1-D input gives shape `[1]`.
pub fn sum_last_forward(x: &Tensor) -> Result<Tensor> {
    check_f32("sum_last", x)?;
    let cols = x.last_dim();
    if cols == 0 {
        return Tensor::zeros(x.gpu(), &without_last(x.shape()), DType::F32, "row sums");
    }
    sum_rows_ragged(x, x.len() / cols, cols, 1.0, &without_last(x.shape()))
}

/// Mean over the last dimension: (..., C) -> (...).
pub fn mean_last_forward(x: &Tensor) -> Result<Tensor> {
    check_f32("mean_last", x)?;
    let cols = x.last_dim();
    if cols == 0 {
        return Err(Error::shape("mean_last", "the last dimension is empty"));
    }
    sum_rows_ragged(x, x.len() / cols, cols, 1.0 / cols as f32, &without_last(x.shape()))
}

/// Maximum over the last dimension and its index (the first one on ties): (..., C) -> (...)
/// values (f32) and argmax (u32).
pub fn max_last_forward(x: &Tensor) -> Result<(Tensor, Tensor)> {
    check_f32("max_last", x)?;
    let cols = x.last_dim();
    if cols == 0 {
        return Err(Error::shape("max_last", "the last dimension is empty"));
    }
    let gpu = x.gpu();
    let rows = x.len() / cols;
    let shape = without_last(x.shape());
    let out = Tensor::empty(gpu, &shape, DType::F32, "row maxima")?;
    let argmax = Tensor::empty(gpu, &shape, DType::U32, "row argmax")?;
    let p = RowParams { rows: rows as u32, cols: cols as u32, n: x.len() as u32, scale: 1.0 };
    let (entry, groups) = row_kernel(gpu, rows, cols, "max_thread", "max_group");
    let binds = [out.binding(), x.binding(), argmax.binding()];
    gpu.dispatch(&Kernel::new(&ROWS, entry), bytemuck::bytes_of(&p), &binds, groups)?;
    Ok((out, argmax))
}

/// Sum of every element, as a one-element tensor of shape `[1]`. Blocks of 1024 elements are
/// summed, then blocks of those sums, until one value is left.
pub fn sum_all_forward(x: &Tensor) -> Result<Tensor> {
    x.expect_dtype("sum_all", DType::F32)?;
    let mut cur = x.clone();
    loop {
        let rows = cur.len().div_ceil(SUM_ALL_BLOCK).max(1);
        cur = sum_rows_ragged(&cur, rows, SUM_ALL_BLOCK, 1.0, &[rows])?;
        if rows == 1 {
            return Ok(cur);
        }
    }
}

/// Column sums over every leading dimension: (..., C) -> (C). Blocks of 64 rows are summed per
/// column, then blocks of those, until one row is left (the bias-gradient reduction).
pub fn sum_leading_forward(x: &Tensor) -> Result<Tensor> {
    check_f32("sum_leading", x)?;
    let cols = x.last_dim();
    let gpu = x.gpu();
    let mut cur = x.clone();
    let mut rows = x.len().checked_div(cols).unwrap_or(0);
    loop {
        let blocks = rows.div_ceil(ROWS_PER_BLOCK).max(1);
        let out = Tensor::empty(gpu, &[blocks, cols], DType::F32, "column sums")?;
        let p = ColumnParams { rows: rows as u32, cols: cols as u32, rows_per_block: ROWS_PER_BLOCK as u32, _pad: 0 };
        let binds = [out.binding(), cur.binding()];
        gpu.dispatch(&Kernel::new(&COLUMNS, "sum_columns"), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(blocks * cols, 64))?;
        if rows == 0 {
            // No rows: the sums are zero, which the kernel does not write.
            crate::ops::elementwise::fill(&out, 0.0)?;
        }
        if blocks == 1 {
            return out.reshape(&[cols]);
        }
        cur = out;
        rows = blocks;
    }
}

fn spread(entry: &'static str, g: &Tensor, shape: &[usize], cols: usize, scale: f32, argmax: Option<&Tensor>) -> Result<Tensor> {
    let gpu = g.gpu();
    let dx = Tensor::empty(gpu, shape, DType::F32, "reduction gradient")?;
    let p = SpreadParams { n: dx.len() as u32, cols: cols.max(1) as u32, scale, _pad: 0 };
    let mut binds = vec![dx.binding(), g.binding()];
    if let Some(a) = argmax {
        binds.push(a.binding());
    }
    gpu.dispatch(&Kernel::new(&SPREAD, entry), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(dx.len(), 256))?;
    Ok(dx)
}

/// Backward of `sum_last` / `mean_last` / `sum_all`: `dx[i] = scale * g[i / cols]`, shape `shape`.
pub fn spread_last(g: &Tensor, shape: &[usize], cols: usize, scale: f32) -> Result<Tensor> {
    spread("spread_last", g, shape, cols, scale, None)
}

/// Backward of `sum_leading`: `dx[.., c] = g[c]`, shape `shape`.
pub fn spread_leading(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let cols = shape.last().copied().unwrap_or(1);
    spread("spread_leading", g, shape, cols, 1.0, None)
}

/// Backward of `max_last`: the gradient goes to the argmax of each row, zero elsewhere.
pub fn scatter_argmax(g: &Tensor, argmax: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let cols = shape.last().copied().unwrap_or(1);
    spread("scatter_argmax", g, shape, cols, 1.0, Some(argmax))
}

/// Sum over the last dimension: (..., C) -> (...) (`[1]` for 1-D input).
pub fn sum_last(x: &Var) -> Result<Var> {
    let out = sum_last_forward(x.tensor())?;
    let shape = x.shape().to_vec();
    let cols = x.tensor().last_dim();
    Ok(Var::from_op(out, &[x], move |g| Ok(vec![Some(spread_last(g, &shape, cols, 1.0)?)])))
}

/// Mean over the last dimension: (..., C) -> (...).
pub fn mean_last(x: &Var) -> Result<Var> {
    let out = mean_last_forward(x.tensor())?;
    let shape = x.shape().to_vec();
    let cols = x.tensor().last_dim();
    Ok(Var::from_op(out, &[x], move |g| Ok(vec![Some(spread_last(g, &shape, cols, 1.0 / cols as f32)?)])))
}

/// Maximum over the last dimension: (..., C) -> (...). The gradient flows to the first argmax.
pub fn max_last(x: &Var) -> Result<Var> {
    let (out, argmax) = max_last_forward(x.tensor())?;
    let shape = x.shape().to_vec();
    Ok(Var::from_op(out, &[x], move |g| Ok(vec![Some(scatter_argmax(g, &argmax, &shape)?)])))
}

/// Sum of every element: a scalar of shape `[1]`.
pub fn sum_all(x: &Var) -> Result<Var> {
    let out = sum_all_forward(x.tensor())?;
    let shape = x.shape().to_vec();
    let n = x.tensor().len();
    Ok(Var::from_op(out, &[x], move |g| Ok(vec![Some(spread_last(g, &shape, n, 1.0)?)])))
}

/// Column sums over every leading dimension: (..., C) -> (C).
pub fn sum_leading(x: &Var) -> Result<Var> {
    let out = sum_leading_forward(x.tensor())?;
    let shape = x.shape().to_vec();
    Ok(Var::from_op(out, &[x], move |g| Ok(vec![Some(spread_leading(g, &shape)?)])))
}

/// CPU references (f64), used by the gradient-check table. `cols` is the last dimension.
pub mod reference {
    /// Row sums of a row-major (rows, cols) array.
    pub fn sum_last(x: &[f64], cols: usize) -> Vec<f64> {
        x.chunks(cols).map(|r| r.iter().sum()).collect()
    }
    /// Row means.
    pub fn mean_last(x: &[f64], cols: usize) -> Vec<f64> {
        x.chunks(cols).map(|r| r.iter().sum::<f64>() / cols as f64).collect()
    }
    /// Row maxima.
    pub fn max_last(x: &[f64], cols: usize) -> Vec<f64> {
        x.chunks(cols).map(|r| r.iter().cloned().fold(f64::NEG_INFINITY, f64::max)).collect()
    }
    /// First index of each row's maximum.
    pub fn argmax_last(x: &[f64], cols: usize) -> Vec<u32> {
        x.chunks(cols)
            .map(|r| {
                let mut at = 0;
                for (i, &v) in r.iter().enumerate() {
                    if v > r[at] {
                        at = i;
                    }
                }
                at as u32
            })
            .collect()
    }
    /// Sum of everything.
    pub fn sum_all(x: &[f64]) -> Vec<f64> {
        vec![x.iter().sum()]
    }
    /// Column sums of a row-major (rows, cols) array.
    pub fn sum_leading(x: &[f64], cols: usize) -> Vec<f64> {
        let mut out = vec![0.0; cols];
        for r in x.chunks(cols) {
            for (o, v) in out.iter_mut().zip(r) {
                *o += v;
            }
        }
        out
    }
}
