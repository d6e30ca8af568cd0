//! The matmul family against its f64 CPU reference: forward values and gradients (through the
//! shared harness) for every transpose combination, batched and shared operands, linear with and
//! without bias, odd shapes and shapes that take the texture-fed path; both kernel variants;
//! f16 inputs; a 256³ product; the bias gradient; bad inputs.
mod common;
use common::gradcheck::{run_table, Case, Input};
use common::{assert_close, rand_vec};
use plumb::ops::matmul::{self as mm, reference as r, RegisterFeed};
use plumb::{DType, Gpu, KernelVariant, Tensor};

/// A gradient-checked matmul row. `lead_a` / `lead_b` are the batch dimensions of each operand
/// (empty for a 2-D operand shared by the batch).
fn mm_case(lead_a: &[usize], lead_b: &[usize], (m, k, n): (usize, usize, usize), ta: bool, tb: bool) -> Case {
    let mut sa = lead_a.to_vec();
    sa.extend(if ta { [k, m] } else { [m, k] });
    let mut sb = lead_b.to_vec();
    sb.extend(if tb { [n, k] } else { [k, n] });
    let batch: usize = if lead_a.is_empty() { lead_b.iter().product() } else { lead_a.iter().product() };
    let shared = (lead_a.is_empty() && batch > 1, lead_b.is_empty() && batch > 1);
    let name = format!("matmul {sa:?}{} x {sb:?}{}", if ta { "T" } else { "" }, if tb { "T" } else { "" });
    Case::new(name, vec![Input::f(&sa), Input::f(&sb)], move |v| mm::matmul(&v[0], &v[1], ta, tb), move |d| {
        r::matmul(&d[0], &d[1], None, batch, (m, k, n), (ta, tb), shared)
    })
}

fn linear_case(lead: &[usize], inp: usize, out: usize, bias: bool) -> Case {
    let mut sx = lead.to_vec();
    sx.push(inp);
    let rows: usize = lead.iter().product();
    let mut inputs = vec![Input::f(&sx), Input::f(&[out, inp])];
    if bias {
        inputs.push(Input::f(&[out]));
    }
    let name = format!("linear x {sx:?} w [{out}, {inp}] bias {bias}");
    Case::new(name, inputs, move |v| mm::linear(&v[0], &v[1], v.get(2)), move |d| {
        r::linear(&d[0], &d[1], d.get(2).map(|b| &b[..]), rows, inp, out)
    })
}

/// An (m, k, n) whose stored rows are a multiple of 4 elements for this layout, so the register
/// variant reads textures, with an odd free dimension (or K = 37: a masked last step).
fn texture_dims(ta: bool, tb: bool) -> (usize, usize, usize) {
    match (ta, tb) {
        (false, false) => (5, 64, 64),
        (false, true) => (5, 64, 7),
        (true, false) => (64, 37, 64),
        (true, true) => (64, 64, 7),
    }
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        // Odd sizes, edges of every tile, a K that is not a multiple of 4.
        for dims in [(1, 1, 1), (7, 33, 130), (130, 33, 7)] {
            cases.push(mm_case(&[], &[], dims, ta, tb));
        }
        // Batched B, shared 2-D B, shared 2-D A.
        cases.push(mm_case(&[2, 3], &[2, 3], (9, 13, 5), ta, tb));
        cases.push(mm_case(&[3], &[], (10, 6, 9), ta, tb));
        cases.push(mm_case(&[], &[3], (10, 6, 9), ta, tb));
        // Texture-fed: 2-D, batched, shared B.
        let dims = texture_dims(ta, tb);
        cases.push(mm_case(&[], &[], dims, ta, tb));
        cases.push(mm_case(&[2], &[2], dims, ta, tb));
        cases.push(mm_case(&[2], &[], dims, ta, tb));
        // Textures whose last row is partly filled (24 and 60 vec4 in rows of 16).
        cases.push(mm_case(&[], &[], (8, 12, 20), ta, tb));
    }
    cases.push(linear_case(&[2, 5], 7, 3, true));
    cases.push(linear_case(&[33], 130, 7, false));
    cases.push(linear_case(&[2, 3], 64, 64, true));
    // Inputs without a gradient: only the others are computed.
    let mut c = linear_case(&[4], 6, 5, true);
    c.inputs[0] = Input::nograd(&[4, 6]);
    cases.push(c);
    let mut c = mm_case(&[2], &[2], (3, 4, 5), false, false);
    c.inputs[1] = Input::nograd(&[2, 4, 5]);
    cases.push(c);
    cases
}

#[test]
fn matmul_table_both_variants() {
    let Some(gpu) = common::gpu() else { return };
    let cases = cases();
    gpu.set_variant(KernelVariant::Register);
    run_table(&gpu, "register", &cases);
    // The buffer-fed register kernel everywhere (what CPUs with AVX-512 run).
    gpu.set_register_feed(RegisterFeed::Buffer);
    run_table(&gpu, "register, buffers", &cases);
    gpu.set_register_feed(RegisterFeed::Auto);
    gpu.set_variant(KernelVariant::Tiled);
    run_table(&gpu, "tiled", &cases);
}

/// A forward product checked element by element against the CPU reference.
fn check_forward(gpu: &Gpu, lead: &[usize], (m, k, n): (usize, usize, usize), (ta, tb): (bool, bool), bias: bool, f16: bool) {
    let batch: usize = lead.iter().product();
    let mut sa = lead.to_vec();
    sa.extend(if ta { [k, m] } else { [m, k] });
    let mut sb = lead.to_vec();
    sb.extend(if tb { [n, k] } else { [k, n] });
    let round = |v: Vec<f32>| if f16 { v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect() } else { v };
    let av = round(rand_vec(batch * m * k, 11, -1.0, 1.0));
    let bv = round(rand_vec(batch * k * n, 12, -1.0, 1.0));
    let cv = rand_vec(n, 13, -1.0, 1.0);
    let up = |v: &[f32], s: &[usize]| if f16 { Tensor::from_f32_as_f16(gpu, v, s) } else { Tensor::from_f32(gpu, v, s) };
    let (a, b) = (up(&av, &sa).unwrap(), up(&bv, &sb).unwrap());
    let c = Tensor::from_f32(gpu, &cv, &[n]).unwrap();
    let out = mm::matmul_forward(&a, &b, bias.then_some(&c), ta, tb).unwrap();
    let mut want_shape = lead.to_vec();
    want_shape.extend([m, n]);
    assert_eq!(out.shape(), &want_shape[..]);
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let cf = f(&cv);
    let want = r::matmul(&f(&av), &f(&bv), bias.then_some(&cf[..]), batch, (m, k, n), (ta, tb), (false, false));
    let what = format!("{:?} {sa:?} x {sb:?} ta {ta} tb {tb} bias {bias} f16 {f16}", gpu.variant());
    assert_close(&what, &out.to_f32_vec().unwrap(), &want, 1e-4, 1e-4);
}

#[test]
fn large_aligned_and_decode_shapes_match_reference() {
    let Some(gpu) = common::gpu() else { return };
    for v in [KernelVariant::Register, KernelVariant::Tiled] {
        gpu.set_variant(v);
        check_forward(&gpu, &[], (256, 256, 256), (false, false), true, false);
        // Decode with a KV cache: 8 rows through a 128 -> 384 projection.
        check_forward(&gpu, &[], (8, 128, 384), (false, true), true, false);
        check_forward(&gpu, &[], (1, 128, 384), (false, true), false, false);
    }
    // Both register feeds at sizes with many tiles and ragged edges.
    gpu.set_variant(KernelVariant::Register);
    for feed in [RegisterFeed::Buffer, RegisterFeed::Texture] {
        gpu.set_register_feed(feed);
        check_forward(&gpu, &[], (200, 100, 180), (false, false), true, false);
        check_forward(&gpu, &[2], (96, 52, 60), (true, true), true, false);
        check_forward(&gpu, &[3], (33, 44, 20), (true, false), false, false);
        check_forward(&gpu, &[], (130, 37, 36), (false, true), true, false);
    }
    gpu.set_register_feed(RegisterFeed::Auto);
}

/// Products with a few columns and many rows (LoRA's rank-16 ones) run as their transpose and a
/// transpose kernel on the register variant: the values match, for every layout and every feed
/// (buffers, textures, textures shared across subgroups where the adapter has 8-lane ones).
#[test]
fn few_column_products_run_transposed() {
    let Some(gpu) = common::gpu() else { return };
    gpu.set_variant(KernelVariant::Register);
    for (feed, subgroups) in [(RegisterFeed::Buffer, false), (RegisterFeed::Texture, false), (RegisterFeed::Texture, true)] {
        gpu.set_register_feed(feed);
        gpu.set_subgroup_kernels(subgroups);
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            gpu.set_profiling(true);
            check_forward(&gpu, &[], (512, 68, 16), (ta, tb), false, false);
            let transposed = gpu.take_profile().iter().any(|r| r.kernel.starts_with("matmul/transpose.wgsl"));
            gpu.set_profiling(false);
            assert!(transposed, "{feed:?} subgroups {subgroups} ta {ta} tb {tb}: 512x68x16 did not run transposed");
            // Ragged: 13 columns, 300 rows, K 37 (a masked last step).
            check_forward(&gpu, &[], (300, 37, 13), (ta, tb), false, false);
        }
        // With a bias, or batched, the product runs as it is.
        check_forward(&gpu, &[], (512, 68, 16), (false, true), true, false);
        check_forward(&gpu, &[2], (256, 20, 8), (false, false), false, false);
    }
    gpu.set_register_feed(RegisterFeed::Auto);
    gpu.set_subgroup_kernels(true);
}

/// Products 192 or 576 columns wide (SmolLM2's k/v and hidden size) take tiles of 16 x 12
/// outputs a thread on the register variant, which divide them without padding: the values
/// match for every layout and both plain feeds, ragged edges and a masked K included.
#[test]
fn twelve_column_tiles() {
    let Some(gpu) = common::gpu() else { return };
    gpu.set_variant(KernelVariant::Register);
    for feed in [RegisterFeed::Buffer, RegisterFeed::Texture] {
        gpu.set_register_feed(feed);
        gpu.set_subgroup_kernels(false);
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            for (dims, bias) in [((256, 96, 192), false), ((300, 101, 180), true)] {
                gpu.set_profiling(true);
                check_forward(&gpu, &[], dims, (ta, tb), bias, false);
                let tile = gpu.take_profile().iter().any(|r| r.kernel.contains("RB=4,CB=3"));
                gpu.set_profiling(false);
                assert!(tile, "{feed:?} ta {ta} tb {tb}: {dims:?} did not take the 16x12 tile");
            }
        }
    }
    gpu.set_register_feed(RegisterFeed::Auto);
    gpu.set_subgroup_kernels(true);
}

/// `matmul_plus`: C = op(A)·op(B) + Z for every layout, both variants and every register feed
/// (buffers, textures, textures shared across subgroups where the adapter has them), ragged
/// widths (Z read one element at a time) and aligned ones, a batch; and the shape check on Z.
#[test]
fn matmul_plus_adds_a_matrix_as_it_stores() {
    let Some(gpu) = common::gpu() else { return };
    let run = |lead: &[usize], (m, k, n): (usize, usize, usize), (ta, tb): (bool, bool)| {
        let batch: usize = lead.iter().product();
        let mut sa = lead.to_vec();
        sa.extend(if ta { [k, m] } else { [m, k] });
        let mut sb = lead.to_vec();
        sb.extend(if tb { [n, k] } else { [k, n] });
        let mut sc = lead.to_vec();
        sc.extend([m, n]);
        let (av, bv, zv) = (rand_vec(batch * m * k, 21, -1.0, 1.0), rand_vec(batch * k * n, 22, -1.0, 1.0), rand_vec(batch * m * n, 23, -1.0, 1.0));
        let a = Tensor::from_f32(&gpu, &av, &sa).unwrap();
        let b = Tensor::from_f32(&gpu, &bv, &sb).unwrap();
        let z = Tensor::from_f32(&gpu, &zv, &sc).unwrap();
        let out = mm::matmul_plus(&a, &b, &z, ta, tb).unwrap();
        assert_eq!(out.shape(), &sc[..]);
        let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let prod = r::matmul(&f(&av), &f(&bv), None, batch, (m, k, n), (ta, tb), (false, false));
        let want: Vec<f64> = prod.iter().zip(&zv).map(|(p, &z)| p + z as f64).collect();
        let what = format!("matmul_plus {:?} {:?} {sa:?} x {sb:?} ta {ta} tb {tb}", gpu.variant(), gpu.register_feed());
        assert_close(&what, &out.to_f32_vec().unwrap(), &want, 1e-4, 1e-4);
    };
    for (v, feed, subgroups) in [
        (KernelVariant::Register, RegisterFeed::Buffer, false),
        (KernelVariant::Register, RegisterFeed::Texture, false),
        (KernelVariant::Register, RegisterFeed::Texture, true),
        (KernelVariant::Tiled, RegisterFeed::Auto, false),
    ] {
        gpu.set_variant(v);
        gpu.set_register_feed(feed);
        gpu.set_subgroup_kernels(subgroups);
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            // Few columns and many rows: a plain product would run transposed; not with Z.
            for dims in [(7, 33, 13), (64, 64, 64), (200, 52, 36), (300, 37, 16)] {
                run(&[], dims, (ta, tb));
            }
            run(&[2], (9, 16, 12), (ta, tb));
        }
    }
    gpu.set_variant(KernelVariant::Register);
    gpu.set_register_feed(RegisterFeed::Auto);
    gpu.set_subgroup_kernels(true);
    let a = Tensor::from_f32(&gpu, &[0.0; 6], &[2, 3]).unwrap();
    let b = Tensor::from_f32(&gpu, &[0.0; 12], &[3, 4]).unwrap();
    let z = Tensor::from_f32(&gpu, &[0.0; 6], &[2, 3]).unwrap();
    let err = mm::matmul_plus(&a, &b, &z, false, false).unwrap_err().to_string();
    assert!(err.contains("addend"), "{err}");
}

#[test]
fn f16_inputs() {
    let Some(gpu) = common::gpu() else { return };
    if !gpu.has_f16() {
        eprintln!("adapter has no shader f16; skipping");
        return;
    }
    for v in [KernelVariant::Register, KernelVariant::Tiled] {
        gpu.set_variant(v);
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            check_forward(&gpu, &[], (7, 33, 130), (ta, tb), true, true);
            check_forward(&gpu, &[2], (64, 64, 64), (ta, tb), false, true);
        }
    }
    // Gradients flow (as f32) through f16 operands.
    gpu.set_variant(KernelVariant::Register);
    let tape = plumb::Tape::new();
    let a = tape.var(Tensor::from_f32_as_f16(&gpu, &[1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap());
    let b = tape.var(Tensor::from_f32_as_f16(&gpu, &[1.0, 0.0, 0.0, 1.0], &[2, 2]).unwrap());
    let y = mm::matmul(&a, &b, false, false).unwrap();
    assert_eq!(y.to_f32_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    let g = tape.backward_with(&y, Tensor::from_f32(&gpu, &[1.0; 4], &[2, 2]).unwrap()).unwrap();
    assert_eq!(g.get(&a).unwrap().to_f32_vec().unwrap(), vec![1.0, 1.0, 1.0, 1.0]);
    assert_eq!(g.get(&b).unwrap().to_f32_vec().unwrap(), vec![4.0, 4.0, 6.0, 6.0]);
}

#[test]
fn bias_grad_is_column_sums() {
    let Some(gpu) = common::gpu() else { return };
    // Texture-fed first pass (N a multiple of 4, more than 64 rows) or not, in both variants.
    let shapes = [(1, 1), (5, 7), (64, 3), (65, 130), (1000, 33), (129, 8), (300, 64)];
    for (v, (rows, n)) in [KernelVariant::Register, KernelVariant::Tiled].into_iter().flat_map(|v| shapes.map(|s| (v, s))) {
        gpu.set_variant(v);
        let v = rand_vec(rows * n, 5, -1.0, 1.0);
        let dy = Tensor::from_f32(&gpu, &v, &[rows, n]).unwrap();
        let got = mm::bias_grad(&dy).unwrap();
        assert_eq!(got.shape(), &[n]);
        let want = r::bias_grad(&v.iter().map(|&x| x as f64).collect::<Vec<_>>(), n);
        assert_close(&format!("bias_grad {rows}x{n} {v:?}"), &got.to_f32_vec().unwrap(), &want, 1e-5, 1e-5);
        // Deterministic: the same bits twice.
        assert_eq!(got.to_f32_vec().unwrap(), mm::bias_grad(&dy).unwrap().to_f32_vec().unwrap());
    }
}

#[test]
fn bad_inputs_are_errors() {
    let Some(gpu) = common::gpu() else { return };
    let t = |s: &[usize]| Tensor::zeros(&gpu, s, DType::F32, "t").unwrap();
    assert!(mm::matmul_forward(&t(&[2, 3]), &t(&[4, 5]), None, false, false).is_err());
    assert!(mm::matmul_forward(&t(&[3]), &t(&[3, 5]), None, false, false).is_err());
    assert!(mm::matmul_forward(&t(&[2, 2, 3]), &t(&[3, 3, 5]), None, false, false).is_err());
    assert!(mm::matmul_forward(&t(&[2, 3]), &t(&[3, 5]), Some(&t(&[4])), false, false).is_err());
    let u = Tensor::from_u32(&gpu, &[1, 2, 3, 4, 5, 6], &[2, 3]).unwrap();
    assert!(mm::matmul_forward(&u, &t(&[3, 5]), None, false, false).is_err());
    if gpu.has_f16() {
        let h = Tensor::from_f32_as_f16(&gpu, &[0.0; 6], &[2, 3]).unwrap();
        assert!(mm::matmul_forward(&h, &t(&[3, 5]), None, false, false).is_err());
    }
    // Empty outputs are fine.
    assert_eq!(mm::matmul_forward(&t(&[0, 3]), &t(&[3, 5]), None, false, false).unwrap().shape(), &[0, 5]);
    // K = 0: the output is the bias.
    let bias = Tensor::from_f32(&gpu, &[1.0, 2.0], &[2]).unwrap();
    let y = mm::matmul_forward(&t(&[3, 0]), &t(&[0, 2]), Some(&bias), false, false).unwrap();
    assert_eq!(y.to_f32_vec().unwrap(), vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
}
