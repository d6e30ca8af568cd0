//! Gradient-check rows for the fused losses (cross-entropy, token log-probabilities) and value
//! checks for token entropy, in both kernel variants; plus the full dlogits against the analytic
//! f64 gradient, a GPT-2-sized vocabulary row, ignored rows, extreme logits and bad inputs.
mod common;
use common::gradcheck::{run_table, Case, Input};
use common::{assert_close, rand_vec};
use plumb::ops::loss::{self, reference as r};
use plumb::{DType, Gpu, KernelVariant, Tape, Tensor, Var};

const VARIANTS: [KernelVariant; 2] = [KernelVariant::Register, KernelVariant::Tiled];

fn labels(d: &[f64]) -> Vec<u32> {
    d.iter().map(|&t| t as u32).collect()
}

/// Weights with zeros and fractions: row i gets 0 when i % 3 == 1, else (i % 5 + 1) / 4.
fn mask_for(n: usize) -> Vec<f32> {
    (0..n).map(|i| if i % 3 == 1 { 0.0 } else { (i % 5 + 1) as f32 / 4.0 }).collect()
}

fn ce_case(n: usize, v: usize, masked: bool) -> Case {
    let mut inputs = vec![Input::range(&[n, v], -3.0, 3.0), Input::index(&[n], v as u32)];
    if masked {
        inputs.push(Input::Fixed { shape: vec![n], data: mask_for(n) });
    }
    let name = format!("cross_entropy n={n} v={v}{}", if masked { " masked" } else { "" });
    Case::new(
        name,
        inputs,
        move |x| loss::cross_entropy(&x[0], x[1].tensor(), x.get(2).map(|m| m.tensor())),
        move |d| vec![r::cross_entropy(&d[0], &labels(&d[1]), d.get(2).map(|m| &m[..]), v)],
    )
    // The gradients are small (about 1 / (N V) off the target): a tight absolute tolerance.
    .tol((1e-5, 1e-5), (1e-7, 1e-3))
}

fn logprobs_case(n: usize, v: usize) -> Case {
    Case::new(
        format!("token_logprobs n={n} v={v}"),
        vec![Input::range(&[n, v], -3.0, 3.0), Input::index(&[n], v as u32)],
        |x| loss::token_logprobs(&x[0], x[1].tensor()),
        move |d| r::token_logprobs(&d[0], &labels(&d[1]), v),
    )
    .tol((1e-5, 1e-5), (1e-7, 1e-3))
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for n in [1usize, 7, 33] {
        for v in [7usize, 130, 1000] {
            cases.push(ce_case(n, v, false));
            cases.push(ce_case(n, v, true));
            cases.push(logprobs_case(n, v));
        }
    }
    // Ignored rows: targets >= V (weight 0 / log-probability 0, no gradient).
    let targets = vec![2u32, 7, 0, 100, 6];
    let t2 = targets.clone();
    cases.push(
        Case::new(
            "cross_entropy targets >= V ignored",
            vec![Input::range(&[5, 7], -3.0, 3.0), Input::FixedIndex { shape: vec![5], data: targets.clone() }],
            |x| loss::cross_entropy(&x[0], x[1].tensor(), None),
            move |d| vec![r::cross_entropy(&d[0], &targets, None, 7)],
        )
        .tol((1e-5, 1e-5), (1e-7, 1e-3)),
    );
    cases.push(
        Case::new(
            "token_logprobs labels >= V give 0",
            vec![Input::range(&[5, 7], -3.0, 3.0), Input::FixedIndex { shape: vec![5], data: t2.clone() }],
            |x| loss::token_logprobs(&x[0], x[1].tensor()),
            move |d| r::token_logprobs(&d[0], &t2, 7),
        )
        .tol((1e-5, 1e-5), (1e-7, 1e-3)),
    );
    // Leading dimensions (B, T, V) flatten to rows.
    cases.push(
        Case::new(
            "cross_entropy (2, 3, 130) masked",
            vec![Input::range(&[2, 3, 130], -3.0, 3.0), Input::index(&[6], 130), Input::Fixed { shape: vec![6], data: mask_for(6) }],
            |x| loss::cross_entropy(&x[0], x[1].tensor(), Some(x[2].tensor())),
            |d| vec![r::cross_entropy(&d[0], &labels(&d[1]), Some(&d[2]), 130)],
        )
        .tol((1e-5, 1e-5), (1e-7, 1e-3)),
    );
    // A GPT-2 vocabulary row: a few finite-difference probes (the full gradient is checked below).
    let mut big = ce_case(1, 50257, false);
    big.max_fd = 6;
    cases.push(big);
    cases
}

#[test]
fn loss_table_both_variants() {
    let Some(gpu) = common::gpu() else { return };
    for variant in VARIANTS {
        gpu.set_variant(variant);
        run_table(&gpu, &format!("loss {variant:?}"), &cases());
    }
}

fn upload_case(gpu: &Gpu, n: usize, v: usize, seed: u64, range: f32) -> (Vec<f32>, Vec<u32>, Tensor, Tensor) {
    let x = rand_vec(n * v, seed, -range, range);
    let t: Vec<u32> = rand_vec(n, seed + 100, 0.0, v as f32).iter().map(|&f| (f as u32).min(v as u32 - 1)).collect();
    let xt = Tensor::from_f32(gpu, &x, &[n, v]).unwrap();
    let tt = Tensor::from_u32(gpu, &t, &[n]).unwrap();
    (x, t, xt, tt)
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&a| a as f64).collect()
}

/// Every element of dlogits (through the tape, upstream gradient 2.5) against the analytic
/// gradient, for the table's shapes and a GPT-2 vocabulary; the loss against the reference.
#[test]
fn full_dlogits_match_analytic_gradient() {
    let Some(gpu) = common::gpu() else { return };
    for variant in VARIANTS {
        gpu.set_variant(variant);
        for (n, v) in [(1usize, 7usize), (7, 130), (33, 1000), (3, 50257), (2, 128_256)] {
            for masked in [false, true] {
                let what = format!("{variant:?} n={n} v={v} masked={masked}");
                let (x, t, xt, tt) = upload_case(&gpu, n, v, 7 + n as u64, 4.0);
                let mask = mask_for(n);
                let mask_t = Tensor::from_f32(&gpu, &mask, &[n]).unwrap();
                let m64 = f64s(&mask);
                let mref = masked.then_some(&m64[..]);
                let tape = Tape::new();
                let logits = tape.var(xt);
                let l = loss::cross_entropy(&logits, &tt, masked.then_some(&mask_t)).unwrap();
                let got = l.to_f32_vec().unwrap();
                let want = r::cross_entropy(&f64s(&x), &t, mref, v);
                assert_close(&format!("loss {what}"), &got, &[want], 1e-5, 1e-5);
                let grads = tape.backward_with(&l, Tensor::from_f32(&gpu, &[2.5], &[1]).unwrap()).unwrap();
                let d = grads.get(&logits).unwrap().to_f32_vec().unwrap();
                let want: Vec<f64> = r::cross_entropy_grad(&f64s(&x), &t, mref, v).iter().map(|g| 2.5 * g).collect();
                assert_close(&format!("dlogits {what}"), &d, &want, 1e-8, 1e-4);
            }
        }
    }
}

#[test]
fn logprobs_and_entropy_large_vocab_and_extremes() {
    let Some(gpu) = common::gpu() else { return };
    for variant in VARIANTS {
        gpu.set_variant(variant);
        for (n, v, range) in [(1usize, 7usize, 3.0f32), (7, 130, 3.0), (33, 1000, 5.0), (7, 130, 80.0), (2, 50257, 4.0), (1, 250_000, 4.0)] {
            let what = format!("{variant:?} n={n} v={v} range={range}");
            let (x, t, xt, tt) = upload_case(&gpu, n, v, 3 + v as u64, range);
            let x64 = f64s(&x);
            let h = loss::token_entropy(&xt).unwrap();
            assert_eq!(h.shape(), &[n]);
            assert_close(&format!("entropy {what}"), &h.to_f32_vec().unwrap(), &r::token_entropy(&x64, v), 1e-5, 1e-4);
            let (lp, lse) = loss::token_logprobs_forward(&xt, &tt).unwrap();
            assert_close(&format!("logprobs {what}"), &lp.to_f32_vec().unwrap(), &r::token_logprobs(&x64, &t, v), 1e-5, 1e-5);
            let lse_want: Vec<f64> = x64.chunks(v).map(r::logsumexp).collect();
            assert_close(&format!("lse {what}"), &lse.to_f32_vec().unwrap(), &lse_want, 1e-5, 1e-6);
        }
        // A uniform row has entropy ln V; a one-hot-like row almost 0.
        let mut x = vec![0.5f32; 2 * 1000];
        x[1000 + 17] = 200.0;
        let h = loss::token_entropy(&Tensor::from_f32(&gpu, &x, &[2, 1000]).unwrap()).unwrap().to_f32_vec().unwrap();
        assert!((h[0] as f64 - 1000f64.ln()).abs() < 1e-4 && h[1].abs() < 1e-6, "{variant:?}: {h:?}");
    }
}

#[test]
fn cross_entropy_extreme_logits_and_zero_weights_stay_finite() {
    let Some(gpu) = common::gpu() else { return };
    for variant in VARIANTS {
        gpu.set_variant(variant);
        // Logits of +-100: finite loss equal to the reference.
        let (x, t, xt, tt) = upload_case(&gpu, 7, 130, 11, 100.0);
        let (l, d) = loss::cross_entropy_forward(&xt, &tt, None, true).unwrap();
        assert_close("extreme loss", &l.to_f32_vec().unwrap(), &[r::cross_entropy(&f64s(&x), &t, None, 130)], 1e-4, 1e-5);
        assert!(d.unwrap().to_f32_vec().unwrap().iter().all(|g| g.is_finite()));
        // All weights zero, or every target out of range: loss 0 and gradient 0, never NaN.
        let zero = Tensor::from_f32(&gpu, &[0.0; 7], &[7]).unwrap();
        let bad = Tensor::from_u32(&gpu, &[130, 131, 999, 130, 4000, 200, 130], &[7]).unwrap();
        for (targets, mask) in [(&tt, Some(&zero)), (&bad, None)] {
            let (l, d) = loss::cross_entropy_forward(&xt, targets, mask, true).unwrap();
            assert_eq!(l.to_f32_vec().unwrap(), vec![0.0], "{variant:?}");
            assert!(d.unwrap().to_f32_vec().unwrap().iter().all(|&g| g == 0.0), "{variant:?}");
        }
        // Without a gradient the loss is the same and no dlogits is made.
        let (l1, _) = loss::cross_entropy_forward(&xt, &tt, None, true).unwrap();
        let (l2, d2) = loss::cross_entropy_forward(&xt, &tt, None, false).unwrap();
        assert!(d2.is_none());
        assert_eq!(l1.to_f32_vec().unwrap(), l2.to_f32_vec().unwrap());
    }
}

#[test]
fn cross_entropy_is_deterministic_and_variants_agree() {
    let Some(gpu) = common::gpu() else { return };
    let (_, _, xt, tt) = upload_case(&gpu, 300, 1000, 5, 3.0);
    let mask = Tensor::from_f32(&gpu, &mask_for(300), &[300]).unwrap();
    let mut per_variant = Vec::new();
    for variant in VARIANTS {
        gpu.set_variant(variant);
        let run = || loss::cross_entropy_forward(&xt, &tt, Some(&mask), false).unwrap().0.to_f32_vec().unwrap()[0];
        let (a, b) = (run(), run());
        assert_eq!(a.to_bits(), b.to_bits(), "{variant:?}: two runs differ");
        per_variant.push(a);
    }
    assert!((per_variant[0] - per_variant[1]).abs() <= 1e-5 * per_variant[0].abs(), "{per_variant:?}");
}

#[test]
fn bad_inputs_are_errors() {
    let Some(gpu) = common::gpu() else { return };
    let x = Tensor::from_f32(&gpu, &[0.0; 21], &[3, 7]).unwrap();
    let t = Tensor::from_u32(&gpu, &[0, 1, 2], &[3]).unwrap();
    let t_short = Tensor::from_u32(&gpu, &[0, 1], &[2]).unwrap();
    let t_f32 = Tensor::from_f32(&gpu, &[0.0; 3], &[3]).unwrap();
    let m_short = Tensor::from_f32(&gpu, &[1.0; 2], &[2]).unwrap();
    let xv = Var::constant(x.clone());
    assert!(loss::cross_entropy(&xv, &t_short, None).is_err());
    assert!(loss::cross_entropy(&xv, &t_f32, None).is_err());
    assert!(loss::cross_entropy(&xv, &t, Some(&m_short)).is_err());
    assert!(loss::cross_entropy(&Var::constant(t.clone()), &t, None).is_err());
    assert!(loss::token_logprobs(&xv, &t_short).is_err());
    assert!(loss::token_entropy(&t).is_err());
    let empty = Tensor::empty(&gpu, &[0, 7], DType::F32, "empty").unwrap();
    assert!(loss::token_entropy(&empty).is_err());
    assert!(loss::scale_by_scalar(&x, &t_f32).is_err());
    // The error names the op and the problem.
    let e = loss::cross_entropy(&xv, &t_short, None).unwrap_err().to_string();
    assert!(e.contains("cross_entropy") && e.contains("targets"), "{e}");
}
