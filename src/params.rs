//! The flat parameter store (after llm.c): parameters live in flat f32 buffers and gradients
//! in matching ones, each tensor a 256-byte-aligned slice with zero padding between them.
//! A model that fits one storage binding gets ONE buffer of each: one optimizer dispatch, one
//! `zero_grad` fill, one global gradient norm and one readback for a checkpoint. A bigger model
//! gets as many *segments* as the adapter's binding limit ([`Gpu::max_binding_bytes`]) requires,
//! and a tensor bigger than one binding (a 151,936 x 896 embedding) is split by rows into
//! [`RowChunks`], each chunk a plain tensor no bigger than the limit (a multiple of 256 bytes,
//! apart from the last). Parameters that take weight decay are laid out first, so in every
//! segment the optimizer decays exactly the elements below that segment's `decay_end`.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::tape::{Tape, Var};
use crate::tensor::{DType, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

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

/// A tensor split by rows into chunks that each fit one storage binding: chunk `k` holds rows
/// `starts[k] .. starts[k] + chunks[k].shape()[0]` of the whole, with the same trailing shape.
/// Tensors that fit one binding are one chunk. Ops over a vocabulary-sized table (embedding
/// lookup and backward, the tied output head, the chunked vocabulary head) take these.
#[derive(Clone, Debug)]
pub struct RowChunks {
    chunks: Vec<Tensor>,
    starts: Vec<usize>,
}

impl RowChunks {
    /// Chunks in row order; every chunk has the same trailing dimensions.
    pub fn new(chunks: Vec<Tensor>) -> Result<RowChunks> {
        const OP: &str = "RowChunks::new";
        let first = chunks.first().ok_or_else(|| Error::shape(OP, "no chunks"))?;
        let tail = first.shape().get(1..).unwrap_or(&[]).to_vec();
        let mut starts = Vec::with_capacity(chunks.len());
        let mut rows = 0;
        for c in &chunks {
            if c.shape().is_empty() || c.shape()[1..] != tail[..] {
                return Err(Error::shape(OP, format!("chunk {:?} does not continue rows of (_, {tail:?})", c.shape())));
            }
            starts.push(rows);
            rows += c.shape()[0];
        }
        Ok(RowChunks { chunks, starts })
    }

    /// One chunk holding all of `t`.
    pub fn whole(t: Tensor) -> RowChunks {
        RowChunks { chunks: vec![t], starts: vec![0] }
    }

    /// The chunks in row order.
    pub fn tensors(&self) -> &[Tensor] {
        &self.chunks
    }

    /// First row of each chunk.
    pub fn starts(&self) -> &[usize] {
        &self.starts
    }

    /// Rows of the whole tensor.
    pub fn rows(&self) -> usize {
        self.starts.last().copied().unwrap_or(0) + self.chunks.last().map_or(0, |c| c.shape()[0])
    }

    /// The shape of the whole tensor.
    pub fn shape(&self) -> Vec<usize> {
        let mut s = self.chunks[0].shape().to_vec();
        s[0] = self.rows();
        s
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Never true (a `RowChunks` has at least one chunk); here for clippy.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The whole tensor when it is one chunk.
    pub fn single(&self) -> Option<&Tensor> {
        match &self.chunks[..] {
            [t] => Some(t),
            _ => None,
        }
    }
}

/// Rows per chunk when a tensor of `rows` x `cols` f32 values must be split to fit `limit`
/// bytes (a multiple of 256): as many as fit, rounded down so that each chunk is a whole number
/// of 256-byte alignment steps where the limit allows that.
pub fn chunk_rows(rows: usize, cols: usize, limit: u64) -> usize {
    let fit = (limit as usize / 4 / cols.max(1)).max(1);
    if fit >= rows {
        return rows;
    }
    // rows·cols must be a multiple of ALIGN_ELEMS: step = ALIGN_ELEMS / gcd(cols, ALIGN_ELEMS)
    // (when even `step` rows pass the limit, as many rows as fit: each slot is padded to the
    // alignment anyway, and a limit that is a multiple of 256 bytes still holds the padding)
    let step = ALIGN_ELEMS / gcd(cols, ALIGN_ELEMS);
    if fit < step { fit } else { fit / step * step }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One row range of a parameter, in one segment.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    /// Which segment (buffer) holds it.
    pub segment: usize,
    /// First element in that segment (a multiple of [`ALIGN_ELEMS`]).
    pub offset: usize,
    /// Rows of the parameter it holds (the whole first dimension when not split).
    pub rows: usize,
}

/// Where one parameter lives in the flat buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamEntry {
    /// The name it was declared with.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// First element in its (first) segment (a multiple of [`ALIGN_ELEMS`]).
    pub offset: usize,
    /// Whether it lies below its segment's `decay_end` (takes weight decay).
    pub decay: bool,
    /// Its row chunks in order: one slot unless it is bigger than one binding.
    pub slots: Vec<Slot>,
}

impl ParamEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements per row (the product of the trailing dimensions; 1 for a vector).
    pub fn row_len(&self) -> usize {
        self.shape.get(1..).map_or(1, |s| s.iter().product())
    }

    /// The shape of a slot of `rows` rows.
    fn slot_shape(&self, rows: usize) -> Vec<usize> {
        let mut s = self.shape.clone();
        s[0] = rows;
        s
    }
}

/// One flat buffer of parameters and its gradient buffer.
#[derive(Clone)]
pub struct Segment {
    /// The flat value buffer.
    pub values: Tensor,
    /// The flat gradient buffer (same length).
    pub grads: Tensor,
    /// Elements `[0, decay_end)` take weight decay; the rest do not.
    pub decay_end: usize,
}

struct Layout {
    entries: Vec<ParamEntry>,
    by_name: HashMap<String, usize>,
    numel: usize,
}

/// All parameters in flat buffers (one segment unless the binding limit needs more), all
/// gradients in matching ones. Cloning is cheap and shares the buffers.
#[derive(Clone)]
pub struct ParamStore {
    segments: Vec<Segment>,
    layout: Arc<Layout>,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParamStore({} tensors, {} parameters, {} segments)", self.layout.entries.len(), self.layout.numel, self.segments.len())
    }
}

/// The entries, the index by name, and (length, decay end) of each segment.
type Laid = (Vec<ParamEntry>, HashMap<String, usize>, Vec<(usize, usize)>);

/// Places the specs (decayed ones first) into segments of at most `limit` elements, splitting
/// tensors bigger than one segment by rows. Returns the entries and, per segment, its length
/// and decay end.
fn lay_out(specs: &[ParamSpec], limit: usize) -> Result<Laid> {
    const OP: &str = "ParamStore::new";
    let mut entries = Vec::with_capacity(specs.len());
    let mut by_name = HashMap::new();
    let mut segs: Vec<(usize, usize)> = vec![(0, 0)]; // (length, decay_end)
    let ordered = specs.iter().filter(|s| s.decay).chain(specs.iter().filter(|s| !s.decay));
    for s in ordered {
        let n: usize = s.shape.iter().product();
        if s.name.is_empty() || n == 0 {
            return Err(Error::shape(OP, format!("parameter `{}` {:?} needs a name and at least one element", s.name, s.shape)));
        }
        if by_name.insert(s.name.clone(), entries.len()).is_some() {
            return Err(Error::shape(OP, format!("parameter `{}` is given twice", s.name)));
        }
        let mut e = ParamEntry { name: s.name.clone(), shape: s.shape.clone(), offset: 0, decay: s.decay, slots: vec![] };
        let (rows, cols) = (s.shape[0], e.row_len());
        let per_chunk = chunk_rows(rows, cols, (limit * 4) as u64);
        let mut row = 0;
        while row < rows {
            let r = per_chunk.min(rows - row);
            let len = (r * cols).div_ceil(ALIGN_ELEMS) * ALIGN_ELEMS;
            if segs.last().expect("one segment").0 + len > limit {
                segs.push((0, 0));
            }
            let seg = segs.len() - 1;
            let (end, decay_end) = segs.last_mut().expect("one segment");
            e.slots.push(Slot { segment: seg, offset: *end, rows: r });
            *end += len;
            if s.decay {
                *decay_end = *end;
            }
            row += r;
        }
        e.offset = e.slots[0].offset;
        entries.push(e);
    }
    Ok((entries, by_name, segs))
}

impl ParamStore {
    /// Lay out `specs` (decayed ones first, each group in the given order) and allocate the
    /// flat buffers, zero-filled (values and gradients): as few segments as the device's
    /// [`Gpu::max_binding_bytes`] allows.
    pub fn new(gpu: &Gpu, specs: &[ParamSpec]) -> Result<ParamStore> {
        if specs.is_empty() {
            return Err(Error::shape("ParamStore::new", "no parameters given"));
        }
        let limit = (gpu.max_binding_bytes() / 4) as usize;
        let (entries, by_name, segs) = lay_out(specs, limit)?;
        let many = segs.len() > 1;
        let mut segments = Vec::with_capacity(segs.len());
        for (k, &(len, decay_end)) in segs.iter().enumerate() {
            let name = |what: &str| if many { format!("{what} (segment {k} of {})", segs.len()) } else { what.to_string() };
            let values = Tensor::zeros(gpu, &[len.max(ALIGN_ELEMS)], DType::F32, &name("parameters"))?;
            let grads = Tensor::zeros(gpu, &[len.max(ALIGN_ELEMS)], DType::F32, &name("gradients"))?;
            segments.push(Segment { values, grads, decay_end });
        }
        let numel = entries.iter().map(ParamEntry::numel).sum();
        Ok(ParamStore { segments, layout: Arc::new(Layout { entries, by_name, numel }) })
    }

    fn entry(&self, op: &'static str, name: &str) -> Result<&ParamEntry> {
        self.layout
            .by_name
            .get(name)
            .map(|&i| &self.layout.entries[i])
            .ok_or_else(|| Error::shape(op, format!("no parameter named `{name}`")))
    }

    /// True when the store holds a parameter called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.layout.by_name.contains_key(name)
    }

    /// The device the buffers live on.
    pub fn gpu(&self) -> &Gpu {
        self.segments[0].values.gpu()
    }

    fn slot_views(&self, e: &ParamEntry, grads: bool) -> Result<Vec<Tensor>> {
        e.slots
            .iter()
            .map(|s| {
                let seg = &self.segments[s.segment];
                (if grads { &seg.grads } else { &seg.values }).view(s.offset, &e.slot_shape(s.rows))
            })
            .collect()
    }

    fn whole(&self, op: &'static str, name: &str, grads: bool) -> Result<Tensor> {
        let e = self.entry(op, name)?;
        if e.slots.len() > 1 {
            return Err(Error::shape(op, format!(
                "`{name}` {:?} is split into {} row chunks (it is bigger than one storage binding of {} bytes); \
                 use the chunked accessors",
                e.shape,
                e.slots.len(),
                self.gpu().max_binding_bytes()
            )));
        }
        Ok(self.slot_views(e, grads)?.remove(0))
    }

    /// The parameter `name` as a view into its value buffer (an error for a tensor split into
    /// row chunks: see [`ParamStore::value_chunks`]).
    pub fn value(&self, name: &str) -> Result<Tensor> {
        self.whole("ParamStore::value", name, false)
    }

    /// The gradient of `name` as a view into its gradient buffer.
    pub fn grad(&self, name: &str) -> Result<Tensor> {
        self.whole("ParamStore::grad", name, true)
    }

    /// The parameter `name` as row chunks (one chunk unless it is bigger than one binding).
    pub fn value_chunks(&self, name: &str) -> Result<RowChunks> {
        RowChunks::new(self.slot_views(self.entry("ParamStore::value_chunks", name)?, false)?)
    }

    /// The gradient of `name` as row chunks matching [`ParamStore::value_chunks`].
    pub fn grad_chunks(&self, name: &str) -> Result<RowChunks> {
        RowChunks::new(self.slot_views(self.entry("ParamStore::grad_chunks", name)?, true)?)
    }

    /// `name` as a parameter leaf on `tape`: backward adds its gradient into the flat buffer.
    pub fn var(&self, tape: &Tape, name: &str) -> Result<Var> {
        tape.param(self.value(name)?, self.grad(name)?)
    }

    /// `name` as one parameter leaf per row chunk.
    pub fn chunk_vars(&self, tape: &Tape, name: &str) -> Result<Vec<Var>> {
        let (v, g) = (self.value_chunks(name)?, self.grad_chunks(name)?);
        v.tensors().iter().zip(g.tensors()).map(|(v, g)| tape.param(v.clone(), g.clone())).collect()
    }

    /// Give the gradient buffers back (a frozen base under LoRA needs none: that is one more
    /// copy of the model's size). From now on `grad`, `var` and the optimizer fail on this store
    /// until [`ParamStore::restore_grads`].
    pub fn release_grads(&mut self) -> Result<()> {
        for s in &mut self.segments {
            s.grads = Tensor::zeros(s.values.gpu(), &[ALIGN_ELEMS], DType::F32, "released gradients")?;
        }
        Ok(())
    }

    /// Zeroed gradient buffers again after [`ParamStore::release_grads`] (no-op otherwise).
    pub fn restore_grads(&mut self) -> Result<()> {
        for s in &mut self.segments {
            if s.grads.len() != s.values.len() {
                s.grads = Tensor::zeros(s.values.gpu(), s.values.shape(), DType::F32, "gradients")?;
            }
        }
        Ok(())
    }

    /// Set every gradient (and the padding) to zero: one fill dispatch per segment.
    pub fn zero_grad(&self) -> Result<()> {
        self.segments.iter().try_for_each(|s| crate::gpu::linear::fill(&s.grads, 0.0))
    }

    /// Upload the values of `name` (row-major, exactly its number of elements).
    pub fn set(&self, name: &str, data: &[f32]) -> Result<()> {
        let e = self.entry("ParamStore::set", name)?;
        if data.len() != e.numel() {
            return Err(Error::shape("ParamStore::set", format!("`{name}` {:?} needs {} values, got {}", e.shape, e.numel(), data.len())));
        }
        let mut at = 0;
        for t in self.slot_views(e, false)? {
            t.write_f32(&data[at..at + t.len()])?;
            at += t.len();
        }
        Ok(())
    }

    /// Read the values of `name` back to the host.
    pub fn get(&self, name: &str) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for t in self.slot_views(self.entry("ParamStore::get", name)?, false)? {
            out.extend(t.to_f32_vec()?);
        }
        Ok(out)
    }

    /// Every parameter in layout order (decayed ones first).
    pub fn entries(&self) -> &[ParamEntry] {
        &self.layout.entries
    }

    /// Number of real parameters (padding not counted).
    pub fn numel(&self) -> usize {
        self.layout.numel
    }

    /// Length of all flat buffers together (with padding).
    pub fn padded_len(&self) -> usize {
        self.segments.iter().map(|s| s.values.len()).sum()
    }

    /// The segments (one flat value and gradient buffer each), in layout order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Flat elements `[0, decay_end)` of the first segment take weight decay (with one segment:
    /// of the store); see [`Segment::decay_end`].
    pub fn decay_end(&self) -> usize {
        self.segments[0].decay_end
    }

    /// The first segment's flat value buffer: the whole store when it fits one binding.
    pub fn values(&self) -> &Tensor {
        &self.segments[0].values
    }

    /// The first segment's flat gradient buffer: all gradients when the store fits one binding.
    pub fn grads(&self) -> &Tensor {
        &self.segments[0].grads
    }

    /// Every parameter as (name, shape, values), in layout order: one readback per segment.
    pub fn read_all(&self) -> Result<Vec<NamedTensor>> {
        let flat: Vec<Vec<f32>> = self.segments.iter().map(|s| s.values.to_f32_vec()).collect::<Result<_>>()?;
        Ok(self
            .layout
            .entries
            .iter()
            .map(|e| {
                let mut data = Vec::with_capacity(e.numel());
                for s in &e.slots {
                    data.extend_from_slice(&flat[s.segment][s.offset..s.offset + s.rows * e.row_len()]);
                }
                (e.name.clone(), e.shape.clone(), data)
            })
            .collect())
    }

    /// Overwrite every parameter from (name, shape, values), in any order: one upload per
    /// segment. Every parameter must be given exactly once, with its shape.
    pub fn write_all(&self, tensors: &[NamedTensor]) -> Result<()> {
        const OP: &str = "ParamStore::write_all";
        let mut flat: Vec<Vec<f32>> = self.segments.iter().map(|s| vec![0.0f32; s.values.len()]).collect();
        let mut seen = vec![false; self.layout.entries.len()];
        for (name, shape, data) in tensors {
            let i = *self.layout.by_name.get(name).ok_or_else(|| Error::shape(OP, format!("no parameter named `{name}`")))?;
            let e = &self.layout.entries[i];
            if shape != &e.shape || data.len() != e.numel() {
                return Err(Error::shape(
                    OP,
                    format!("`{name}` is {:?} ({} values), given {shape:?} with {} values", e.shape, e.numel(), data.len()),
                ));
            }
            if std::mem::replace(&mut seen[i], true) {
                return Err(Error::shape(OP, format!("`{name}` is given twice")));
            }
            let mut at = 0;
            for s in &e.slots {
                let n = s.rows * e.row_len();
                flat[s.segment][s.offset..s.offset + n].copy_from_slice(&data[at..at + n]);
                at += n;
            }
        }
        let missing: Vec<&str> =
            self.layout.entries.iter().zip(&seen).filter(|(_, s)| !**s).map(|(e, _)| e.name.as_str()).collect();
        if !missing.is_empty() {
            return Err(Error::shape(OP, format!("missing parameters: {}", missing.join(", "))));
        }
        self.segments.iter().zip(&flat).try_for_each(|(s, f)| s.values.write_f32(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_rows_fit_the_limit_and_keep_alignment() {
        for (rows, cols, limit) in [(151_936usize, 896usize, 128u64 << 20), (50257, 768, 4 << 20), (1000, 7, 4096), (10, 3, 1 << 20)] {
            let r = chunk_rows(rows, cols, limit);
            assert!(r >= 1 && r <= rows);
            if r < rows {
                assert!((r * cols * 4) as u64 <= limit, "{rows}x{cols}: {r} rows pass {limit}");
                if limit >= 1 << 20 {
                    assert_eq!((r * cols) % ALIGN_ELEMS, 0, "{rows}x{cols}: {r} rows break the alignment");
                }
            }
        }
    }

    #[test]
    fn layout_splits_big_tensors_and_opens_segments() {
        let specs = vec![ParamSpec::new("emb", &[100, 10], true), ParamSpec::new("w", &[8, 8], true), ParamSpec::new("b", &[8], false)];
        // 256 elements per segment: emb (1000 elements) splits into chunks of 25 rows
        let (entries, _, segs) = lay_out(&specs, 256).unwrap();
        let emb = &entries[0];
        assert!(emb.slots.len() > 1);
        assert_eq!(emb.slots.iter().map(|s| s.rows).sum::<usize>(), 100);
        for &(len, decay_end) in &segs {
            assert!(len <= 256 && decay_end <= len);
        }
        let b = entries.iter().find(|e| e.name == "b").unwrap();
        assert!(b.slots[0].offset >= segs[b.slots[0].segment].1, "undecayed b lies past its segment's decay end");
    }
}
