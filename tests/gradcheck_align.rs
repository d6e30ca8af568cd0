//! The alignment losses against their f64 CPU formulas: DPO (every loss type and a mixture),
//! Bradley-Terry, PPO and GRPO through the gradient-check table (value, and gradient by central
//! differences of the reference); GAE, whitening, KL estimators, group advantages and every
//! metric by plain value tests.
mod common;
use common::gradcheck::{run_table, Case, Input};
use common::{assert_close, rand_vec};
use plumb::ops::dpo::{self, reference as dref, DpoConfig, DpoLoss, DpoRunState};
use plumb::ops::ppo::{self, reference as pref, KlKind, PpoLossConfig};
use plumb::ops::reward::{self, reference as rref};
use plumb::{Tape, Tensor, Var};

/// A float input whose gradient is checked, uniform in [lo, hi).
fn grad(shape: &[usize], lo: f32, hi: f32) -> Input {
    Input::range(shape, lo, hi)
}

/// A float input without gradient, uniform in [lo, hi).
fn constant(shape: &[usize], lo: f32, hi: f32) -> Input {
    Input::Float { shape: shape.to_vec(), lo, hi, grad: false }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// A ragged (B, T) mask: full rows, right padding, left padding, holes and (for B >= 5) an
/// all-zero row.
fn ragged_mask(b: usize, t: usize) -> Vec<f32> {
    let mut m = vec![0.0; b * t];
    for r in 0..b {
        for j in 0..t {
            let on = match r % 5 {
                0 => true,
                1 => j < t.div_ceil(2),
                2 => j >= t / 3,
                3 => j % 3 != 1,
                _ => false,
            };
            m[r * t + j] = on as u8 as f32;
        }
    }
    if b < 5 {
        m[(b - 1) * t] = 1.0; // keep at least one valid token in the last row
    }
    m
}

/// bco_pair's δ in every DPO case: the trainer's running mean of the rewards, non-zero here.
const RUN: DpoRunState = DpoRunState { bco_delta: 0.2 };

fn dpo_case(name: String, n: usize, cfg: DpoConfig) -> Case {
    let cpu_cfg = cfg.clone();
    // Sums of per-token log-probs over 3..30 tokens; β h spans both signs of every kink.
    let inputs = vec![
        grad(&[n], -40.0, -5.0),
        grad(&[n], -40.0, -5.0),
        constant(&[n], -40.0, -5.0),
        constant(&[n], -40.0, -5.0),
        constant(&[n], 3.0, 30.0),
        constant(&[n], 3.0, 30.0),
    ];
    Case::new(
        name,
        inputs,
        move |v| Ok(dpo::dpo_loss(&v[0], &v[1], v[2].tensor(), v[3].tensor(), v[4].tensor(), v[5].tensor(), &cfg, RUN)?.0),
        move |d| vec![dref::dpo_loss(&d[0], &d[1], &d[2], &d[3], &d[4], &d[5], &cpu_cfg, RUN)],
    )
    .tol((1e-5, 1e-4), (1e-8, 2e-3))
}

#[test]
fn dpo_table() {
    let Some(gpu) = common::gpu() else { return };
    let mut cases = Vec::new();
    for kind in DpoLoss::ALL {
        // aot's sort makes the loss piecewise: a finite difference across a near-tie of two
        // log-ratios mixes two ranks, so its large batches are checked against the sort's
        // gradient in `dpo_aot_gradient_is_the_sorts` instead
        let sizes: &[usize] = if matches!(kind, DpoLoss::Aot | DpoLoss::AotUnpaired) { &[1, 7] } else { &[1, 7, 33] };
        for &n in sizes {
            let eps = if matches!(kind, DpoLoss::Sigmoid | DpoLoss::Robust) { 0.1 } else { 0.0 };
            let cfg = DpoConfig { beta: 0.1, label_smoothing: eps, losses: vec![(kind, 1.0)], simpo_gamma: 0.3, ..Default::default() };
            cases.push(dpo_case(format!("dpo {kind} n={n}"), n, cfg));
        }
    }
    cases.push(dpo_case("dpo sigmoid eps=0 beta=0.5 n=33".into(), 33, DpoConfig { beta: 0.5, ..Default::default() }));
    // TRL's remaining pair losses at other settings: exo_pair with its own ε, discopop at a
    // softer τ, ORPO at SimPO-like β, and an MPO-style mixture with arbitrary loss_weights.
    let exo = DpoConfig { label_smoothing: 0.2, losses: vec![(DpoLoss::ExoPair, 1.0)], ..Default::default() };
    cases.push(dpo_case("dpo exo_pair eps=0.2 n=33".into(), 33, exo));
    let disco = DpoConfig { beta: 0.3, discopop_tau: 0.5, losses: vec![(DpoLoss::Discopop, 1.0)], ..Default::default() };
    cases.push(dpo_case("dpo discopop tau=0.5 beta=0.3 n=33".into(), 33, disco));
    cases.push(dpo_case("dpo orpo lambda=1 n=33".into(), 33, DpoConfig::orpo(1.0)));
    // aot / aot_unpaired pair log-ratios by rank over the batch (TRL's torch.sort): with label
    // smoothing, and mixed with sigmoid so that the sorted and unsorted terms add up
    for kind in [DpoLoss::Aot, DpoLoss::AotUnpaired] {
        let cfg = DpoConfig { beta: 0.3, label_smoothing: 0.1, losses: vec![(kind, 1.0)], ..Default::default() };
        cases.push(dpo_case(format!("dpo {kind} eps=0.1 beta=0.3 n=7"), 7, cfg));
        let cfg = DpoConfig { losses: vec![(DpoLoss::Sigmoid, 0.5), (kind, 0.7)], ..Default::default() };
        cases.push(dpo_case(format!("dpo mixture sigmoid:0.5 {kind}:0.7 n=7"), 7, cfg));
    }
    cases.push(dpo_case("dpo simpo beta=2 gamma=0.5 n=33".into(), 33, DpoConfig::simpo(2.0, 0.5)));
    let mpo = DpoConfig {
        losses: vec![(DpoLoss::Sigmoid, 0.8), (DpoLoss::NcaPair, 0.3), (DpoLoss::SppoHard, 0.05), (DpoLoss::Sft, 1.0), (DpoLoss::ExoPair, 0.2)],
        ..Default::default()
    };
    cases.push(dpo_case("dpo mixture sigmoid:0.8 nca_pair:0.3 sppo_hard:0.05 sft:1 exo_pair:0.2 n=33".into(), 33, mpo));
    for n in [7usize, 33] {
        let cfg = DpoConfig { losses: vec![(DpoLoss::Sigmoid, 1.0), (DpoLoss::Sft, 0.5)], ..Default::default() };
        cases.push(dpo_case(format!("dpo sigmoid + 0.5 sft n={n}"), n, cfg));
        let cfg = DpoConfig {
            losses: vec![(DpoLoss::Hinge, 0.3), (DpoLoss::Ipo, 0.2), (DpoLoss::ApoDown, 1.0), (DpoLoss::Hinge, 0.7)],
            ..Default::default()
        };
        cases.push(dpo_case(format!("dpo hinge + ipo + apo_down (hinge twice) n={n}"), n, cfg));
    }
    run_table(&gpu, "dpo", &cases);
}

#[test]
fn dpo_metrics_and_config() {
    let Some(gpu) = common::gpu() else { return };
    let n = 70; // more pairs than threads of the reduction
    let (pc, pr) = (rand_vec(n, 11, -40.0, -5.0), rand_vec(n, 12, -40.0, -5.0));
    let (rc, rr) = (rand_vec(n, 13, -40.0, -5.0), rand_vec(n, 14, -40.0, -5.0));
    let (lc, lr) = (rand_vec(n, 15, 3.0, 30.0), rand_vec(n, 16, 3.0, 30.0));
    let t = |x: &[f32]| Tensor::from_f32(&gpu, x, &[n]).unwrap();
    let cfg = DpoConfig { beta: 0.2, losses: vec![(DpoLoss::Sigmoid, 1.0), (DpoLoss::Sft, 0.25)], ..Default::default() };
    let tape = Tape::new();
    let (vc, vr) = (tape.var(t(&pc)), tape.var(t(&pr)));
    let (loss, metrics) = dpo::dpo_loss(&vc, &vr, &t(&rc), &t(&rr), &t(&lc), &t(&lr), &cfg, DpoRunState::default()).unwrap();
    let (pc, pr, rc, rr, lc, lr) = (f64s(&pc), f64s(&pr), f64s(&rc), f64s(&rr), f64s(&lc), f64s(&lr));
    let want_loss = dref::dpo_loss(&pc, &pr, &rc, &rr, &lc, &lr, &cfg, DpoRunState::default());
    assert_close("dpo loss", &loss.to_f32_vec().unwrap(), &[want_loss], 1e-5, 1e-5);
    let got = metrics.read().unwrap();
    let names: Vec<&str> = got.iter().map(|m| m.0).collect();
    assert_eq!(names, dpo::DPO_METRIC_NAMES);
    let values: Vec<f32> = got.iter().map(|m| m.1).collect();
    let want = dref::dpo_metrics(&pc, &pr, &rc, &rr, &cfg);
    assert_close("dpo metrics", &values, &want, 1e-5, 1e-5);
    assert!(want[3] > 0.0 && want[3] < 1.0, "accuracy should be strictly between 0 and 1 here");
    // Backward from the loss itself (seed 1): the gradient of sft alone would be -0.25/(N lc).
    let grads = tape.backward(&loss).unwrap();
    let dpc = grads.get(&vc).unwrap().to_f32_vec().unwrap();
    let want_dpc: Vec<f64> = (0..n)
        .map(|i| {
            let h = (pc[i] - rc[i]) - (pr[i] - rr[i]);
            (-0.2 * dref::sigmoid(-0.2 * h) - 0.25 / lc[i]) / n as f64
        })
        .collect();
    assert_close("dpo d pc", &dpc, &want_dpc, 1e-8, 1e-4);

    // Names parse both ways; bad names and settings are errors, not panics.
    for kind in DpoLoss::ALL {
        assert_eq!(kind.name().parse::<DpoLoss>().unwrap(), kind);
    }
    assert!("simpo".parse::<DpoLoss>().is_err());
    let bad = [
        DpoConfig { beta: 0.0, ..Default::default() },
        DpoConfig { losses: vec![], ..Default::default() },
        DpoConfig { losses: vec![(DpoLoss::Robust, 1.0)], label_smoothing: 0.5, ..Default::default() },
    ];
    for cfg in bad {
        assert!(dpo::dpo_loss(&vc, &vr, &t(&[0.0; 70]), &t(&[0.0; 70]), &t(&[1.0; 70]), &t(&[1.0; 70]), &cfg, DpoRunState::default()).is_err());
    }
    let (zeros, ones) = (t(&[0.0; 70]), t(&[1.0; 70]));
    let not_finite = DpoRunState { bco_delta: f32::NAN };
    assert!(dpo::dpo_loss(&vc, &vr, &zeros, &zeros, &ones, &ones, &DpoConfig::default(), not_finite).is_err());
    let short = Tensor::from_f32(&gpu, &[0.0; 3], &[3]).unwrap();
    assert!(dpo::dpo_loss(&vc, &vr, &short, &zeros, &ones, &ones, &DpoConfig::default(), DpoRunState::default()).is_err());
}

#[test]
fn dpo_aot_gradient_is_the_sorts() {
    // aot / aot_unpaired over 70 pairs against the f64 loss (TRL's torch.sort) and the gradient
    // autograd takes through a sort: each sorted position's derivative goes back to the pair
    // that sits there
    let Some(gpu) = common::gpu() else { return };
    let n = 70;
    let (pc, pr) = (rand_vec(n, 61, -40.0, -5.0), rand_vec(n, 62, -40.0, -5.0));
    let (rc, rr) = (rand_vec(n, 63, -40.0, -5.0), rand_vec(n, 64, -40.0, -5.0));
    let ones = vec![1.0f32; n];
    let t = |x: &[f32]| Tensor::from_f32(&gpu, x, &[n]).unwrap();
    let (beta, eps) = (0.2f64, 0.1f64);
    let argsort = |v: &[f64]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        idx
    };
    let d_loss = |d: f64| beta * (-(1.0 - eps) * dref::sigmoid(-beta * d) + eps * dref::sigmoid(beta * d));
    let (fc, fr, frc, frr) = (f64s(&pc), f64s(&pr), f64s(&rc), f64s(&rr));
    for kind in [DpoLoss::Aot, DpoLoss::AotUnpaired] {
        let cfg = DpoConfig { beta: beta as f32, label_smoothing: eps as f32, losses: vec![(kind, 1.0)], ..Default::default() };
        let tape = Tape::new();
        let (vc, vr) = (tape.var(t(&pc)), tape.var(t(&pr)));
        let (loss, _) = dpo::dpo_loss(&vc, &vr, &t(&rc), &t(&rr), &t(&ones), &t(&ones), &cfg, DpoRunState::default()).unwrap();
        let want = dref::dpo_loss(&fc, &fr, &frc, &frr, &f64s(&ones), &f64s(&ones), &cfg, DpoRunState::default());
        assert_close(&format!("{kind} loss"), &loss.to_f32_vec().unwrap(), &[want], 1e-5, 1e-5);
        let (a, b): (Vec<f64>, Vec<f64>) = match kind {
            DpoLoss::Aot => ((0..n).map(|i| fc[i] - fr[i]).collect(), (0..n).map(|i| frc[i] - frr[i]).collect()),
            _ => ((0..n).map(|i| fc[i] - frc[i]).collect(), (0..n).map(|i| fr[i] - frr[i]).collect()),
        };
        let (ia, ib) = (argsort(&a), argsort(&b));
        let (mut gc, mut gr) = (vec![0.0; n], vec![0.0; n]);
        for k in 0..n {
            let g = d_loss(a[ia[k]] - b[ib[k]]) / n as f64;
            match kind {
                DpoLoss::Aot => {
                    gc[ia[k]] += g; // a = pc − pr
                    gr[ia[k]] -= g;
                }
                _ => {
                    gc[ia[k]] += g; // a = pc − rc, b = pr − rr
                    gr[ib[k]] -= g;
                }
            }
        }
        let grads = tape.backward(&loss).unwrap();
        assert_close(&format!("{kind} d pc"), &grads.get(&vc).unwrap().to_f32_vec().unwrap(), &gc, 1e-8, 1e-4);
        assert_close(&format!("{kind} d pr"), &grads.get(&vr).unwrap().to_f32_vec().unwrap(), &gr, 1e-8, 1e-4);
    }
    // the name TRL used before aot_unpaired still parses
    assert_eq!("aot_pair".parse::<DpoLoss>().unwrap(), DpoLoss::AotUnpaired);
}

#[test]
fn bradley_terry_table_and_metrics() {
    let Some(gpu) = common::gpu() else { return };
    let mut cases = Vec::new();
    for n in [1usize, 7, 33] {
        for (with_margin, mu) in [(false, 0.0f32), (true, 0.0), (true, 0.01), (false, 0.1)] {
            let mut inputs = vec![grad(&[n], -3.0, 3.0), grad(&[n], -3.0, 3.0)];
            if with_margin {
                inputs.push(constant(&[n], 0.0, 1.0));
            }
            cases.push(
                Case::new(
                    format!("bradley_terry n={n} margin={with_margin} mu={mu}"),
                    inputs,
                    move |v| Ok(reward::bradley_terry(&v[0], &v[1], v.get(2).map(|m| m.tensor()), mu)?.0),
                    move |d| vec![rref::bradley_terry(&d[0], &d[1], d.get(2).map(|m| &m[..]).unwrap_or(&[]), mu as f64)],
                )
                .tol((1e-5, 1e-4), (1e-8, 2e-3)),
            );
        }
    }
    run_table(&gpu, "reward", &cases);

    let n = 130;
    let (c, r, m) = (rand_vec(n, 21, -3.0, 3.0), rand_vec(n, 22, -3.0, 3.0), rand_vec(n, 23, 0.0, 1.0));
    let t = |x: &[f32]| Tensor::from_f32(&gpu, x, &[n]).unwrap();
    let (loss, metrics) = reward::bradley_terry(&Var::constant(t(&c)), &Var::constant(t(&r)), Some(&t(&m)), 0.05).unwrap();
    let (c, r, m) = (f64s(&c), f64s(&r), f64s(&m));
    assert_close("bt loss", &loss.to_f32_vec().unwrap(), &[rref::bradley_terry(&c, &r, &m, 0.05)], 1e-5, 1e-5);
    let got = metrics.read().unwrap();
    assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), reward::REWARD_METRIC_NAMES);
    let values: Vec<f32> = got.iter().map(|m| m.1).collect();
    assert_close("bt metrics", &values, &rref::metrics(&c, &r), 1e-5, 1e-5);
    assert!(reward::bradley_terry(&Var::constant(t(&[0.0; 130])), &Var::constant(Tensor::from_f32(&gpu, &[0.0; 3], &[3]).unwrap()), None, 0.0).is_err());
}

#[test]
fn gae_whiten_kl_group_advantages() {
    let Some(gpu) = common::gpu() else { return };
    // GAE over ragged masks; B = 70 spans two workgroups of sequences.
    let (b, t) = (70usize, 13usize);
    let rewards = rand_vec(b * t, 31, -1.0, 1.0);
    let values = rand_vec(b * t, 32, -1.0, 1.0);
    let mask = ragged_mask(b, t);
    let up = |x: &[f32]| Tensor::from_f32(&gpu, x, &[b, t]).unwrap();
    let (adv, ret) = ppo::gae(&up(&rewards), &up(&values), &up(&mask), 0.99, 0.95).unwrap();
    let (want_adv, want_ret) = pref::gae(&f64s(&rewards), &f64s(&values), &f64s(&mask), t, 0.99, 0.95);
    let (got_adv, got_ret) = (adv.to_f32_vec().unwrap(), ret.to_f32_vec().unwrap());
    assert_close("gae advantages", &got_adv, &want_adv, 1e-5, 1e-4);
    assert_close("gae returns", &got_ret, &want_ret, 1e-5, 1e-4);
    // The reference agrees with TRL's loop (padded values and rewards zeroed, no skipping) on
    // rows whose valid tokens form a prefix (row kinds 0 and 1 of ragged_mask).
    for row in (0..b).filter(|r| r % 5 < 2) {
        let (mut next_v, mut last) = (0.0f64, 0.0f64);
        for j in (0..t).rev() {
            let i = row * t + j;
            let (m, v) = (mask[i] as f64, values[i] as f64 * mask[i] as f64);
            let delta = rewards[i] as f64 * m + 0.99 * next_v - v;
            last = delta + 0.99 * 0.95 * last;
            next_v = v;
            if m != 0.0 {
                assert!((last - want_adv[i]).abs() < 1e-9, "row {row} token {j}: TRL {last} vs reference {}", want_adv[i]);
            }
        }
    }

    // Whitening with and without the mean shifted back; the valid tokens come out with mean 0
    // and unbiased variance 1.
    let x = rand_vec(b * t, 33, -3.0, 5.0);
    for shift in [true, false] {
        let got = ppo::whiten(&up(&x), &up(&mask), shift).unwrap().to_f32_vec().unwrap();
        assert_close(&format!("whiten shift_mean={shift}"), &got, &pref::whiten(&f64s(&x), &f64s(&mask), shift), 1e-5, 1e-4);
        if shift {
            let valid: Vec<f64> = got.iter().zip(&mask).filter(|(_, &m)| m != 0.0).map(|(&v, _)| v as f64).collect();
            let k = valid.len() as f64;
            let mean = valid.iter().sum::<f64>() / k;
            let var = valid.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1.0);
            assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4, "whitened mean {mean}, var {var}");
        }
    }

    // KL estimators, including differences small enough that k3 would cancel.
    let logp = rand_vec(b * t, 34, -6.0, -0.1);
    let mut refp = rand_vec(b * t, 35, -6.0, -0.1);
    for (i, r) in refp.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
        *r = logp[i] + 1e-3 * ((i % 7) as f32 - 3.0);
    }
    for kind in [KlKind::K1, KlKind::K3] {
        let got = ppo::kl_penalty(&up(&logp), &up(&refp), kind).unwrap().to_f32_vec().unwrap();
        let want = pref::kl_penalty(&f64s(&logp), &f64s(&refp), kind);
        assert_close(&format!("kl {kind:?}"), &got, &want, 1e-6, 1e-4);
        if kind == KlKind::K3 {
            // Where logp and ref are 1e-3 apart, k3 ~ 5e-7 must be right to 1e-3 relative.
            for i in (0..b * t).step_by(3) {
                let e = (got[i] as f64 - want[i]).abs();
                assert!(e <= 1e-10 + 1e-3 * want[i].abs(), "k3 element {i}: {} vs {}", got[i], want[i]);
            }
        }
    }
    assert_eq!("k3".parse::<KlKind>().unwrap(), KlKind::K3);
    assert!("k2".parse::<KlKind>().is_err());

    // GRPO group advantages: 70 groups of 4 (two workgroups of groups), 3 groups of 2.
    for (groups, size) in [(70usize, 4usize), (3, 2)] {
        let r = rand_vec(groups * size, 36, 0.0, 1.0);
        let rt = Tensor::from_f32(&gpu, &r, &[groups * size]).unwrap();
        for scale in [true, false] {
            let got = ppo::group_advantages(&rt, size, scale).unwrap().to_f32_vec().unwrap();
            let want = pref::group_advantages(&f64s(&r), size, scale);
            assert_close(&format!("group advantages {groups}x{size} scale={scale}"), &got, &want, 1e-5, 1e-4);
        }
    }
    let rt = Tensor::from_f32(&gpu, &[0.0; 6], &[6]).unwrap();
    assert!(ppo::group_advantages(&rt, 4, true).is_err());
    assert!(ppo::group_advantages(&rt, 1, true).is_err());
    assert!(ppo::gae(&rt, &rt, &rt, 1.0, 1.0).is_err());
}

/// PPO inputs: (logp, old_logp, advantages, values, old_values, returns, mask) with ratios in
/// [e^-1.5, e^1.5] and value moves up to ±2, so both sides of both clips occur.
fn ppo_inputs(b: usize, t: usize) -> Vec<Input> {
    let s = [b, t];
    vec![
        grad(&s, -2.0, -0.5),
        constant(&s, -2.0, -0.5),
        constant(&s, -1.0, 1.0),
        grad(&s, -1.0, 1.0),
        constant(&s, -1.0, 1.0),
        constant(&s, -1.0, 1.0),
        Input::Fixed { shape: s.to_vec(), data: ragged_mask(b, t) },
    ]
}

#[test]
fn ppo_table_and_metrics() {
    let Some(gpu) = common::gpu() else { return };
    let mut cases = Vec::new();
    for (b, t) in [(1usize, 1usize), (2, 7), (6, 33)] {
        let cfg = PpoLossConfig::default();
        let cpu_cfg = cfg.clone();
        cases.push(
            Case::new(
                format!("ppo loss {b}x{t}"),
                ppo_inputs(b, t),
                move |v| {
                    let x = |k: usize| v[k].tensor();
                    Ok(ppo::ppo_loss(&v[0], x(1), x(2), &v[3], x(4), x(5), x(6), &cfg)?.0)
                },
                move |d| vec![pref::ppo(&d[0], &d[1], &d[2], &d[3], &d[4], &d[5], &d[6], &cpu_cfg)[0]],
            )
            .tol((1e-5, 1e-4), (1e-8, 2e-3)),
        );
    }
    run_table(&gpu, "ppo", &cases);

    // Metrics on a batch drawn like the table's, checking both regions of both clips occur.
    let (b, t) = (70usize, 29usize);
    let n = b * t;
    let data = [
        rand_vec(n, 41, -2.0, -0.5),
        rand_vec(n, 42, -2.0, -0.5),
        rand_vec(n, 43, -1.0, 1.0),
        rand_vec(n, 44, -1.0, 1.0),
        rand_vec(n, 45, -1.0, 1.0),
        rand_vec(n, 46, -1.0, 1.0),
        ragged_mask(b, t),
    ];
    let up: Vec<Tensor> = data.iter().map(|x| Tensor::from_f32(&gpu, x, &[b, t]).unwrap()).collect();
    let cfg = PpoLossConfig { vf_coef: 0.5, ..Default::default() };
    let (loss, metrics) =
        ppo::ppo_loss(&Var::constant(up[0].clone()), &up[1], &up[2], &Var::constant(up[3].clone()), &up[4], &up[5], &up[6], &cfg)
            .unwrap();
    let d: Vec<Vec<f64>> = data.iter().map(|x| f64s(x)).collect();
    let want = pref::ppo(&d[0], &d[1], &d[2], &d[3], &d[4], &d[5], &d[6], &cfg);
    assert_close("ppo loss", &loss.to_f32_vec().unwrap(), &want[..1], 1e-5, 1e-5);
    let got = metrics.read().unwrap();
    assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), ppo::PPO_METRIC_NAMES);
    let values: Vec<f32> = got.iter().map(|m| m.1).collect();
    assert_close("ppo metrics", &values, &want[1..], 1e-5, 1e-5);
    for (what, frac) in [("policy", want[2]), ("value", want[5])] {
        assert!(frac > 0.05 && frac < 0.95, "{what} clip fraction {frac}: inputs should hit both regions");
    }
    let bad = Tensor::from_f32(&gpu, &[0.0; 3], &[3]).unwrap();
    let lp = Var::constant(up[0].clone());
    assert!(ppo::ppo_loss(&lp, &bad, &up[2], &lp, &up[4], &up[5], &up[6], &cfg).is_err());
}

#[test]
fn grpo_table_and_metrics() {
    let Some(gpu) = common::gpu() else { return };
    let mut cases = Vec::new();
    for (b, t) in [(1usize, 5usize), (3, 7), (6, 33)] {
        for with_ref in [false, true] {
            let beta = if with_ref { 0.04 } else { 0.0 };
            let s = [b, t];
            let mut inputs = vec![
                grad(&s, -2.0, -0.5),
                constant(&s, -2.0, -0.5),
                constant(&[b], -1.5, 1.5),
                Input::Fixed { shape: s.to_vec(), data: ragged_mask(b, t) },
            ];
            if with_ref {
                inputs.push(constant(&s, -2.5, 0.0));
            }
            cases.push(
                Case::new(
                    format!("grpo loss {b}x{t} ref={with_ref}"),
                    inputs,
                    move |v| Ok(ppo::grpo_loss(&v[0], v[1].tensor(), v.get(4).map(|r| r.tensor()), v[2].tensor(), v[3].tensor(), 0.2, beta)?.0),
                    move |d| {
                        let r = d.get(4).map(|r| &r[..]).unwrap_or(&[]);
                        vec![pref::grpo(&d[0], &d[1], r, &d[2], &d[3], t, 0.2, beta as f64)[0]]
                    },
                )
                .tol((1e-5, 1e-4), (1e-8, 2e-3)),
            );
        }
    }
    run_table(&gpu, "grpo", &cases);

    let (b, t) = (70usize, 17usize);
    let n = b * t;
    let (logp, old, refp) = (rand_vec(n, 51, -2.0, -0.5), rand_vec(n, 52, -2.0, -0.5), rand_vec(n, 53, -2.5, 0.0));
    let (adv, mask) = (rand_vec(b, 54, -1.5, 1.5), ragged_mask(b, t));
    let up = |x: &[f32]| Tensor::from_f32(&gpu, x, &[b, t]).unwrap();
    let advt = Tensor::from_f32(&gpu, &adv, &[b]).unwrap();
    for with_ref in [true, false] {
        let r = up(&refp);
        let beta = if with_ref { 0.1 } else { 0.0 };
        let (loss, metrics) =
            ppo::grpo_loss(&Var::constant(up(&logp)), &up(&old), with_ref.then_some(&r), &advt, &up(&mask), 0.2, beta).unwrap();
        let rr = if with_ref { f64s(&refp) } else { vec![] };
        let want = pref::grpo(&f64s(&logp), &f64s(&old), &rr, &f64s(&adv), &f64s(&mask), t, 0.2, beta as f64);
        assert_close("grpo loss", &loss.to_f32_vec().unwrap(), &want[..1], 1e-5, 1e-5);
        let got = metrics.read().unwrap();
        let names: Vec<&str> = got.iter().map(|m| m.0).collect();
        let values: Vec<f32> = got.iter().map(|m| m.1).collect();
        if with_ref {
            assert_eq!(names, ppo::GRPO_METRIC_NAMES);
            assert_close("grpo metrics", &values, &want[1..], 1e-5, 1e-5);
        } else {
            assert_eq!(names, ppo::GRPO_METRIC_NAMES[1..]);
            assert_close("grpo metrics", &values, &want[2..], 1e-5, 1e-5);
        }
        assert!(want[2] > 0.0 && want[3] > 0.0, "both clip sides should occur: {want:?}");
    }
    // A KL weight without a reference, and advantages of the wrong length, are errors.
    let lp = Var::constant(up(&logp));
    assert!(ppo::grpo_loss(&lp, &up(&old), None, &advt, &up(&mask), 0.2, 0.1).is_err());
    assert!(ppo::grpo_loss(&lp, &up(&old), None, &up(&old), &up(&mask), 0.2, 0.0).is_err());
}

/// Labels 1, 0, 1, 1, 0, ... (both kinds present from n = 2).
fn kto_labels(n: usize) -> Vec<f32> {
    (0..n).map(|i| f32::from(u8::from(i % 3 != 1))).collect()
}

#[test]
fn kto_table_and_metrics() {
    use plumb::ops::kto::{self, reference as kref, KtoConfig, KtoLoss};
    let Some(gpu) = common::gpu() else { return };
    let mut cases = Vec::new();
    // kl_ref below kl_policy: z0 > 0; above: the clamp makes z0 = 0.
    for (loss_type, kl_shift) in [(KtoLoss::Kto, -3.0f32), (KtoLoss::Kto, 3.0), (KtoLoss::ApoZeroUnpaired, 0.0)] {
        for n in [1usize, 7, 70] {
            for (wd, wu) in [(1.0f32, 1.0f32), (1.33, 0.5)] {
                let cfg = KtoConfig { beta: 0.1, loss_type, desirable_weight: wd, undesirable_weight: wu };
                let cpu_cfg = cfg.clone();
                let m = n + 2; // mismatched rows need not be as many as rows
                let inputs = vec![
                    grad(&[n], -40.0, -5.0),
                    constant(&[n], -40.0, -5.0),
                    Input::Fixed { shape: vec![n], data: kto_labels(n) },
                    constant(&[m], -30.0, -10.0),
                    constant(&[m], -30.0 + kl_shift, -10.0 + kl_shift),
                ];
                cases.push(
                    Case::new(
                        format!("kto {loss_type} n={n} kl_shift={kl_shift} w=({wd},{wu})"),
                        inputs,
                        move |v| Ok(kto::kto_loss(&v[0], v[1].tensor(), v[2].tensor(), Some((v[3].tensor(), v[4].tensor())), &cfg)?.0),
                        move |d| vec![kref::kto_loss(&d[0], &d[1], &d[2], &d[3], &d[4], &cpu_cfg)],
                    )
                    .tol((1e-5, 1e-4), (1e-8, 2e-3)),
                );
            }
        }
    }
    run_table(&gpu, "kto", &cases);

    // Metrics and the gradient of the loss itself, over more rows than threads.
    let n = 150;
    let (lp, rp, lab) = (rand_vec(n, 61, -40.0, -5.0), rand_vec(n, 62, -40.0, -5.0), kto_labels(n));
    let (kp, kr) = (rand_vec(n, 63, -30.0, -10.0), rand_vec(n, 64, -33.0, -13.0));
    let t = |x: &[f32]| Tensor::from_f32(&gpu, x, &[x.len()]).unwrap();
    for loss_type in KtoLoss::ALL {
        let cfg = KtoConfig { beta: 0.2, loss_type, desirable_weight: 1.5, undesirable_weight: 0.7 };
        let tape = Tape::new();
        let v = tape.var(t(&lp));
        let (loss, metrics) = kto::kto_loss(&v, &t(&rp), &t(&lab), Some((&t(&kp), &t(&kr))), &cfg).unwrap();
        let (lp64, rp64, lab64, kp64, kr64) = (f64s(&lp), f64s(&rp), f64s(&lab), f64s(&kp), f64s(&kr));
        let want = kref::kto_stats(&lp64, &rp64, &lab64, &kp64, &kr64, &cfg);
        assert_close("kto stats", &metrics.tensor().to_f32_vec().unwrap(), &want, 1e-4, 1e-5);
        let s = metrics.read().unwrap();
        assert_eq!((s.count_chosen, s.count_rejected), (100.0, 50.0));
        assert_eq!(s.kl > 0.0, loss_type == KtoLoss::Kto, "kl {}", s.kl);
        let grads = tape.backward(&loss).unwrap();
        let d = grads.get(&v).unwrap().to_f32_vec().unwrap();
        let z0 = kref::kl_estimate(&kp64, &kr64) * f64::from(u8::from(loss_type == KtoLoss::Kto));
        let want_d: Vec<f64> = (0..n)
            .map(|i| {
                let h = 1e-6;
                let f = |x: f64| kref::row_loss(x, rp64[i], lab64[i] > 0.5, z0, &cfg);
                (f(lp64[i] + h) - f(lp64[i] - h)) / (2.0 * h) / n as f64
            })
            .collect();
        assert_close("kto d logp", &d, &want_d, 1e-7, 1e-3);
    }
    // Bad settings and shapes: errors, not panics.
    let v = Var::constant(t(&lp));
    let kl = Some((&t(&kp), &t(&kr)));
    assert!(kto::kto_loss(&v, &t(&rp), &t(&lab), None, &KtoConfig::default()).is_err(), "kto without KL rows");
    assert!(kto::kto_loss(&v, &t(&rp[..3]), &t(&lab), kl, &KtoConfig::default()).is_err());
    assert!(kto::kto_loss(&v, &t(&rp), &t(&lab), kl, &KtoConfig { beta: 0.0, ..Default::default() }).is_err());
    assert!(kto::kto_loss(&v, &t(&rp), &t(&lab), kl, &KtoConfig { desirable_weight: -1.0, ..Default::default() }).is_err());
    assert!("kto".parse::<KtoLoss>().is_ok() && "apo_zero_unpaired".parse::<KtoLoss>().is_ok() && "sigmoid".parse::<KtoLoss>().is_err());
}

#[test]
fn grpo_variants_table() {
    use plumb::ops::grpo::{self, reference as gref, GrpoLossConfig, GrpoLossType, ImportanceLevel};
    let Some(gpu) = common::gpu() else { return };
    let mut cases = Vec::new();
    for loss_type in GrpoLossType::ALL {
        for level in [ImportanceLevel::Token, ImportanceLevel::Sequence] {
            for (b, t, beta, eps_high) in [(3usize, 5usize, 0.0f32, 0.2f32), (6, 7, 0.1, 0.28)] {
                let cfg = GrpoLossConfig { loss_type, importance_sampling_level: level, epsilon: 0.2, epsilon_high: eps_high, beta, max_completion_length: t + 2 };
                let cpu_cfg = cfg.clone();
                let s = [b, t];
                let mut inputs = vec![
                    grad(&s, -2.0, -0.5),
                    constant(&s, -2.0, -0.5),
                    constant(&[b], -1.5, 1.5),
                    Input::Fixed { shape: s.to_vec(), data: ragged_mask(b, t) },
                ];
                if beta != 0.0 {
                    inputs.push(constant(&s, -2.5, 0.0));
                }
                cases.push(
                    Case::new(
                        format!("grpo {} {level:?} {b}x{t} beta={beta} eps_high={eps_high}", loss_type.name()),
                        inputs,
                        move |v| Ok(grpo::grpo_variant_loss(&v[0], v[1].tensor(), v.get(4).map(|r| r.tensor()), v[2].tensor(), v[3].tensor(), &cfg)?.0),
                        move |d| {
                            let r = d.get(4).map(|x| &x[..]).unwrap_or(&[]);
                            vec![gref::grpo_variant(&d[0], &d[1], r, &d[2], &d[3], &cpu_cfg)[0]]
                        },
                    )
                    .tol((1e-5, 1e-4), (1e-8, 2e-3)),
                );
            }
        }
    }
    run_table(&gpu, "grpo variants", &cases);

    // Metrics against the reference, more tokens than threads; π_old ≠ π so clipping occurs.
    let (b, t) = (70usize, 17usize);
    let n = b * t;
    let (logp, old, refp) = (rand_vec(n, 71, -2.0, -0.5), rand_vec(n, 72, -2.0, -0.5), rand_vec(n, 73, -2.5, 0.0));
    let (adv, mask) = (rand_vec(b, 74, -1.5, 1.5), ragged_mask(b, t));
    let up = |x: &[f32]| Tensor::from_f32(&gpu, x, &[b, t]).unwrap();
    let advt = Tensor::from_f32(&gpu, &adv, &[b]).unwrap();
    for loss_type in GrpoLossType::ALL {
        for level in [ImportanceLevel::Token, ImportanceLevel::Sequence] {
            let cfg = GrpoLossConfig { loss_type, importance_sampling_level: level, epsilon_high: 0.28, beta: 0.04, max_completion_length: 20, ..Default::default() };
            let (_, stats) = grpo::grpo_variant_loss(&Var::constant(up(&logp)), &up(&old), Some(&up(&refp)), &advt, &up(&mask), &cfg).unwrap();
            let want = gref::grpo_variant(&f64s(&logp), &f64s(&old), &f64s(&refp), &f64s(&adv), &f64s(&mask), &cfg);
            assert_close(&format!("grpo {} {level:?} stats", loss_type.name()), &stats.to_f32_vec().unwrap(), &want, 1e-5, 1e-4);
            if level == ImportanceLevel::Token {
                assert!(want[2] > 0.0 && want[3] > 0.0, "both clip sides should occur: {want:?}");
            }
        }
    }
    // advantages: group / batch / none against TRL's formula, through the trainer's helper
    let r = [1.0, 0.0, 0.5, 2.0, 2.0, 3.0];
    let a = gref::advantages(&r, 3, "none");
    assert!((a[0] - 0.5).abs() < 1e-12 && (a[3] + 1.0 / 3.0).abs() < 1e-12);
    let g = gref::advantages(&r, 3, "group");
    assert!((g[0] - 0.5 / (0.5 + 1e-4)).abs() < 1e-9, "{g:?}");
    let bt = gref::advantages(&r, 3, "batch");
    assert!(bt[0] > 0.0 && (bt[0] / a[0] - bt[3] / a[3]).abs() < 1e-9, "one scale for the batch: {bt:?}");
    // a KL weight without a reference, bad shapes and settings: errors, not panics
    let lp = Var::constant(up(&logp));
    let cfg = GrpoLossConfig { beta: 0.1, ..Default::default() };
    assert!(grpo::grpo_variant_loss(&lp, &up(&old), None, &advt, &up(&mask), &cfg).is_err());
    assert!(grpo::grpo_variant_loss(&lp, &up(&old), None, &up(&old), &up(&mask), &GrpoLossConfig::default()).is_err());
    assert!(grpo::grpo_variant_loss(&lp, &up(&old), None, &advt, &up(&mask), &GrpoLossConfig { epsilon_high: -1.0, ..Default::default() }).is_err());
    assert!("dr_grpo".parse::<GrpoLossType>().unwrap() == GrpoLossType::DrGrpo && "ppo".parse::<GrpoLossType>().is_err());
}

#[test]
fn rloo_table_and_advantages() {
    use plumb::ops::rloo::{self, reference as rlref, RlooAdvantageConfig};
    let Some(gpu) = common::gpu() else { return };
    // the loss by finite differences, π_old ≠ π so that both clip sides and the unclipped
    // branch occur; the sequence log-ratio sums the masked tokens
    let mut cases = Vec::new();
    for (b, t, eps_high) in [(1usize, 4usize, 0.2f32), (5, 6, 0.2), (9, 7, 0.28)] {
        let s = [b, t];
        let inputs = vec![grad(&s, -1.2, -0.8), constant(&s, -1.2, -0.8), constant(&[b], -1.5, 1.5), Input::Fixed { shape: s.to_vec(), data: ragged_mask(b, t) }];
        cases.push(
            Case::new(
                format!("rloo loss {b}x{t} eps_high={eps_high}"),
                inputs,
                move |v| Ok(rloo::rloo_loss(&v[0], v[1].tensor(), v[2].tensor(), v[3].tensor(), (0.2, eps_high))?.0),
                move |d| vec![rlref::rloo_loss(&d[0], &d[1], &d[2], &d[3], 0.2, eps_high as f64)[0]],
            )
            .tol((1e-5, 1e-4), (1e-8, 2e-3)),
        );
    }
    run_table(&gpu, "rloo", &cases);

    // the loss's metrics, more sequences than threads
    let (b, t) = (70usize, 9usize);
    let n = b * t;
    let (logp, old, refp) = (rand_vec(n, 81, -1.2, -0.8), rand_vec(n, 82, -1.2, -0.8), rand_vec(n, 83, -1.5, -0.5));
    let (adv, mask) = (rand_vec(b, 84, -1.5, 1.5), ragged_mask(b, t));
    let up = |x: &[f32]| Tensor::from_f32(&gpu, x, &[b, t]).unwrap();
    let advt = Tensor::from_f32(&gpu, &adv, &[b]).unwrap();
    let (_, stats) = rloo::rloo_loss(&Var::constant(up(&logp)), &up(&old), &advt, &up(&mask), (0.2, 0.28)).unwrap();
    let want = rlref::rloo_loss(&f64s(&logp), &f64s(&old), &f64s(&adv), &f64s(&mask), 0.2, 0.28);
    assert_close("rloo stats", &stats.to_f32_vec().unwrap(), &want, 1e-5, 1e-4);
    assert!(want[1] > 0.0 && want[2] > 0.0, "both clip sides should occur: {want:?}");

    // advantages against TRL's formula: KL in the reward, clipping, normalisation, G = 2 and 5
    let rewards = rand_vec(b, 85, -2.0, 3.0);
    let rt = Tensor::from_f32(&gpu, &rewards, &[b]).unwrap();
    for (g, beta, clip, normalize) in [(2usize, 0.0f32, None, false), (2, 0.05, None, false), (5, 0.1, Some((-1.0f32, 2.0f32)), true), (7, 0.0, None, true)] {
        let cfg = RlooAdvantageConfig { num_generations: g, beta, reward_clip_range: clip, normalize_advantages: normalize };
        let kl = (beta != 0.0).then(|| (up(&logp), up(&refp)));
        let (a, st) = rloo::rloo_advantages(&rt, kl.as_ref().map(|(o, r)| (o, r)), &up(&mask), &cfg).unwrap();
        let (want_a, want_st) = if beta != 0.0 {
            rlref::rloo_advantages(&f64s(&rewards), &f64s(&logp), &f64s(&refp), &f64s(&mask), &cfg)
        } else {
            rlref::rloo_advantages(&f64s(&rewards), &[], &[], &f64s(&mask), &cfg)
        };
        let name = format!("rloo advantages G={g} beta={beta} clip={clip:?} normalize={normalize}");
        assert_close(&name, &a.to_f32_vec().unwrap(), &want_a, 1e-5, 1e-4);
        assert_close(&format!("{name} stats"), &st.to_f32_vec().unwrap(), &want_st, 1e-5, 1e-4);
    }
    // the leave-one-out baseline by hand: G = 3, rewards 1, 0, 0.5: A_0 = 1 − 0.25
    let (a, _) = rlref::rloo_advantages(&[1.0, 0.0, 0.5], &[], &[], &[1.0; 3], &RlooAdvantageConfig { num_generations: 3, beta: 0.0, ..Default::default() });
    assert!((a[0] - 0.75).abs() < 1e-12 && (a[1] + 0.75).abs() < 1e-12 && a[2].abs() < 1e-12, "{a:?}");

    // bad settings and shapes: errors, not panics
    let m = up(&mask);
    let bad = |cfg: RlooAdvantageConfig| rloo::rloo_advantages(&rt, None, &m, &cfg).is_err();
    assert!(bad(RlooAdvantageConfig { num_generations: 1, beta: 0.0, ..Default::default() }));
    assert!(bad(RlooAdvantageConfig { num_generations: 3, beta: 0.0, ..Default::default() }), "70 rows in groups of 3");
    assert!(bad(RlooAdvantageConfig { num_generations: 2, beta: 0.05, ..Default::default() }), "a KL without log-probs");
    assert!(bad(RlooAdvantageConfig { num_generations: 2, beta: 0.0, reward_clip_range: Some((1.0, -1.0)), ..Default::default() }));
    let lp = Var::constant(up(&logp));
    assert!(rloo::rloo_loss(&lp, &up(&old), &up(&old), &m, (0.2, 0.2)).is_err());
    assert!(rloo::rloo_loss(&lp, &up(&old), &advt, &m, (-0.1, 0.2)).is_err());
}

#[test]
fn ppo_step_kernels() {
    // PPO's per-token rewards, minibatch gather and metric sums (shaders/ppo/step.wgsl) against
    // the CPU; none has a gradient (they prepare the loss's constant inputs)
    let Some(gpu) = common::gpu() else { return };
    let (b, t) = (70usize, 9usize);
    let (kl, scores, mask) = (rand_vec(b * t, 91, -0.5, 1.0), rand_vec(b, 92, -2.0, 2.0), ragged_mask(b, t));
    let up = |x: &[f32], s: &[usize]| Tensor::from_f32(&gpu, x, s).unwrap();
    let shift: Vec<f32> = (0..b).map(|i| if i % 3 == 0 { -0.7 } else { 0.0 }).collect();
    for clip in [None, Some(1.2f32)] {
        let got = ppo::token_rewards(&up(&kl, &[b, t]), &up(&scores, &[b]), &up(&shift, &[b]), clip, &up(&mask, &[b, t]), 0.05).unwrap();
        let want = pref::token_rewards(&f64s(&kl), &f64s(&scores), &f64s(&shift), clip.map(f64::from), &f64s(&mask), 0.05);
        assert_close(&format!("ppo token rewards clip {clip:?}"), &got.to_f32_vec().unwrap(), &want, 1e-6, 1e-5);
        assert!(want.iter().zip(&mask).all(|(r, m)| *m != 0.0 || *r == 0.0), "rewards off the response");
    }

    let rows = [5u32, 0, 69, 5, 33];
    let got = ppo::gather_rows(&up(&kl, &[b, t]), &Tensor::from_u32(&gpu, &rows, &[5]).unwrap()).unwrap();
    let want: Vec<f32> = rows.iter().flat_map(|&r| kl[r as usize * t..(r as usize + 1) * t].to_vec()).collect();
    assert_eq!(got.shape(), [5, t]);
    assert_eq!(got.to_f32_vec().unwrap(), want, "a gather copies");

    let acc = Tensor::zeros(&gpu, &[12], plumb::tensor::DType::F32, "acc").unwrap();
    ppo::accumulate(&acc, 1, &up(&kl, &[b * t]), 1, 0.5).unwrap();
    ppo::accumulate(&acc, 2, &up(&kl, &[b, t]), t, 2.0).unwrap(); // column sums of (b, t)
    ppo::accumulate(&acc, 2, &up(&kl[..t], &[t]), t, 1.0).unwrap(); // added on top
    let mut want = vec![0.0f64; 12];
    want[1] = 0.5 * kl.iter().map(|&x| x as f64).sum::<f64>();
    for j in 0..t {
        want[2 + j] = 2.0 * (0..b).map(|i| kl[i * t + j] as f64).sum::<f64>() + kl[j] as f64;
    }
    assert!(ppo::accumulate(&acc, 4, &up(&kl, &[b, t]), t, 1.0).is_err(), "9 columns at 4 overflow 12");
    let got = acc.to_f32_vec().unwrap();
    assert_close("ppo accumulate", &got, &want, 1e-4, 1e-5);
    // bad shapes: errors, not panics
    assert!(ppo::token_rewards(&up(&kl, &[b, t]), &up(&scores[..3], &[3]), &up(&shift, &[b]), None, &up(&mask, &[b, t]), 0.05).is_err());
    assert!(ppo::gather_rows(&up(&kl, &[b, t]), &up(&[0.0], &[1])).is_err(), "f32 row indices");
}
