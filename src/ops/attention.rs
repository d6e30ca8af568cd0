//! Fused multi-head attention, flash-style: causal or not, grouped-query (Hq % Hkv == 0), with an
//! optional key padding mask, in the "BTHD" layout a Linear layer produces after a plain reshape
//! (q (B, T, Hq, D), k and v (B, S, Hkv, D)). The forward streams keys through an online softmax
//! and saves only the per-row log-sum-exp; the backward rebuilds the probabilities from it in
//! three deterministic kernels (row stats, dq with a thread per query row, dk/dv with a thread
//! per key row). No T x S matrix is ever stored, and no atomics are used.
//!
//! Kernels address q, k, v and out through (element offset, token stride, batch stride), so
//! GPT-2's fused c_attn output is bound as q, k and v at once ([`attention_fused_qkv`]) and a
//! [`KvCache`] allocated for `max_len` tokens is read up to its current length. The head dim must
//! be a multiple of 4 (vec4 loads), at most 128.
//!
//! Variants. `KernelVariant::Register` (CPU adapters): one thread per query row (forward, dq) or
//! key row (dk/dv), accumulators in private arrays, no workgroup memory, no barriers; sequences
//! are read from texture copies (see `textures`), or from the buffers where a texture would not
//! fit or would not pay (fewer than four query rows per kv head). Where subgroups are exactly
//! 8 consecutive lanes (lavapipe), the texture-fed kernels take their forms in `subgroup.wgsl`:
//! the 8 lanes are 8 neighbouring rows that need the same key (query) rows, so each lane fetches
//! one of the next eight and `subgroupBroadcast` shares them, an eighth of the texel fetches (a
//! W2 step's attention went from 226 to ~90 ms on lavapipe). `KernelVariant::Tiled` (real
//! GPUs): the forward stages key/value tiles in workgroup memory (forward_tiled.wgsl); the
//! backward runs the same per-row kernels reading the buffers.

use crate::error::{Error, Result};
use crate::gpu::{Kernel, KernelVariant, ShaderSource};
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};

mod kv_cache;
mod textures;
pub use kv_cache::KvCache;
use textures::{dummy_texture, new_texture, pack_sequence, SeqTexture};

static FORWARD: ShaderSource = shader!("attention/forward.wgsl");
static PACK: ShaderSource = shader!("attention/pack.wgsl");
static FORWARD_TILED: ShaderSource = shader!("attention/forward_tiled.wgsl");
static BACKWARD_STATS: ShaderSource = shader!("attention/backward_stats.wgsl");
static BACKWARD_DQ: ShaderSource = shader!("attention/backward_dq.wgsl");
static BACKWARD_DKV: ShaderSource = shader!("attention/backward_dkv.wgsl");
static KV_CACHE: ShaderSource = shader!("attention/kv_cache.wgsl");
static SUBGROUP: ShaderSource = shader!("attention/subgroup.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[
    &FORWARD,
    &FORWARD_TILED,
    &PACK,
    &BACKWARD_STATS,
    &BACKWARD_DQ,
    &BACKWARD_DKV,
    &KV_CACHE,
    &SUBGROUP,
];

/// The largest head dimension the kernels hold in registers.
pub const MAX_HEAD_DIM: usize = 128;
/// Query rows per workgroup of the workgroup-memory forward (forward_tiled.wgsl).
const TILED_WG: u32 = 64;
/// The lse written for a query row that sees no key (a stand-in for -infinity).
pub const LSE_NO_KEYS: f32 = -3.0e38;

/// Options of one attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionConfig {
    /// Key s is visible to query t only if s <= q_offset + t.
    pub causal: bool,
    /// Multiplies q.k before the softmax; None means 1/sqrt(D).
    pub scale: Option<f32>,
    /// Absolute position of query row 0 (for causal masking against a longer key sequence, as
    /// with a KV cache). 0 when queries and keys are the same sequence.
    pub q_offset: usize,
}

impl Default for AttentionConfig {
    fn default() -> Self {
        AttentionConfig { causal: true, scale: None, q_offset: 0 }
    }
}

/// Where a (B, T, heads, D) sequence lives in its buffer, in elements: (offset of batch 0 token 0
/// head 0, token stride, batch stride). Heads are contiguous rows of D inside a token.
#[derive(Clone, Copy, Debug)]
struct Layout {
    off: usize,
    tstride: usize,
    bstride: usize,
}

impl Layout {
    /// A dense (B, T, heads, D) tensor.
    fn dense(len: usize, row: usize) -> Layout {
        Layout { off: 0, tstride: row, bstride: len * row }
    }
}

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug)]
struct Dims {
    batch: usize,
    q_len: usize,
    kv_len: usize,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
}

/// The uniform every attention kernel reads (mirrors `struct Params` in the shaders).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    q_len: u32,
    kv_len: u32,
    n_head: u32,
    n_kv_head: u32,
    causal: u32,
    q_offset: u32,
    has_mask: u32,
    scale: f32,
    mask_stride: u32,
    q: [u32; 3],
    k: [u32; 3],
    v: [u32; 3],
    o: [u32; 3],
    head_chunks: u32,
    _pad: u32,
}

/// Everything the kernels need to find their inputs: sizes, options, layouts, mask.
struct Call<'a> {
    dims: Dims,
    cfg: AttentionConfig,
    q: (&'a Tensor, Layout),
    k: (&'a Tensor, Layout),
    v: (&'a Tensor, Layout),
    /// The (B, >= S) u32 mask and its row stride.
    mask: Option<(&'a Tensor, usize)>,
    /// Layout of out and dout.
    o: Layout,
}

fn u32_of(op: &'static str, x: usize) -> Result<u32> {
    u32::try_from(x).map_err(|_| Error::shape(op, format!("{x} does not fit the kernels' 32-bit indices")))
}

impl Call<'_> {
    fn params(&self, op: &'static str) -> Result<Params> {
        let d = self.dims;
        let lay = |l: Layout| -> Result<[u32; 3]> { Ok([u32_of(op, l.off)?, u32_of(op, l.tstride)?, u32_of(op, l.bstride)?]) };
        // Every index a kernel forms stays below the largest element count of a bound buffer.
        for t in [self.q.0, self.k.0, self.v.0] {
            u32_of(op, t.len() + MAX_HEAD_DIM)?;
        }
        u32_of(op, d.batch * d.n_head * d.q_len * d.head_dim + MAX_HEAD_DIM)?;
        Ok(Params {
            batch: u32_of(op, d.batch)?,
            q_len: u32_of(op, d.q_len)?,
            kv_len: u32_of(op, d.kv_len)?,
            n_head: u32_of(op, d.n_head)?,
            n_kv_head: u32_of(op, d.n_kv_head)?,
            causal: self.cfg.causal as u32,
            q_offset: u32_of(op, self.cfg.q_offset)?,
            has_mask: self.mask.is_some() as u32,
            scale: self.cfg.scale.unwrap_or(1.0 / (d.head_dim as f32).sqrt()),
            mask_stride: u32_of(op, self.mask.map_or(0, |m| m.1))?,
            q: lay(self.q.1)?,
            k: lay(self.k.1)?,
            v: lay(self.v.1)?,
            o: lay(self.o)?,
            head_chunks: (d.head_dim / 4) as u32,
            _pad: 0,
        })
    }

    /// The mask binding, or q's buffer as a stand-in the kernel never reads (has_mask = 0).
    fn mask_tensor(&self) -> &Tensor {
        self.mask.map_or(self.q.0, |m| m.0)
    }

    fn consts(&self, textures: bool) -> [(&'static str, f64); 2] {
        [("HEAD_DIM", self.dims.head_dim as f64), ("FROM_TEXTURE", textures as u32 as f64)]
    }

    /// Textures mirroring q, k and v for the texture-fed register kernels (q, k and v inside one
    /// fused buffer share one), or None where the adapter's texture limits are too small.
    fn pack_qkv(&self) -> Result<Option<[SeqTexture; 3]>> {
        let d = self.dims;
        let q = pack_sequence(self.q.0, self.q.1, d.batch, d.q_len)?;
        let fused = self.k.0.same_memory(self.q.0) && self.k.1.tstride == self.q.1.tstride && self.k.1.bstride == self.q.1.bstride;
        let k = if fused { q.clone() } else { pack_sequence(self.k.0, self.k.1, d.batch, d.kv_len)? };
        let v = if fused { q.clone() } else { pack_sequence(self.v.0, self.v.1, d.batch, d.kv_len)? };
        Ok(match (q, k, v) {
            (Some(q), Some(k), Some(v)) => Some([q, k, v]),
            _ => None,
        })
    }

    /// Record the forward: writes out (in layout `self.o`) and lse (B, Hq, T). `kv_tex` are
    /// textures already holding k and v (a KV cache's).
    fn forward(&self, out: &Tensor, lse: &Tensor, kv_tex: Option<&[SeqTexture; 2]>) -> Result<()> {
        let gpu = out.gpu();
        let p = self.params("attention_forward")?;
        let d = self.dims;
        let groups = gpu.groups_1d(d.batch * d.n_head * d.q_len, 64);
        if gpu.variant() == KernelVariant::Tiled {
            let consts = [("HEAD_DIM", d.head_dim as f64), ("WG", TILED_WG as f64)];
            let groups = [d.q_len.div_ceil(TILED_WG as usize) as u32, d.n_head as u32, d.batch as u32];
            let binds = [self.q.0.binding(), self.k.0.binding(), self.v.0.binding(), self.mask_tensor().binding(), out.binding(), lse.binding()];
            return gpu.dispatch(&Kernel::new(&FORWARD_TILED, "forward").with(&consts), bytemuck::bytes_of(&p), &binds, groups);
        }
        // Packing pays off once each key row is read by a few query rows (or is packed already).
        let group = d.n_head / d.n_kv_head;
        let textures = match kv_tex {
            Some([k, v]) => pack_sequence(self.q.0, self.q.1, d.batch, d.q_len)?.map(|q| [q, k.clone(), v.clone()]),
            None if d.q_len * group >= 4 => self.pack_qkv()?,
            None => None,
        };
        if let (Some([q, k, v]), true) = (&textures, gpu.subgroup_kernels()) {
            let groups = gpu.groups_1d(d.batch * d.n_head * d.q_len.next_multiple_of(8), 64);
            return gpu.dispatch_bound(
                &Kernel::new(&SUBGROUP, "forward").with(&[("HEAD_DIM", d.head_dim as f64)]),
                bytemuck::bytes_of(&p),
                &[(1, &q.view), (2, &k.view), (3, &v.view)],
                &[(6, self.mask_tensor().binding()), (7, out.binding_vec4()), (9, lse.binding())],
                groups,
            );
        }
        let dummy;
        let views: [&wgpu::TextureView; 3] = match &textures {
            Some([q, k, v]) => [&q.view, &k.view, &v.view],
            None => {
                dummy = dummy_texture(gpu);
                [&dummy, &dummy, &dummy]
            }
        };
        let binds = [
            self.q.0.binding_vec4(),
            self.k.0.binding_vec4(),
            self.v.0.binding_vec4(),
            self.mask_tensor().binding(),
            out.binding_vec4(),
            lse.binding(),
        ];
        let consts = self.consts(textures.is_some());
        gpu.dispatch_with_textures(&Kernel::new(&FORWARD, "forward").with(&consts), bytemuck::bytes_of(&p), &views, &binds, groups)
    }

    /// Record the three backward kernels. dq, dk, dv are written in q's, k's and v's layouts
    /// (they may all be the same fused buffer).
    fn backward(&self, out: &Tensor, lse: &Tensor, dout: &Tensor, dq: &Tensor, dk: &Tensor, dv: &Tensor) -> Result<()> {
        let gpu = out.gpu();
        let p = self.params("attention_backward")?;
        let params = bytemuck::bytes_of(&p);
        let d = self.dims;
        // Textures on CPU adapters: every k and v row is read by each query row and vice versa.
        let mut textures = None;
        if gpu.variant() == KernelVariant::Register {
            if let (Some(qkv), Some(dout_tex), Some(stats_tex)) = (
                self.pack_qkv()?,
                pack_sequence(dout, self.o, d.batch, d.q_len)?,
                new_texture(gpu, d.q_len, d.n_head, d.batch)?,
            ) {
                textures = Some((qkv, dout_tex, stats_tex));
            }
        }
        let consts = self.consts(textures.is_some());
        let dummy = dummy_texture(gpu);
        // D_i = rowsum(out * dout), stored with lse_i.
        let stats_shape = if textures.is_some() { vec![4] } else { vec![d.batch, d.n_head, d.q_len, 2] };
        let stats = Tensor::empty(gpu, &stats_shape, DType::F32, "attention row stats")?;
        let stats_target = textures.as_ref().map_or(&dummy, |t| &t.2.view);
        gpu.dispatch_with_textures(
            &Kernel::new(&BACKWARD_STATS, "row_stats").with(&consts),
            params,
            &[stats_target],
            &[out.binding_vec4(), dout.binding_vec4(), lse.binding(), stats.binding()],
            gpu.groups_1d(d.batch * d.q_len * d.n_head, 64),
        )?;
        let views: [&wgpu::TextureView; 5] = match &textures {
            Some(([q, k, v], o, st)) => [&q.view, &k.view, &v.view, &o.view, &st.view],
            None => [&dummy, &dummy, &dummy, &dummy, &dummy],
        };
        if textures.is_some() && gpu.subgroup_kernels() {
            let consts = [("HEAD_DIM", d.head_dim as f64)];
            let mask = self.mask_tensor().binding();
            let views: Vec<(u32, &wgpu::TextureView)> = views.iter().enumerate().map(|(i, v)| (i as u32 + 1, *v)).collect();
            gpu.dispatch_bound(
                &Kernel::new(&SUBGROUP, "backward_dq").with(&consts),
                params,
                &views,
                &[(6, mask), (7, dq.binding_vec4())],
                gpu.groups_1d(d.batch * d.n_head * d.q_len.next_multiple_of(8), 64),
            )?;
            return gpu.dispatch_bound(
                &Kernel::new(&SUBGROUP, "backward_dkv").with(&consts),
                params,
                &views,
                &[(6, mask), (7, dk.binding_vec4()), (8, dv.binding_vec4())],
                gpu.groups_1d(d.batch * d.n_kv_head * d.kv_len.next_multiple_of(8), 64),
            );
        }
        let stats_buf = if textures.is_some() { lse.binding() } else { stats.binding() };
        let reads = [
            self.q.0.binding_vec4(),
            self.k.0.binding_vec4(),
            self.v.0.binding_vec4(),
            dout.binding_vec4(),
            stats_buf,
            self.mask_tensor().binding(),
        ];
        let mut binds = reads.to_vec();
        binds.push(dq.binding_vec4());
        gpu.dispatch_with_textures(
            &Kernel::new(&BACKWARD_DQ, "backward_dq").with(&consts),
            params,
            &views,
            &binds,
            gpu.groups_1d(d.batch * d.n_head * d.q_len, 64),
        )?;
        let mut binds = reads.to_vec();
        binds.extend([dk.binding_vec4(), dv.binding_vec4()]);
        gpu.dispatch_with_textures(
            &Kernel::new(&BACKWARD_DKV, "backward_dkv").with(&consts),
            params,
            &views,
            &binds,
            gpu.groups_1d(d.batch * d.n_kv_head * d.kv_len, 64),
        )
    }
}


fn check_f32(op: &'static str, name: &str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::shape(op, format!("{name} must be f32, is {:?}", t.dtype())));
    }
    Ok(())
}

fn check_sizes(op: &'static str, d: &Dims) -> Result<()> {
    if d.batch == 0 || d.q_len == 0 || d.kv_len == 0 || d.n_head == 0 || d.n_kv_head == 0 || d.head_dim == 0 {
        return Err(Error::shape(op, format!("every size must be at least 1, got {d:?}")));
    }
    if d.head_dim > MAX_HEAD_DIM || !d.head_dim.is_multiple_of(4) {
        return Err(Error::shape(op, format!("head dim {} is not supported: it must be a multiple of 4, at most {MAX_HEAD_DIM}", d.head_dim)));
    }
    if !d.n_head.is_multiple_of(d.n_kv_head) {
        return Err(Error::shape(op, format!("{} query heads is not a multiple of {} kv heads", d.n_head, d.n_kv_head)));
    }
    Ok(())
}

/// Check q (B, T, Hq, D), k and v (B, S, Hkv, D); returns the sizes.
fn dims_of(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Dims> {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        check_f32(op, name, t)?;
        if t.shape().len() != 4 {
            return Err(Error::shape(op, format!("{name} must be (B, T, heads, D), got {:?}", t.shape())));
        }
    }
    let (qs, ks) = (q.shape(), k.shape());
    if v.shape() != ks {
        return Err(Error::shape(op, format!("k {ks:?} and v {:?} differ", v.shape())));
    }
    if ks[0] != qs[0] || ks[3] != qs[3] {
        return Err(Error::shape(op, format!("q {qs:?} and k {ks:?} differ in batch or head dim")));
    }
    let d = Dims { batch: qs[0], q_len: qs[1], kv_len: ks[1], n_head: qs[2], n_kv_head: ks[2], head_dim: qs[3] };
    check_sizes(op, &d)?;
    Ok(d)
}

/// Check a key mask: u32 (B, >= S); returns it with its row stride.
fn mask_of<'a>(op: &'static str, mask: Option<&'a Tensor>, d: &Dims, exact: bool) -> Result<Option<(&'a Tensor, usize)>> {
    let Some(m) = mask else { return Ok(None) };
    if m.dtype() != DType::U32 {
        return Err(Error::shape(op, format!("key_mask must be u32, is {:?}", m.dtype())));
    }
    let s = m.shape();
    let fits = s.len() == 2 && s[0] == d.batch && (s[1] == d.kv_len || (!exact && s[1] > d.kv_len));
    if !fits {
        return Err(Error::shape(op, format!("key_mask must be ({}, {}), got {s:?}", d.batch, d.kv_len)));
    }
    Ok(Some((m, s[1])))
}

/// Attention forward on q (B, T, Hq, D), k and v (B, S, Hkv, D). Returns out (B, T, Hq, D) and
/// lse (B, Hq, T), the log-sum-exp of each row's scaled, masked scores ([`LSE_NO_KEYS`] for a row
/// that sees no key; its output is 0). `key_mask`: u32 (B, S), 1 = attend, 0 = padding.
pub fn attention_forward(q: &Tensor, k: &Tensor, v: &Tensor, key_mask: Option<&Tensor>, cfg: &AttentionConfig) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention_forward";
    let d = dims_of(OP, q, k, v)?;
    let (qrow, krow) = (d.n_head * d.head_dim, d.n_kv_head * d.head_dim);
    let call = Call {
        dims: d,
        cfg: *cfg,
        q: (q, Layout::dense(d.q_len, qrow)),
        k: (k, Layout::dense(d.kv_len, krow)),
        v: (v, Layout::dense(d.kv_len, krow)),
        mask: mask_of(OP, key_mask, &d, true)?,
        o: Layout::dense(d.q_len, qrow),
    };
    let out = Tensor::empty(q.gpu(), q.shape(), DType::F32, "attention out")?;
    let lse = Tensor::empty(q.gpu(), &[d.batch, d.n_head, d.q_len], DType::F32, "attention lse")?;
    call.forward(&out, &lse, None)?;
    Ok((out, lse))
}

/// Attention backward: from the forward's inputs, its `out` and `lse`, and `dout` (shaped like
/// out), returns (dq, dk, dv) shaped like q, k, v. Deterministic (no atomics); rows that saw no
/// key get zero gradients.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    key_mask: Option<&Tensor>,
    cfg: &AttentionConfig,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward";
    let d = dims_of(OP, q, k, v)?;
    for (name, t) in [("out", out), ("dout", dout)] {
        check_f32(OP, name, t)?;
        t.expect_shape(OP, q.shape())?;
    }
    check_f32(OP, "lse", lse)?;
    lse.expect_shape(OP, &[d.batch, d.n_head, d.q_len])?;
    let (qrow, krow) = (d.n_head * d.head_dim, d.n_kv_head * d.head_dim);
    let call = Call {
        dims: d,
        cfg: *cfg,
        q: (q, Layout::dense(d.q_len, qrow)),
        k: (k, Layout::dense(d.kv_len, krow)),
        v: (v, Layout::dense(d.kv_len, krow)),
        mask: mask_of(OP, key_mask, &d, true)?,
        o: Layout::dense(d.q_len, qrow),
    };
    let gpu = q.gpu();
    let dq = Tensor::empty(gpu, q.shape(), DType::F32, "attention dq")?;
    let dk = Tensor::empty(gpu, k.shape(), DType::F32, "attention dk")?;
    let dv = Tensor::empty(gpu, v.shape(), DType::F32, "attention dv")?;
    call.backward(out, lse, dout, &dq, &dk, &dv)?;
    Ok((dq, dk, dv))
}

/// Attention on the tape: q (B, T, Hq, D), k and v (B, S, Hkv, D) to (B, T, Hq, D). Llama
/// (separate projections, RoPE) calls this; `key_mask` needs no gradient.
pub fn attention(q: &Var, k: &Var, v: &Var, key_mask: Option<&Tensor>, cfg: &AttentionConfig) -> Result<Var> {
    let (out, lse) = attention_forward(q.tensor(), k.tensor(), v.tensor(), key_mask, cfg)?;
    let (qt, kt, vt, ot) = (q.tensor().clone(), k.tensor().clone(), v.tensor().clone(), out.clone());
    let (mask, cfg) = (key_mask.cloned(), *cfg);
    Ok(Var::from_op(out, &[q, k, v], move |g| {
        let (dq, dk, dv) = attention_backward(&qt, &kt, &vt, &ot, &lse, g, mask.as_ref(), &cfg)?;
        Ok(vec![Some(dq), Some(dk), Some(dv)])
    }))
}

/// Sizes and layouts of q, k, v inside a fused (B, T, (Hq + 2 Hkv) D) qkv tensor.
fn fused_layout(op: &'static str, qkv: &Tensor, n_head: usize, n_kv_head: usize, kv_len_extra: usize) -> Result<(Dims, [Layout; 3])> {
    check_f32(op, "qkv", qkv)?;
    let s = qkv.shape();
    let heads = n_head + 2 * n_kv_head;
    if s.len() != 3 || heads == 0 || !s[2].is_multiple_of(heads) {
        return Err(Error::shape(op, format!("qkv must be (B, T, (Hq + 2 Hkv) * D) with Hq={n_head}, Hkv={n_kv_head}, got {s:?}")));
    }
    let (batch, len, width) = (s[0], s[1], s[2]);
    let head_dim = width / heads;
    let d = Dims { batch, q_len: len, kv_len: len + kv_len_extra, n_head, n_kv_head, head_dim };
    let at = |off: usize| Layout { off, tstride: width, bstride: len * width };
    Ok((d, [at(0), at(n_head * head_dim), at((n_head + n_kv_head) * head_dim)]))
}

/// Attention on GPT-2's fused c_attn output: qkv (B, T, (Hq + 2 Hkv) * D), q then k then v along
/// the last dim, to out (B, T, Hq * D). The kernels read q, k and v straight from the one buffer
/// and the gradient is written back in the same fused layout: no split, no copies.
pub fn attention_fused_qkv(qkv: &Var, n_head: usize, n_kv_head: usize, key_mask: Option<&Tensor>, cfg: &AttentionConfig) -> Result<Var> {
    const OP: &str = "attention_fused_qkv";
    let (d, [lq, lk, lv]) = fused_layout(OP, qkv.tensor(), n_head, n_kv_head, 0)?;
    check_sizes(OP, &d)?;
    let t = qkv.tensor();
    let mask = mask_of(OP, key_mask, &d, true)?;
    let qrow = d.n_head * d.head_dim;
    let call = Call { dims: d, cfg: *cfg, q: (t, lq), k: (t, lk), v: (t, lv), mask, o: Layout::dense(d.q_len, qrow) };
    let gpu = t.gpu();
    let out = Tensor::empty(gpu, &[d.batch, d.q_len, qrow], DType::F32, "attention out")?;
    let lse = Tensor::empty(gpu, &[d.batch, d.n_head, d.q_len], DType::F32, "attention lse")?;
    call.forward(&out, &lse, None)?;
    let (qkv_t, ot, mask, cfg) = (t.clone(), out.clone(), key_mask.cloned(), *cfg);
    Ok(Var::from_op(out, &[qkv], move |g| {
        let mask = mask_of(OP, mask.as_ref(), &d, true)?;
        let call = Call { dims: d, cfg, q: (&qkv_t, lq), k: (&qkv_t, lk), v: (&qkv_t, lv), mask, o: Layout::dense(d.q_len, qrow) };
        // dq, dk and dv land in their slots of one fused gradient; together they cover it.
        let dqkv = Tensor::empty(qkv_t.gpu(), qkv_t.shape(), DType::F32, "attention dqkv")?;
        call.backward(&ot, &lse, g, &dqkv, &dqkv, &dqkv)?;
        Ok(vec![Some(dqkv)])
    }))
}


/// CPU references (f64, naive softmax over the full score row), for the gradient-check table.
pub mod reference {
    use super::AttentionConfig;

    /// Sizes: q (batch, q_len, n_head, head_dim), k and v (batch, kv_len, n_kv_head, head_dim).
    #[derive(Clone, Copy, Debug)]
    pub struct Shape {
        pub batch: usize,
        pub q_len: usize,
        pub kv_len: usize,
        pub n_head: usize,
        pub n_kv_head: usize,
        pub head_dim: usize,
    }

    /// Attention output (B, T, Hq, D) and lse (B, Hq, T); key_mask (B, S) with nonzero = attend.
    /// A row that sees no key gets output 0 and lse -infinity.
    pub fn attention_with_lse(q: &[f64], k: &[f64], v: &[f64], sh: Shape, key_mask: Option<&[f64]>, cfg: &AttentionConfig) -> (Vec<f64>, Vec<f64>) {
        let Shape { batch, q_len, kv_len, n_head, n_kv_head, head_dim: d } = sh;
        let scale = cfg.scale.map_or(1.0 / (d as f64).sqrt(), |s| s as f64);
        let group = n_head / n_kv_head;
        let mut out = vec![0.0; batch * q_len * n_head * d];
        let mut lse = vec![f64::NEG_INFINITY; batch * n_head * q_len];
        for b in 0..batch {
            for h in 0..n_head {
                let kh = h / group;
                for t in 0..q_len {
                    let qi = ((b * q_len + t) * n_head + h) * d;
                    let kv = |s: usize| ((b * kv_len + s) * n_kv_head + kh) * d;
                    let seen: Vec<usize> = (0..kv_len)
                        .filter(|&s| !cfg.causal || s <= cfg.q_offset + t)
                        .filter(|&s| key_mask.is_none_or(|m| m[b * kv_len + s] != 0.0))
                        .collect();
                    if seen.is_empty() {
                        continue;
                    }
                    let scores: Vec<f64> =
                        seen.iter().map(|&s| scale * (0..d).map(|j| q[qi + j] * k[kv(s) + j]).sum::<f64>()).collect();
                    let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = scores.iter().map(|x| (x - mx).exp()).sum();
                    lse[(b * n_head + h) * q_len + t] = mx + sum.ln();
                    for (&s, x) in seen.iter().zip(&scores) {
                        let p = (x - mx).exp() / sum;
                        for j in 0..d {
                            out[qi + j] += p * v[kv(s) + j];
                        }
                    }
                }
            }
        }
        (out, lse)
    }

    /// Attention output (B, T, Hq, D).
    pub fn attention(q: &[f64], k: &[f64], v: &[f64], sh: Shape, key_mask: Option<&[f64]>, cfg: &AttentionConfig) -> Vec<f64> {
        attention_with_lse(q, k, v, sh, key_mask, cfg).0
    }

    /// Attention on a fused qkv (B, T, (Hq + 2 Hkv) D) to (B, T, Hq D).
    pub fn attention_fused_qkv(qkv: &[f64], batch: usize, len: usize, n_head: usize, n_kv_head: usize, key_mask: Option<&[f64]>, cfg: &AttentionConfig) -> Vec<f64> {
        let width = qkv.len() / (batch * len);
        let d = width / (n_head + 2 * n_kv_head);
        let part = |from: usize, heads: usize| -> Vec<f64> {
            qkv.chunks(width).flat_map(|tok| tok[from * d..(from + heads) * d].to_vec()).collect()
        };
        let (q, k, v) = (part(0, n_head), part(n_head, n_kv_head), part(n_head + n_kv_head, n_kv_head));
        let sh = Shape { batch, q_len: len, kv_len: len, n_head, n_kv_head, head_dim: d };
        attention(&q, &k, &v, sh, key_mask, cfg)
    }
}
