//! Gradient-check rows for the neural-network op families: norm, activation, softmax, rope,
//! embedding and reduce, and GPT-2's Conv1D layers (plain, and after a recomputed GELU). Row
//! families run in both kernel variants (thread per row and workgroup per row); odd shapes
//! throughout (1, 7, 33, 130 and rows past the 64-row blocks of the parameter-gradient sums).
mod common;
use common::gradcheck::{run_table, Case, Input};
use plumb::ops::activation::{self as act, GeluKind};
use plumb::nn;
use plumb::ops::{embedding as emb, matmul as mm, norm, reduce, rope, softmax};
use plumb::{DType, Gpu, KernelVariant, Tape, Tensor, Var};

const VARIANTS: [KernelVariant; 2] = [KernelVariant::Register, KernelVariant::Tiled];

fn run_both(gpu: &Gpu, label: &str, cases: &[Case]) {
    for v in VARIANTS {
        gpu.set_variant(v);
        run_table(gpu, &format!("{label} {v:?}"), cases);
    }
}

fn fixed_index(shape: &[usize], data: Vec<u32>) -> Input {
    Input::FixedIndex { shape: shape.to_vec(), data }
}

fn fixed(shape: &[usize], data: Vec<f32>) -> Input {
    Input::Fixed { shape: shape.to_vec(), data }
}

#[test]
fn norm_table() {
    let Some(gpu) = common::gpu() else { return };
    let mut cases = Vec::new();
    // From 8192 elements, widths that are multiples of 4 take the texture-fed kernels on CPU
    // adapters.
    for (rows, c) in [(1, 1), (1, 130), (7, 7), (7, 33), (33, 1), (33, 130), (200, 33), (1, 4), (7, 8), (65, 128), (130, 64)] {
        cases.push(Case::new(
            format!("layer_norm ({rows},{c})"),
            vec![Input::range(&[rows, c], -2.0, 3.0), Input::range(&[c], 0.5, 1.5), Input::f(&[c])],
            |v| norm::layer_norm(&v[0], &v[1], &v[2], 1e-5),
            |d| norm::reference::layer_norm(&d[0], &d[1], &d[2], 1e-5),
        ));
        cases.push(Case::new(
            format!("rms_norm ({rows},{c})"),
            vec![Input::range(&[rows, c], -2.0, 3.0), Input::range(&[c], 0.5, 1.5)],
            |v| norm::rms_norm(&v[0], &v[1], 1e-5),
            |d| norm::reference::rms_norm(&d[0], &d[1], 1e-5),
        ));
    }
    // 3-D input, and an input that needs no gradient (only the parameters get one).
    cases.push(Case::new(
        "layer_norm (2,5,7)",
        vec![Input::f(&[2, 5, 7]), Input::f(&[7]), Input::f(&[7])],
        |v| norm::layer_norm(&v[0], &v[1], &v[2], 1e-5),
        |d| norm::reference::layer_norm(&d[0], &d[1], &d[2], 1e-5),
    ));
    cases.push(Case::new(
        "layer_norm params only (70,9)",
        vec![Input::nograd(&[70, 9]), Input::f(&[9]), Input::f(&[9])],
        |v| norm::layer_norm(&v[0], &v[1], &v[2], 1e-5),
        |d| norm::reference::layer_norm(&d[0], &d[1], &d[2], 1e-5),
    ));
    cases.push(Case::new(
        "layer_norm params only (700,12)",
        vec![Input::nograd(&[700, 12]), Input::f(&[12]), Input::f(&[12])],
        |v| norm::layer_norm(&v[0], &v[1], &v[2], 1e-5),
        |d| norm::reference::layer_norm(&d[0], &d[1], &d[2], 1e-5),
    ));
    cases.push(Case::new(
        "layer_norm input only (700,12)",
        vec![Input::f(&[700, 12]), Input::nograd(&[12]), Input::nograd(&[12])],
        |v| norm::layer_norm(&v[0], &v[1], &v[2], 1e-5),
        |d| norm::reference::layer_norm(&d[0], &d[1], &d[2], 1e-5),
    ));
    cases.push(Case::new(
        "rms_norm input only (70,9)",
        vec![Input::f(&[70, 9]), Input::nograd(&[9])],
        |v| norm::rms_norm(&v[0], &v[1], 1e-6),
        |d| norm::reference::rms_norm(&d[0], &d[1], 1e-6),
    ));
    run_both(&gpu, "norm", &cases);
}

#[test]
fn norm_param_grads_are_deterministic() {
    let Some(gpu) = common::gpu() else { return };
    let (rows, c) = (300, 37);
    let x = Tensor::from_f32(&gpu, &common::rand_vec(rows * c, 3, -2.0, 2.0), &[rows, c]).unwrap();
    let w = Tensor::from_f32(&gpu, &common::rand_vec(c, 4, 0.5, 1.5), &[c]).unwrap();
    let b = Tensor::from_f32(&gpu, &common::rand_vec(c, 5, -1.0, 1.0), &[c]).unwrap();
    let dout = Tensor::from_f32(&gpu, &common::rand_vec(rows * c, 6, -1.0, 1.0), &[rows, c]).unwrap();
    let run = || {
        let (_, mean, rstd) = norm::layer_norm_forward(&x, &w, &b, 1e-5).unwrap();
        let (dx, dw, db) = norm::layer_norm_backward(&dout, &x, &w, &mean, &rstd, norm::NeedGrads::ALL).unwrap();
        [dx.unwrap(), dw.unwrap(), db.unwrap()].map(|t| t.to_f32_vec().unwrap())
    };
    let first = run();
    for _ in 0..3 {
        assert!(first == run(), "layer_norm gradients differ between identical runs");
    }
}

#[test]
fn activation_table() {
    let Some(gpu) = common::gpu() else { return };
    let mut cases = Vec::new();
    // From 8192 elements, lengths that are multiples of 4 take the texture-fed GELU on CPU adapters;
    // SwiGLU takes its vec4 entries at every multiple of 4 (1000, 8192).
    for n in [1usize, 7, 33, 130, 1000, 8192] {
        for kind in [GeluKind::Tanh, GeluKind::Erf] {
            cases.push(Case::new(
                format!("gelu {kind:?} n={n}"),
                vec![Input::range(&[n], -6.0, 6.0)],
                move |v| act::gelu(&v[0], kind),
                move |d| act::reference::gelu(&d[0], kind),
            ));
        }
        cases.push(Case::new(
            format!("silu n={n}"),
            vec![Input::range(&[n], -8.0, 8.0)],
            |v| act::silu(&v[0]),
            |d| act::reference::silu(&d[0]),
        ));
        cases.push(Case::new(
            format!("swiglu n={n}"),
            vec![Input::range(&[n], -6.0, 6.0), Input::range(&[n], -2.0, 2.0)],
            |v| act::swiglu(&v[0], &v[1]),
            |d| act::reference::swiglu(&d[0], &d[1]),
        ));
    }
    run_table(&gpu, "activation", &cases);
}

#[test]
fn conv1d_table() {
    let Some(gpu) = common::gpu() else { return };
    let mut cases = Vec::new();
    // (rows, in, out): ragged shapes, and one whose GELU input (1024 x 16) takes the texture path.
    for (rows, cin, cout) in [(5usize, 7usize, 3usize), (33, 16, 12), (1024, 16, 8)] {
        let product = move |x: &[f64], w: &[f64], b: &[f64]| mm::reference::matmul(x, w, Some(b), 1, (rows, cin, cout), (false, false), (false, false));
        let inputs = || vec![Input::range(&[rows, cin], -3.0, 3.0), Input::range(&[cin, cout], -1.0, 1.0), Input::range(&[cout], -1.0, 1.0)];
        cases.push(Case::new(format!("conv1d {rows}x{cin}->{cout}"), inputs(), |v| nn::conv1d(&v[0], &v[1], &v[2]), move |d| product(&d[0], &d[1], &d[2])));
        for kind in [GeluKind::Tanh, GeluKind::Erf] {
            cases.push(Case::new(
                format!("gelu_conv1d {kind:?} {rows}x{cin}->{cout}"),
                inputs(),
                move |v| nn::gelu_conv1d(&v[0], kind, &v[1], &v[2]),
                move |d| product(&act::reference::gelu(&d[0], kind), &d[1], &d[2]),
            ));
        }
    }
    run_both(&gpu, "conv1d", &cases);
}

#[test]
fn gelu_erf_is_float_accurate_and_finite_in_the_tails() {
    let Some(gpu) = common::gpu() else { return };
    let all: Vec<f32> = (0..8197).map(|i| -20.0 + i as f32 * 0.005).chain([-1e30, 1e30, -100.0, 100.0]).collect();
    // 8201 values take the buffer-fed kernels, their last 8200 the texture-fed ones (CPU adapters).
    for xs in [&all[..], &all[1..]] {
        let x = Tensor::from_f32(&gpu, xs, &[xs.len()]).unwrap();
        let xd: Vec<f64> = xs.iter().map(|&v| v as f64).collect();
        for kind in [GeluKind::Erf, GeluKind::Tanh] {
            let got = act::gelu_forward(&x, kind).unwrap().to_f32_vec().unwrap();
            let want = act::reference::gelu(&xd, kind);
            common::assert_close(&format!("gelu {kind:?}"), &got, &want, 1e-6, 2e-6);
            let dx = act::gelu_backward(&Tensor::from_f32(&gpu, &vec![1.0; xs.len()], &[xs.len()]).unwrap(), &x, kind).unwrap();
            assert!(dx.to_f32_vec().unwrap().iter().all(|v| v.is_finite()), "gelu {kind:?} gradient not finite");
        }
    }
    let x = Tensor::from_f32(&gpu, &all, &[all.len()]).unwrap();
    let xd: Vec<f64> = all.iter().map(|&v| v as f64).collect();
    let got = act::silu_forward(&x).unwrap().to_f32_vec().unwrap();
    common::assert_close("silu", &got, &act::reference::silu(&xd), 1e-6, 2e-6);
}

#[test]
fn softmax_table() {
    let Some(gpu) = common::gpu() else { return };
    let mut cases = Vec::new();
    // 4096 is the longest row of the thread-per-row kernel; 4097 takes the workgroup kernel.
    for (rows, c) in [(1, 1), (7, 7), (33, 33), (7, 130), (3, 1000), (1, 4096), (2, 4097)] {
        // Outputs and gradients shrink like 1/C and 1/C^2, so the tolerances are relative with
        // floors at the noise of the f64 finite differences (~sqrt(C) * 1e-16 / h).
        let grad_floor = if c >= 1000 { 2e-10 } else { 1e-11 };
        cases.push(
            Case::new(
                format!("softmax ({rows},{c})"),
                vec![Input::range(&[rows, c], -8.0, 8.0)],
                move |v| softmax::softmax(&v[0]),
                move |d| softmax::reference::softmax(&d[0], c),
            )
            .tol((1e-9, 1e-4), (grad_floor, 1e-2)),
        );
    }
    cases.push(Case::new(
        "softmax (2,3,5)",
        vec![Input::f(&[2, 3, 5])],
        |v| softmax::softmax(&v[0]),
        |d| softmax::reference::softmax(&d[0], 5),
    ));
    run_both(&gpu, "softmax", &cases);
}

#[test]
fn softmax_long_rows() {
    let Some(gpu) = common::gpu() else { return };
    let (rows, c) = (3, 50257);
    let xs = common::rand_vec(rows * c, 11, -10.0, 10.0);
    let dys = common::rand_vec(rows * c, 12, -1.0, 1.0);
    let x = Tensor::from_f32(&gpu, &xs, &[rows, c]).unwrap();
    let dy = Tensor::from_f32(&gpu, &dys, &[rows, c]).unwrap();
    let xd: Vec<f64> = xs.iter().map(|&v| v as f64).collect();
    let want = softmax::reference::softmax(&xd, c);
    // dx = y (dy - sum(dy y)) in f64.
    let mut want_dx = Vec::with_capacity(want.len());
    for (yr, dr) in want.chunks(c).zip(dys.chunks(c)) {
        let dot: f64 = yr.iter().zip(dr).map(|(y, &d)| y * d as f64).sum();
        want_dx.extend(yr.iter().zip(dr).map(|(y, &d)| y * (d as f64 - dot)));
    }
    for v in VARIANTS {
        gpu.set_variant(v);
        let y = softmax::softmax_forward(&x).unwrap();
        common::assert_close(&format!("softmax {v:?}"), &y.to_f32_vec().unwrap(), &want, 1e-10, 1e-4);
        let dx = softmax::softmax_backward(&dy, &y).unwrap();
        common::assert_close(&format!("softmax backward {v:?}"), &dx.to_f32_vec().unwrap(), &want_dx, 1e-9, 1e-3);
    }
}

#[test]
fn rope_table() {
    let Some(gpu) = common::gpu() else { return };
    let mut cases = Vec::new();
    for (shape, offset) in [([1, 1, 1, 2], 0), ([2, 7, 3, 8], 0), ([2, 7, 3, 8], 5), ([1, 33, 2, 130], 17), ([3, 5, 1, 64], 4000)] {
        // Angles are taken in f32 (as Hugging Face does): at position p their error is ~p * 6e-8.
        let tol = if offset > 100 { 5e-4 } else { 1e-4 };
        cases.push(
            Case::new(
                format!("rope {shape:?} offset {offset}"),
                vec![Input::f(&shape)],
                move |v| rope::rope(&v[0], 10000.0, offset, None),
                move |d| rope::reference::rope(&d[0], shape, &rope::reference::inv_freq(10000.0, shape[3]), offset, None),
            )
            .tol((tol, 1e-3), (1e-3, 1e-2)),
        );
    }
    // Per-row positions (a left-padded batch), with and without an offset.
    let shape = [3, 4, 2, 6];
    let pos: Vec<u32> = vec![0, 0, 0, 1, 0, 1, 2, 3, 0, 0, 1, 2];
    for offset in [0, 9] {
        let p = pos.clone();
        cases.push(Case::new(
            format!("rope positions offset {offset}"),
            vec![Input::f(&shape), fixed_index(&[3, 4], pos.clone())],
            move |v| rope::rope(&v[0], 500000.0, offset, Some(v[1].tensor())),
            move |d| rope::reference::rope(&d[0], shape, &rope::reference::inv_freq(500000.0, 6), offset, Some(&p)),
        ));
    }
    // Given inverse frequencies (a scaled RoPE).
    let freqs: Vec<f32> = vec![1.0, 0.3, 0.01, 0.002];
    let f64s: Vec<f64> = freqs.iter().map(|&f| f as f64).collect();
    cases.push(Case::new(
        "rope_table",
        vec![Input::f(&[2, 3, 2, 8]), fixed(&[4], freqs), fixed_index(&[2, 3], vec![5, 6, 7, 0, 1, 2])],
        |v| rope::rope_table(&v[0], v[1].tensor(), 2, Some(v[2].tensor())),
        move |d| {
            let pos: Vec<u32> = d[2].iter().map(|&p| p as u32).collect();
            rope::reference::rope(&d[0], [2, 3, 2, 8], &f64s, 2, Some(&pos))
        },
    ));
    run_table(&gpu, "rope", &cases);
}

#[test]
fn embedding_table() {
    let Some(gpu) = common::gpu() else { return };
    let mut cases = Vec::new();
    // Repeated ids, and ids at and past the vocabulary size (zero rows, no gradient).
    let ids: Vec<u32> = vec![3, 1, 3, 3, 0, 9, 1, 4, 7, 3, 12];
    for c in [1usize, 7, 33] {
        cases.push(Case::new(
            format!("embedding repeats C={c}"),
            vec![fixed_index(&[ids.len()], ids.clone()), Input::f(&[9, c])],
            |v| emb::embedding(v[0].tensor(), &v[1]),
            move |d| emb::reference::embedding(&d[0].iter().map(|&i| i as u32).collect::<Vec<_>>(), &d[1], c),
        ));
    }
    cases.push(Case::new(
        "embedding (4,75) V=50 C=130",
        vec![Input::index(&[4, 75], 50), Input::f(&[50, 130])],
        |v| emb::embedding(v[0].tensor(), &v[1]),
        |d| emb::reference::embedding(&d[0].iter().map(|&i| i as u32).collect::<Vec<_>>(), &d[1], 130),
    ));
    // A table split into row chunks (storage past the binding limit): 4 + 3 + 2 rows.
    for c in [1usize, 33] {
        cases.push(Case::new(
            format!("embedding 3 row chunks C={c}"),
            vec![fixed_index(&[ids.len()], ids.clone()), Input::f(&[4, c]), Input::f(&[3, c]), Input::f(&[2, c])],
            |v| emb::embedding_chunks(v[0].tensor(), &v[1..]),
            move |d| emb::reference::embedding(&d[0].iter().map(|&i| i as u32).collect::<Vec<_>>(), &d[1..].concat(), c),
        ));
        cases.push(Case::new(
            format!("tied_head (5,{c}) 3 row chunks"),
            vec![Input::f(&[5, c]), Input::f(&[4, c]), Input::f(&[3, c]), Input::f(&[2, c])],
            |v| emb::tied_head(&v[0], &v[1..]),
            move |d| emb::reference::tied_head(&d[0], &d[1..].concat(), c),
        ));
    }
    for (b, t, c, rows, offset) in [(1, 1, 1, 1, 0), (2, 5, 7, 9, 3), (3, 33, 130, 40, 0), (7, 1, 4, 64, 63)] {
        cases.push(Case::new(
            format!("add_positions ({b},{t},{c}) P={rows} offset {offset}"),
            vec![Input::f(&[b, t, c]), Input::f(&[rows, c])],
            move |v| emb::add_positions(&v[0], &v[1], offset),
            move |d| emb::reference::add_positions(&d[0], &d[1], t, c, offset),
        ));
    }
    run_table(&gpu, "embedding", &cases);
}

#[test]
fn embedding_backward_is_deterministic_and_exact_for_unused_rows() {
    let Some(gpu) = common::gpu() else { return };
    let (n, v, c) = (500, 40, 12);
    let ids: Vec<u32> = (0..n).map(|i| ((i * 7919) % 37) as u32).collect();
    let douts = common::rand_vec(n * c, 21, -1.0, 1.0);
    let idt = Tensor::from_u32(&gpu, &ids, &[n]).unwrap();
    let dout = Tensor::from_f32(&gpu, &douts, &[n, c]).unwrap();
    let first = emb::embedding_backward(&dout, &idt, v).unwrap().to_f32_vec().unwrap();
    for _ in 0..3 {
        assert!(first == emb::embedding_backward(&dout, &idt, v).unwrap().to_f32_vec().unwrap());
    }
    // Sequential sums in token order, exactly as the kernel does them.
    let mut want = vec![0.0f32; v * c];
    for (k, &id) in ids.iter().enumerate() {
        for j in 0..c {
            want[id as usize * c + j] += douts[k * c + j];
        }
    }
    assert_eq!(first, want, "the table gradient must equal the in-order f32 sums");
}

#[test]
fn reduce_table() {
    let Some(gpu) = common::gpu() else { return };
    let mut cases = Vec::new();
    for (rows, c) in [(1, 1), (1, 130), (7, 7), (33, 1), (33, 130), (5, 1000)] {
        cases.push(Case::new(
            format!("sum_last ({rows},{c})"),
            vec![Input::f(&[rows, c])],
            |v| reduce::sum_last(&v[0]),
            move |d| reduce::reference::sum_last(&d[0], c),
        ));
        cases.push(Case::new(
            format!("mean_last ({rows},{c})"),
            vec![Input::f(&[rows, c])],
            |v| reduce::mean_last(&v[0]),
            move |d| reduce::reference::mean_last(&d[0], c),
        ));
        cases.push(Case::new(
            format!("max_last ({rows},{c})"),
            vec![Input::f(&[rows, c])],
            |v| reduce::max_last(&v[0]),
            move |d| reduce::reference::max_last(&d[0], c),
        ));
    }
    for n in [1usize, 7, 1024, 1025, 4500] {
        cases.push(Case::new(format!("sum_all n={n}"), vec![Input::f(&[n])], |v| reduce::sum_all(&v[0]), |d| reduce::reference::sum_all(&d[0])));
    }
    for (rows, c) in [(1, 7), (7, 1), (33, 130), (64, 3), (65, 3), (5000, 2)] {
        cases.push(Case::new(
            format!("sum_leading ({rows},{c})"),
            vec![Input::f(&[rows, c])],
            |v| reduce::sum_leading(&v[0]),
            move |d| reduce::reference::sum_leading(&d[0], c),
        ));
    }
    cases.push(Case::new("sum_last 1-D", vec![Input::f(&[9])], |v| reduce::sum_last(&v[0]), |d| reduce::reference::sum_last(&d[0], 9)));
    run_both(&gpu, "reduce", &cases);
}

#[test]
fn reduce_large_and_argmax() {
    let Some(gpu) = common::gpu() else { return };
    // Three passes of sum_all (n > 1024^2), checked against an f64 sum.
    let n = 1024 * 1024 + 77;
    let xs = common::rand_vec(n, 31, -1.0, 1.0);
    let x = Tensor::from_f32(&gpu, &xs, &[n]).unwrap();
    let want: f64 = xs.iter().map(|&v| v as f64).sum();
    // Ties: the first index wins in both variants; -inf rows still have an argmax.
    let row = [1.0f32, 5.0, 5.0, -2.0, 5.0, f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY];
    let m = Tensor::from_f32(&gpu, &row, &[2, 4]).unwrap();
    for v in VARIANTS {
        gpu.set_variant(v);
        let got = reduce::sum_all_forward(&x).unwrap().scalar().unwrap() as f64;
        assert!((got - want).abs() < 1e-3, "{v:?}: sum_all {got} vs {want}");
        let (vals, idx) = reduce::max_last_forward(&m).unwrap();
        assert_eq!(vals.to_f32_vec().unwrap(), vec![5.0, 5.0], "{v:?}");
        assert_eq!(idx.to_u32_vec().unwrap(), vec![1, 0], "{v:?}");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let Some(gpu) = common::gpu() else { return };
    let f = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::F32, "t").unwrap();
    let u = |shape: &[usize]| Tensor::from_u32(&gpu, &vec![0; shape.iter().product()], shape).unwrap();
    assert!(norm::layer_norm_forward(&f(&[3, 4]), &f(&[5]), &f(&[4]), 1e-5).is_err());
    assert!(norm::rms_norm_forward(&f(&[3, 4]), &f(&[4, 1]), 1e-5).is_err());
    assert!(softmax::softmax_forward(&u(&[3])).is_err());
    assert!(act::swiglu_forward(&f(&[3]), &f(&[4])).is_err());
    assert!(rope::rope_forward(&f(&[2, 3, 4]), 1e4, 0, None).is_err());
    assert!(rope::rope_forward(&f(&[1, 2, 1, 5]), 1e4, 0, None).is_err());
    assert!(rope::rope_forward(&f(&[1, 2, 1, 4]), 1e4, 0, Some(&u(&[1, 3]))).is_err());
    assert!(rope::rope_forward(&f(&[1, 2, 1, 4]), -1.0, 0, None).is_err());
    assert!(emb::embedding_forward(&f(&[3]), &f(&[4, 2])).is_err());
    assert!(emb::embedding_forward(&u(&[3]), &f(&[8])).is_err());
    assert!(emb::add_positions_forward(&f(&[2, 5, 3]), &f(&[6, 3]), 2).is_err());
    assert!(reduce::max_last_forward(&f(&[3, 0])).is_err());
    // A Var-level op on a tape still records and backpropagates after an error elsewhere.
    let tape = Tape::new();
    let x = tape.var(f(&[2, 3]));
    assert!(softmax::softmax(&Var::constant(u(&[2]))).is_err());
    let s = reduce::sum_all(&x).unwrap();
    let g = tape.backward(&s).unwrap();
    assert_eq!(g.get(&x).unwrap().to_f32_vec().unwrap(), vec![1.0; 6]);
}

/// W (in, out) as (out, in).
fn transposed(w: &[f64], cin: usize, cout: usize) -> Vec<f64> {
    (0..cout * cin).map(|i| w[(i % cin) * cout + i / cin]).collect()
}

/// The adapted projection as one op (`ops::lora`): `base(x) + bias + s·(x·Aᵀ)·Bᵀ` over a
/// `linear` weight, a Conv1D weight (both trained here, so every gradient is checked) and a
/// frozen stored-form one (Q8_0, Q4_1: x, A, B and the bias only). Ragged widths (the sums of
/// `matmul_plus` stored one element at a time) and multiples of 4 (a vec4 a store); 40 rows
/// and more decode the stored weight to f32 first on CPU adapters.
#[test]
fn adapted_linear_table() {
    use plumb::ops::lora::{self as lora, Base};
    use plumb::ops::quant::{reference as qr, QuantTensor, StoredType};
    let Some(gpu) = common::gpu() else { return };
    let s = 1.75f32;
    let mut cases = Vec::new();
    for (rows, cin, cout, r) in [(5usize, 7usize, 3usize, 2usize), (33, 12, 10, 4), (130, 16, 20, 8)] {
        let dims = (cin, cout, r);
        let ins = |w: &[usize]| vec![Input::f(&[rows, cin]), Input::f(&[r, cin]), Input::f(&[cout, r]), Input::f(w), Input::f(&[cout])];
        cases.push(Case::new(
            format!("adapted linear ({rows},{cin}) -> {cout}, r {r}"),
            ins(&[cout, cin]),
            move |v| lora::adapted_linear(&v[0], Base::Linear(&v[3]), Some(&v[4]), &v[1], &v[2], s),
            move |d| lora::reference::adapted_linear(&d[0], &d[3], Some(&d[4]), &d[1], &d[2], s as f64, rows, dims),
        ));
        cases.push(Case::new(
            format!("adapted conv1d ({rows},{cin}) -> {cout}, r {r}"),
            ins(&[cin, cout]),
            move |v| lora::adapted_linear(&v[0], Base::Conv1d(&v[3]), Some(&v[4]), &v[1], &v[2], s),
            move |d| lora::reference::adapted_linear(&d[0], &transposed(&d[3], cin, cout), Some(&d[4]), &d[1], &d[2], s as f64, rows, dims),
        ));
    }
    for (t, rows, cout) in [(StoredType::Q8_0, 5usize, 3usize), (StoredType::Q4_1, 40, 10), (StoredType::Q8_0, 70, 20)] {
        let (cin, r) = (64usize, 4usize);
        cases.push(Case::new(
            format!("adapted stored {} ({rows},{cin}) -> {cout}, r {r}", t.name()),
            vec![Input::f(&[2, rows, cin]), Input::f(&[r, cin]), Input::f(&[cout, r]), Input::nograd(&[cout, cin]), Input::f(&[cout])],
            move |v| {
                let w = QuantTensor::from_f32(v[0].tensor().gpu(), t, [cout, cin], &v[3].to_f32_vec()?)?;
                lora::adapted_linear(&v[0], Base::Stored(&w), Some(&v[4]), &v[1], &v[2], s)
            },
            move |d| lora::reference::adapted_linear(&d[0], &qr::stored(t, &d[3], cout, cin), Some(&d[4]), &d[1], &d[2], s as f64, 2 * rows, (cin, cout, r)),
        ));
    }
    run_both(&gpu, "adapted_linear", &cases);
}
