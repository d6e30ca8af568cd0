//! The KV cache for generation: per layer, the keys and values of past tokens, appended to by
//! a copy kernel and attended to in place (the kernels take the current length and the allocated
//! stride separately). On CPU adapters it also keeps texture copies, appended to in step, for the
//! texture-fed register kernel.

use super::textures::{new_texture, pack_rows, SeqTexture};
use super::{check_f32, check_sizes, fused_layout, mask_of, u32_of, AttentionConfig, Call, Dims, Layout, KV_CACHE};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, KernelVariant};
use crate::tensor::{DType, Tensor};

/// Keys and values of past tokens for generation, one per layer: k and v buffers
/// (B, S_max, Hkv, D) filled up to `len()`. Appending is a copy kernel and attending reads the
/// cache in place (kernels take the current length and the allocated stride separately). On CPU
/// adapters the cache also keeps texture copies, appended to in step, for the texture-fed kernel.
pub struct KvCache {
    k: Tensor,
    v: Tensor,
    /// Texture mirrors of k and v (B layers, S_max rows, Hkv * D / 4 texels), register variant only.
    tex: Option<[SeqTexture; 2]>,
    len: usize,
    batch: usize,
    max_len: usize,
    n_kv_head: usize,
    head_dim: usize,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KvCache({} of {} tokens, B={}, Hkv={}, D={})", self.len, self.max_len, self.batch, self.n_kv_head, self.head_dim)
    }
}

impl KvCache {
    /// An empty cache for `batch` sequences of up to `max_len` tokens.
    pub fn new(gpu: &Gpu, batch: usize, max_len: usize, n_kv_head: usize, head_dim: usize) -> Result<KvCache> {
        let d = Dims { batch, q_len: 1, kv_len: max_len, n_head: n_kv_head, n_kv_head, head_dim };
        check_sizes("KvCache::new", &d)?;
        let shape = [batch, max_len, n_kv_head, head_dim];
        let k = Tensor::empty(gpu, &shape, DType::F32, "kv cache keys")?;
        let v = Tensor::empty(gpu, &shape, DType::F32, "kv cache values")?;
        let mut tex = None;
        if gpu.variant() == KernelVariant::Register {
            let width = n_kv_head * head_dim / 4;
            if let (Some(kt), Some(vt)) = (
                new_texture(gpu, width, max_len, batch)?,
                new_texture(gpu, width, max_len, batch)?,
            ) {
                tex = Some([kt, vt]);
            }
        }
        Ok(KvCache { k, v, tex, len: 0, batch, max_len, n_kv_head, head_dim })
    }

    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most tokens the cache holds.
    pub fn capacity(&self) -> usize {
        self.max_len
    }

    /// Forget every cached token (the buffers are kept).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Keep only the first `len` tokens (e.g. to reuse a shared prompt prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The key buffer (B, S_max, Hkv, D); rows from `len()` on are stale.
    pub fn keys(&self) -> &Tensor {
        &self.k
    }

    /// The value buffer (B, S_max, Hkv, D); rows from `len()` on are stale.
    pub fn values(&self) -> &Tensor {
        &self.v
    }

    fn append_raw(&mut self, op: &'static str, k_new: (&Tensor, Layout), v_new: (&Tensor, Layout), t_new: usize) -> Result<()> {
        if self.len + t_new > self.max_len {
            return Err(Error::shape(op, format!("{} cached + {t_new} new tokens exceed the capacity {}", self.len, self.max_len)));
        }
        let row = self.n_kv_head * self.head_dim;
        let l = |x: Layout| -> Result<[u32; 3]> { Ok([u32_of(op, x.off)?, u32_of(op, x.tstride)?, u32_of(op, x.bstride)?]) };
        u32_of(op, self.k.len())?;
        let p = AppendParams {
            batch: self.batch as u32,
            t_new: t_new as u32,
            row: row as u32,
            pos: self.len as u32,
            cache_bstride: (self.max_len * row) as u32,
            k: l(k_new.1)?,
            v: l(v_new.1)?,
            _pad: 0,
        };
        let gpu = self.k.gpu();
        let binds = [self.k.binding(), self.v.binding(), k_new.0.binding(), v_new.0.binding()];
        gpu.dispatch(&Kernel::new(&KV_CACHE, "append"), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(self.batch * t_new * row, 256))?;
        if let Some([kt, vt]) = &self.tex {
            pack_rows(kt, k_new.0, k_new.1, row / 4, self.batch, t_new, 0, self.len)?;
            pack_rows(vt, v_new.0, v_new.1, row / 4, self.batch, t_new, 0, self.len)?;
        }
        self.len += t_new;
        Ok(())
    }

    /// Append the keys and values of `T_new` tokens, k_new and v_new (B, T_new, Hkv, D).
    pub fn append(&mut self, k_new: &Tensor, v_new: &Tensor) -> Result<()> {
        const OP: &str = "KvCache::append";
        check_f32(OP, "k_new", k_new)?;
        check_f32(OP, "v_new", v_new)?;
        let s = k_new.shape();
        if s.len() != 4 || s[0] != self.batch || s[1] == 0 || s[2] != self.n_kv_head || s[3] != self.head_dim || v_new.shape() != s {
            return Err(Error::shape(OP, format!(
                "k_new and v_new must be ({}, T_new, {}, {}), got {s:?} and {:?}",
                self.batch, self.n_kv_head, self.head_dim, v_new.shape()
            )));
        }
        let lay = Layout::dense(s[1], self.n_kv_head * self.head_dim);
        self.append_raw(OP, (k_new, lay), (v_new, lay), s[1])
    }

    /// Append the k and v parts of a fused qkv (B, T_new, (Hq + 2 Hkv) * D) (GPT-2's c_attn output).
    pub fn append_fused_qkv(&mut self, qkv: &Tensor, n_head: usize) -> Result<()> {
        const OP: &str = "KvCache::append_fused_qkv";
        let (d, [_, lk, lv]) = fused_layout(OP, qkv, n_head, self.n_kv_head, 0)?;
        if d.batch != self.batch || d.head_dim != self.head_dim || d.q_len == 0 {
            return Err(Error::shape(OP, format!("qkv {:?} does not fit the cache {self:?}", qkv.shape())));
        }
        self.append_raw(OP, (qkv, lk), (qkv, lv), d.q_len)
    }

    /// Attention of the last-appended queries against the cache (forward only): q (B, T_new, Hq, D)
    /// at positions len-T_new..len, causal with q_offset = len - T_new, scale 1/sqrt(D).
    /// `key_mask`: u32 (B, len) or (B, max_len) (only the first len columns are read).
    pub fn attend(&self, q: &Tensor, key_mask: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "KvCache::attend";
        check_f32(OP, "q", q)?;
        let s = q.shape();
        if s.len() != 4 || s[0] != self.batch || s[3] != self.head_dim {
            return Err(Error::shape(OP, format!("q must be ({}, T_new, Hq, {}), got {s:?}", self.batch, self.head_dim)));
        }
        let lay = Layout::dense(s[1], s[2] * s[3]);
        let out = Tensor::empty(q.gpu(), s, DType::F32, "attention out")?;
        self.attend_raw(OP, (q, lay), s[1], s[2], key_mask, &out)?;
        Ok(out)
    }

    /// [`KvCache::attend`] for the q part of a fused qkv (B, T_new, (Hq + 2 Hkv) * D); returns
    /// (B, T_new, Hq * D). Pair it with [`KvCache::append_fused_qkv`] on the same qkv.
    pub fn attend_fused_qkv(&self, qkv: &Tensor, n_head: usize, key_mask: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "KvCache::attend_fused_qkv";
        let (d, [lq, _, _]) = fused_layout(OP, qkv, n_head, self.n_kv_head, 0)?;
        if d.batch != self.batch || d.head_dim != self.head_dim {
            return Err(Error::shape(OP, format!("qkv {:?} does not fit the cache {self:?}", qkv.shape())));
        }
        let out = Tensor::empty(qkv.gpu(), &[d.batch, d.q_len, n_head * d.head_dim], DType::F32, "attention out")?;
        self.attend_raw(OP, (qkv, lq), d.q_len, n_head, key_mask, &out)?;
        Ok(out)
    }

    fn attend_raw(&self, op: &'static str, q: (&Tensor, Layout), t_new: usize, n_head: usize, key_mask: Option<&Tensor>, out: &Tensor) -> Result<()> {
        if t_new == 0 || t_new > self.len {
            return Err(Error::shape(op, format!("{t_new} queries but {} cached tokens: append the new tokens first", self.len)));
        }
        let d = Dims { batch: self.batch, q_len: t_new, kv_len: self.len, n_head, n_kv_head: self.n_kv_head, head_dim: self.head_dim };
        check_sizes(op, &d)?;
        let cache = Layout { off: 0, tstride: self.n_kv_head * self.head_dim, bstride: self.max_len * self.n_kv_head * self.head_dim };
        let cfg = AttentionConfig { causal: true, scale: None, q_offset: self.len - t_new };
        let call = Call {
            dims: d,
            cfg,
            q,
            k: (&self.k, cache),
            v: (&self.v, cache),
            mask: mask_of(op, key_mask, &d, false)?,
            o: Layout::dense(t_new, n_head * self.head_dim),
        };
        let lse = Tensor::empty(out.gpu(), &[d.batch, n_head, t_new], DType::F32, "attention lse")?;
        let tex = self.tex.as_ref().filter(|_| out.gpu().variant() == KernelVariant::Register);
        call.forward(out, &lse, tex)
    }
}

/// The append kernel's uniform (mirrors `struct Params` in kv_cache.wgsl).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AppendParams {
    batch: u32,
    t_new: u32,
    row: u32,
    pos: u32,
    cache_bstride: u32,
    k: [u32; 3],
    v: [u32; 3],
    _pad: u32,
}
