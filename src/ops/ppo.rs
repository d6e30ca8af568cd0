//! The on-policy RL pieces of PPO and GRPO, after TRL's PPOTrainer and GRPOTrainer: generalised
//! advantage estimation, masked whitening, per-token KL estimators, GRPO's group-normalised
//! advantages, and the two fused losses (PPO's clipped surrogate plus clipped value loss;
//! GRPO's clipped objective plus a k3 KL to the reference), and what keeps a PPO step on the GPU:
//! the per-token rewards, the minibatch gather and the metric sums (shaders/ppo/step.wgsl).
//!
//! Each loss is one per-token kernel computing the loss terms, their derivatives and the metric
//! terms in one pass, then deterministic reductions (per sequence, then one workgroup over the
//! sequences; no atomics). The backward pass scales the stored derivatives by the upstream
//! gradient and the mean's divisor, both read on the GPU. Token tensors are (B, T), row-major,
//! with an f32 mask that is 1 on response tokens and 0 elsewhere (masked means weight by it).
//! Kernels that walk a sequence loop over T, which CPU drivers cap at 65535 iterations.

use crate::error::{Error, Result};
use crate::gpu::{Kernel, ShaderSource};
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};
use std::str::FromStr;

static GAE: ShaderSource = shader!("ppo/gae.wgsl");
static WHITEN: ShaderSource = shader!("ppo/whiten.wgsl");
static REWARDS: ShaderSource = shader!("ppo/rewards.wgsl");
static PPO_TOKENS: ShaderSource = shader!("ppo/ppo_tokens.wgsl");
static GRPO_TOKENS: ShaderSource = shader!("ppo/grpo_tokens.wgsl");
static LOSS_REDUCE: ShaderSource = shader!("ppo/loss_reduce.wgsl");
static STEP: ShaderSource = shader!("ppo/step.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&GAE, &WHITEN, &REWARDS, &PPO_TOKENS, &GRPO_TOKENS, &LOSS_REDUCE, &STEP];

/// Threads per workgroup of the per-element kernels; matches `WG` in the shaders.
const WG: u32 = 64;
/// Threads of the whitening kernels; matches `WG` in whiten.wgsl.
const WHITEN_WG: u32 = 256;
/// Floats per token in the per-token tables; matches `STRIDE` in the shaders.
const STRIDE: usize = 8;
/// Floats per sequence in the row sums; matches `ROW` in loss_reduce.wgsl.
const ROW: usize = 6;

/// Error unless `t` is f32 of exactly `shape`.
fn expect(op: &'static str, what: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.dtype() != DType::F32 || t.shape() != shape {
        return Err(Error::shape(op, format!("{what} must be f32 {shape:?}, got {:?} {:?}", t.dtype(), t.shape())));
    }
    Ok(())
}

/// (B, T) of a non-empty 2-D f32 token tensor small enough to index in u32.
fn rows_cols(op: &'static str, what: &str, t: &Tensor) -> Result<(usize, usize)> {
    match *t.shape() {
        [b, tt] if b > 0 && tt > 0 && t.dtype() == DType::F32 && b * tt <= u32::MAX as usize / STRIDE => Ok((b, tt)),
        _ => Err(Error::shape(op, format!("{what} must be a non-empty f32 (B, T) tensor, got {:?} {:?}", t.dtype(), t.shape()))),
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GaeParams {
    rows: u32,
    cols: u32,
    gamma: f32,
    lam: f32,
}

/// Generalised advantage estimation, one thread per sequence. `rewards`, `values`, `mask`: (B,
/// T). Over each sequence's valid tokens (mask != 0), backwards: `δ_t = r_t + γ V_next - V_t`,
/// `A_t = δ_t + γλ A_next`, where `V_next`, `A_next` belong to the next valid token (0 after the
/// last). Returns `(advantages, returns = A + V)`, both 0 at masked positions. With a mask that
/// is contiguous per row this is TRL's loop with padded values and rewards set to 0.
pub fn gae(rewards: &Tensor, values: &Tensor, mask: &Tensor, gamma: f32, lam: f32) -> Result<(Tensor, Tensor)> {
    let (b, t) = rows_cols("gae", "rewards", rewards)?;
    expect("gae", "values", values, &[b, t])?;
    expect("gae", "mask", mask, &[b, t])?;
    let gpu = rewards.gpu();
    let adv = Tensor::empty(gpu, &[b, t], DType::F32, "gae advantages")?;
    let ret = Tensor::empty(gpu, &[b, t], DType::F32, "gae returns")?;
    let p = GaeParams { rows: b as u32, cols: t as u32, gamma, lam };
    let binds = [adv.binding(), ret.binding(), rewards.binding(), values.binding(), mask.binding()];
    gpu.dispatch(&Kernel::new(&GAE, "gae"), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(b, WG))?;
    Ok((adv, ret))
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct WhitenParams {
    n: u32,
    shift_mean: u32,
    _pad: [u32; 2],
}

/// TRL's `masked_whiten`: `(x - mean) / sqrt(var + 1e-8)` with the mask-weighted mean and the
/// unbiased masked variance (`Σ m (x - mean)² / (Σ m - 1)`; the divisor is 1 when `Σ m <= 1`,
/// where TRL raises), plus the mean again when `shift_mean` is false. Masked positions get 0
/// (TRL fills them afterwards). Two passes: statistics in one workgroup, then elementwise.
pub fn whiten(x: &Tensor, mask: &Tensor, shift_mean: bool) -> Result<Tensor> {
    let n = x.len();
    if x.dtype() != DType::F32 || n == 0 || n > u32::MAX as usize {
        return Err(Error::shape("whiten", format!("x must be a non-empty f32 tensor, got {:?} {:?}", x.dtype(), x.shape())));
    }
    expect("whiten", "mask", mask, x.shape())?;
    let gpu = x.gpu();
    let p = WhitenParams { n: n as u32, shift_mean: shift_mean as u32, _pad: [0; 2] };
    let stats = Tensor::empty(gpu, &[3], DType::F32, "whiten stats")?;
    gpu.dispatch(&Kernel::new(&WHITEN, "whiten_stats"), bytemuck::bytes_of(&p), &[stats.binding(), x.binding(), mask.binding()], [1, 1, 1])?;
    let out = Tensor::empty(gpu, x.shape(), DType::F32, "whitened")?;
    let binds = [out.binding(), x.binding(), mask.binding(), stats.binding()];
    gpu.dispatch(&Kernel::new(&WHITEN, "whiten_apply"), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(n, WHITEN_WG))?;
    Ok(out)
}

/// A per-token estimator of KL(policy ‖ reference) from the sampled tokens' log-probs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KlKind {
    /// `logp - ref_logp`: unbiased, high variance, can be negative.
    K1,
    /// `(r - 1) - log r` with `r = exp(ref_logp - logp)`: unbiased, low variance, never negative.
    K3,
}

impl FromStr for KlKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "k1" => Ok(KlKind::K1),
            "k3" => Ok(KlKind::K3),
            _ => Err(Error::config("KL estimator", format!("`{s}` is not one of k1, k3"))),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RewardsParams {
    n: u32,
    k: u32,
    flag: u32,
    _pad: u32,
}

/// The per-token KL estimate of `kind` between the policy's log-probs `logp` and the
/// reference's `ref_logp` (same shape).
pub fn kl_penalty(logp: &Tensor, ref_logp: &Tensor, kind: KlKind) -> Result<Tensor> {
    let n = logp.len();
    if logp.dtype() != DType::F32 || n == 0 || n > u32::MAX as usize {
        return Err(Error::shape("kl_penalty", format!("logp must be a non-empty f32 tensor, got {:?} {:?}", logp.dtype(), logp.shape())));
    }
    expect("kl_penalty", "ref_logp", ref_logp, logp.shape())?;
    let gpu = logp.gpu();
    let out = Tensor::empty(gpu, logp.shape(), DType::F32, "kl penalty")?;
    let p = RewardsParams { n: n as u32, k: (kind == KlKind::K3) as u32, flag: 0, _pad: 0 };
    let binds = [out.binding(), logp.binding(), ref_logp.binding()];
    gpu.dispatch(&Kernel::new(&REWARDS, "kl_penalty"), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(n, WG))?;
    Ok(out)
}

/// GRPO's advantages: `rewards` holds G groups of `group_size` consecutive sequence rewards (one
/// prompt's completions); each becomes `r - mean_group`, divided by `std_group + 1e-4` (the
/// unbiased std, as torch.std) when `scale_by_std`. Needs `group_size >= 2`.
pub fn group_advantages(rewards: &Tensor, group_size: usize, scale_by_std: bool) -> Result<Tensor> {
    let n = rewards.len();
    if rewards.dtype() != DType::F32 || n == 0 || n > u32::MAX as usize {
        return Err(Error::shape("group_advantages", format!("rewards must be a non-empty f32 tensor, got {:?} {:?}", rewards.dtype(), rewards.shape())));
    }
    if group_size < 2 || !n.is_multiple_of(group_size) {
        return Err(Error::shape("group_advantages", format!("{n} rewards do not split into groups of {group_size} (at least 2)")));
    }
    let gpu = rewards.gpu();
    let groups = n / group_size;
    let out = Tensor::empty(gpu, rewards.shape(), DType::F32, "group advantages")?;
    let p = RewardsParams { n: groups as u32, k: group_size as u32, flag: scale_by_std as u32, _pad: 0 };
    let binds = [out.binding(), rewards.binding()];
    gpu.dispatch(&Kernel::new(&REWARDS, "group_advantages"), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(groups, WG))?;
    Ok(out)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TokenParams {
    n: u32,
    cols: u32,
    clip: f32,
    /// ε_v for PPO, β for GRPO.
    extra: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ReduceParams {
    rows: u32,
    cols: u32,
    vf_coef: f32,
    inv_rows: f32,
}

/// Sum each sequence's masked token terms (columns 2..8 of `parts`) into a (B, 6) tensor.
fn row_sums(parts: &Tensor, b: usize, t: usize) -> Result<Tensor> {
    let gpu = parts.gpu();
    let rows = Tensor::empty(gpu, &[b, ROW], DType::F32, "sequence sums")?;
    let p = ReduceParams { rows: b as u32, cols: t as u32, vf_coef: 0.0, inv_rows: 0.0 };
    gpu.dispatch(&Kernel::new(&LOSS_REDUCE, "row_sums"), bytemuck::bytes_of(&p), &[rows.binding(), parts.binding()], gpu.groups_1d(b, WG))?;
    Ok(rows)
}

/// Settings of [`ppo_loss`] (TRL's PPOConfig names).
#[derive(Clone, Debug)]
pub struct PpoLossConfig {
    /// ε of the clipped surrogate, e.g. 0.2.
    pub clip_range: f32,
    /// ε_v of the clipped value loss, e.g. 0.2.
    pub clip_range_value: f32,
    /// Weight of the value loss in the total, e.g. 0.1.
    pub vf_coef: f32,
}

impl Default for PpoLossConfig {
    fn default() -> Self {
        PpoLossConfig { clip_range: 0.2, clip_range_value: 0.2, vf_coef: 0.1 }
    }
}

/// Names of the PPO batch metrics, as TRL logs them, in the order of [`PpoMetrics::tensor`]
/// after its first element (the loss).
pub const PPO_METRIC_NAMES: [&str; 5] =
    ["policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg"];

/// The batch metrics of one [`ppo_loss`] call, kept on the GPU until asked for.
#[derive(Clone, Debug)]
pub struct PpoMetrics {
    stats: Tensor,
}

impl PpoMetrics {
    /// The GPU tensor `[loss, approxkl, clipfrac, pg_loss, vf_loss, vf_clipfrac, Σ mask]`.
    pub fn tensor(&self) -> &Tensor {
        &self.stats
    }

    /// Read the metrics back (submits pending work), masked means over the batch's tokens:
    /// `policy/approxkl_avg` = 0.5 mean (logp - old)², `policy/clipfrac_avg` = fraction where
    /// the clipped surrogate is the larger, `loss/policy_avg`, `loss/value_avg` (without
    /// vf_coef), `val/clipfrac_avg` = fraction where the clipped value error is the larger.
    pub fn read(&self) -> Result<Vec<(&'static str, f32)>> {
        let v = self.stats.to_f32_vec()?;
        Ok(PPO_METRIC_NAMES.iter().copied().zip(v[1..].iter().copied()).collect())
    }
}

/// PPO's loss, `pg_loss + vf_coef · vf_loss`, fused (TRL's PPOTrainer): with `ratio = exp(logp -
/// old_logp)`, `pg = max(-A ratio, -A clip(ratio, 1 - ε, 1 + ε))`, `v_c = old_v + clip(v - old_v,
/// -ε_v, ε_v)`, `vf = 0.5 max((v - R)², (v_c - R)²)`, each a masked mean over the batch's tokens.
/// `logp` (new log-probs) and `values` (new value predictions) get gradients; all inputs are
/// (B, T). Returns the `[1]` loss and the batch metrics (on the GPU). A batch whose mask sums to
/// 0 gives loss 0.
#[allow(clippy::too_many_arguments)]
pub fn ppo_loss(
    logp: &Var,
    old_logp: &Tensor,
    advantages: &Tensor,
    values: &Var,
    old_values: &Tensor,
    returns: &Tensor,
    mask: &Tensor,
    cfg: &PpoLossConfig,
) -> Result<(Var, PpoMetrics)> {
    const OP: &str = "ppo_loss";
    let (b, t) = rows_cols(OP, "logp", logp.tensor())?;
    for (what, x) in [
        ("old_logp", old_logp),
        ("advantages", advantages),
        ("values", values.tensor()),
        ("old_values", old_values),
        ("returns", returns),
        ("mask", mask),
    ] {
        expect(OP, what, x, &[b, t])?;
    }
    for (what, v) in [("clip_range", cfg.clip_range), ("clip_range_value", cfg.clip_range_value), ("vf_coef", cfg.vf_coef)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Error::config(format!("PPO {what}"), format!("{v} must be a finite number >= 0")));
        }
    }
    let gpu = logp.tensor().gpu();
    let n = b * t;
    // per token, then per sequence, then the batch
    let parts = Tensor::empty(gpu, &[n, STRIDE], DType::F32, "ppo tokens")?;
    let tp = TokenParams { n: n as u32, cols: t as u32, clip: cfg.clip_range, extra: cfg.clip_range_value };
    let binds = [
        parts.binding(),
        logp.tensor().binding(),
        old_logp.binding(),
        advantages.binding(),
        values.tensor().binding(),
        old_values.binding(),
        returns.binding(),
        mask.binding(),
    ];
    gpu.dispatch(&Kernel::new(&PPO_TOKENS, "ppo_tokens"), bytemuck::bytes_of(&tp), &binds, gpu.groups_1d(n, WG))?;
    let rows = row_sums(&parts, b, t)?;
    let stats = Tensor::empty(gpu, &[2 + PPO_METRIC_NAMES.len()], DType::F32, "ppo stats")?;
    let rp = ReduceParams { rows: b as u32, cols: t as u32, vf_coef: cfg.vf_coef, inv_rows: 1.0 / b as f32 };
    gpu.dispatch(&Kernel::new(&LOSS_REDUCE, "ppo_reduce"), bytemuck::bytes_of(&rp), &[stats.binding(), rows.binding()], [1, 1, 1])?;
    // backward: d logp, d values = g / Σ mask · stored derivatives
    let saved = stats.clone();
    let loss = Var::from_op(stats.view(0, &[1])?, &[logp, values], move |g| {
        let gpu = parts.gpu();
        let dlogp = Tensor::empty(gpu, &[b, t], DType::F32, "ppo d logp")?;
        let dvalues = Tensor::empty(gpu, &[b, t], DType::F32, "ppo d values")?;
        let binds = [dlogp.binding(), parts.binding(), saved.binding(), g.binding(), dvalues.binding()];
        gpu.dispatch(&Kernel::new(&LOSS_REDUCE, "ppo_backward"), bytemuck::bytes_of(&rp), &binds, gpu.groups_1d(n, WG))?;
        Ok(vec![Some(dlogp), Some(dvalues)])
    });
    Ok((loss, PpoMetrics { stats }))
}

/// Names of the GRPO batch metrics, as TRL logs them, in the order of [`GrpoMetrics::tensor`]
/// after its first element (the loss). `kl` is only reported with a reference.
pub const GRPO_METRIC_NAMES: [&str; 4] = ["kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"];

/// The batch metrics of one [`grpo_loss`] call, kept on the GPU until asked for.
#[derive(Clone, Debug)]
pub struct GrpoMetrics {
    stats: Tensor,
    with_kl: bool,
}

impl GrpoMetrics {
    /// The GPU tensor `[loss, kl, clip low, clip high, clip region]` (kl is 0 without a
    /// reference).
    pub fn tensor(&self) -> &Tensor {
        &self.stats
    }

    /// Read the metrics back (submits pending work), token means over the batch: `kl` (the k3
    /// estimate, only with a reference), `clip_ratio/low_mean` = fraction with ratio < 1 - ε and
    /// A < 0, `clip_ratio/high_mean` = ratio > 1 + ε and A > 0, `clip_ratio/region_mean` = either.
    pub fn read(&self) -> Result<Vec<(&'static str, f32)>> {
        Ok(self.named(&self.stats.to_f32_vec()?))
    }

    /// The metrics of `stats`, values already read from [`GrpoMetrics::tensor`] (loss first).
    pub fn named(&self, stats: &[f32]) -> Vec<(&'static str, f32)> {
        let skip = if self.with_kl { 0 } else { 1 };
        GRPO_METRIC_NAMES.iter().copied().zip(stats[1..].iter().copied()).skip(skip).collect()
    }
}

/// GRPO's loss (TRL's GRPOTrainer, loss type "grpo"), fused: per token `-min(ratio A, clip(ratio,
/// 1 - ε, 1 + ε) A) + β k3`, with `ratio = exp(logp - old_logp)`, `A` the token's sequence
/// advantage and `k3 = exp(ref - logp) - (ref - logp) - 1` (only with `ref_logp`); averaged over
/// each sequence's tokens (a sequence with none counts 0), then over the B sequences. `logp`
/// gets the gradient; token tensors are (B, T), `advantages_per_seq` has B elements. With
/// `beta_kl != 0` a reference is required. Returns the `[1]` loss and the metrics (on the GPU).
pub fn grpo_loss(
    logp: &Var,
    old_logp: &Tensor,
    ref_logp: Option<&Tensor>,
    advantages_per_seq: &Tensor,
    mask: &Tensor,
    clip: f32,
    beta_kl: f32,
) -> Result<(Var, GrpoMetrics)> {
    const OP: &str = "grpo_loss";
    let (b, t) = rows_cols(OP, "logp", logp.tensor())?;
    expect(OP, "old_logp", old_logp, &[b, t])?;
    expect(OP, "mask", mask, &[b, t])?;
    if let Some(r) = ref_logp {
        expect(OP, "ref_logp", r, &[b, t])?;
    }
    if advantages_per_seq.dtype() != DType::F32 || advantages_per_seq.len() != b {
        return Err(Error::shape(OP, format!("advantages must be f32 with {b} elements (one per sequence), got {:?}", advantages_per_seq.shape())));
    }
    if !(clip.is_finite() && clip >= 0.0 && beta_kl.is_finite()) {
        return Err(Error::config("GRPO clip / beta", format!("clip {clip} must be finite and >= 0, beta {beta_kl} finite")));
    }
    if beta_kl != 0.0 && ref_logp.is_none() {
        return Err(Error::config("GRPO beta", format!("beta {beta_kl} needs the reference model's log-probs")));
    }
    let gpu = logp.tensor().gpu();
    let n = b * t;
    // per token, then per sequence, then the batch
    let parts = Tensor::empty(gpu, &[n, STRIDE], DType::F32, "grpo tokens")?;
    let tp = TokenParams { n: n as u32, cols: t as u32, clip, extra: beta_kl };
    let mut binds = vec![parts.binding(), logp.tensor().binding(), old_logp.binding(), advantages_per_seq.binding(), mask.binding()];
    let entry = match ref_logp {
        Some(r) => {
            binds.push(r.binding());
            "grpo_tokens_ref"
        }
        None => "grpo_tokens",
    };
    gpu.dispatch(&Kernel::new(&GRPO_TOKENS, entry), bytemuck::bytes_of(&tp), &binds, gpu.groups_1d(n, WG))?;
    let rows = row_sums(&parts, b, t)?;
    let stats = Tensor::empty(gpu, &[1 + GRPO_METRIC_NAMES.len()], DType::F32, "grpo stats")?;
    let rp = ReduceParams { rows: b as u32, cols: t as u32, vf_coef: 0.0, inv_rows: 1.0 / b as f32 };
    gpu.dispatch(&Kernel::new(&LOSS_REDUCE, "grpo_reduce"), bytemuck::bytes_of(&rp), &[stats.binding(), rows.binding()], [1, 1, 1])?;
    // backward: d logp = g / (B · tokens of the sequence) · stored derivative
    let loss = Var::from_op(stats.view(0, &[1])?, &[logp], move |g| {
        let gpu = parts.gpu();
        let dlogp = Tensor::empty(gpu, &[b, t], DType::F32, "grpo d logp")?;
        let binds = [dlogp.binding(), parts.binding(), rows.binding(), g.binding()];
        gpu.dispatch(&Kernel::new(&LOSS_REDUCE, "grpo_backward"), bytemuck::bytes_of(&rp), &binds, gpu.groups_1d(n, WG))?;
        Ok(vec![Some(dlogp)])
    });
    Ok((loss, GrpoMetrics { stats, with_kl: ref_logp.is_some() }))
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StepParams {
    rows: u32,
    cols: u32,
    offset: u32,
    clip_on: u32,
    scale: f32,
    clip: f32,
    _pad: [u32; 2],
}

/// PPO's per-token rewards (TRL's `rewards = −kl_coef · kl`, plus the shaped score at the
/// last response token): `kl` (B, T) the per-token KL, `scores` (B) the sequence scores,
/// `shift` (B) added to them (the missing-EOS penalty), then clipped to ±`clip` when given,
/// `mask` (B, T). Returns (B, T), 0 off the response.
pub fn token_rewards(kl: &Tensor, scores: &Tensor, shift: &Tensor, clip: Option<f32>, mask: &Tensor, kl_coef: f32) -> Result<Tensor> {
    let (b, t) = rows_cols("token_rewards", "kl", kl)?;
    expect("token_rewards", "scores", scores, &[b])?;
    expect("token_rewards", "shift", shift, &[b])?;
    expect("token_rewards", "mask", mask, &[b, t])?;
    let gpu = kl.gpu();
    let out = Tensor::empty(gpu, &[b, t], DType::F32, "ppo token rewards")?;
    let p = StepParams { rows: b as u32, cols: t as u32, offset: 0, clip_on: clip.is_some() as u32, scale: kl_coef, clip: clip.unwrap_or(0.0), _pad: [0; 2] };
    let binds = [(1, out.binding()), (2, kl.binding()), (3, scores.binding()), (4, mask.binding()), (6, shift.binding())];
    gpu.dispatch_bound(&Kernel::new(&STEP, "token_rewards"), bytemuck::bytes_of(&p), &[], &binds, gpu.groups_1d(b, WG))?;
    Ok(out)
}

/// The rows `rows` (u32 indices, each below B) of a (B, T) f32 tensor, as (rows, T): a PPO
/// minibatch.
pub fn gather_rows(src: &Tensor, rows: &Tensor) -> Result<Tensor> {
    let (_, t) = rows_cols("gather_rows", "src", src)?;
    let n = rows.len();
    if rows.dtype() != DType::U32 || n == 0 {
        return Err(Error::shape("gather_rows", format!("rows must be a non-empty u32 tensor, got {:?} {:?}", rows.dtype(), rows.shape())));
    }
    let gpu = src.gpu();
    let out = Tensor::empty(gpu, &[n, t], DType::F32, "gathered rows")?;
    let p = StepParams { rows: n as u32, cols: t as u32, offset: 0, clip_on: 0, scale: 0.0, clip: 0.0, _pad: [0; 2] };
    let binds = [(1, out.binding()), (2, src.binding()), (5, rows.binding())];
    gpu.dispatch_bound(&Kernel::new(&STEP, "gather_rows"), bytemuck::bytes_of(&p), &[], &binds, gpu.groups_1d(n * t, WG))?;
    Ok(out)
}

/// `acc[offset + j] += scale · Σ_i x[i, j]` for the k columns of `x` seen as (len / k, k): sums
/// metrics into one GPU tensor that a step reads back once. `k` at most 64.
pub fn accumulate(acc: &Tensor, offset: usize, x: &Tensor, k: usize, scale: f32) -> Result<()> {
    let n = x.len();
    if x.dtype() != DType::F32 || acc.dtype() != DType::F32 || k == 0 || k > 64 || n == 0 || !n.is_multiple_of(k) || offset + k > acc.len() {
        return Err(Error::shape("accumulate", format!("{k} columns of {:?} into {:?} at {offset}", x.shape(), acc.shape())));
    }
    let gpu = x.gpu();
    let p = StepParams { rows: (n / k) as u32, cols: k as u32, offset: offset as u32, clip_on: 0, scale, clip: 0.0, _pad: [0; 2] };
    gpu.dispatch_bound(&Kernel::new(&STEP, "accumulate"), bytemuck::bytes_of(&p), &[], &[(1, acc.binding()), (2, x.binding())], [1, 1, 1])
}

/// CPU references (f64) of everything above, for the tests. Token arrays are (B, T) row-major,
/// flattened.
pub mod reference {
    use super::{KlKind, PpoLossConfig};

    /// TRL's per-token rewards (`scores += penalty` where no EOS, `scores.clamp(±clip)`,
    /// `rewards = −kl_coef · kl`, `rewards[i, last] += score_i`) of [`super::token_rewards`].
    pub fn token_rewards(kl: &[f64], scores: &[f64], shift: &[f64], clip: Option<f64>, mask: &[f64], kl_coef: f64) -> Vec<f64> {
        let t = kl.len() / scores.len();
        let mut r: Vec<f64> = kl.iter().zip(mask).map(|(k, m)| -kl_coef * k * m).collect();
        for (i, sc) in scores.iter().enumerate() {
            let sc = clip.map_or(sc + shift[i], |c| (sc + shift[i]).clamp(-c, c));
            if let Some(last) = mask[i * t..(i + 1) * t].iter().rposition(|&m| m != 0.0) {
                r[i * t + last] += sc;
            }
        }
        r
    }

    /// (advantages, returns) of [`super::gae`].
    pub fn gae(rewards: &[f64], values: &[f64], mask: &[f64], t: usize, gamma: f64, lam: f64) -> (Vec<f64>, Vec<f64>) {
        let mut adv = vec![0.0; rewards.len()];
        let mut ret = vec![0.0; rewards.len()];
        for row in 0..rewards.len() / t {
            let (mut next_v, mut next_a) = (0.0, 0.0);
            for j in (row * t..(row + 1) * t).rev() {
                if mask[j] == 0.0 {
                    continue;
                }
                let delta = rewards[j] + gamma * next_v - values[j];
                adv[j] = delta + gamma * lam * next_a;
                ret[j] = adv[j] + values[j];
                (next_v, next_a) = (values[j], adv[j]);
            }
        }
        (adv, ret)
    }

    /// [`super::whiten`].
    pub fn whiten(x: &[f64], mask: &[f64], shift_mean: bool) -> Vec<f64> {
        let count: f64 = mask.iter().sum();
        let mean = if count == 0.0 { 0.0 } else { x.iter().zip(mask).map(|(v, m)| v * m).sum::<f64>() / count };
        let sq: f64 = x.iter().zip(mask).map(|(v, m)| m * (v - mean).powi(2)).sum();
        let var = sq / if count > 1.0 { count - 1.0 } else { 1.0 };
        x.iter()
            .zip(mask)
            .map(|(v, &m)| {
                let w = (v - mean) / (var + 1e-8).sqrt() + if shift_mean { 0.0 } else { mean };
                if m == 0.0 { 0.0 } else { w }
            })
            .collect()
    }

    /// [`super::kl_penalty`].
    pub fn kl_penalty(logp: &[f64], ref_logp: &[f64], kind: KlKind) -> Vec<f64> {
        logp.iter()
            .zip(ref_logp)
            .map(|(l, r)| match kind {
                KlKind::K1 => l - r,
                KlKind::K3 => {
                    let ratio = (r - l).exp();
                    (ratio - 1.0) - ratio.ln()
                }
            })
            .collect()
    }

    /// [`super::group_advantages`].
    pub fn group_advantages(rewards: &[f64], group_size: usize, scale_by_std: bool) -> Vec<f64> {
        rewards
            .chunks(group_size)
            .flat_map(|g| {
                let n = g.len() as f64;
                let mean = g.iter().sum::<f64>() / n;
                let std = (g.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
                g.iter().map(move |r| if scale_by_std { (r - mean) / (std + 1e-4) } else { r - mean })
            })
            .collect()
    }

    fn masked_mean(x: impl Iterator<Item = f64>, mask: &[f64]) -> f64 {
        let c: f64 = mask.iter().sum();
        x.zip(mask).map(|(v, m)| v * m).sum::<f64>() / if c == 0.0 { 1.0 } else { c }
    }

    /// Per-token (pg, vf, pg clipped, value clipped) of PPO.
    #[allow(clippy::too_many_arguments)]
    fn ppo_terms(i: usize, logp: &[f64], old: &[f64], adv: &[f64], v: &[f64], old_v: &[f64], ret: &[f64], cfg: &PpoLossConfig) -> [f64; 4] {
        let (eps, eps_v) = (cfg.clip_range as f64, cfg.clip_range_value as f64);
        let ratio = (logp[i] - old[i]).exp();
        let pg1 = -adv[i] * ratio;
        let pg2 = -adv[i] * ratio.clamp(1.0 - eps, 1.0 + eps);
        let v_c = old_v[i] + (v[i] - old_v[i]).clamp(-eps_v, eps_v);
        let l1 = (v[i] - ret[i]).powi(2);
        let l2 = (v_c - ret[i]).powi(2);
        [pg1.max(pg2), 0.5 * l1.max(l2), (pg2 > pg1) as u8 as f64, (l2 > l1) as u8 as f64]
    }

    /// PPO's `[loss, approxkl, clipfrac, pg_loss, vf_loss, vf_clipfrac]`.
    #[allow(clippy::too_many_arguments)]
    pub fn ppo(logp: &[f64], old: &[f64], adv: &[f64], v: &[f64], old_v: &[f64], ret: &[f64], mask: &[f64], cfg: &PpoLossConfig) -> Vec<f64> {
        let terms: Vec<[f64; 4]> = (0..logp.len()).map(|i| ppo_terms(i, logp, old, adv, v, old_v, ret, cfg)).collect();
        let col = |k: usize| masked_mean(terms.iter().map(move |t| t[k]), mask);
        let (pg, vf) = (col(0), col(1));
        let kl = masked_mean(logp.iter().zip(old).map(|(l, o)| 0.5 * (l - o).powi(2)), mask);
        vec![pg + cfg.vf_coef as f64 * vf, kl, col(2), pg, vf, col(3)]
    }

    /// GRPO's `[loss, kl, clip low, clip high, clip region]`; `ref_logp` empty means none.
    #[allow(clippy::too_many_arguments)]
    pub fn grpo(logp: &[f64], old: &[f64], ref_logp: &[f64], adv: &[f64], mask: &[f64], t: usize, clip: f64, beta: f64) -> Vec<f64> {
        let b = adv.len();
        let mut per_seq = 0.0;
        let (mut kl, mut low, mut high) = (vec![0.0; logp.len()], vec![0.0; logp.len()], vec![0.0; logp.len()]);
        for (row, &a) in adv.iter().enumerate() {
            let (mut sum, mut count) = (0.0, 0.0);
            for j in row * t..(row + 1) * t {
                let ratio = (logp[j] - old[j]).exp();
                let mut l = -(ratio * a).min(ratio.clamp(1.0 - clip, 1.0 + clip) * a);
                if !ref_logp.is_empty() {
                    let d = ref_logp[j] - logp[j];
                    kl[j] = d.exp() - d - 1.0;
                    l += beta * kl[j];
                }
                low[j] = (ratio < 1.0 - clip && a < 0.0) as u8 as f64;
                high[j] = (ratio > 1.0 + clip && a > 0.0) as u8 as f64;
                sum += mask[j] * l;
                count += mask[j];
            }
            per_seq += sum / if count == 0.0 { 1.0 } else { count };
        }
        let (lo, hi) = (masked_mean(low.iter().copied(), mask), masked_mean(high.iter().copied(), mask));
        vec![per_seq / b as f64, masked_mean(kl.into_iter(), mask), lo, hi, lo + hi]
    }
}
