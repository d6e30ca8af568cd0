//! The flat parameter store (after llm.c): every parameter lives in ONE f32 buffer and every
//! gradient in another, each tensor a 256-byte-aligned slice with zero padding between them.
//! One buffer means one optimizer dispatch, one `zero_grad` fill, one global gradient norm and
//! one readback for a checkpoint. Parameters that take weight decay are laid out first, so the
//! optimizer decays exactly the elements below [`ParamStore::decay_end`] without a mask buffer.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::tape::{Tape, Var};
use crate::tensor::{DType, Tensor};
use std::collections::HashMap;

/// Elements per alignment step: 256 bytes of f32 (the largest storage offset alignment wgpu allows).
pub const ALIGN_ELEMS: usize = 64;

/// One parameter on the host, for checkpoints: (name, shape, row-major values).
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// What to allocate for one parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Unique name, e.g. `"h.0.attn.c_attn.weight"`.
    pub name: String,
    /// Shape, e.g. `[768, 2304]`.
    pub shape: Vec<usize>,
    /// Whether AdamW applies weight decay (matrices yes; biases, norms and gains usually no).
    pub decay: bool,
}

impl ParamSpec {
    /// A spec from its parts.
    pub fn new(name: impl Into<String>, shape: &[usize], decay: bool) -> ParamSpec {
        ParamSpec { name: name.into(), shape: shape.to_vec(), decay }
    }
}

/// Where one parameter lives in the flat buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamEntry {
    /// The name it was declared with.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// First element in the flat buffers (a multiple of [`ALIGN_ELEMS`]).
    pub offset: usize,
    /// Whether it lies below `decay_end` (takes weight decay).
    pub decay: bool,
}

impl ParamEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// All parameters in one flat buffer, all gradients in another.
pub struct ParamStore {
    values: Tensor,
    grads: Tensor,
    entries: Vec<ParamEntry>,
    by_name: HashMap<String, usize>,
    decay_end: usize,
    numel: usize,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParamStore({} tensors, {} parameters)", self.entries.len(), self.numel)
    }
}

impl ParamStore {
    /// Lay out `specs` (decayed ones first, each group in the given order) and allocate both
    /// flat buffers, zero-filled (values and gradients).
    pub fn new(gpu: &Gpu, specs: &[ParamSpec]) -> Result<ParamStore> {
        const OP: &str = "ParamStore::new";
        if specs.is_empty() {
            return Err(Error::shape(OP, "no parameters given"));
        }
        let mut entries = Vec::with_capacity(specs.len());
        let mut by_name = HashMap::new();
        let mut offset = 0usize;
        let mut decay_end = 0usize;
        let ordered = specs.iter().filter(|s| s.decay).chain(specs.iter().filter(|s| !s.decay));
        for s in ordered {
            let n: usize = s.shape.iter().product();
            if s.name.is_empty() || n == 0 {
                return Err(Error::shape(OP, format!("parameter `{}` {:?} needs a name and at least one element", s.name, s.shape)));
            }
            if by_name.insert(s.name.clone(), entries.len()).is_some() {
                return Err(Error::shape(OP, format!("parameter `{}` is given twice", s.name)));
            }
            entries.push(ParamEntry { name: s.name.clone(), shape: s.shape.clone(), offset, decay: s.decay });
            offset += n.div_ceil(ALIGN_ELEMS) * ALIGN_ELEMS;
            if s.decay {
                decay_end = offset;
            }
        }
        let numel = entries.iter().map(ParamEntry::numel).sum();
        let values = Tensor::zeros(gpu, &[offset], DType::F32, "parameters")?;
        let grads = Tensor::zeros(gpu, &[offset], DType::F32, "gradients")?;
        Ok(ParamStore { values, grads, entries, by_name, decay_end, numel })
    }

    fn entry(&self, op: &'static str, name: &str) -> Result<&ParamEntry> {
        self.by_name
            .get(name)
            .map(|&i| &self.entries[i])
            .ok_or_else(|| Error::shape(op, format!("no parameter named `{name}`")))
    }

    /// The parameter `name` as a view into the flat value buffer.
    /// True when the store holds a parameter called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries().iter().any(|e| e.name == name)
    }

    pub fn value(&self, name: &str) -> Result<Tensor> {
        let e = self.entry("ParamStore::value", name)?;
        self.values.view(e.offset, &e.shape)
    }

    /// The gradient of `name` as a view into the flat gradient buffer.
    pub fn grad(&self, name: &str) -> Result<Tensor> {
        let e = self.entry("ParamStore::grad", name)?;
        self.grads.view(e.offset, &e.shape)
    }

    /// `name` as a parameter leaf on `tape`: backward adds its gradient into the flat buffer.
    pub fn var(&self, tape: &Tape, name: &str) -> Result<Var> {
        tape.param(self.value(name)?, self.grad(name)?)
    }

    /// Set every gradient (and the padding) to zero: one fill dispatch.
    pub fn zero_grad(&self) -> Result<()> {
        crate::ops::elementwise::fill(&self.grads, 0.0)
    }

    /// Upload the values of `name` (row-major, exactly its number of elements).
    pub fn set(&self, name: &str, data: &[f32]) -> Result<()> {
        let e = self.entry("ParamStore::set", name)?;
        if data.len() != e.numel() {
            return Err(Error::shape("ParamStore::set", format!("`{name}` {:?} needs {} values, got {}", e.shape, e.numel(), data.len())));
        }
        self.values.view(e.offset, &e.shape)?.write_f32(data)
    }

    /// Read the values of `name` back to the host.
    pub fn get(&self, name: &str) -> Result<Vec<f32>> {
        self.value(name)?.to_f32_vec()
    }

    /// Every parameter in layout order (decayed ones first).
    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    /// Number of real parameters (padding not counted).
    pub fn numel(&self) -> usize {
        self.numel
    }

    /// Length of the flat buffers (with padding).
    pub fn padded_len(&self) -> usize {
        self.values.len()
    }

    /// Flat elements `[0, decay_end)` take weight decay; the rest do not.
    pub fn decay_end(&self) -> usize {
        self.decay_end
    }

    /// The flat value buffer.
    pub fn values(&self) -> &Tensor {
        &self.values
    }

    /// The flat gradient buffer.
    pub fn grads(&self) -> &Tensor {
        &self.grads
    }

    /// Every parameter as (name, shape, values), in layout order: one readback (checkpoints).
    pub fn read_all(&self) -> Result<Vec<NamedTensor>> {
        let flat = self.values.to_f32_vec()?;
        Ok(self
            .entries
            .iter()
            .map(|e| (e.name.clone(), e.shape.clone(), flat[e.offset..e.offset + e.numel()].to_vec()))
            .collect())
    }

    /// Overwrite every parameter from (name, shape, values), in any order: one upload. Every
    /// parameter must be given exactly once, with its shape.
    pub fn write_all(&self, tensors: &[NamedTensor]) -> Result<()> {
        const OP: &str = "ParamStore::write_all";
        let mut flat = vec![0.0f32; self.values.len()];
        let mut seen = vec![false; self.entries.len()];
        for (name, shape, data) in tensors {
            let i = *self.by_name.get(name).ok_or_else(|| Error::shape(OP, format!("no parameter named `{name}`")))?;
            let e = &self.entries[i];
            if shape != &e.shape || data.len() != e.numel() {
                return Err(Error::shape(
                    OP,
                    format!("`{name}` is {:?} ({} values), given {shape:?} with {} values", e.shape, e.numel(), data.len()),
                ));
            }
            if std::mem::replace(&mut seen[i], true) {
                return Err(Error::shape(OP, format!("`{name}` is given twice")));
            }
            flat[e.offset..e.offset + data.len()].copy_from_slice(data);
        }
        let missing: Vec<&str> = self.entries.iter().zip(&seen).filter(|(_, s)| !**s).map(|(e, _)| e.name.as_str()).collect();
        if !missing.is_empty() {
            return Err(Error::shape(OP, format!("missing parameters: {}", missing.join(", "))));
        }
        self.values.write_f32(&flat)
    }
}
