//! Weights on disk as safetensors, the format `transformers` and PEFT read and write, so a plumb
//! checkpoint directory loads into Hugging Face tools unchanged and back. Reading is
//! memory-mapped; every tensor is checked for name, shape and dtype (f32, f16 and bf16 are
//! accepted and widened to f32). Writing goes to a temporary file that is renamed into place, so
//! a crash never leaves a half-written checkpoint under the real name.

use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// An open, memory-mapped safetensors file.
pub struct WeightFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
}

impl WeightFile {
    /// Map `path` and validate its header (offsets inside the file, known dtypes).
    pub fn open(path: impl AsRef<Path>) -> Result<WeightFile> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only; plumb never writes the file while it is mapped. Another
        // process truncating it underneath is the usual mmap caveat.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        SafeTensors::deserialize(&mmap).map_err(|e| Error::format(&path, format!("not a valid safetensors file: {e}")))?;
        Ok(WeightFile { path, mmap })
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.mmap).expect("validated in open")
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of all tensors in the file.
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.st().names().into_iter().map(String::from).collect();
        n.sort();
        n
    }

    /// True when the file holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.st().tensor(name).is_ok()
    }

    /// The shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.st().tensor(name).ok().map(|t| t.shape().to_vec())
    }

    /// The `__metadata__` map of the file.
    pub fn metadata(&self) -> HashMap<String, String> {
        SafeTensors::read_metadata(&self.mmap).ok().and_then(|(_, m)| m.metadata().clone()).unwrap_or_default()
    }

    /// Read `name` as f32, checking that its shape is `shape`.
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let st = self.st();
        let t = st.tensor(name).map_err(|_| {
            let mut have = self.names();
            have.truncate(8);
            Error::format(&self.path, format!("missing tensor `{name}` (the file has e.g. {})", have.join(", ")))
        })?;
        if t.shape() != shape {
            return Err(Error::format(
                &self.path,
                format!("tensor `{name}` has shape {:?}, the model expects {shape:?}", t.shape()),
            ));
        }
        let d = t.data();
        Ok(match t.dtype() {
            Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => d.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => d.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(Error::format(
                    &self.path,
                    format!("tensor `{name}` has dtype {other:?}; plumb reads F32, F16 and BF16"),
                ))
            }
        })
    }
}

/// Write f32 tensors `(name, shape, values)` to `path` as safetensors, atomically.
pub fn save_f32(path: impl AsRef<Path>, tensors: &[(String, Vec<usize>, Vec<f32>)], metadata: HashMap<String, String>) -> Result<()> {
    let path = path.as_ref();
    let mut views = Vec::with_capacity(tensors.len());
    for (name, shape, data) in tensors {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let v = TensorView::new(Dtype::F32, shape.clone(), bytes)
            .map_err(|e| Error::format(path, format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), v));
    }
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| Error::format(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Write `bytes` to `path` through `path.tmp`, fsync, then rename: readers see the old file or the
/// whole new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// `dir/name` -> `dir/name.tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}
