//! The flat parameter store, the global gradient norm and fused AdamW against their f64
//! references, and a tiny end-to-end check: softmax regression trained with cross-entropy and
//! AdamW follows the f64 reference step for step and drives the loss down.
mod common;
use common::{assert_close, rand_vec};
use plumb::ops::elementwise as ew;
use plumb::ops::loss;
use plumb::gpu::RegisterFeed;
use plumb::ops::optim::{self, reference as r, AdamW, AdamWConfig};
use plumb::params::ALIGN_ELEMS;
use plumb::{Gpu, ParamSpec, ParamStore, Tape, Tensor};

fn specs() -> Vec<ParamSpec> {
    vec![
        ParamSpec::new("w1", &[7, 13], true),
        ParamSpec::new("b1", &[13], false),
        ParamSpec::new("w2", &[130], true),
        ParamSpec::new("gain", &[1], false),
        ParamSpec::new("w3", &[3, 5, 7], true),
    ]
}

/// Past 8192 elements: CPU adapters run the texture-fed AdamW.
fn large_specs() -> Vec<ParamSpec> {
    let mut s = specs();
    s.push(ParamSpec::new("big", &[70, 130], true));
    s
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&a| a as f64).collect()
}

#[test]
fn param_store_layout_alignment_and_decay_order() {
    let Some(gpu) = common::gpu() else { return };
    let store = ParamStore::new(&gpu, &specs()).unwrap();
    let layout: Vec<(&str, usize)> = store.entries().iter().map(|e| (e.name.as_str(), e.offset)).collect();
    // Decayed tensors first, each group in the given order, every offset 256-byte aligned.
    assert_eq!(layout, vec![("w1", 0), ("w2", 128), ("w3", 320), ("b1", 448), ("gain", 512)]);
    assert!(store.entries().iter().all(|e| e.offset % ALIGN_ELEMS == 0));
    assert_eq!(store.decay_end(), 448);
    assert_eq!(store.padded_len(), 576);
    assert_eq!(store.numel(), 91 + 13 + 130 + 1 + 105);
    // set / get round trip through the views; the padding stays zero.
    for (i, e) in store.entries().iter().enumerate() {
        let data = rand_vec(e.numel(), i as u64, -1.0, 1.0);
        store.set(&e.name, &data).unwrap();
        assert_eq!(store.get(&e.name).unwrap(), data);
        assert_eq!(store.value(&e.name).unwrap().shape(), &e.shape[..]);
        assert_eq!(store.grad(&e.name).unwrap().shape(), &e.shape[..]);
    }
    let flat = store.values().to_f32_vec().unwrap();
    let mut is_param = vec![false; flat.len()];
    for e in store.entries() {
        is_param[e.offset..e.offset + e.numel()].iter_mut().for_each(|p| *p = true);
    }
    assert!(flat.iter().zip(&is_param).all(|(&v, &p)| p || v == 0.0), "padding must be zero");
    // Checkpoint round trip into a second store, given in another order.
    let mut saved = store.read_all().unwrap();
    assert_eq!(saved.len(), 5);
    saved.reverse();
    let other = ParamStore::new(&gpu, &specs()).unwrap();
    other.write_all(&saved).unwrap();
    assert_eq!(other.values().to_f32_vec().unwrap(), flat);
}

#[test]
fn param_store_errors_name_the_problem() {
    let Some(gpu) = common::gpu() else { return };
    let store = ParamStore::new(&gpu, &specs()).unwrap();
    let e = store.value("nope").unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");
    assert!(store.grad("nope").is_err() && store.get("nope").is_err() && store.set("nope", &[0.0]).is_err());
    assert!(store.var(&Tape::new(), "nope").is_err());
    let e = store.set("w2", &[0.0; 129]).unwrap_err().to_string();
    assert!(e.contains("w2") && e.contains("130"), "{e}");
    let dup = vec![ParamSpec::new("a", &[3], true), ParamSpec::new("a", &[4], false)];
    assert!(ParamStore::new(&gpu, &dup).is_err());
    assert!(ParamStore::new(&gpu, &[ParamSpec::new("z", &[0, 3], true)]).is_err());
    assert!(ParamStore::new(&gpu, &[]).is_err());
    let mut all = store.read_all().unwrap();
    all.pop();
    assert!(store.write_all(&all).unwrap_err().to_string().contains("missing"));
    all.push(("w1".into(), vec![13, 7], vec![0.0; 91]));
    assert!(store.write_all(&all).is_err(), "wrong shape");
}

#[test]
fn zero_grad_and_gradient_accumulation() {
    let Some(gpu) = common::gpu() else { return };
    let store = ParamStore::new(&gpu, &specs()).unwrap();
    store.set("w2", &rand_vec(130, 1, -1.0, 1.0)).unwrap();
    // Gradients (and padding) dirty, then one fill dispatch clears them all.
    store.grads().write_f32(&vec![1.5; store.padded_len()]).unwrap();
    store.zero_grad().unwrap();
    assert!(store.grads().to_f32_vec().unwrap().iter().all(|&g| g == 0.0));
    // A store past 65,536 elements (the driver's memset on CPU adapters), with values after it
    // that must survive.
    let big = ParamStore::new(&gpu, &[ParamSpec::new("huge", &[300, 256], true)]).unwrap();
    let after = Tensor::from_f32(&gpu, &[7.0; 64], &[64]).unwrap();
    big.grads().write_f32(&vec![2.5; big.padded_len()]).unwrap();
    big.zero_grad().unwrap();
    assert!(big.grads().to_f32_vec().unwrap().iter().all(|&g| g == 0.0));
    assert_eq!(after.to_f32_vec().unwrap(), vec![7.0; 64]);
    // Two micro-batches add into the flat gradient buffer; other tensors stay untouched.
    for _ in 0..2 {
        let tape = Tape::new();
        let w = store.var(&tape, "w2").unwrap();
        let y = ew::scale(&w, 3.0).unwrap();
        tape.backward_with(&y, Tensor::from_f32(&gpu, &[1.0; 130], &[130]).unwrap()).unwrap();
    }
    let flat = store.grads().to_f32_vec().unwrap();
    let w2 = &store.entries()[1];
    assert_eq!(w2.name, "w2");
    for (i, &g) in flat.iter().enumerate() {
        let inside = (w2.offset..w2.offset + 130).contains(&i);
        assert_eq!(g, if inside { 6.0 } else { 0.0 }, "gradient element {i}");
    }
}

#[test]
fn grad_norm_matches_reference_and_is_deterministic() {
    let Some(gpu) = common::gpu() else { return };
    // Sizes not multiples of the workgroup, and one past the fixed grid (many elements per thread).
    for n in [1usize, 7, 1000, 262_145, 5_000_011] {
        let x = rand_vec(n, n as u64, -1.0, 1.0);
        let t = Tensor::from_f32(&gpu, &x, &[n]).unwrap();
        let got = optim::grad_norm(&t).unwrap().to_f32_vec().unwrap();
        assert_close(&format!("grad_norm n={n}"), &got, &[r::grad_norm(&f64s(&x))], 1e-7, 1e-5);
        let again = optim::grad_norm(&t).unwrap().to_f32_vec().unwrap();
        assert_eq!(got[0].to_bits(), again[0].to_bits(), "n={n}: two runs differ");
    }
}

/// Run `steps` AdamW steps on the GPU and in f64 with the same gradients; compare every step.
/// Returns the final reference parameters.
fn adamw_against_reference(gpu: &Gpu, specs: &[ParamSpec], cfg: AdamWConfig, grad_scales: &[f32]) -> Vec<f64> {
    let store = ParamStore::new(gpu, specs).unwrap();
    let mut p = vec![0.0f64; store.padded_len()];
    for (i, e) in store.entries().iter().enumerate() {
        let data = rand_vec(e.numel(), 10 + i as u64, -1.0, 1.0);
        store.set(&e.name, &data).unwrap();
        p[e.offset..e.offset + e.numel()].copy_from_slice(&f64s(&data));
    }
    let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
    let mut opt = AdamW::new(&store, cfg).unwrap();
    for (step, &scale) in grad_scales.iter().enumerate() {
        let mut g = vec![0.0f64; p.len()];
        for (i, e) in store.entries().iter().enumerate() {
            let data: Vec<f32> = rand_vec(e.numel(), 100 * step as u64 + i as u64, -1.0, 1.0).iter().map(|x| x * scale).collect();
            store.grad(&e.name).unwrap().write_f32(&data).unwrap();
            g[e.offset..e.offset + e.numel()].copy_from_slice(&f64s(&data));
        }
        let lr = 0.01 * (1.0 + step as f32) / 2.0;
        let norm = opt.step(&store, lr).unwrap();
        let want_norm = r::adamw_step(&mut p, &g, &mut m, &mut v, step as u64 + 1, &cfg, lr as f64, store.decay_end());
        let what = format!("{cfg:?} step {}", step + 1);
        match (norm, want_norm) {
            (Some(n), Some(w)) => assert_close(&format!("norm {what}"), &n.to_f32_vec().unwrap(), &[w], 1e-6, 1e-5),
            (None, None) => {}
            _ => panic!("{what}: norm returned iff clipping is configured"),
        }
        assert_close(&format!("params {what}"), &store.values().to_f32_vec().unwrap(), &p, 1e-6, 1e-5);
    }
    let s = opt.state().unwrap();
    assert_eq!(s.step, grad_scales.len() as u64);
    assert_close("m", &s.m, &m, 1e-7, 1e-5);
    assert_close("v", &s.v, &v, 1e-9, 1e-5);
    p
}

#[test]
fn adamw_matches_reference() {
    let Some(gpu) = common::gpu() else { return };
    // Gradient norms per step: about 10, 0.1, 30, 2, 10.
    let scales = [1.0, 0.01, 3.0, 0.2, 1.0];
    let base = AdamWConfig { beta2: 0.95, ..Default::default() };
    // The large store takes the texture-fed kernel on CPU adapters when the register feed says
    // so: run it with both feeds.
    let cases = [(specs(), RegisterFeed::Auto), (large_specs(), RegisterFeed::Buffer), (large_specs(), RegisterFeed::Texture)];
    for (specs, feed) in cases {
        gpu.set_register_feed(feed);
        adamw_against_reference(&gpu, &specs, AdamWConfig { weight_decay: 0.0, ..base }, &scales);
        let decayed = adamw_against_reference(&gpu, &specs, AdamWConfig { weight_decay: 0.1, ..base }, &scales);
        let loose = adamw_against_reference(&gpu, &specs, AdamWConfig { weight_decay: 0.1, max_grad_norm: Some(1e4), ..base }, &scales);
        let clipped = adamw_against_reference(&gpu, &specs, AdamWConfig { weight_decay: 0.1, max_grad_norm: Some(0.5), ..base }, &scales);
        // A clip that never engages changes nothing; one that engages changes the trajectory.
        assert_eq!(loose, decayed);
        let moved = clipped.iter().zip(&decayed).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(moved > 1e-3, "clipping had no effect ({moved})");
    }
    gpu.set_register_feed(RegisterFeed::Auto);
}

#[test]
fn adamw_state_round_trip_resumes_exactly() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = AdamWConfig { weight_decay: 0.1, max_grad_norm: Some(1.0), ..Default::default() };
    let store = ParamStore::new(&gpu, &specs()).unwrap();
    // Random values on the parameters, zero on the padding (as the store keeps it).
    let flat = |seed: u64| {
        let mut x = vec![0.0f32; store.padded_len()];
        for e in store.entries() {
            x[e.offset..e.offset + e.numel()].copy_from_slice(&rand_vec(e.numel(), seed + e.offset as u64, -1.0, 1.0));
        }
        x
    };
    store.values().write_f32(&flat(3)).unwrap();
    let grads = |s: u64| flat(50 + s);
    let mut opt = AdamW::new(&store, cfg).unwrap();
    for s in 0..2 {
        store.grads().write_f32(&grads(s)).unwrap();
        opt.step(&store, 1e-2).unwrap();
    }
    let (state, params) = (opt.state().unwrap(), store.read_all().unwrap());
    store.grads().write_f32(&grads(2)).unwrap();
    opt.step(&store, 1e-2).unwrap();
    let want = store.values().to_f32_vec().unwrap();
    // A fresh optimizer resumed from the saved state takes the identical third step.
    let mut resumed = AdamW::new(&store, cfg).unwrap();
    resumed.load_state(&state).unwrap();
    store.write_all(&params).unwrap();
    resumed.step(&store, 1e-2).unwrap();
    assert_eq!(store.values().to_f32_vec().unwrap(), want);
    assert_eq!(resumed.step_count(), 3);
    // Mismatched sizes and bad settings are errors.
    let small = ParamStore::new(&gpu, &[ParamSpec::new("x", &[3], true)]).unwrap();
    assert!(resumed.step(&small, 1e-2).is_err());
    assert!(AdamW::new(&small, cfg).unwrap().load_state(&state).is_err());
    assert!(AdamW::new(&small, AdamWConfig { beta1: 1.0, ..cfg }).is_err());
    assert!(AdamW::new(&small, AdamWConfig { max_grad_norm: Some(0.0), ..cfg }).is_err());
    assert!(resumed.step(&store, f32::NAN).is_err());
}

/// Softmax regression: logits_n = b + sum_k x[n,k] w_k, built from elementwise ops, trained with
/// cross-entropy and clipped AdamW. Each step's loss matches an f64 reference of the same math.
#[test]
fn softmax_regression_trains() {
    let Some(gpu) = common::gpu() else { return };
    const K: usize = 4; // features
    const C: usize = 3; // classes
    const N: usize = 12; // samples
    let targets: Vec<u32> = (0..N as u32).map(|n| n % C as u32).collect();
    let noise = rand_vec(N * K, 9, -0.5, 0.5);
    let x: Vec<Vec<f32>> = (0..N)
        .map(|n| (0..K).map(|k| if k % C == targets[n] as usize { 1.0 } else { -0.5 } + noise[n * K + k]).collect())
        .collect();
    let mut specs: Vec<ParamSpec> = (0..K).map(|k| ParamSpec::new(format!("w{k}"), &[C], true)).collect();
    specs.push(ParamSpec::new("b", &[C], false));
    let store = ParamStore::new(&gpu, &specs).unwrap();
    let mut p = vec![0.0f64; store.padded_len()];
    for (i, e) in store.entries().iter().enumerate() {
        let init = rand_vec(C, 20 + i as u64, -0.1, 0.1);
        store.set(&e.name, &init).unwrap();
        p[e.offset..e.offset + C].copy_from_slice(&f64s(&init));
    }
    let off: Vec<usize> = store.entries().iter().map(|e| e.offset).collect(); // w0..w3, b
    let (cfg, lr) = (AdamWConfig { max_grad_norm: Some(1.0), ..Default::default() }, 0.05);
    let mut opt = AdamW::new(&store, cfg).unwrap();
    let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
    let target_t: Vec<Tensor> = targets.iter().map(|&t| Tensor::from_u32(&gpu, &[t], &[1]).unwrap()).collect();
    let mut losses = Vec::new();
    for step in 1..=30u64 {
        // GPU: forward, backward into the flat gradients, one AdamW step.
        store.zero_grad().unwrap();
        let tape = Tape::new();
        let w: Vec<_> = (0..K).map(|k| store.var(&tape, &format!("w{k}")).unwrap()).collect();
        let b = store.var(&tape, "b").unwrap();
        let mut total = None;
        for n in 0..N {
            let mut logits = b.clone();
            for k in 0..K {
                logits = ew::add(&logits, &ew::scale(&w[k], x[n][k]).unwrap()).unwrap();
            }
            let l = loss::cross_entropy(&logits.reshape(&[1, C]).unwrap(), &target_t[n], None).unwrap();
            total = Some(match total {
                None => l,
                Some(t) => ew::add(&t, &l).unwrap(),
            });
        }
        let mean = ew::scale(&total.unwrap(), 1.0 / N as f32).unwrap();
        tape.backward(&mean).unwrap();
        opt.step(&store, lr).unwrap();
        let got = mean.to_f32_vec().unwrap()[0];
        // f64 reference of the same step.
        let mut g = vec![0.0f64; p.len()];
        let mut want = 0.0;
        for n in 0..N {
            let logits: Vec<f64> = (0..C).map(|c| p[off[K] + c] + (0..K).map(|k| x[n][k] as f64 * p[off[k] + c]).sum::<f64>()).collect();
            want += loss::reference::cross_entropy(&logits, &[targets[n]], None, C) / N as f64;
            let d = loss::reference::cross_entropy_grad(&logits, &[targets[n]], None, C);
            for c in 0..C {
                g[off[K] + c] += d[c] / N as f64;
                for k in 0..K {
                    g[off[k] + c] += x[n][k] as f64 * d[c] / N as f64;
                }
            }
        }
        r::adamw_step(&mut p, &g, &mut m, &mut v, step, &cfg, lr as f64, store.decay_end());
        assert!((got as f64 - want).abs() <= 1e-4 * want.abs() + 1e-6, "step {step}: loss {got} vs reference {want}");
        losses.push(got);
    }
    println!("softmax regression losses: {losses:?}");
    assert!(losses[29] < 0.25 * losses[0], "loss did not fall: {losses:?}");
}
