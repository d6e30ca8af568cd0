//! The optimizer over the flat parameter store: the global gradient norm (two deterministic
//! passes, no atomics) and AdamW as ONE fused dispatch per flat buffer (one for a model that
//! fits a storage binding, one per segment past it), with decoupled weight decay for the
//! elements below each segment's `decay_end` and, optionally, clipping by the global norm of
//! every segment read from a one-element GPU buffer: a step never reads anything back.

use crate::error::{Error, Result};
use crate::gpu::texture::tensor_textures;
use crate::gpu::{Kernel, ShaderSource};
use crate::params::ParamStore;
use crate::shader;
use crate::tensor::{DType, Tensor};

static GRAD_NORM: ShaderSource = shader!("optim/grad_norm.wgsl");
static ADAMW: ShaderSource = shader!("optim/adamw.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&GRAD_NORM, &ADAMW];

/// Threads per workgroup in this family's kernels (`WG` in the shaders).
const WG: u32 = 256;
/// At most this many workgroups of partial sums (so the final pass reads at most 256K values).
const MAX_PARTIAL_GROUPS: usize = 1024;
/// Aim for at least this many elements per partial-sum thread.
const ELEMS_PER_THREAD: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NormParams {
    n: u32,
    threads: u32,
    _pad: [u32; 2],
}

/// Global L2 norm `sqrt(sum(g^2))` of an f32 tensor, as a one-element GPU tensor. Two passes:
/// per-thread partial sums of squares over a fixed grid, then one workgroup sums them.
pub fn grad_norm(grads: &Tensor) -> Result<Tensor> {
    grad_norm_of(&[grads])
}

/// Global L2 norm over several f32 tensors together (the segments of a parameter store): each
/// tensor's partial sums go side by side into one buffer, then one workgroup sums them all.
/// With one tensor this is exactly [`grad_norm`].
pub fn grad_norm_of(parts: &[&Tensor]) -> Result<Tensor> {
    let first = parts.first().ok_or_else(|| Error::shape("grad_norm", "no tensors"))?;
    let gpu = first.gpu();
    // (each grid is a multiple of 256 threads, so every share starts 1 KiB-aligned and the
    // partials are whole vec4s)
    let grids: Vec<usize> = parts
        .iter()
        .map(|g| g.len().div_ceil(WG as usize * ELEMS_PER_THREAD).clamp(1, MAX_PARTIAL_GROUPS))
        .collect();
    let threads: usize = grids.iter().sum::<usize>() * WG as usize;
    let partials = Tensor::empty(gpu, &[threads], DType::F32, "grad norm partials")?;
    // Pass 1: partial sums of squares, one per thread of a fixed grid per tensor.
    let k = Kernel::new(&GRAD_NORM, "partial_squares");
    let mut at = 0;
    for (g, &groups) in parts.iter().zip(&grids) {
        g.expect_dtype("grad_norm", DType::F32)?;
        let share = partials.view(at, &[groups * WG as usize])?;
        let p = NormParams { n: g.len() as u32, threads: share.len() as u32, _pad: [0; 2] };
        gpu.dispatch(&k, bytemuck::bytes_of(&p), &[share.binding(), g.binding_vec4()], [groups as u32, 1, 1])?;
        at += share.len();
    }
    // Pass 2: one workgroup sums the partials and takes the square root.
    let norm = Tensor::empty(gpu, &[1], DType::F32, "grad norm")?;
    let p = NormParams { n: threads as u32, threads: 0, _pad: [0; 2] };
    let k = Kernel::new(&GRAD_NORM, "finish_norm");
    gpu.dispatch(&k, bytemuck::bytes_of(&p), &[norm.binding(), partials.binding_vec4()], [1, 1, 1])?;
    Ok(norm)
}

/// AdamW hyper-parameters (PyTorch's names and meaning). The learning rate is not one of them:
/// each [`AdamW::step`] takes the step's rate (from a schedule, the rate's one home).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// First-moment decay, e.g. 0.9.
    pub beta1: f32,
    /// Second-moment decay, e.g. 0.999 (0.95 is common for transformers).
    pub beta2: f32,
    /// Added to the denominator, e.g. 1e-8.
    pub eps: f32,
    /// Decoupled weight decay for parameters with `decay: true`, e.g. 0.01 (0.1 for GPT-2).
    pub weight_decay: f32,
    /// Clip gradients to this global L2 norm, e.g. `Some(1.0)`; None: no clipping.
    pub max_grad_norm: Option<f32>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, max_grad_norm: None }
    }
}

impl AdamWConfig {
    fn validate(&self) -> Result<()> {
        let bad = |what: &str, msg: String| Err(Error::config(format!("AdamW {what}"), msg));
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("betas", format!("({}, {}) must lie in [0, 1)", self.beta1, self.beta2));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return bad("eps", format!("{} must be positive", self.eps));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight_decay", format!("{} must be finite and non-negative", self.weight_decay));
        }
        if let Some(c) = self.max_grad_norm {
            if !(c > 0.0 && c.is_finite()) {
                return bad("max_grad_norm", format!("{c} must be positive"));
            }
        }
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamWParams {
    n: u32,
    decay_end: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_correction1: f32,
    bias_correction2_sqrt: f32,
    max_norm: f32,
    /// log2 of the textures' width in texels for the texture-fed entries; 0 for the others.
    shift: u32,
    _pad: u32,
}

/// AdamW's state as host vectors, for checkpoints (m and v over the padded flat buffers, the
/// segments one after another).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWState {
    /// Steps taken so far.
    pub step: u64,
    /// First moments over the padded flat buffer.
    pub m: Vec<f32>,
    /// Second moments over the padded flat buffer.
    pub v: Vec<f32>,
}

/// AdamW over a [`ParamStore`]: flat first and second moments (one pair per segment of the
/// store) and the step count.
pub struct AdamW {
    cfg: AdamWConfig,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
}

impl AdamW {
    /// Zeroed moments sized for `store`.
    pub fn new(store: &ParamStore, cfg: AdamWConfig) -> Result<AdamW> {
        cfg.validate()?;
        let gpu = store.gpu();
        let (mut m, mut v) = (vec![], vec![]);
        for seg in store.segments() {
            let n = seg.values.len();
            m.push(Tensor::zeros(gpu, &[n], DType::F32, "adamw m")?);
            v.push(Tensor::zeros(gpu, &[n], DType::F32, "adamw v")?);
        }
        Ok(AdamW { cfg, m, v, step: 0 })
    }

    /// The configuration.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update of every parameter in `store` from its gradient, at learning rate `lr`:
    /// one fused dispatch (plus two for the norm when clipping). Returns the global gradient
    /// norm (before clipping) as a one-element GPU tensor when `max_grad_norm` is set.
    pub fn step(&mut self, store: &ParamStore, lr: f32) -> Result<Option<Tensor>> {
        let lens: Vec<usize> = store.segments().iter().map(|s| s.values.len()).collect();
        if lens != self.m.iter().map(Tensor::len).collect::<Vec<_>>() {
            return Err(Error::shape("AdamW::step", format!("store segments {lens:?} do not match the optimizer's {:?}", self.m.iter().map(Tensor::len).collect::<Vec<_>>())));
        }
        if !(lr >= 0.0 && lr.is_finite()) {
            return Err(Error::config("AdamW learning rate", format!("{lr} must be finite and non-negative")));
        }
        self.step += 1;
        let c = &self.cfg;
        let t = self.step as f64;
        let norm = match c.max_grad_norm {
            Some(_) => Some(grad_norm_of(&store.segments().iter().map(|s| &s.grads).collect::<Vec<_>>())?),
            None => None,
        };
        for (k, seg) in store.segments().iter().enumerate() {
            let p = AdamWParams {
                n: seg.values.len() as u32,
                decay_end: seg.decay_end as u32,
                lr,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: c.weight_decay,
                bias_correction1: (1.0 - (c.beta1 as f64).powf(t)) as f32,
                bias_correction2_sqrt: (1.0 - (c.beta2 as f64).powf(t)).sqrt() as f32,
                max_norm: c.max_grad_norm.unwrap_or(0.0),
                shift: 0,
                _pad: 0,
            };
            update_segment(&seg.values, &seg.grads, &self.m[k], &self.v[k], norm.as_ref(), p)?;
        }
        Ok(norm)
    }

    /// The moments and step count, read back for a checkpoint.
    pub fn state(&self) -> Result<AdamWState> {
        let read = |ts: &[Tensor]| -> Result<Vec<f32>> {
            let mut out = Vec::new();
            for t in ts {
                out.extend(t.to_f32_vec()?);
            }
            Ok(out)
        };
        Ok(AdamWState { step: self.step, m: read(&self.m)?, v: read(&self.v)? })
    }

    /// Restore moments and step count saved by [`AdamW::state`] for the same parameter layout.
    pub fn load_state(&mut self, s: &AdamWState) -> Result<()> {
        let n: usize = self.m.iter().map(Tensor::len).sum();
        if s.m.len() != n || s.v.len() != n {
            return Err(Error::shape(
                "AdamW::load_state",
                format!("state has {} / {} moments, optimizer needs {n}", s.m.len(), s.v.len()),
            ));
        }
        let mut at = 0;
        for (m, v) in self.m.iter().zip(&self.v) {
            m.write_f32(&s.m[at..at + m.len()])?;
            v.write_f32(&s.v[at..at + v.len()])?;
            at += m.len();
        }
        self.step = s.step;
        Ok(())
    }
}

/// One fused AdamW dispatch over one flat buffer (a segment) and its moments.
fn update_segment(values: &Tensor, grads: &Tensor, m: &Tensor, v: &Tensor, norm: Option<&Tensor>, p: AdamWParams) -> Result<()> {
    let gpu = values.gpu();
    // One thread per vec4: a segment's length is a multiple of 64.
    let groups = gpu.groups_1d(values.len() / 4, WG);
    let mut binds = vec![values.binding_vec4(), grads.binding_vec4(), m.binding_vec4(), v.binding_vec4()];
    let entry = match norm {
        Some(nrm) => {
            binds.push(nrm.binding());
            "adamw_clip"
        }
        None => "adamw",
    };
    // CPU adapters where buffer loads are costly (the register feed, see `RegisterFeed`): p,
    // g, m and v from texture copies (only p, m and v are written). Where they are cheap the
    // copies cost more than they save (3.7 ms from the buffers against 4.2 ms plus the
    // copies for a W2 step on lavapipe with AVX-512), and they hold 4x the model's size.
    let state = [values, grads, m, v];
    let textures = if gpu.feed_textures() { tensor_textures(&state)? } else { None };
    if let Some((tex, shift)) = textures {
        let p = AdamWParams { shift, ..p };
        let mut bufs = vec![(1, binds[0]), (3, binds[2]), (4, binds[3])];
        if let Some(nrm) = norm {
            bufs.push((5, nrm.binding()));
        }
        let views: Vec<(u32, &wgpu::TextureView)> = tex.iter().enumerate().map(|(i, t)| (6 + i as u32, &t.view)).collect();
        let entry = if norm.is_some() { "adamw_clip_texture" } else { "adamw_texture" };
        return gpu.dispatch_bound(&Kernel::new(&ADAMW, entry), bytemuck::bytes_of(&p), &views, &bufs, groups);
    }
    gpu.dispatch(&Kernel::new(&ADAMW, entry), bytemuck::bytes_of(&p), &binds, groups)
}

/// CPU references in f64.
pub mod reference {
    use super::AdamWConfig;

    /// `sqrt(sum(g^2))`.
    pub fn grad_norm(g: &[f64]) -> f64 {
        g.iter().map(|x| x * x).sum::<f64>().sqrt()
    }

    /// One AdamW step (step number `step`, counted from 1) in place, PyTorch semantics; weight
    /// decay for elements below `decay_end`; clipping by the global norm when configured.
    /// Returns the norm before clipping when clipping is configured.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_step(
        params: &mut [f64],
        grads: &[f64],
        m: &mut [f64],
        v: &mut [f64],
        step: u64,
        cfg: &AdamWConfig,
        lr: f64,
        decay_end: usize,
    ) -> Option<f64> {
        let (b1, b2, eps, wd) = (cfg.beta1 as f64, cfg.beta2 as f64, cfg.eps as f64, cfg.weight_decay as f64);
        let norm = cfg.max_grad_norm.map(|_| grad_norm(grads));
        let clip = match (cfg.max_grad_norm, norm) {
            (Some(c), Some(n)) => (c as f64 / (n + 1e-6)).min(1.0),
            _ => 1.0,
        };
        let bc1 = 1.0 - b1.powi(step as i32);
        let bc2 = 1.0 - b2.powi(step as i32);
        for i in 0..params.len() {
            let g = grads[i] * clip;
            if i < decay_end {
                params[i] *= 1.0 - lr * wd;
            }
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            params[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + eps);
        }
        norm
    }
}
