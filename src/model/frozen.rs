//! A frozen base in stored form: the model's weight matrices as [`QuantTensor`]s (f16, bf16 or a
//! GGUF block type) instead of f32 slices of the parameter store. Under LoRA (or for a
//! reference / reward model at PPO time) the base never changes, so it is kept the way it is
//! stored on disk and dequantized inside the matmul and the embedding lookup
//! (`ops::quant`); no f32 copy of those matrices stays on the GPU. Norm gains and biases stay
//! f32 in a (much smaller) parameter store.

use crate::error::Result;
use crate::ops::quant::{QuantTensor, StoredType};
use crate::params::{ParamSpec, ParamStore};
use std::collections::HashMap;

/// Stored-form matrices by parameter name, e.g. `model.layers.0.mlp.up_proj.weight`, each
/// (out, in) as the quant kernels read it.
#[derive(Clone, Debug, Default)]
pub struct FrozenBase {
    weights: HashMap<String, QuantTensor>,
}

/// The type a row of `k` elements is stored in when `kind` was asked for: `kind` where the row
/// is a whole number of its blocks, else Q8_0 (rows of 32s) or f16, as llama.cpp falls back.
pub fn fitting_type(kind: StoredType, k: usize) -> StoredType {
    [kind, StoredType::Q8_0, StoredType::F16].into_iter().find(|t| k.is_multiple_of(t.block_elems())).unwrap_or(StoredType::F16)
}

impl FrozenBase {
    /// Add a stored-form matrix under its parameter name (a GGUF loader hands its tensors in
    /// here as they are).
    pub fn insert(&mut self, name: impl Into<String>, w: QuantTensor) {
        self.weights.insert(name.into(), w);
    }

    /// The stored-form matrix called `name`, if frozen.
    pub fn get(&self, name: &str) -> Option<&QuantTensor> {
        self.weights.get(name)
    }

    /// Number of frozen matrices.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// True when nothing is frozen.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Weights in the frozen matrices (their element count).
    pub fn numel(&self) -> usize {
        self.weights.values().map(|w| w.shape[0] * w.shape[1]).sum()
    }

    /// Bytes on the GPU, as stored.
    pub fn bytes(&self) -> usize {
        self.weights.values().map(|w| w.bytes()).sum()
    }

    /// Move the parameters `names` of `params` into stored form `kind` (see [`fitting_type`];
    /// those in `transposed` are stored (in, out) in `params`, GPT-2's Conv1D, and are
    /// transposed first), one tensor at a time through the host. Returns the frozen matrices and
    /// a new store holding every other parameter; the caller drops the old store.
    pub fn freeze(params: &ParamStore, names: &[String], transposed: &[String], kind: StoredType) -> Result<(FrozenBase, ParamStore)> {
        let gpu = params.gpu().clone();
        let mut frozen = FrozenBase::default();
        let mut rest = Vec::new();
        for e in params.entries() {
            if !names.contains(&e.name) || e.shape.len() != 2 {
                rest.push(ParamSpec { name: e.name.clone(), shape: e.shape.clone(), decay: e.decay });
                continue;
            }
            let data = params.get(&e.name)?;
            let (r, c) = (e.shape[0], e.shape[1]);
            let (data, shape) = if transposed.contains(&e.name) {
                let mut t = vec![0.0; data.len()];
                for i in 0..r {
                    for j in 0..c {
                        t[j * r + i] = data[i * c + j];
                    }
                }
                (t, [c, r])
            } else {
                (data, [r, c])
            };
            frozen.insert(e.name.clone(), QuantTensor::from_f32(&gpu, fitting_type(kind, shape[1]), shape, &data)?);
        }
        let store = ParamStore::new(&gpu, &rest)?;
        for s in &rest {
            store.set(&s.name, &params.get(&s.name)?)?;
        }
        Ok((frozen, store))
    }
}
