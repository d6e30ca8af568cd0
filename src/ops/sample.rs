//! Token sampling on the GPU, so that batched generation can record many decode steps into one
//! command encoder and read the tokens back only at the end.
//!
//! [`sample`] is one dispatch per step (a workgroup per row on GPUs, an invocation per row on CPU
//! adapters; see `shaders/sample/sample.wgsl`): greedy argmax, or softmax(logits / T) restricted to the top-k logits and then to the top-p
//! nucleus, sampled by inverse CDF in index order with a uniform number that is a hash of
//! (seed, row, step). The uniform does not depend on the other rows or on earlier draws, so a
//! seed reproduces a run and the CPU [`reference`] can replay any draw exactly.
//!
//! Rules shared by the GPU and the reference:
//! - NaN logits count as -inf; -0 and +0 are equal.
//! - Greedy ties go to the lowest index. A row whose largest logit is not finite (all -inf, or
//!   a +inf present) is sampled greedily.
//! - Top-k keeps every logit >= the k-th largest (ties at the threshold stay in, as in Hugging
//!   Face's `TopKLogitsWarper`); `top_k` 0 or >= V is off.
//! - Top-p keeps the largest-probability tokens, whole tie groups at a time, until their mass
//!   (after temperature and top-k) reaches `top_p` of the total: the smallest such nucleus.
//! - Weights are `exp((l - max) / T)`, 0 below `exp(-104)` (smaller than any f32 denormal).
//! - The token is the first index, in index order over the allowed set, at which the running
//!   sum of weights exceeds `u * total`.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, KernelVariant, ShaderSource};
use crate::shader;
use crate::tensor::{DType, Tensor};

static SAMPLE: ShaderSource = shader!("sample/sample.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&SAMPLE];

/// How to pick the next token from a row of logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 = greedy argmax (top_k and top_p are then ignored). Example: 0.8.
    pub temperature: f32,
    /// Keep only the `top_k` largest logits (with ties); 0 = off. Example: 50.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose mass reaches `top_p`; 1.0 = off.
    /// Example: 0.9.
    pub top_p: f32,
}

impl Default for SamplingConfig {
    /// The model's own distribution (temperature 1, no truncation): what on-policy rollouts
    /// (PPO, GRPO, RLOO) must sample from.
    fn default() -> Self {
        SamplingConfig { temperature: 1.0, top_k: 0, top_p: 1.0 }
    }
}

impl SamplingConfig {
    /// Text for people to read: temperature 0.8 and nucleus 0.95, `plumb generate`'s default.
    pub const READABLE: SamplingConfig = SamplingConfig { temperature: 0.8, top_k: 0, top_p: 0.95 };

    /// Greedy decoding (temperature 0).
    pub fn greedy() -> Self {
        SamplingConfig { temperature: 0.0, ..Default::default() }
    }

    /// Error unless temperature is finite and >= 0 and top_p is in [0, 1].
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::config("temperature", format!("{} is not a finite value >= 0", self.temperature)));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(Error::config("top_p", format!("{} is not in [0, 1]", self.top_p)));
        }
        Ok(())
    }

    /// True when the config picks the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// Most stop ids a [`SampleState`] takes (the kernel checks each emitted token against all).
pub const MAX_STOP_IDS: usize = 1024;

/// Per-batch sampling state kept on the GPU across decode steps.
pub struct SampleState {
    /// u32 (B): 1 once the row has produced a stop token, else 0.
    pub done: Tensor,
    /// u32 (max(1, n_stop)): the stop token ids (one unused slot when there are none).
    stop_ids: Tensor,
    n_stop: u32,
    batch: usize,
    seed: u64,
}

impl SampleState {
    /// State for `batch` rows, none done, with the given stop ids (at most 1024, may be empty)
    /// and seed.
    pub fn new(gpu: &Gpu, batch: usize, stop_ids: &[u32], seed: u64) -> Result<Self> {
        if batch == 0 {
            return Err(Error::shape("SampleState::new", "batch must be at least 1"));
        }
        if stop_ids.len() > MAX_STOP_IDS {
            return Err(Error::config("stop ids", format!("{} given, at most {MAX_STOP_IDS}", stop_ids.len())));
        }
        let done = Tensor::from_u32(gpu, &vec![0; batch], &[batch])?;
        let slots = if stop_ids.is_empty() { vec![0] } else { stop_ids.to_vec() };
        let n = slots.len();
        let stop = Tensor::from_u32(gpu, &slots, &[n])?;
        Ok(SampleState { done, stop_ids: stop, n_stop: stop_ids.len() as u32, batch, seed })
    }

    /// Number of rows.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The seed the uniform numbers are hashed from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Mark every row as not done (to reuse the state for a new batch of prompts).
    pub fn reset(&self) -> Result<()> {
        self.done.write_u32(&vec![0; self.batch])
    }

    /// Read back which rows are done (submits pending work).
    pub fn done_rows(&self) -> Result<Vec<bool>> {
        Ok(self.done.to_u32_vec()?.into_iter().map(|d| d != 0).collect())
    }
}

/// Rows per workgroup of the serial kernel (lavapipe's SIMD width for 32-bit lanes on AVX2).
const ROWS: u32 = 8;

/// Largest vocabulary the serial kernel takes. llvmpipe (lavapipe) stops a shader's loops after
/// 65535 iterations in total per invocation (`LP_MAX_TGSI_LOOP_ITERATIONS`, shared by every loop
/// of the shader) and does so silently; the serial kernel loops at most 32 times over the row.
const SERIAL_MAX_VOCAB: usize = 1536;

/// The kernel, its override constants and its workgroup grid for `b` rows of `v` logits.
///
/// lavapipe runs a workgroup's invocations as coroutines that switch at every barrier (a search
/// step cost ~4x more with a barrier-reduced 8-thread workgroup than with one invocation per
/// row), so CPU adapters get one invocation per row and no barriers while the row is short
/// enough for the loop limit above, and otherwise a workgroup per row just wide enough to stay
/// under it. Real GPUs get a 256-thread workgroup per row.
fn kernel_for(gpu: &Gpu, v: usize, b: usize) -> (Kernel<'static>, [u32; 3]) {
    const CONSTS: [&[(&str, f64)]; 8] = [
        &[("WG", 8.0), ("FOLD", 2.0)],
        &[("WG", 16.0), ("FOLD", 4.0)],
        &[("WG", 32.0), ("FOLD", 4.0)],
        &[("WG", 64.0), ("FOLD", 8.0)],
        &[("WG", 128.0), ("FOLD", 8.0)],
        &[("WG", 256.0), ("FOLD", 16.0)],
        &[("WG", 512.0), ("FOLD", 16.0)],
        &[("WG", 1024.0), ("FOLD", 32.0)],
    ];
    let wide = |wg: usize| {
        let i = (wg.trailing_zeros() as usize).saturating_sub(3).min(CONSTS.len() - 1);
        (Kernel::new(&SAMPLE, "sample_rows").with(CONSTS[i]), gpu.groups_1d(b, 1))
    };
    match gpu.variant() {
        KernelVariant::Register if v <= SERIAL_MAX_VOCAB => {
            (Kernel::new(&SAMPLE, "sample_rows_serial").with(&[("ROWS", ROWS as f64)]), gpu.groups_1d(b, ROWS))
        }
        KernelVariant::Register => {
            let limit = (gpu.limits().max_compute_invocations_per_workgroup as usize).clamp(8, 1024);
            let cap = 1 << (usize::BITS - 1 - limit.leading_zeros());
            wide(v.div_ceil(SERIAL_MAX_VOCAB).next_power_of_two().max(8).min(cap))
        }
        KernelVariant::Tiled => wide(256),
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    vocab: u32,
    out_cols: u32,
    step: u32,
    pad_id: u32,
    top_k: u32,
    top_p: f32,
    inv_temp: f32,
    seed_lo: u32,
    seed_hi: u32,
    n_stop: u32,
    greedy: u32,
}

/// Pick one token per row of `logits` (f32 (B, V)) and write it to `next_ids` (u32, B
/// elements, e.g. (B, 1)) and to column `step` of `out` (u32 (B, N)). Rows already done emit
/// `pad_id`; a row that emits one of the state's stop ids becomes done. One dispatch, no
/// readback: call it once per decode step and read `out` at the end.
pub fn sample(
    logits: &Tensor,
    cfg: &SamplingConfig,
    state: &SampleState,
    step: u32,
    next_ids: &Tensor,
    out: &Tensor,
    pad_id: u32,
) -> Result<()> {
    const OP: &str = "sample";
    cfg.validate()?;
    logits.expect_dtype(OP, DType::F32)?;
    next_ids.expect_dtype(OP, DType::U32)?;
    out.expect_dtype(OP, DType::U32)?;
    let (b, v) = match logits.shape() {
        &[b, v] if b > 0 && v > 0 => (b, v),
        s => return Err(Error::shape(OP, format!("logits must be (B, V) with B, V >= 1, got {s:?}"))),
    };
    if b != state.batch {
        return Err(Error::shape(OP, format!("logits have {b} rows but the state has {}", state.batch)));
    }
    if next_ids.len() != b {
        return Err(Error::shape(OP, format!("next_ids must hold {b} ids, got {:?}", next_ids.shape())));
    }
    let n = match out.shape() {
        &[ob, n] if ob == b => n,
        s => return Err(Error::shape(OP, format!("out must be ({b}, N), got {s:?}"))),
    };
    if step as usize >= n {
        return Err(Error::shape(OP, format!("step {step} is outside out's {n} columns")));
    }
    if v > u32::MAX as usize / b {
        return Err(Error::shape(OP, format!("logits ({b}, {v}) are too large to index with u32")));
    }
    let p = Params {
        batch: b as u32,
        vocab: v as u32,
        out_cols: n as u32,
        step,
        pad_id,
        top_k: if cfg.top_k >= v { 0 } else { cfg.top_k as u32 },
        top_p: cfg.top_p,
        inv_temp: if cfg.is_greedy() { 0.0 } else { 1.0 / cfg.temperature },
        seed_lo: state.seed as u32,
        seed_hi: (state.seed >> 32) as u32,
        n_stop: state.n_stop,
        greedy: cfg.is_greedy() as u32,
    };
    let gpu = logits.gpu();
    let (k, groups) = kernel_for(gpu, v, b);
    gpu.dispatch(
        &k,
        bytemuck::bytes_of(&p),
        &[logits.binding(), next_ids.binding(), out.binding(), state.done.binding(), state.stop_ids.binding()],
        groups,
    )
}

/// CPU implementation of the same selection rules, for tests: given the same uniform number it
/// picks the same token (up to f32 rounding at CDF and nucleus boundaries).
pub mod reference {
    use super::SamplingConfig;

    /// PCG hash (Jarzynski & Olano 2020), as in the shader.
    pub fn pcg(v: u32) -> u32 {
        let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
        let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
        (word >> 22) ^ word
    }

    /// The uniform number in [0, 1) that the GPU uses for (seed, row, step).
    pub fn uniform(seed: u64, row: u32, step: u32) -> f32 {
        let (lo, hi) = (seed as u32, (seed >> 32) as u32);
        let h = pcg(step.wrapping_add(pcg(row.wrapping_add(pcg(hi.wrapping_add(pcg(lo)))))));
        (h >> 8) as f32 * (1.0 / 16777216.0)
    }

    /// A u32 whose order is the order of the f32 values; NaN counts as -inf, -0 as +0.
    pub fn order_key(x: f32) -> u32 {
        let mut b = x.to_bits();
        if x.is_nan() {
            b = f32::NEG_INFINITY.to_bits();
        }
        if b == 0x8000_0000 {
            b = 0;
        }
        if b & 0x8000_0000 != 0 {
            !b
        } else {
            b | 0x8000_0000
        }
    }

    /// The lowest index holding the largest logit (NaN counts as -inf).
    pub fn argmax(logits: &[f32]) -> usize {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if order_key(x) > order_key(logits[best]) {
                best = i;
            }
        }
        best
    }

    /// The distribution the sampler draws from: probabilities over the row, 0 outside the
    /// allowed set, renormalised (one-hot at the argmax when greedy).
    pub fn distribution(logits: &[f32], cfg: &SamplingConfig) -> Vec<f64> {
        let v = logits.len();
        let keys: Vec<u32> = logits.iter().map(|&x| order_key(x)).collect();
        let top = keys.iter().copied().max().unwrap_or(0);
        let m = logits[argmax(logits)];
        if cfg.is_greedy() || !m.is_finite() {
            let mut d = vec![0.0; v];
            d[argmax(logits)] = 1.0;
            return d;
        }
        let inv_t = 1.0 / cfg.temperature;
        let w: Vec<f64> = logits
            .iter()
            .zip(&keys)
            .map(|(&x, &k)| {
                if k <= order_key(f32::NEG_INFINITY) {
                    0.0
                } else if x >= m {
                    1.0
                } else {
                    let d = (x - m) * inv_t;
                    if d < -104.0 {
                        0.0
                    } else {
                        (d as f64).exp()
                    }
                }
            })
            .collect();
        // Top-k: the k-th largest key.
        let mut thr = 0;
        if cfg.top_k > 0 && cfg.top_k < v {
            let mut sorted = keys.clone();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            thr = sorted[cfg.top_k - 1];
        }
        // Top-p: walk distinct keys downwards until the mass reaches top_p of the total.
        if cfg.top_p < 1.0 {
            let total: f64 = (0..v).filter(|&i| keys[i] >= thr).map(|i| w[i]).sum();
            let need = cfg.top_p as f64 * total;
            let mut order: Vec<usize> = (0..v).filter(|&i| keys[i] >= thr).collect();
            order.sort_unstable_by(|&a, &b| keys[b].cmp(&keys[a]));
            let mut mass = 0.0;
            let mut j = 0;
            let mut nucleus = top;
            while j < order.len() {
                let k = keys[order[j]];
                while j < order.len() && keys[order[j]] == k {
                    mass += w[order[j]];
                    j += 1;
                }
                nucleus = k;
                if mass >= need {
                    break;
                }
            }
            thr = nucleus;
        }
        let allowed: Vec<f64> = (0..v).map(|i| if keys[i] >= thr { w[i] } else { 0.0 }).collect();
        let total: f64 = allowed.iter().sum();
        allowed.iter().map(|x| x / total).collect()
    }

    /// The token drawn with uniform `u`: the first index where the running probability (index
    /// order) exceeds `u`.
    pub fn pick(logits: &[f32], cfg: &SamplingConfig, u: f32) -> usize {
        let d = distribution(logits, cfg);
        let mut acc = 0.0;
        let mut last = 0;
        for (i, &q) in d.iter().enumerate() {
            if q > 0.0 {
                last = i;
                acc += q;
                if acc > u as f64 {
                    return i;
                }
            }
        }
        last
    }

    /// One decode step for a batch of rows (`logits` holds `done.len()` rows), as the GPU does
    /// it: returns one token per row and marks rows that emit a stop id as done.
    pub fn step(
        logits: &[f32],
        cfg: &SamplingConfig,
        seed: u64,
        step: u32,
        done: &mut [bool],
        stop_ids: &[u32],
        pad_id: u32,
    ) -> Vec<u32> {
        let vocab = logits.len() / done.len().max(1);
        (0..done.len())
            .map(|b| {
                if done[b] {
                    return pad_id;
                }
                let row = &logits[b * vocab..(b + 1) * vocab];
                let tok = pick(row, cfg, uniform(seed, b as u32, step)) as u32;
                if stop_ids.contains(&tok) {
                    done[b] = true;
                }
                tok
            })
            .collect()
    }
}
