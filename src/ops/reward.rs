//! The Bradley-Terry loss of reward-model training, as one fused op: per pair one kernel computes
//! `-logσ(r_c - r_r - m) + μ (r_c + r_r)²` and its derivatives; a second pass (one workgroup,
//! fixed order) reduces them to the mean loss and TRL's RewardTrainer metrics. The backward pass
//! only scales the stored gradients by the upstream gradient, on the GPU.
//!
//! The centering term (TRL's `center_rewards_coefficient`, from "Helping or Herding?") pulls the
//! rewards towards zero mean so that they can be compared across prompts.

use crate::error::{Error, Result};
use crate::gpu::{Kernel, ShaderSource};
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};

static PAIRS: ShaderSource = shader!("reward/pairs.wgsl");
static REDUCE: ShaderSource = shader!("reward/reduce.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&PAIRS, &REDUCE];

/// Threads per workgroup of every kernel here; matches `WG` in the shaders.
const WG: u32 = 64;
/// Floats per pair in the per-pair table; matches `STRIDE` in the shaders.
const STRIDE: usize = 5;

/// Names of the batch metrics, as TRL's RewardTrainer logs them, in the order of
/// [`RewardMetrics::tensor`] after its first element (the loss).
pub const REWARD_METRIC_NAMES: [&str; 5] = ["accuracy", "margin", "mean_reward", "min_reward", "max_reward"];

/// The batch metrics of one [`bradley_terry`] call, kept on the GPU until asked for.
#[derive(Clone, Debug)]
pub struct RewardMetrics {
    stats: Tensor,
}

impl RewardMetrics {
    /// The GPU tensor `[loss, accuracy, margin, mean_reward, min_reward, max_reward]`.
    pub fn tensor(&self) -> &Tensor {
        &self.stats
    }

    /// Read the metrics back (submits pending work): `accuracy` = mean [r_c > r_r], `margin` =
    /// mean (r_c - r_r), and the mean, min and max over all 2N rewards.
    pub fn read(&self) -> Result<Vec<(&'static str, f32)>> {
        let v = self.stats.to_f32_vec()?;
        Ok(REWARD_METRIC_NAMES.iter().copied().zip(v[1..].iter().copied()).collect())
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    inv_n: f32,
    center: f32,
    _pad: u32,
}

/// The tensors [`bradley_terry_forward`] records.
pub struct BradleyTerryForward {
    /// `[1]`: the loss (a view of the first element of `stats`).
    pub loss: Tensor,
    /// `[6]`: the loss, then the metrics of [`REWARD_METRIC_NAMES`].
    pub stats: Tensor,
    /// `(N, 5)`: per pair the loss, the two gradients of the batch loss, r_c and r_r; saved for
    /// [`bradley_terry_backward`].
    pub pairs: Tensor,
}

/// Forward: per-pair losses and gradients (one kernel), then the batch loss and metrics (one
/// workgroup). `rc`, `rr` and `margin` are f32 with one element per pair.
pub fn bradley_terry_forward(rc: &Tensor, rr: &Tensor, margin: Option<&Tensor>, center_coef: f32) -> Result<BradleyTerryForward> {
    let n = rc.len();
    if n == 0 || n > u32::MAX as usize / STRIDE {
        return Err(Error::shape("bradley_terry", format!("need between 1 and 2^32/{STRIDE} pairs, got {n}")));
    }
    let mut inputs = vec![("rewards of the chosen", rc), ("rewards of the rejected", rr)];
    inputs.extend(margin.map(|m| ("margins", m)));
    for (what, t) in inputs {
        if t.dtype() != DType::F32 || t.len() != n {
            return Err(Error::shape("bradley_terry", format!("{what} must be f32 with {n} elements, got {:?} {:?}", t.dtype(), t.shape())));
        }
    }
    if !center_coef.is_finite() {
        return Err(Error::config("center_rewards_coefficient", format!("{center_coef} is not finite")));
    }
    let gpu = rc.gpu();
    let p = Params { n: n as u32, inv_n: 1.0 / n as f32, center: center_coef, _pad: 0 };
    let pairs = Tensor::empty(gpu, &[n, STRIDE], DType::F32, "bradley-terry pairs")?;
    let mut binds = vec![pairs.binding(), rc.binding(), rr.binding()];
    let entry = match margin {
        Some(m) => {
            binds.push(m.binding());
            "bt_pairs_margin"
        }
        None => "bt_pairs",
    };
    gpu.dispatch(&Kernel::new(&PAIRS, entry), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(n, WG))?;
    let stats = Tensor::empty(gpu, &[1 + REWARD_METRIC_NAMES.len()], DType::F32, "bradley-terry stats")?;
    gpu.dispatch(&Kernel::new(&REDUCE, "bt_reduce"), bytemuck::bytes_of(&p), &[stats.binding(), pairs.binding()], [1, 1, 1])?;
    Ok(BradleyTerryForward { loss: stats.view(0, &[1])?, stats, pairs })
}

/// Backward: `(d rc, d rr) = g · (stored gradients)`, with `g` the loss's upstream gradient as a
/// one-element GPU tensor.
pub fn bradley_terry_backward(pairs: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    if g.len() != 1 || g.dtype() != DType::F32 || pairs.last_dim() != STRIDE {
        return Err(Error::shape("bradley_terry_backward", format!("gradient {:?}, pairs {:?}", g.shape(), pairs.shape())));
    }
    let n = pairs.len() / STRIDE;
    let gpu = pairs.gpu();
    let drc = Tensor::empty(gpu, &[n], DType::F32, "bradley-terry d rc")?;
    let drr = Tensor::empty(gpu, &[n], DType::F32, "bradley-terry d rr")?;
    let p = Params { n: n as u32, inv_n: 0.0, center: 0.0, _pad: 0 };
    let binds = [drc.binding(), pairs.binding(), g.binding(), drr.binding()];
    gpu.dispatch(&Kernel::new(&REDUCE, "bt_backward"), bytemuck::bytes_of(&p), &binds, gpu.groups_1d(n, WG))?;
    Ok((drc, drr))
}

/// The Bradley-Terry loss `mean(-logσ(r_c - r_r - m)) + μ · mean((r_c + r_r)²)` of N pairs of
/// scalar rewards (chosen `rc`, rejected `rr`), with optional per-pair margins `m` (TRL's
/// `margin` column) and centering coefficient `μ = center_coef` (0 turns it off). Returns the
/// `[1]` loss and the batch metrics (on the GPU).
pub fn bradley_terry(rc: &Var, rr: &Var, margin: Option<&Tensor>, center_coef: f32) -> Result<(Var, RewardMetrics)> {
    let f = bradley_terry_forward(rc.tensor(), rr.tensor(), margin, center_coef)?;
    let (shape_c, shape_r) = (rc.shape().to_vec(), rr.shape().to_vec());
    let pairs = f.pairs;
    let loss = Var::from_op(f.loss, &[rc, rr], move |g| {
        let (drc, drr) = bradley_terry_backward(&pairs, g)?;
        Ok(vec![Some(drc.reshape(&shape_c)?), Some(drr.reshape(&shape_r)?)])
    });
    Ok((loss, RewardMetrics { stats: f.stats }))
}

/// CPU references (f64), for the tests.
pub mod reference {
    /// The loss; `margin` empty means no margins.
    pub fn bradley_terry(rc: &[f64], rr: &[f64], margin: &[f64], center_coef: f64) -> f64 {
        let n = rc.len() as f64;
        let m = |i: usize| margin.get(i).copied().unwrap_or(0.0);
        let log_sigmoid = |x: f64| x.min(0.0) - (-x.abs()).exp().ln_1p();
        let bt = (0..rc.len()).map(|i| -log_sigmoid(rc[i] - rr[i] - m(i))).sum::<f64>() / n;
        let center = (0..rc.len()).map(|i| (rc[i] + rr[i]).powi(2)).sum::<f64>() / n;
        bt + center_coef * center
    }

    /// The metrics of [`super::REWARD_METRIC_NAMES`], in order.
    pub fn metrics(rc: &[f64], rr: &[f64]) -> Vec<f64> {
        let n = rc.len() as f64;
        let all = rc.iter().chain(rr);
        vec![
            rc.iter().zip(rr).filter(|(c, r)| c > r).count() as f64 / n,
            rc.iter().zip(rr).map(|(c, r)| c - r).sum::<f64>() / n,
            all.clone().sum::<f64>() / (2.0 * n),
            all.clone().copied().fold(f64::INFINITY, f64::min),
            all.copied().fold(f64::NEG_INFINITY, f64::max),
        ]
    }
}
