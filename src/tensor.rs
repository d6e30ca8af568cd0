//! `Tensor`: a typed, shaped range of a pooled GPU buffer. Cloning shares the buffer; the
//! buffer goes back to the pool when the last clone is dropped. A tensor may be a view into a
//! larger buffer (the flat parameter buffer), at an offset aligned for storage bindings.

use crate::error::{Error, Result};
use crate::gpu::{Binding, Gpu, PoolBuffer};
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    U32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }
}

/// A shaped, typed range of GPU memory.
#[derive(Clone)]
pub struct Tensor {
    buf: Arc<PoolBuffer>,
    /// Byte offset into the buffer.
    offset: u64,
    shape: Vec<usize>,
    dtype: DType,
    gpu: Gpu,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.dtype, self.shape)
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// An uninitialised tensor (its contents are whatever the pooled buffer held). `what` names
    /// it in out-of-memory errors.
    pub fn empty(gpu: &Gpu, shape: &[usize], dtype: DType, what: &str) -> Result<Tensor> {
        let bytes = (numel(shape) * dtype.size()).div_ceil(16) as u64 * 16;
        let buf = crate::gpu::pool_alloc(gpu, bytes.max(16), what)?;
        Ok(Tensor { buf, offset: 0, shape: shape.to_vec(), dtype, gpu: gpu.clone() })
    }

    /// A tensor filled with zeros (a fill dispatch in the current step).
    pub fn zeros(gpu: &Gpu, shape: &[usize], dtype: DType, what: &str) -> Result<Tensor> {
        let t = Tensor::empty(gpu, shape, dtype, what)?;
        crate::gpu::linear::fill(&t, 0.0)?;
        Ok(t)
    }

    /// Upload f32 values.
    pub fn from_f32(gpu: &Gpu, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        check_len("Tensor::from_f32", data.len(), shape)?;
        let t = Tensor::empty(gpu, shape, DType::F32, "tensor from host")?;
        t.write_bytes(bytemuck::cast_slice(data))?;
        Ok(t)
    }

    /// Upload u32 values (token ids, labels, masks).
    pub fn from_u32(gpu: &Gpu, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        check_len("Tensor::from_u32", data.len(), shape)?;
        let t = Tensor::empty(gpu, shape, DType::U32, "u32 tensor from host")?;
        t.write_bytes(bytemuck::cast_slice(data))?;
        Ok(t)
    }

    /// Upload f32 values stored as f16.
    pub fn from_f32_as_f16(gpu: &Gpu, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        check_len("Tensor::from_f32_as_f16", data.len(), shape)?;
        let h: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x)).collect();
        let t = Tensor::empty(gpu, shape, DType::F16, "f16 tensor from host")?;
        t.write_bytes(bytemuck::cast_slice(&h))?;
        Ok(t)
    }

    /// Overwrite the whole tensor with f32 values.
    pub fn write_f32(&self, data: &[f32]) -> Result<()> {
        self.expect_dtype("Tensor::write_f32", DType::F32)?;
        check_len("Tensor::write_f32", data.len(), &self.shape)?;
        self.write_bytes(bytemuck::cast_slice(data))
    }

    /// Overwrite the whole tensor with u32 values.
    pub fn write_u32(&self, data: &[u32]) -> Result<()> {
        self.expect_dtype("Tensor::write_u32", DType::U32)?;
        check_len("Tensor::write_u32", data.len(), &self.shape)?;
        self.write_bytes(bytemuck::cast_slice(data))
    }

    /// Write raw bytes at the start of this tensor. With work pending in the recorder the copy
    /// is recorded in order (the buffer may be a recycled one that pending work still reads);
    /// otherwise it goes straight through the queue.
    pub fn write_bytes(&self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut padded;
        let bytes = if !bytes.len().is_multiple_of(4) {
            padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4) * 4, 0);
            &padded[..]
        } else {
            bytes
        };
        let g = &self.gpu.0;
        if self.gpu.pending() {
            let staging = g.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("plumb upload"),
                contents: bytes,
                usage: wgpu::BufferUsages::COPY_SRC,
            });
            self.gpu.with_encoder(|enc| {
                enc.copy_buffer_to_buffer(&staging, 0, self.buf.raw(), self.offset, bytes.len() as u64)
            });
        } else {
            g.queue.write_buffer(self.buf.raw(), self.offset, bytes);
        }
        Ok(())
    }

    /// Read the values back as f32 (f16 is widened; u32 is an error). Submits pending work.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let bytes = self.gpu.read_bytes(self.binding())?;
        let n = self.len();
        Ok(match self.dtype {
            DType::F32 => bytemuck::cast_slice::<u8, f32>(&bytes)[..n].to_vec(),
            DType::F16 => bytemuck::cast_slice::<u8, half::f16>(&bytes)[..n].iter().map(|h| h.to_f32()).collect(),
            DType::U32 => return Err(Error::shape("Tensor::to_f32_vec", "tensor holds u32; use to_u32_vec")),
        })
    }

    /// Read the values back as u32. Submits pending work.
    pub fn to_u32_vec(&self) -> Result<Vec<u32>> {
        self.expect_dtype("Tensor::to_u32_vec", DType::U32)?;
        let bytes = self.gpu.read_bytes(self.binding())?;
        Ok(bytemuck::cast_slice::<u8, u32>(&bytes)[..self.len()].to_vec())
    }

    /// Read a single-element tensor as f32.
    pub fn scalar(&self) -> Result<f32> {
        Ok(self.to_f32_vec()?[0])
    }

    /// A view of `shape` starting at element `start` of this tensor, sharing its buffer. The
    /// byte offset must be a multiple of the adapter's storage offset alignment (256 at most).
    pub fn view(&self, start: usize, shape: &[usize]) -> Result<Tensor> {
        let n = numel(shape);
        if start + n > self.len() {
            return Err(Error::shape("Tensor::view", format!("[{start}, {}) is outside {:?}", start + n, self.shape)));
        }
        let offset = self.offset + (start * self.dtype.size()) as u64;
        let align = self.gpu.limits().min_storage_buffer_offset_alignment as u64;
        if !offset.is_multiple_of(align) {
            return Err(Error::shape("Tensor::view", format!("byte offset {offset} is not a multiple of {align}")));
        }
        Ok(Tensor { buf: self.buf.clone(), offset, shape: shape.to_vec(), dtype: self.dtype, gpu: self.gpu.clone() })
    }

    /// The same memory with another shape of the same number of elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.len() {
            return Err(Error::shape("Tensor::reshape", format!("{:?} to {shape:?} changes the size", self.shape)));
        }
        Ok(Tensor { shape: shape.to_vec(), ..self.clone() })
    }

    /// The storage binding for this tensor (size rounded up to 4 bytes).
    pub fn binding(&self) -> Binding<'_> {
        let bytes = (self.len() * self.dtype.size()).div_ceil(4) as u64 * 4;
        Binding { buffer: self.buf.raw(), offset: self.offset, size: bytes.max(4) }
    }

    /// The binding rounded up to 16 bytes, for shaders that read `array<vec4<f32>>`. The
    /// pool allocates whole 16-byte multiples, so the extra bytes exist (they are padding).
    pub fn binding_vec4(&self) -> Binding<'_> {
        let bytes = (self.len() * self.dtype.size()).div_ceil(16) as u64 * 16;
        let avail = self.buf.size - self.offset;
        Binding { buffer: self.buf.raw(), offset: self.offset, size: bytes.min(avail).max(16) }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        numel(&self.shape)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
    /// The last dimension (1 for a scalar).
    pub fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
    /// True when both tensors are the same range of the same buffer.
    pub fn same_memory(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf) && self.offset == other.offset
    }

    /// Error unless the dtype is `want`.
    pub fn expect_dtype(&self, op: &'static str, want: DType) -> Result<()> {
        if self.dtype != want {
            return Err(Error::shape(op, format!("expected {want:?}, got {:?} {:?}", self.dtype, self.shape)));
        }
        Ok(())
    }

    /// Error unless the shape is `want`.
    pub fn expect_shape(&self, op: &'static str, want: &[usize]) -> Result<()> {
        if self.shape != want {
            return Err(Error::shape(op, format!("expected shape {want:?}, got {:?}", self.shape)));
        }
        Ok(())
    }
}

fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    if len != numel(shape) {
        return Err(Error::shape(op, format!("{len} values do not fill shape {shape:?}")));
    }
    Ok(())
}
