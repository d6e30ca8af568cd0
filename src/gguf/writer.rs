//! Writing GGUF (version 3): metadata and tensors in the layout llama.cpp reads, to a temporary
//! file renamed into place. Used for LoRA adapters in llama.cpp's adapter layout
//! ([`crate::gguf::model::save_lora_gguf`]) and for whole models in f16, f32 or a base's own
//! quantized types (`plumb export`).

use super::{GgmlType, Value, DEFAULT_ALIGNMENT, MAGIC};
use crate::error::{Error, Result};
use crate::weights::write_atomic;
use std::path::Path;

/// A GGUF file being assembled in memory.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, GgmlType, Vec<usize>, Vec<u8>)>,
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::Str(s) => put_str(out, s),
        Value::Array(items) => {
            // An empty array is written as an array of strings.
            out.extend(items.first().map(value_type).unwrap_or(8).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i);
            }
        }
    }
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Add (or replace) metadata `key`.
    pub fn set(&mut self, key: &str, v: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => self.metadata.push((key.to_string(), v)),
        }
    }

    /// Add a tensor of shape `shape` (outermost first) whose bytes are already in `ty`'s layout.
    pub fn add_raw(&mut self, name: &str, ty: GgmlType, shape: &[usize], data: Vec<u8>) -> Result<()> {
        let n: usize = shape.iter().product();
        if shape.is_empty() || shape.len() > 4 || ty.bytes_for(n) != Some(data.len()) || !shape[shape.len() - 1].is_multiple_of(ty.block_elems()) {
            return Err(Error::shape("gguf writer", format!("tensor `{name}`: {} bytes do not hold {shape:?} in {}", data.len(), ty.name())));
        }
        if self.tensors.iter().any(|t| t.0 == name) {
            return Err(Error::shape("gguf writer", format!("tensor `{name}` added twice")));
        }
        self.tensors.push((name.to_string(), ty, shape.to_vec(), data));
        Ok(())
    }

    /// Add f32 values as `ty`: F32, F16, BF16, or quantized on the CPU to Q8_0, Q4_0, Q4_1
    /// (ggml's reference `quantize_row_*_ref`), Q4_K or Q6_K (see [`crate::ops::quant::codec`]);
    /// the last dimension must then be whole blocks.
    pub fn add_f32(&mut self, name: &str, ty: GgmlType, shape: &[usize], values: &[f32]) -> Result<()> {
        use crate::ops::quant::{quantize, StoredType};
        let data: Vec<u8> = match ty {
            GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            GgmlType::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
            GgmlType::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
            other => {
                let Some(kind) = StoredType::from_ggml_type(other.id()) else {
                    return Err(Error::config("gguf writer", format!("tensor `{name}`: plumb does not write {}", other.name())));
                };
                let k = shape.last().copied().unwrap_or(0);
                if k == 0 || !k.is_multiple_of(kind.block_elems()) || values.len() % k != 0 {
                    return Err(Error::shape("gguf writer", format!("tensor `{name}` {shape:?}: rows of {k} are not whole {} blocks of {}", other.name(), kind.block_elems())));
                }
                quantize(kind, values, values.len() / k, k)?
            }
        };
        self.add_raw(name, ty, shape, data)
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = DEFAULT_ALIGNMENT as usize;
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend(value_type(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0usize;
        for (name, ty, shape, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend((shape.len() as u32).to_le_bytes());
            for &d in shape.iter().rev() {
                out.extend((d as u64).to_le_bytes());
            }
            out.extend(ty.id().to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset = (offset + data.len()).div_ceil(align) * align;
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        for (_, _, _, data) in &self.tensors {
            out.extend(data);
            out.resize(out.len().div_ceil(align) * align, 0);
        }
        out
    }

    /// Write to `path` atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes())
    }
}
