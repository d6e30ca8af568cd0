//! GGUF, llama.cpp's model file: a header, typed metadata (`general.architecture`,
//! `llama.block_count`, the tokenizer, the chat template, ...) and tensors in ggml's storage types,
//! aligned in one data section. This module reads versions 2 and 3 from a memory map: every
//! offset, count and size is checked against the file, and an error names the byte offset, key or
//! tensor it is about. Tensors are handed out as stored ([`StoredTensor`]: ggml type, shape, raw
//! bytes) for the GPU's quantized kernels, or dequantized to f32 on the CPU.
//!
//! - [`model`]: metadata to [`crate::model::ModelConfig`], tensors to Hugging Face names and
//!   layout (llama.cpp's q/k row permutation undone), loading into plumb's models;
//! - [`tokenizer`]: `tokenizer.ggml.*` to a [`crate::tokenizer::Tokenizer`];
//! - [`writer`]: writing GGUF files (LoRA adapters in llama.cpp's layout, f16 models).

pub mod model;
pub mod tokenizer;
pub mod types;
pub mod writer;

pub use types::{dequantize, GgmlType};

use crate::error::{Error, Result};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The four bytes every GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section and of each tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, when it is an integer type and not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// The value as a float (any number type).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64).or(match *self {
                Value::I8(v) => Some(v as f64),
                Value::I16(v) => Some(v as f64),
                Value::I32(v) => Some(v as f64),
                Value::I64(v) => Some(v as f64),
                _ => None,
            }),
        }
    }
    /// The string, when the value is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The boolean, when the value is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// The elements, when the value is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// GGUF's name of the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "uint8",
            Value::I8(_) => "int8",
            Value::U16(_) => "uint16",
            Value::I16(_) => "int16",
            Value::U32(_) => "uint32",
            Value::I32(_) => "int32",
            Value::U64(_) => "uint64",
            Value::I64(_) => "int64",
            Value::F32(_) => "float32",
            Value::F64(_) => "float64",
            Value::Bool(_) => "bool",
            Value::Str(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

/// Where one tensor lies in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Storage type.
    pub ty: GgmlType,
    /// Shape, outermost first (row-major, as PyTorch and safetensors write it): GGUF's `ne`
    /// reversed. `token_embd.weight` of SmolLM2 is [49152, 576].
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Bytes of the data.
    pub nbytes: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elems(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A tensor in its stored form: what the GPU's quantized upload takes. `data` holds whole rows of
/// `shape[last]` elements each (`ty`'s blocks never straddle rows).
#[derive(Clone, Debug)]
pub struct StoredTensor<'a> {
    /// Storage type.
    pub ty: GgmlType,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Raw little-endian bytes as ggml stores them (borrowed from the map, or owned after a row
    /// permutation).
    pub data: Cow<'a, [u8]>,
}

impl StoredTensor<'_> {
    /// Dequantize to f32 on the CPU.
    pub fn to_f32(&self) -> Vec<f32> {
        dequantize(self.ty, &self.data)
    }
}

/// An open, memory-mapped GGUF file with its metadata parsed.
pub struct GgufFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

/// A bounds-checked little-endian reader over the mapped bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, at: usize, msg: impl std::fmt::Display) -> Error {
        Error::format(self.path, format!("at byte offset {at}: {msg}"))
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.err(self.pos, format!("{what} needs {n} bytes but the file ends at {}", self.bytes.len())));
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
    /// A count that must fit what is left of the file at `min_each` bytes per item.
    fn count(&mut self, what: &str, min_each: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_each as u64) > left {
            return Err(self.err(at, format!("{what} {n} cannot fit in the {left} bytes left")));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let n = self.count(what, 1)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(at, format!("{what} is not UTF-8")))
    }
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        let at = self.pos;
        let mut fixed = |n: usize| self.take(n, key).map(|b| b.to_vec());
        Ok(match ty {
            0 => Value::U8(fixed(1)?[0]),
            1 => Value::I8(fixed(1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(fixed(2)?.try_into().expect("2"))),
            3 => Value::I16(i16::from_le_bytes(fixed(2)?.try_into().expect("2"))),
            4 => Value::U32(u32::from_le_bytes(fixed(4)?.try_into().expect("4"))),
            5 => Value::I32(i32::from_le_bytes(fixed(4)?.try_into().expect("4"))),
            6 => Value::F32(f32::from_le_bytes(fixed(4)?.try_into().expect("4"))),
            7 => match fixed(1)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(at, format!("key `{key}`: bool byte {b} is neither 0 nor 1"))),
            },
            8 => Value::Str(self.string(key)?),
            9 => {
                if depth > 0 {
                    return Err(self.err(at, format!("key `{key}`: arrays nested deeper than one level")));
                }
                let elem = self.u32(key)?;
                let n = self.count(&format!("key `{key}`: array length"), 1)?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(fixed(8)?.try_into().expect("8"))),
            11 => Value::I64(i64::from_le_bytes(fixed(8)?.try_into().expect("8"))),
            12 => Value::F64(f64::from_le_bytes(fixed(8)?.try_into().expect("8"))),
            other => return Err(self.err(at, format!("key `{key}`: unknown value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Map `path` and parse its header, metadata and tensor table.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: read-only map; plumb never writes a file it has mapped.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let (version, metadata, tensors) = parse(&mmap, &path)?;
        let index = metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(GgufFile { path, mmap, version, metadata, index, tensors, by_name })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The string under `key`; an error naming the key when it is missing or not a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            Some(Value::Str(s)) => Ok(s),
            Some(v) => Err(Error::format(&self.path, format!("key `{key}` is a {}, expected a string", v.type_name()))),
            None => Err(Error::format(&self.path, format!("missing key `{key}`"))),
        }
    }

    /// The non-negative integer under `key`; an error naming the key otherwise.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        match self.get(key) {
            Some(v) => v.as_u64().ok_or_else(|| {
                Error::format(&self.path, format!("key `{key}` is a {} ({v:?}), expected an unsigned integer", v.type_name()))
            }),
            None => Err(Error::format(&self.path, format!("missing key `{key}`"))),
        }
    }

    /// The number under `key`, if present; an error naming the key when it is not a number.
    pub fn get_f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::format(&self.path, format!("key `{key}` is a {}, expected a number", v.type_name()))),
            None => Ok(None),
        }
    }

    /// The table entry of tensor `name`.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// Tensor `name` in its stored form; an error naming it when absent.
    pub fn tensor(&self, name: &str) -> Result<StoredTensor<'_>> {
        let t = self.info(name).ok_or_else(|| {
            let have: Vec<&str> = self.tensors.iter().take(6).map(|t| t.name.as_str()).collect();
            Error::format(&self.path, format!("missing tensor `{name}` (the file has e.g. {})", have.join(", ")))
        })?;
        Ok(StoredTensor { ty: t.ty, shape: t.shape.clone(), data: Cow::Borrowed(&self.mmap[t.offset..t.offset + t.nbytes]) })
    }
}

/// Parse header, metadata and tensor infos; check every tensor's extent.
/// What [`parse`] reads: version, metadata, tensor table.
type Parsed = (u32, Vec<(String, Value)>, Vec<TensorInfo>);

fn parse(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let mut c = Cursor { bytes, pos: 0, path };
    let magic = c.take(4, "the magic `GGUF`")?;
    if magic != MAGIC {
        return Err(c.err(0, format!("not a GGUF file (starts with {magic:02x?}, expected `GGUF`)")));
    }
    let version = c.u32("the version")?;
    if version != 2 && version != 3 {
        let hint = if version.swap_bytes() == 3 || version.swap_bytes() == 2 { " (a big-endian file?)" } else { "" };
        return Err(c.err(4, format!("GGUF version {version}{hint}: plumb reads versions 2 and 3")));
    }
    let n_tensors = c.count("tensor count", 24)?;
    let n_kv = c.count("metadata count", 12)?;
    let mut metadata = Vec::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key #{i}"))?;
        let ty = c.u32(&format!("type of key `{key}`"))?;
        let v = c.value(ty, &key, 0)?;
        metadata.push((key, v));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => return Err(Error::format(path, format!("key `general.alignment` = {v:?}: expected a power of two"))),
        },
        None => DEFAULT_ALIGNMENT,
    };
    let mut raw = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&format!("name of tensor #{i}"))?;
        let at = c.pos;
        let n_dims = c.u32(&format!("tensor `{name}`: dimension count"))? as usize;
        if n_dims == 0 || n_dims > 4 {
            return Err(c.err(at, format!("tensor `{name}`: {n_dims} dimensions (ggml has 1 to 4)")));
        }
        let mut ne = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            ne.push(c.u64(&format!("tensor `{name}`: dimensions"))?);
        }
        let at = c.pos;
        let ty = GgmlType::from_id(c.u32(&format!("tensor `{name}`: type"))?)
            .map_err(|t| c.err(at, format!("tensor `{name}` has type {t}, which plumb does not read (it reads F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)")))?;
        let offset = c.u64(&format!("tensor `{name}`: offset"))?;
        raw.push((name, ne, ty, offset));
    }
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, ne, ty, offset) in raw {
        let bad = |msg: String| Error::format(path, format!("tensor `{name}`: {msg}"));
        let elems = ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|&e| e < (1 << 40));
        let Some(elems) = elems else { return Err(bad(format!("dimensions {ne:?} are too large"))) };
        if ne[0] % ty.block_elems() as u64 != 0 {
            return Err(bad(format!("row length {} is not a multiple of {}'s block of {}", ne[0], ty.name(), ty.block_elems())));
        }
        if offset % alignment != 0 {
            return Err(bad(format!("data offset {offset} is not aligned to {alignment}")));
        }
        let nbytes = ty.bytes_for(elems as usize).expect("rows are whole blocks");
        let start = data_start + offset;
        if start + nbytes as u64 > bytes.len() as u64 {
            return Err(bad(format!(
                "data at byte offset {start} + {nbytes} bytes runs past the end of the file ({} bytes)",
                bytes.len()
            )));
        }
        let shape = ne.iter().rev().map(|&d| d as usize).collect();
        tensors.push(TensorInfo { name, ty, shape, offset: start as usize, nbytes });
    }
    let mut seen = std::collections::HashSet::new();
    for t in &tensors {
        if !seen.insert(t.name.as_str()) {
            return Err(Error::format(path, format!("tensor `{}` appears twice", t.name)));
        }
    }
    Ok((version, metadata, tensors))
}
