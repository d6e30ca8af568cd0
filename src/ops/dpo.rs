//! Direct preference optimisation (DPO) and its relatives, as one fused op: for every preference
//! pair one kernel computes the loss of each configured type, the mixture's derivatives with
//! respect to the policy's sequence log-prob sums, and the per-pair metric terms (`aot` and
//! `aot_unpaired` pair log-ratios by rank: a rank-sort kernel runs first); a second pass
//! (one workgroup, fixed order) reduces them to the scalar loss and TRL's batch metrics. The
//! backward pass only scales the stored gradients by the upstream gradient, on the GPU.
//!
//! Inputs are per-pair scalars: the sums of per-token log-probs over each completion (another
//! op produces them), the reference model's sums, and the completion lengths. The formulas
//! follow TRL's `DPOTrainer.dpo_loss`; each is written on its [`DpoLoss`] variant, with
//! `h = (pc - rc) - (pr - rr)`, `σ` the logistic function and `ε` the label smoothing.

use crate::error::{Error, Result};
use crate::gpu::{Kernel, ShaderSource};
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};
use std::str::FromStr;

static PAIRS: ShaderSource = shader!("dpo/pairs.wgsl");
static REDUCE: ShaderSource = shader!("dpo/reduce.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&PAIRS, &REDUCE];

/// Threads per workgroup of every kernel here; matches `WG` in the shaders.
const WG: u32 = 64;
/// Floats per pair in the per-pair table; matches `STRIDE` in the shaders.
const STRIDE: usize = 9;

/// One DPO-family loss type. `pc`, `pr`: the policy's log-prob sums of the chosen and rejected
/// completions; `rc`, `rr`: the reference model's; `lc`, `lr`: the completions' lengths in
/// tokens; `h = (pc - rc) - (pr - rr)`; `β` = [`DpoConfig::beta`]; `ε` =
/// [`DpoConfig::label_smoothing`]; `logσ` is computed in its stable softplus form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DpoLoss {
    /// `-logσ(βh)(1 - ε) - logσ(-βh)ε` (DPO; with ε > 0, conservative DPO).
    Sigmoid,
    /// `relu(1 - βh)` (SLiC).
    Hinge,
    /// `(h_norm - 1/(2β))²` with `h_norm = (pc/lc - rc/lc) - (pr/lr - rr/lr)` (IPO, on
    /// length-normalised log-probs as TRL computes them for this type).
    Ipo,
    /// `(-logσ(βh)(1 - ε) + logσ(-βh)ε) / (1 - 2ε)` (robust DPO); needs ε < 1/2.
    Robust,
    /// `-logσ(β(pc - rc) - δ) - logσ(-(β(pr - rr) - δ))` with δ = [`DpoRunState::bco_delta`],
    /// the running mean of the rewards that the trainer keeps (BCO on pairs).
    BcoPair,
    /// `(1 - σ(β(pc - rc))) + σ(β(pr - rr))` (APO-zero).
    ApoZero,
    /// `σ(β(pc - rc)) + (1 - σ(β((pc - rc) - (pr - rr))))` (APO-down).
    ApoDown,
    /// `-logσ(β h_norm - γ)` with `h_norm = (pc/lc - rc/lc) - (pr/lr - rr/lr)` and γ =
    /// [`DpoConfig::simpo_gamma`] (SimPO-style; pass zero reference sums for reference-free).
    SigmoidNorm,
    /// `-pc / lc`: the mean negative log-likelihood of the chosen completion (the SFT term of
    /// RPO-style mixtures).
    Sft,
    /// `σ(βh)(logσ(βh) − log(1 − ε)) + σ(−βh)(logσ(−βh) − log ε)` with ε = 1e-3 when the label
    /// smoothing is 0 (EXO on pairs).
    ExoPair,
    /// `−logσ(β(pc − rc)) − ½logσ(−β(pc − rc)) − ½logσ(−β(pr − rr))` (NCA on pairs).
    NcaPair,
    /// `((pc − rc) − 1/(2β))² + ((pr − rr) + 1/(2β))²` (SPPO, hard labels).
    SppoHard,
    /// `−logσ(βh)(1 − σ(βh/τ)) + exp(−βh) σ(βh/τ)` with τ = [`DpoConfig::discopop_tau`]
    /// (DiscoPOP's log-ratio modulated loss).
    Discopop,
    /// ORPO (reference-free; TRL's ORPOTrainer): `−a − β logσ(o)`, the chosen completion's mean
    /// NLL plus λ = β times the odds-ratio term, with `a = pc/lc`, `b = pr/lr` and the log odds
    /// ratio `o = (a − b) − (log(1 − eᵃ) − log(1 − eᵇ))`. TRL averages the NLL over the chosen
    /// tokens of the whole batch; here it is per pair, then over pairs (the same when lengths
    /// are equal). Pass zero reference sums.
    Orpo,
    /// AOT (alignment via optimal transport, TRL's `aot`): the policy's pair log-ratios
    /// `pc − pr` and the reference's `rc − rr` are each sorted over the batch, and the k-th
    /// smallest are paired: `d_k = sort(pc − pr)_k − sort(rc − rr)_k`, loss
    /// `−logσ(βd_k)(1 − ε) − logσ(−βd_k)ε`, averaged over k. Pair i's term is the one at its
    /// rank k. Depends on the whole batch (as in TRL: on each micro-batch).
    Aot,
    /// AOT on unpaired data (TRL's `aot_unpaired`, formerly `aot_pair`): the chosen log-ratios
    /// `pc − rc` and the rejected ones `pr − rr` are each sorted over the batch, `d_k =
    /// sort(pc − rc)_k − sort(pr − rr)_k`, loss as for [`DpoLoss::Aot`].
    AotUnpaired,
}

impl DpoLoss {
    /// Every type, in the order of the kernel's weight slots.
    pub const ALL: [DpoLoss; 16] = [
        DpoLoss::Sigmoid,
        DpoLoss::Hinge,
        DpoLoss::Ipo,
        DpoLoss::Robust,
        DpoLoss::BcoPair,
        DpoLoss::ApoZero,
        DpoLoss::ApoDown,
        DpoLoss::SigmoidNorm,
        DpoLoss::Sft,
        DpoLoss::ExoPair,
        DpoLoss::NcaPair,
        DpoLoss::SppoHard,
        DpoLoss::Discopop,
        DpoLoss::Orpo,
        DpoLoss::Aot,
        DpoLoss::AotUnpaired,
    ];

    /// The name TRL uses (`loss_type`).
    pub fn name(self) -> &'static str {
        match self {
            DpoLoss::Sigmoid => "sigmoid",
            DpoLoss::Hinge => "hinge",
            DpoLoss::Ipo => "ipo",
            DpoLoss::Robust => "robust",
            DpoLoss::BcoPair => "bco_pair",
            DpoLoss::ApoZero => "apo_zero",
            DpoLoss::ApoDown => "apo_down",
            DpoLoss::SigmoidNorm => "sigmoid_norm",
            DpoLoss::Sft => "sft",
            DpoLoss::ExoPair => "exo_pair",
            DpoLoss::NcaPair => "nca_pair",
            DpoLoss::SppoHard => "sppo_hard",
            DpoLoss::Discopop => "discopop",
            DpoLoss::Orpo => "orpo",
            DpoLoss::Aot => "aot",
            DpoLoss::AotUnpaired => "aot_unpaired",
        }
    }

    /// The weight slot of this type in the kernel's uniform (declaration order = `ALL` order).
    fn slot(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DpoLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DpoLoss {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        // `aot_pair` is TRL's earlier name of `aot_unpaired`
        let name = if s.trim() == "aot_pair" { "aot_unpaired" } else { s.trim() };
        DpoLoss::ALL.iter().copied().find(|k| k.name() == name).ok_or_else(|| {
            let names: Vec<&str> = DpoLoss::ALL.iter().map(|k| k.name()).collect();
            Error::config("DPO loss type", format!("`{s}` is not one of {}", names.join(", ")))
        })
    }
}

/// Settings of [`dpo_loss`].
#[derive(Clone, Debug)]
pub struct DpoConfig {
    /// Inverse temperature β of the implicit reward, e.g. 0.1.
    pub beta: f32,
    /// Label smoothing ε for `sigmoid` and `robust`, e.g. 0 (robust needs ε < 0.5).
    pub label_smoothing: f32,
    /// The loss: a weighted mixture `Σ weight · mean_i L_type(i)`, e.g. `[(Sigmoid, 1.0)]`.
    pub losses: Vec<(DpoLoss, f32)>,
    /// Margin γ of `sigmoid_norm`, e.g. 0.
    pub simpo_gamma: f32,
    /// Temperature τ of `discopop`'s modulation (TRL's `discopop_tau`), e.g. 0.05.
    pub discopop_tau: f32,
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig { beta: 0.1, label_smoothing: 0.0, losses: vec![(DpoLoss::Sigmoid, 1.0)], simpo_gamma: 0.0, discopop_tau: 0.05 }
    }
}

impl DpoConfig {
    /// SimPO (TRL's CPOTrainer with `loss_type="simpo"`, `cpo_alpha=0`): `−logσ(β h_norm − γ)`
    /// on length-normalised log-probs, reference-free (train with `Reference::None`). TRL's
    /// CPOConfig defaults: β = 0.1, γ = 0.5 (the SimPO paper uses β ≈ 2-2.5).
    pub fn simpo(beta: f32, gamma: f32) -> DpoConfig {
        DpoConfig { beta, losses: vec![(DpoLoss::SigmoidNorm, 1.0)], simpo_gamma: gamma, ..Default::default() }
    }

    /// ORPO (TRL's ORPOTrainer): NLL of the chosen completion plus λ times the odds-ratio term,
    /// reference-free (train with `Reference::None`). TRL's ORPOConfig default: λ = β = 0.1.
    pub fn orpo(lambda: f32) -> DpoConfig {
        DpoConfig { beta: lambda, losses: vec![(DpoLoss::Orpo, 1.0)], ..Default::default() }
    }
}

impl DpoConfig {
    /// The weight of each type in [`DpoLoss::ALL`] order (repeated types add up), after
    /// checking the settings.
    pub fn weights(&self) -> Result<[f32; 16]> {
        let bad = |what: &str, msg: String| Err(Error::config(format!("DPO {what}"), msg));
        if self.losses.is_empty() {
            return bad("losses", "at least one loss type is needed".into());
        }
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return bad("beta", format!("{} must be a positive number", self.beta));
        }
        let mut w = [0.0f32; 16];
        for &(kind, weight) in &self.losses {
            if !weight.is_finite() {
                return bad("loss weight", format!("{weight} for {kind} is not finite"));
            }
            w[kind.slot()] += weight;
        }
        let eps = self.label_smoothing;
        if !(0.0..=1.0).contains(&eps) {
            return bad("label_smoothing", format!("{eps} is not in [0, 1]"));
        }
        if w[DpoLoss::Robust.slot()] != 0.0 && eps >= 0.5 {
            return bad("label_smoothing", format!("{eps}: the robust loss needs it below 0.5"));
        }
        if !self.simpo_gamma.is_finite() {
            return bad("simpo_gamma", "must be finite".into());
        }
        if w[DpoLoss::Discopop.slot()] != 0.0 && !(self.discopop_tau.is_finite() && self.discopop_tau > 0.0) {
            return bad("discopop_tau", format!("{} must be a positive number", self.discopop_tau));
        }
        Ok(w)
    }
}

/// What [`dpo_loss`] takes from the run so far rather than from the settings: the trainer's
/// state (TRL keeps it on the trainer too, `self.running`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DpoRunState {
    /// δ of `bco_pair`: the running mean of every implicit reward seen so far, e.g. 0 at the
    /// start of a run.
    pub bco_delta: f32,
}

/// Names of the batch metrics, as TRL logs them, in the order of [`DpoMetrics::tensor`] after
/// its first element (the loss). TRL also logs `logits/chosen` and `logits/rejected`, the mean
/// logits of the completions: those need the logits, so the trainer computes them.
pub const DPO_METRIC_NAMES: [&str; 6] = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
];

/// The batch metrics of one [`dpo_loss`] call, kept on the GPU until asked for.
#[derive(Clone, Debug)]
pub struct DpoMetrics {
    stats: Tensor,
}

impl DpoMetrics {
    /// The GPU tensor `[loss, rewards/chosen, ..., logps/rejected]` (7 values; see
    /// [`DPO_METRIC_NAMES`]), for callers that accumulate metrics on the GPU.
    pub fn tensor(&self) -> &Tensor {
        &self.stats
    }

    /// Read the metrics back (submits pending work): `rewards/chosen` = mean β(pc - rc),
    /// `rewards/rejected` = mean β(pr - rr), `rewards/margins` = mean of their difference,
    /// `rewards/accuracies` = mean [β(pc - rc) > β(pr - rr)], `logps/chosen` = mean pc,
    /// `logps/rejected` = mean pr.
    pub fn read(&self) -> Result<Vec<(&'static str, f32)>> {
        let v = self.stats.to_f32_vec()?;
        Ok(DPO_METRIC_NAMES.iter().copied().zip(v[1..].iter().copied()).collect())
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PairParams {
    n: u32,
    _pad0: u32,
    beta: f32,
    eps: f32,
    gamma: f32,
    delta: f32,
    inv_n: f32,
    tau: f32,
    weights: [f32; 16],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ReduceParams {
    n: u32,
    inv_n: f32,
    _pad: [u32; 2],
}

/// Check that every per-pair input is an f32 tensor of `n` elements; returns `n`.
fn pair_count(inputs: &[(&str, &Tensor)]) -> Result<usize> {
    let n = inputs[0].1.len();
    if n == 0 || n > u32::MAX as usize / STRIDE {
        return Err(Error::shape("dpo_loss", format!("need between 1 and 2^32/{STRIDE} pairs, got {n}")));
    }
    for (what, t) in inputs {
        if t.dtype() != DType::F32 || t.len() != n {
            return Err(Error::shape("dpo_loss", format!("{what} must be f32 with {n} elements, got {:?} {:?}", t.dtype(), t.shape())));
        }
    }
    Ok(n)
}

/// The tensors [`dpo_forward`] records.
pub struct DpoForward {
    /// `[1]`: the mixture loss (a view of the first element of `stats`).
    pub loss: Tensor,
    /// `[7]`: the loss, then the metrics of [`DPO_METRIC_NAMES`].
    pub stats: Tensor,
    /// `(N, 9)`: per pair the loss, the two gradients of the batch loss, and metric terms;
    /// saved for [`dpo_backward`].
    pub pairs: Tensor,
}

/// Forward: per-pair losses and gradients (one kernel), then the batch loss and metrics (one
/// workgroup). All inputs are f32 with one element per pair. Lengths must be positive where
/// `ipo`, `sigmoid_norm`, `sft` or `orpo` is used; `orpo` needs mean log-probs below 0.
#[allow(clippy::too_many_arguments)]
pub fn dpo_forward(
    pc: &Tensor,
    pr: &Tensor,
    rc: &Tensor,
    rr: &Tensor,
    lc: &Tensor,
    lr: &Tensor,
    cfg: &DpoConfig,
    run: DpoRunState,
) -> Result<DpoForward> {
    let w = cfg.weights()?;
    if !run.bco_delta.is_finite() {
        return Err(Error::config("DPO bco_delta", format!("{} (the running mean of the rewards) is not finite", run.bco_delta)));
    }
    let n = pair_count(&[("pc", pc), ("pr", pr), ("rc", rc), ("rr", rr), ("lc", lc), ("lr", lr)])?;
    let gpu = pc.gpu();
    let inv_n = 1.0 / n as f32;
    let pp = PairParams {
        n: n as u32,
        _pad0: 0,
        beta: cfg.beta,
        eps: cfg.label_smoothing,
        gamma: cfg.simpo_gamma,
        delta: run.bco_delta,
        inv_n,
        tau: cfg.discopop_tau,
        weights: w,
    };
    let pairs = Tensor::empty(gpu, &[n, STRIDE], DType::F32, "dpo pairs")?;
    // the batch's log-ratios sorted, for aot and aot_unpaired (unread by the other types)
    let sorted = Tensor::empty(gpu, &[n, 3], DType::F32, "dpo sorted log-ratios")?;
    let binds = [pairs.binding(), pc.binding(), pr.binding(), rc.binding(), rr.binding(), lc.binding(), lr.binding(), sorted.binding()];
    if w[DpoLoss::Aot.slot()] != 0.0 || w[DpoLoss::AotUnpaired.slot()] != 0.0 {
        let sort_binds = [(2, pc.binding()), (3, pr.binding()), (4, rc.binding()), (5, rr.binding()), (8, sorted.binding())];
        gpu.dispatch_bound(&Kernel::new(&PAIRS, "dpo_sort"), bytemuck::bytes_of(&pp), &[], &sort_binds, gpu.groups_1d(n, WG))?;
    }
    gpu.dispatch(&Kernel::new(&PAIRS, "dpo_pairs"), bytemuck::bytes_of(&pp), &binds, gpu.groups_1d(n, WG))?;
    let stats = Tensor::empty(gpu, &[1 + DPO_METRIC_NAMES.len()], DType::F32, "dpo stats")?;
    let rp = ReduceParams { n: n as u32, inv_n, _pad: [0; 2] };
    gpu.dispatch(&Kernel::new(&REDUCE, "dpo_reduce"), bytemuck::bytes_of(&rp), &[stats.binding(), pairs.binding()], [1, 1, 1])?;
    Ok(DpoForward { loss: stats.view(0, &[1])?, stats, pairs })
}

/// Backward: `(d pc, d pr) = g · (stored gradients)`, with `g` the loss's upstream gradient as
/// a one-element GPU tensor.
pub fn dpo_backward(pairs: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    if g.len() != 1 || g.dtype() != DType::F32 || pairs.last_dim() != STRIDE {
        return Err(Error::shape("dpo_backward", format!("gradient {:?}, pairs {:?}", g.shape(), pairs.shape())));
    }
    let n = pairs.len() / STRIDE;
    let gpu = pairs.gpu();
    let dpc = Tensor::empty(gpu, &[n], DType::F32, "dpo d pc")?;
    let dpr = Tensor::empty(gpu, &[n], DType::F32, "dpo d pr")?;
    let rp = ReduceParams { n: n as u32, inv_n: 0.0, _pad: [0; 2] };
    let binds = [dpc.binding(), pairs.binding(), g.binding(), dpr.binding()];
    gpu.dispatch(&Kernel::new(&REDUCE, "dpo_backward"), bytemuck::bytes_of(&rp), &binds, gpu.groups_1d(n, WG))?;
    Ok((dpc, dpr))
}

/// The DPO-family loss of a batch of N preference pairs, `Σ_type weight · mean_i L_type(i)`,
/// differentiable in the policy sums `pc` (chosen) and `pr` (rejected); `rc`, `rr` are the
/// reference model's sums (zeros when reference-free), `lc`, `lr` the completion lengths. All
/// have N elements; `run` is what the trainer carries from step to step (`bco_pair`'s δ).
/// Returns the `[1]` loss and the batch metrics (on the GPU).
#[allow(clippy::too_many_arguments)]
pub fn dpo_loss(
    pc: &Var,
    pr: &Var,
    rc: &Tensor,
    rr: &Tensor,
    lc: &Tensor,
    lr: &Tensor,
    cfg: &DpoConfig,
    run: DpoRunState,
) -> Result<(Var, DpoMetrics)> {
    let f = dpo_forward(pc.tensor(), pr.tensor(), rc, rr, lc, lr, cfg, run)?;
    let (shape_c, shape_r) = (pc.shape().to_vec(), pr.shape().to_vec());
    let pairs = f.pairs;
    let loss = Var::from_op(f.loss, &[pc, pr], move |g| {
        let (dpc, dpr) = dpo_backward(&pairs, g)?;
        Ok(vec![Some(dpc.reshape(&shape_c)?), Some(dpr.reshape(&shape_r)?)])
    });
    Ok((loss, DpoMetrics { stats: f.stats }))
}

/// CPU references (f64) of every formula above, for the tests.
pub mod reference {
    use super::{DpoConfig, DpoLoss, DpoRunState};

    /// σ(x).
    pub fn sigmoid(x: f64) -> f64 {
        if x >= 0.0 {
            1.0 / (1.0 + (-x).exp())
        } else {
            x.exp() / (1.0 + x.exp())
        }
    }

    /// log σ(x), stable.
    pub fn log_sigmoid(x: f64) -> f64 {
        x.min(0.0) - (-x.abs()).exp().ln_1p()
    }

    /// One pair's inputs.
    #[derive(Clone, Copy, Debug)]
    pub struct Pair {
        pub pc: f64,
        pub pr: f64,
        pub rc: f64,
        pub rr: f64,
        pub lc: f64,
        pub lr: f64,
    }

    /// `L_kind` of one pair, straight from the formula on [`DpoLoss`]; `aot` and
    /// `aot_unpaired` as in a batch of one pair (their batches are in [`batch_losses`]).
    pub fn pair_loss(kind: DpoLoss, x: &Pair, cfg: &DpoConfig, run: DpoRunState) -> f64 {
        let (b, eps) = (cfg.beta as f64, cfg.label_smoothing as f64);
        let (sc, sr) = (x.pc - x.rc, x.pr - x.rr);
        let h = sc - sr;
        let h_norm = (x.pc / x.lc - x.rc / x.lc) - (x.pr / x.lr - x.rr / x.lr);
        match kind {
            DpoLoss::Sigmoid => -log_sigmoid(b * h) * (1.0 - eps) - log_sigmoid(-b * h) * eps,
            DpoLoss::Hinge => (1.0 - b * h).max(0.0),
            DpoLoss::Ipo => (h_norm - 1.0 / (2.0 * b)).powi(2),
            DpoLoss::Robust => (-log_sigmoid(b * h) * (1.0 - eps) + log_sigmoid(-b * h) * eps) / (1.0 - 2.0 * eps),
            DpoLoss::BcoPair => {
                let d = run.bco_delta as f64;
                -log_sigmoid(b * sc - d) - log_sigmoid(-(b * sr - d))
            }
            DpoLoss::ApoZero => (1.0 - sigmoid(b * sc)) + sigmoid(b * sr),
            DpoLoss::ApoDown => sigmoid(b * sc) + (1.0 - sigmoid(b * (sc - sr))),
            DpoLoss::SigmoidNorm => -log_sigmoid(b * h_norm - cfg.simpo_gamma as f64),
            DpoLoss::Sft => -x.pc / x.lc,
            // TRL dpo_loss "exo_pair": label_smoothing 0 becomes 1e-3
            DpoLoss::ExoPair => {
                let e = if eps == 0.0 { 1e-3 } else { eps };
                let z = b * h;
                sigmoid(z) * (log_sigmoid(z) - (1.0 - e).ln()) + sigmoid(-z) * (log_sigmoid(-z) - e.ln())
            }
            // TRL dpo_loss "nca_pair"
            DpoLoss::NcaPair => -log_sigmoid(b * sc) - 0.5 * log_sigmoid(-b * sc) - 0.5 * log_sigmoid(-b * sr),
            // TRL dpo_loss "sppo_hard": a = chosen log-ratio, b = rejected log-ratio
            DpoLoss::SppoHard => (sc - 0.5 / b).powi(2) + (sr + 0.5 / b).powi(2),
            // TRL dpo_loss "discopop": logits = β h, modulation σ(logits / τ)
            DpoLoss::Discopop => {
                let z = b * h;
                let m = sigmoid(z / cfg.discopop_tau as f64);
                -log_sigmoid(z) * (1.0 - m) + (-z).exp() * m
            }
            // TRL ORPOTrainer.odds_ratio_loss on mean log-probs, plus the chosen NLL
            DpoLoss::Orpo => {
                let (a, c) = (x.pc / x.lc, x.pr / x.lr);
                let log_odds = (a - c) - ((-a.exp()).ln_1p() - (-c.exp()).ln_1p());
                -a - b * log_sigmoid(log_odds)
            }
            // a batch of one: both sorted differences are h
            DpoLoss::Aot | DpoLoss::AotUnpaired => -log_sigmoid(b * h) * (1.0 - eps) - log_sigmoid(-b * h) * eps,
        }
    }

    /// TRL's sorted-margin losses: `−logσ(βd)(1 − ε) − logσ(−βd)ε` over `d = sort(a) − sort(b)`.
    fn sorted_margin_losses(mut a: Vec<f64>, mut b: Vec<f64>, cfg: &DpoConfig) -> Vec<f64> {
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        let (beta, eps) = (cfg.beta as f64, cfg.label_smoothing as f64);
        a.iter().zip(&b).map(|(x, y)| -log_sigmoid(beta * (x - y)) * (1.0 - eps) - log_sigmoid(-beta * (x - y)) * eps).collect()
    }

    /// The N losses of `kind` over a batch, as TRL's `dpo_loss` returns them (for `aot` and
    /// `aot_unpaired`, in sorted order, as TRL's).
    pub fn batch_losses(kind: DpoLoss, ps: &[Pair], cfg: &DpoConfig, run: DpoRunState) -> Vec<f64> {
        match kind {
            // TRL dpo_loss "aot": sort(logratios) - sort(ref_logratios)
            DpoLoss::Aot => sorted_margin_losses(ps.iter().map(|x| x.pc - x.pr).collect(), ps.iter().map(|x| x.rc - x.rr).collect(), cfg),
            // TRL dpo_loss "aot_unpaired": sort(chosen_logratios) - sort(rejected_logratios)
            DpoLoss::AotUnpaired => sorted_margin_losses(ps.iter().map(|x| x.pc - x.rc).collect(), ps.iter().map(|x| x.pr - x.rr).collect(), cfg),
            _ => ps.iter().map(|x| pair_loss(kind, x, cfg, run)).collect(),
        }
    }

    fn pairs(pc: &[f64], pr: &[f64], rc: &[f64], rr: &[f64], lc: &[f64], lr: &[f64]) -> Vec<Pair> {
        (0..pc.len()).map(|i| Pair { pc: pc[i], pr: pr[i], rc: rc[i], rr: rr[i], lc: lc[i], lr: lr[i] }).collect()
    }

    /// The batch loss `Σ weight · mean_i L_type(i)`.
    #[allow(clippy::too_many_arguments)]
    pub fn dpo_loss(pc: &[f64], pr: &[f64], rc: &[f64], rr: &[f64], lc: &[f64], lr: &[f64], cfg: &DpoConfig, run: DpoRunState) -> f64 {
        let ps = pairs(pc, pr, rc, rr, lc, lr);
        let n = ps.len() as f64;
        cfg.losses.iter().map(|&(k, w)| w as f64 * batch_losses(k, &ps, cfg, run).iter().sum::<f64>() / n).sum()
    }

    /// The metrics of [`super::DPO_METRIC_NAMES`], in order.
    pub fn dpo_metrics(pc: &[f64], pr: &[f64], rc: &[f64], rr: &[f64], cfg: &DpoConfig) -> Vec<f64> {
        let n = pc.len() as f64;
        let b = cfg.beta as f64;
        let mean = |f: &dyn Fn(usize) -> f64| (0..pc.len()).map(f).sum::<f64>() / n;
        let chosen = |i: usize| b * (pc[i] - rc[i]);
        let rejected = |i: usize| b * (pr[i] - rr[i]);
        vec![
            mean(&chosen),
            mean(&rejected),
            mean(&|i| chosen(i) - rejected(i)),
            mean(&|i| if chosen(i) > rejected(i) { 1.0 } else { 0.0 }),
            mean(&|i| pc[i]),
            mean(&|i| pr[i]),
        ]
    }
}
