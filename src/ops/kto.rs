//! Kahneman-Tversky Optimisation (KTO) as one fused op: for a batch of unpaired completions,
//! each labelled desirable (thumbs up) or undesirable (thumbs down), one workgroup computes the
//! KL estimate from mismatched (prompt, completion) rows, every row's loss and its derivative
//! with respect to the policy's sequence log-prob, and the batch loss and TRL's metric sums, in
//! one dispatch. The backward pass scales the stored derivatives by the upstream gradient.
//!
//! The formulas follow TRL's `KTOTrainer.kto_loss` (trl/trainer/kto_trainer.py): with `r_i =
//! logp_i − ref_i` the log-ratio of completion i and `z0 = max(mean_j(kl_policy_j − kl_ref_j), 0)`
//! the KL estimate (detached, so no gradient flows through it), the loss is the mean over all N
//! rows (TRL's `losses.nanmean()` over desirable and undesirable together) of each row's
//! weighted term written on [`KtoLoss`].

use crate::error::{Error, Result};
use crate::gpu::{Kernel, ShaderSource};
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};
use std::str::FromStr;

static KTO: ShaderSource = shader!("kto/kto.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&KTO];

/// Threads per workgroup; matches `WG` in the shader.
const WG: u32 = 64;
/// Values in the stats tensor; see [`KtoMetrics::tensor`].
const STATS: usize = 8;

/// TRL's KTO `loss_type`. `β` = [`KtoConfig::beta`], `w_d`, `w_u` the desirable and
/// undesirable weights, `σ` the logistic function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KtoLoss {
    /// KTO (eq. 7 of the paper): desirable `w_d (1 − σ(β(r − z0)))`, undesirable
    /// `w_u (1 − σ(β(z0 − r)))`.
    Kto,
    /// Unpaired APO-zero: desirable `w_d (1 − σ(βr))`, undesirable `w_u σ(βr)`; no KL term
    /// (TRL skips the mismatched rows for it).
    ApoZeroUnpaired,
}

impl KtoLoss {
    /// Every type.
    pub const ALL: [KtoLoss; 2] = [KtoLoss::Kto, KtoLoss::ApoZeroUnpaired];

    /// TRL's name.
    pub fn name(self) -> &'static str {
        match self {
            KtoLoss::Kto => "kto",
            KtoLoss::ApoZeroUnpaired => "apo_zero_unpaired",
        }
    }

    /// Whether this type uses the KL estimate (and so the mismatched rows).
    pub fn uses_kl(self) -> bool {
        self == KtoLoss::Kto
    }
}

impl std::fmt::Display for KtoLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KtoLoss {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        KtoLoss::ALL.iter().copied().find(|k| k.name() == s.trim()).ok_or_else(|| {
            Error::config("KTO loss type", format!("`{s}` is not one of kto, apo_zero_unpaired"))
        })
    }
}

/// Settings of [`kto_loss`] (TRL's KTOConfig names and defaults).
#[derive(Clone, Debug)]
pub struct KtoConfig {
    /// β of the implicit reward. Default 0.1.
    pub beta: f32,
    /// Loss type. Default `kto`.
    pub loss_type: KtoLoss,
    /// Weight of desirable rows' losses. Default 1.
    pub desirable_weight: f32,
    /// Weight of undesirable rows' losses. Default 1.
    pub undesirable_weight: f32,
}

impl Default for KtoConfig {
    fn default() -> Self {
        KtoConfig { beta: 0.1, loss_type: KtoLoss::Kto, desirable_weight: 1.0, undesirable_weight: 1.0 }
    }
}

impl KtoConfig {
    /// Check the settings.
    pub fn check(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(Error::config("KTO beta", format!("{} must be a positive number", self.beta)));
        }
        for (what, w) in [("desirable_weight", self.desirable_weight), ("undesirable_weight", self.undesirable_weight)] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(Error::config(format!("KTO {what}"), format!("{w} must be a finite number >= 0")));
            }
        }
        Ok(())
    }
}

/// The batch metrics of one [`kto_loss`] call, on the GPU until read.
#[derive(Clone, Debug)]
pub struct KtoMetrics {
    stats: Tensor,
}

/// One batch's metrics read back, with TRL's names.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KtoStats {
    /// The batch loss.
    pub loss: f32,
    /// Σ β r over desirable rows (TRL's `rewards/chosen_sum`).
    pub rewards_chosen_sum: f32,
    /// Σ β r over undesirable rows.
    pub rewards_rejected_sum: f32,
    /// Σ logp over desirable rows.
    pub logps_chosen_sum: f32,
    /// Σ logp over undesirable rows.
    pub logps_rejected_sum: f32,
    /// Desirable rows in the batch (`count/chosen`).
    pub count_chosen: f32,
    /// Undesirable rows (`count/rejected`).
    pub count_rejected: f32,
    /// The KL estimate z0 (`kl`); 0 for `apo_zero_unpaired`.
    pub kl: f32,
}

impl KtoMetrics {
    /// The GPU tensor `[loss, rewards/chosen_sum, rewards/rejected_sum, logps/chosen_sum,
    /// logps/rejected_sum, count/chosen, count/rejected, kl]`.
    pub fn tensor(&self) -> &Tensor {
        &self.stats
    }

    /// Read the metrics back (submits pending work).
    pub fn read(&self) -> Result<KtoStats> {
        Ok(KtoStats::from_slice(&self.stats.to_f32_vec()?))
    }
}

impl KtoStats {
    /// From the 8 values of [`KtoMetrics::tensor`].
    pub fn from_slice(v: &[f32]) -> KtoStats {
        let g = |i: usize| v.get(i).copied().unwrap_or(f32::NAN);
        KtoStats {
            loss: g(0),
            rewards_chosen_sum: g(1),
            rewards_rejected_sum: g(2),
            logps_chosen_sum: g(3),
            logps_rejected_sum: g(4),
            count_chosen: g(5),
            count_rejected: g(6),
            kl: g(7),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    n_kl: u32,
    loss_type: u32,
    _pad0: u32,
    beta: f32,
    w_desirable: f32,
    w_undesirable: f32,
    inv_n: f32,
}

/// What [`kto_forward`] records.
pub struct KtoForward {
    /// `[1]` the batch loss (a view of `stats`).
    pub loss: Tensor,
    /// `[8]` the loss and the metric sums (see [`KtoMetrics::tensor`]).
    pub stats: Tensor,
    /// `(N)` d loss / d logp, saved for [`kto_backward`].
    pub dlogp: Tensor,
}

/// Forward: the KL estimate, per-row losses and derivatives, the batch loss and metric sums, in
/// one dispatch of one workgroup. `logp`, `ref_logp`, `label` (1 desirable, 0 undesirable) have
/// N elements; `kl` is the policy's and the reference's log-probs of the mismatched rows (M
/// elements each), required when the loss type uses the KL term.
pub fn kto_forward(logp: &Tensor, ref_logp: &Tensor, label: &Tensor, kl: Option<(&Tensor, &Tensor)>, cfg: &KtoConfig) -> Result<KtoForward> {
    cfg.check()?;
    let n = logp.len();
    if n == 0 || n > u32::MAX as usize {
        return Err(Error::shape("kto_loss", format!("need at least one row, got {n}")));
    }
    for (what, t) in [("logp", logp), ("ref_logp", ref_logp), ("label", label)] {
        if t.dtype() != DType::F32 || t.len() != n {
            return Err(Error::shape("kto_loss", format!("{what} must be f32 with {n} elements, got {:?} {:?}", t.dtype(), t.shape())));
        }
    }
    let (kl_policy, kl_ref) = match (kl, cfg.loss_type.uses_kl()) {
        (Some((a, b)), true) => {
            if a.dtype() != DType::F32 || b.dtype() != DType::F32 || a.len() != b.len() || a.is_empty() {
                return Err(Error::shape("kto_loss", format!("KL log-probs must be two f32 tensors of one length, got {:?} and {:?}", a.shape(), b.shape())));
            }
            (a, b)
        }
        (None, true) => return Err(Error::config("kto_loss", "loss type `kto` needs the KL rows' log-probs")),
        (_, false) => (logp, ref_logp), // bound but unread: n_kl = 0
    };
    let n_kl = if cfg.loss_type.uses_kl() { kl_policy.len() } else { 0 };
    let gpu = logp.gpu();
    let p = Params {
        n: n as u32,
        n_kl: n_kl as u32,
        loss_type: match cfg.loss_type {
            KtoLoss::Kto => 0,
            KtoLoss::ApoZeroUnpaired => 1,
        },
        _pad0: 0,
        beta: cfg.beta,
        w_desirable: cfg.desirable_weight,
        w_undesirable: cfg.undesirable_weight,
        inv_n: 1.0 / n as f32,
    };
    let dlogp = Tensor::empty(gpu, &[n], DType::F32, "kto d logp")?;
    let stats = Tensor::empty(gpu, &[STATS], DType::F32, "kto stats")?;
    let binds = [dlogp.binding(), stats.binding(), logp.binding(), ref_logp.binding(), label.binding(), kl_policy.binding(), kl_ref.binding()];
    gpu.dispatch(&Kernel::new(&KTO, "kto_forward"), bytemuck::bytes_of(&p), &binds, [1, 1, 1])?;
    Ok(KtoForward { loss: stats.view(0, &[1])?, stats, dlogp })
}

/// Backward: `d logp = g · (stored derivatives)`, `g` the loss's upstream gradient (one element).
pub fn kto_backward(dlogp: &Tensor, g: &Tensor) -> Result<Tensor> {
    if g.len() != 1 || g.dtype() != DType::F32 {
        return Err(Error::shape("kto_backward", format!("upstream gradient {:?}", g.shape())));
    }
    let n = dlogp.len();
    let gpu = dlogp.gpu();
    let out = Tensor::empty(gpu, &[n], DType::F32, "kto d logp scaled")?;
    let p = Params { n: n as u32, n_kl: 0, loss_type: 0, _pad0: 0, beta: 0.0, w_desirable: 0.0, w_undesirable: 0.0, inv_n: 0.0 };
    let binds = [(1, out.binding()), (3, dlogp.binding()), (4, g.binding())];
    gpu.dispatch_bound(&Kernel::new(&KTO, "kto_backward"), bytemuck::bytes_of(&p), &[], &binds, gpu.groups_1d(n, WG))?;
    Ok(out)
}

/// The KTO loss of a batch, differentiable in the policy's sequence log-probs `logp` (N);
/// `ref_logp` the reference's (zeros when reference-free), `label` 1.0 for desirable and 0.0
/// for undesirable rows, `kl` the policy's and reference's log-probs of the mismatched rows
/// (constants). Returns the `[1]` loss and the metrics (on the GPU).
pub fn kto_loss(logp: &Var, ref_logp: &Tensor, label: &Tensor, kl: Option<(&Tensor, &Tensor)>, cfg: &KtoConfig) -> Result<(Var, KtoMetrics)> {
    let f = kto_forward(logp.tensor(), ref_logp, label, kl, cfg)?;
    let shape = logp.shape().to_vec();
    let dlogp = f.dlogp;
    let loss = Var::from_op(f.loss, &[logp], move |g| Ok(vec![Some(kto_backward(&dlogp, g)?.reshape(&shape)?)]));
    Ok((loss, KtoMetrics { stats: f.stats }))
}

/// CPU references (f64) of the formulas above, written from TRL's `KTOTrainer.kto_loss`.
pub mod reference {
    use super::{KtoConfig, KtoLoss};
    use crate::ops::dpo::reference::sigmoid;

    /// TRL: `kl = (policy_KL_logps - reference_KL_logps).mean().detach().clamp(min=0)`.
    pub fn kl_estimate(kl_policy: &[f64], kl_ref: &[f64]) -> f64 {
        if kl_policy.is_empty() {
            return 0.0;
        }
        let m = kl_policy.iter().zip(kl_ref).map(|(a, b)| a - b).sum::<f64>() / kl_policy.len() as f64;
        m.max(0.0)
    }

    /// One row's weighted loss given the KL estimate `z0`.
    pub fn row_loss(logp: f64, ref_logp: f64, desirable: bool, z0: f64, cfg: &KtoConfig) -> f64 {
        let (b, r) = (cfg.beta as f64, logp - ref_logp);
        match (cfg.loss_type, desirable) {
            // chosen_losses = 1 - F.sigmoid(self.beta * (chosen_logratios - kl))
            (KtoLoss::Kto, true) => cfg.desirable_weight as f64 * (1.0 - sigmoid(b * (r - z0))),
            // rejected_losses = 1 - F.sigmoid(self.beta * (kl - rejected_logratios))
            (KtoLoss::Kto, false) => cfg.undesirable_weight as f64 * (1.0 - sigmoid(b * (z0 - r))),
            // chosen_losses = 1 - F.sigmoid(self.beta * chosen_logratios)
            (KtoLoss::ApoZeroUnpaired, true) => cfg.desirable_weight as f64 * (1.0 - sigmoid(b * r)),
            // rejected_losses = F.sigmoid(self.beta * rejected_logratios)
            (KtoLoss::ApoZeroUnpaired, false) => cfg.undesirable_weight as f64 * sigmoid(b * r),
        }
    }

    /// The batch loss: the mean over all rows (the KL rows are constants).
    pub fn kto_loss(logp: &[f64], ref_logp: &[f64], label: &[f64], kl_policy: &[f64], kl_ref: &[f64], cfg: &KtoConfig) -> f64 {
        let z0 = if cfg.loss_type.uses_kl() { kl_estimate(kl_policy, kl_ref) } else { 0.0 };
        let n = logp.len() as f64;
        (0..logp.len()).map(|i| row_loss(logp[i], ref_logp[i], label[i] > 0.5, z0, cfg)).sum::<f64>() / n
    }

    /// The 8 values of [`super::KtoMetrics::tensor`].
    pub fn kto_stats(logp: &[f64], ref_logp: &[f64], label: &[f64], kl_policy: &[f64], kl_ref: &[f64], cfg: &KtoConfig) -> Vec<f64> {
        let b = cfg.beta as f64;
        let mut s = vec![kto_loss(logp, ref_logp, label, kl_policy, kl_ref, cfg), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        for i in 0..logp.len() {
            let k = usize::from(label[i] <= 0.5); // 0 desirable, 1 undesirable
            s[1 + k] += b * (logp[i] - ref_logp[i]);
            s[3 + k] += logp[i];
            s[5 + k] += 1.0;
        }
        s[7] = if cfg.loss_type.uses_kl() { kl_estimate(kl_policy, kl_ref) } else { 0.0 };
        s
    }
}
