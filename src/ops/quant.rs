//! Frozen weights kept in their stored form (f16, bf16, GGUF's Q8_0, Q4_0, Q4_1, Q4_K, Q6_K):
//! the linear layer `y = x·Wᵀ (+ b)` with W dequantized inside the matmul, its backward
//! `dx = dy·W` (no dW: the weight is frozen), and the embedding lookup from stored rows. No f32
//! copy of W is ever made: a Q4_0 matrix takes 18 bytes per 32 weights on the GPU instead of 128.
//!
//! A [`QuantTensor`] holds W (out, in) as the raw bytes GGUF stores (ggml's block layouts, see
//! [`codec`]) in a u32 tensor. Kernels (`shaders/quant/quant.wgsl`), chosen by [`Gpu::variant`]
//! like matmul's: register-tiled without workgroup memory for CPU adapters (each thread 8 rows x
//! 4 outputs, one decoded vec4 of W serving 8 rows), 64x64 workgroup-memory tiles for real GPUs
//! (W decoded once into the tile, then the usual inner loop). Products of fewer than 64 rows on
//! CPU adapters (generation: one row a sequence) take `forward_rows` instead, 64-thread
//! workgroups whose threads compute 4 outputs for every row at once, so no thread computes rows
//! that do not exist (20 SmolLM2 tokens: 51 s with the 64-row tiles, 9.6 s this way).
//!
//! On CPU adapters a product with many rows (a training batch) runs faster another way: decode
//! the rows of W it reads into a temporary f32 matrix (`decode` in the shader, O(N·K)) and run
//! the register f32 matmul (O(M·N·K)), the temporary freed right after, so at most one decoded
//! matrix exists at a time, never the model ([`StoredMatmul`], `PLUMB_STORED_MATMUL`). This is
//! what llama.cpp does for batched products on GPUs (dequantize, then the BLAS GEMM).

pub mod codec;

pub use codec::{dequantize, quantize, StoredType};

use crate::error::{Error, Result};
use crate::gpu::feed::DECODE_MIN_ROWS;
use crate::gpu::{Binding, Gpu, Kernel, KernelVariant, ShaderSource, StoredMatmul};
use crate::ops::matmul::matmul_forward;
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};

static QUANT: ShaderSource = shader!("quant/quant.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&QUANT];

/// Rows of x each register-kernel thread computes (`RM` in the shader).
const RM: usize = 8;
/// llvmpipe ends a shader invocation after 65535 loop iterations; the register backward loops
/// once per row of W.
const CPU_MAX_ROWS: usize = 65535;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    k: u32,
    n: u32,
    row_bytes: u32,
    has_bias: u32,
    /// First stored row read (row slices of a vocabulary head).
    row0: u32,
    _pad: [u32; 2],
}

/// A frozen (out, in) matrix in a stored type on the GPU: GGUF's bytes as they are, in u32 words.
#[derive(Clone, Debug)]
pub struct QuantTensor {
    /// How the rows are encoded.
    pub kind: StoredType,
    /// (out, in): rows of W, and the row length (a whole number of blocks).
    pub shape: [usize; 2],
    /// The raw bytes, zero-padded to whole words: (ceil(bytes / 4),) u32.
    pub words: Tensor,
}

impl QuantTensor {
    /// Upload a tensor exactly as GGUF stores it: `shape` is (rows, row length), i.e. GGUF's
    /// `ne` reversed (ne[1], ne[0]); `bytes` are its `rows · row_bytes` bytes.
    pub fn from_bytes(gpu: &Gpu, kind: StoredType, shape: [usize; 2], bytes: &[u8]) -> Result<QuantTensor> {
        let want = shape[0] * kind.row_bytes(shape[1])?;
        if bytes.len() != want {
            return Err(Error::shape(
                "QuantTensor::from_bytes",
                format!("{:?} {} needs {want} bytes, got {}", shape, kind.name(), bytes.len()),
            ));
        }
        if want / 4 >= u32::MAX as usize / 2 {
            return Err(Error::shape("QuantTensor::from_bytes", format!("{want} bytes is too large for one tensor")));
        }
        let words = Tensor::empty(gpu, &[want.div_ceil(4).max(1)], DType::U32, "stored-form weight")?;
        words.write_bytes(bytes)?;
        Ok(QuantTensor { kind, shape, words })
    }

    /// Quantize f32 values (rows of `shape[1]`) on the CPU and upload them.
    pub fn from_f32(gpu: &Gpu, kind: StoredType, shape: [usize; 2], data: &[f32]) -> Result<QuantTensor> {
        let bytes = quantize(kind, data, shape[0], shape[1])?;
        QuantTensor::from_bytes(gpu, kind, shape, &bytes)
    }

    /// The stored bytes read back (a test and checkpoint helper; waits for the GPU).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let words = self.words.to_u32_vec()?;
        let mut bytes: Vec<u8> = bytemuck::cast_slice(&words).to_vec();
        bytes.truncate(self.shape[0] * self.kind.row_bytes(self.shape[1])?);
        Ok(bytes)
    }

    /// The decoded values (CPU), row-major (out, in).
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        dequantize(self.kind, &self.to_bytes()?, self.shape[0], self.shape[1])
    }

    /// Bytes on the GPU.
    pub fn bytes(&self) -> usize {
        self.words.len() * 4
    }

    fn params(&self, m: usize, has_bias: bool) -> Result<Params> {
        let row_bytes = self.kind.row_bytes(self.shape[1])?;
        Ok(Params {
            m: m as u32,
            k: self.shape[1] as u32,
            n: self.shape[0] as u32,
            row_bytes: row_bytes as u32,
            has_bias: has_bias as u32,
            row0: 0,
            _pad: [0; 2],
        })
    }

    fn kernel_consts(&self) -> [(&'static str, f64); 1] {
        [("KIND", self.kind.kind_id() as f64)]
    }
}

impl QuantTensor {
    /// Rows `start..start + rows` of this matrix as a matrix of its own, sharing the bytes (the
    /// kernels start reading at row `start`).
    pub fn rows(&self, start: usize, rows: usize) -> Result<QuantRows<'_>> {
        if start + rows > self.shape[0] {
            return Err(Error::shape("QuantTensor::rows", format!("rows {start}..{} of {:?}", start + rows, self.shape)));
        }
        Ok(QuantRows { w: self, start, rows })
    }
}

/// A range of rows of a [`QuantTensor`] (see [`QuantTensor::rows`]).
#[derive(Clone, Copy, Debug)]
pub struct QuantRows<'a> {
    w: &'a QuantTensor,
    start: usize,
    rows: usize,
}

impl<'a> From<&'a QuantTensor> for QuantRows<'a> {
    fn from(w: &'a QuantTensor) -> Self {
        QuantRows { w, start: 0, rows: w.shape[0] }
    }
}

impl QuantRows<'_> {
    fn params(&self, m: usize, has_bias: bool) -> Result<Params> {
        let mut p = self.w.params(m, has_bias)?;
        (p.n, p.row0) = (self.rows as u32, self.start as u32);
        Ok(p)
    }
}

/// Rows of a (..., K) activation after checking K; u32 sizes checked.
fn rows_of(op: &'static str, x: &Tensor, k: usize) -> Result<usize> {
    x.expect_dtype(op, DType::F32)?;
    if x.shape().is_empty() || x.last_dim() != k {
        return Err(Error::shape(op, format!("input {:?} must end in the weight's row length {k}", x.shape())));
    }
    Ok(x.len() / k.max(1))
}

/// Run `entry` for `w`'s stored type; `rows` is `forward_rows`' ROWS override.
fn dispatch(w: &QuantTensor, entry: &'static str, rows: Option<usize>, p: &Params, bufs: &[(u32, Binding)], groups: [u32; 3]) -> Result<()> {
    let gpu = w.words.gpu();
    let consts: Vec<_> = w.kernel_consts().into_iter().chain(rows.map(|r| ("ROWS", r as f64))).collect();
    gpu.dispatch_bound(&Kernel::new(&QUANT, entry).with(&consts), bytemuck::bytes_of(p), &[], bufs, groups)
}

fn check_groups(gpu: &Gpu, op: &'static str, groups: [u32; 3]) -> Result<[u32; 3]> {
    let max = gpu.limits().max_compute_workgroups_per_dimension;
    if groups[0] > max || groups[1] > max {
        return Err(Error::shape(op, format!("{groups:?} workgroups exceed the adapter's {max} per dimension")));
    }
    Ok(groups)
}

/// Whether a product of `m` rows decodes W to f32 first (see [`StoredMatmul`]).
fn decode_first(gpu: &Gpu, m: usize) -> bool {
    match gpu.stored_matmul() {
        StoredMatmul::Fused => false,
        StoredMatmul::Decode => true,
        StoredMatmul::Auto => gpu.variant() == KernelVariant::Register && m >= DECODE_MIN_ROWS,
    }
}

/// vec4s of W each thread of `decode_vec4` writes (its `VPT`, the shader's default).
const DECODE_VECS: usize = 8;

/// The rows of W a product reads, decoded to a temporary f32 (rows, in) matrix.
pub fn decode_rows<'a>(w: impl Into<QuantRows<'a>>) -> Result<Tensor> {
    let w: QuantRows = w.into();
    let (n, k) = (w.rows, w.w.shape[1]);
    let gpu = w.w.words.gpu();
    let out = Tensor::empty(gpu, &[n, k], DType::F32, "decoded stored-form weight")?;
    if out.is_empty() {
        return Ok(out);
    }
    let p = w.params(0, false)?;
    if k.is_multiple_of(4) {
        // Eight vec4 stores a thread (one Q4_1 block from its five words): 1536x576 in Q4_1
        // took 1.7 ms one vec4 a thread with scalar stores, 0.6 ms so (lavapipe).
        let groups = gpu.groups_1d((n * k / 4).div_ceil(DECODE_VECS), 64);
        dispatch(w.w, "decode_vec4", None, &p, &[(1, w.w.words.binding()), (6, out.binding_vec4())], groups)?;
        return Ok(out);
    }
    dispatch(w.w, "decode", None, &p, &[(1, w.w.words.binding()), (4, out.binding())], gpu.groups_1d(n * k.div_ceil(4), 64))?;
    Ok(out)
}

/// `y = x·Wᵀ (+ bias)`: x (..., in) f32, W (out, in) stored, bias (out) f32 -> y (..., out).
/// `w` is a whole [`QuantTensor`] or a [`QuantRows`] range of one.
pub fn quant_linear_forward<'a>(x: &Tensor, w: impl Into<QuantRows<'a>>, bias: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "quant_linear";
    let w: QuantRows = w.into();
    let (n, k) = (w.rows, w.w.shape[1]);
    let m = rows_of(OP, x, k)?;
    if let Some(b) = bias {
        b.expect_dtype(OP, DType::F32)?;
        b.expect_shape(OP, &[n])?;
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("checked non-empty") = n;
    let gpu = x.gpu();
    if m == 0 || n == 0 || k == 0 {
        return Tensor::zeros(gpu, &shape, DType::F32, "quant_linear output");
    }
    if decode_first(gpu, m) {
        let y2 = matmul_forward(&x.reshape(&[m, k])?, &decode_rows(w)?, bias, false, true)?; // (m, n)
        return y2.reshape(&shape);
    }
    let y = Tensor::empty(gpu, &shape, DType::F32, "quant_linear output")?;
    let p = w.params(m, bias.is_some())?;
    // Without a bias, bind something read-only that is not the output (never read).
    let bias_bind = bias.unwrap_or(x).binding();
    let bufs = [(1, w.w.words.binding()), (2, x.binding()), (3, bias_bind), (4, y.binding())];
    // A few rows (generation): 4 columns a thread for all of up to RM rows at once.
    let rows = m.next_power_of_two().min(RM);
    let (entry, rows, groups) = match gpu.variant() {
        KernelVariant::Register if m < 8 * RM => ("forward_rows", Some(rows), [n.div_ceil(4 * 64) as u32, m.div_ceil(rows) as u32, 1]),
        KernelVariant::Register => ("forward_register", None, [n.div_ceil(32) as u32, m.div_ceil(8 * RM) as u32, 1]),
        KernelVariant::Tiled => ("forward_tiled", None, [n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1]),
    };
    dispatch(w.w, entry, rows, &p, &bufs, check_groups(gpu, OP, groups)?)?;
    Ok(y)
}

/// `dx = dy·W`: dy (..., out) -> dx (..., in), the gradient of [`quant_linear_forward`] with
/// respect to its input (the frozen W gets none).
pub fn quant_linear_backward<'a>(dy: &Tensor, w: impl Into<QuantRows<'a>>) -> Result<Tensor> {
    const OP: &str = "quant_linear_backward";
    let w: QuantRows = w.into();
    let (n, k) = (w.rows, w.w.shape[1]);
    let m = rows_of(OP, dy, n)?;
    let mut shape = dy.shape().to_vec();
    *shape.last_mut().expect("checked non-empty") = k;
    let gpu = dy.gpu();
    if n == 0 || m == 0 || k == 0 {
        return Tensor::zeros(gpu, &shape, DType::F32, "quant_linear dx");
    }
    if decode_first(gpu, m) {
        return matmul_forward(&dy.reshape(&[m, n])?, &decode_rows(w)?, None, false, false)?.reshape(&shape); // (m, k)
    }
    let dx = Tensor::empty(gpu, &shape, DType::F32, "quant_linear dx")?;
    let p = w.params(m, false)?;
    let bufs = [(1, w.w.words.binding()), (2, dy.binding()), (4, dx.binding())];
    let (entry, groups) = match gpu.variant() {
        KernelVariant::Register => {
            if n > CPU_MAX_ROWS {
                return Err(Error::shape(OP, format!("{n} weight rows: CPU adapters take at most {CPU_MAX_ROWS} per pass")));
            }
            ("backward_register", [k.div_ceil(32) as u32, m.div_ceil(8 * RM) as u32, 1])
        }
        KernelVariant::Tiled => ("backward_tiled", [k.div_ceil(64) as u32, m.div_ceil(64) as u32, 1]),
    };
    dispatch(w.w, entry, None, &p, &bufs, check_groups(gpu, OP, groups)?)?;
    Ok(dx)
}

/// The linear layer with a frozen stored-form weight on the tape: x (..., in), W (out, in),
/// b (out) -> (..., out). Backward: `dx = dy·W` when x needs it, and the bias's column sums when
/// the bias trains; never a gradient for W.
pub fn quant_linear(x: &Var, w: &QuantTensor, bias: Option<&Var>) -> Result<Var> {
    let y = quant_linear_forward(x.tensor(), w, bias.map(|b| b.tensor()))?;
    let (w, out) = (w.clone(), w.shape[0]);
    let (need_x, need_b) = (x.requires_grad(), bias.is_some_and(|b| b.requires_grad()));
    let inputs: Vec<&Var> = std::iter::once(x).chain(bias).collect();
    let has_bias = bias.is_some();
    Ok(Var::from_op(y, &inputs, move |g| {
        let dx = if need_x { Some(quant_linear_backward(g, &w)?) } else { None };
        let mut grads = vec![dx];
        if has_bias {
            let rows = g.len() / out.max(1);
            grads.push(if need_b { Some(crate::ops::matmul::bias_grad(&g.reshape(&[rows, out])?)?) } else { None });
        }
        Ok(grads)
    }))
}

/// `out[..., :] = W[ids[...], :]` from a stored (V, C) table: ids u32 (...) -> (..., C) f32. Ids
/// >= V give rows of zeros. No gradient (the table is frozen).
pub fn quant_embedding(ids: &Tensor, table: &QuantTensor) -> Result<Tensor> {
    const OP: &str = "quant_embedding";
    ids.expect_dtype(OP, DType::U32)?;
    let [_, c] = table.shape;
    let gpu = ids.gpu();
    let mut shape = ids.shape().to_vec();
    shape.push(c);
    let out = Tensor::empty(gpu, &shape, DType::F32, "quant_embedding out")?;
    if out.is_empty() {
        return Ok(out);
    }
    let p = table.params(ids.len(), false)?;
    let bufs = [(1, table.words.binding()), (4, out.binding()), (5, ids.binding())];
    dispatch(table, "gather", None, &p, &bufs, gpu.groups_1d(ids.len() * c.div_ceil(4), 64))?;
    Ok(out)
}

/// CPU references (f64) for the gradient-check table: dequantize, then an f64 product.
pub mod reference {
    use super::{dequantize, quantize, StoredType};

    /// W (out, in) as the kernels see it after storing `w` as `t`: quantize, then decode.
    pub fn stored(t: StoredType, w: &[f64], out: usize, inp: usize) -> Vec<f64> {
        let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        let bytes = quantize(t, &w32, out, inp).expect("reference shapes are whole blocks");
        dequantize(t, &bytes, out, inp).expect("reference bytes").into_iter().map(f64::from).collect()
    }

    /// `x·Wᵀ + b` with W decoded from `t`: x (rows, in), w (out, in).
    pub fn quant_linear(t: StoredType, x: &[f64], w: &[f64], b: Option<&[f64]>, rows: usize, inp: usize, out: usize) -> Vec<f64> {
        crate::ops::matmul::reference::linear(x, &stored(t, w, out, inp), b, rows, inp, out)
    }
}
