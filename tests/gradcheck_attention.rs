//! Gradient-check rows for fused attention (forward vs the f64 reference, dq/dk/dv vs finite
//! differences), run under both kernel variants; the saved lse; fully masked rows; the KV cache
//! against full causal attention; and bad inputs.
mod common;
use common::gradcheck::{run_table, Case, Input};
use plumb::ops::attention::reference::{self as r, Shape};
use plumb::ops::attention::{
    attention, attention_backward, attention_forward, attention_fused_qkv, AttentionConfig, KvCache,
    LSE_NO_KEYS,
};
use plumb::{DType, Gpu, KernelVariant, Tensor};

fn sh(batch: usize, q_len: usize, kv_len: usize, n_head: usize, n_kv_head: usize, head_dim: usize) -> Shape {
    Shape { batch, q_len, kv_len, n_head, n_kv_head, head_dim }
}

fn causal(q_offset: usize) -> AttentionConfig {
    AttentionConfig { causal: true, scale: None, q_offset }
}

fn full() -> AttentionConfig {
    AttentionConfig { causal: false, scale: None, q_offset: 0 }
}

/// One row: q, k, v differentiable, optional fixed key mask (B, S).
fn case(name: &str, s: Shape, cfg: AttentionConfig, mask: Option<Vec<u32>>) -> Case {
    let mut inputs = vec![
        Input::f(&[s.batch, s.q_len, s.n_head, s.head_dim]),
        Input::f(&[s.batch, s.kv_len, s.n_kv_head, s.head_dim]),
        Input::f(&[s.batch, s.kv_len, s.n_kv_head, s.head_dim]),
    ];
    let has_mask = mask.is_some();
    if let Some(m) = mask {
        inputs.push(Input::FixedIndex { shape: vec![s.batch, s.kv_len], data: m });
    }
    let label = format!("{name} {s:?} causal={} q_offset={}", cfg.causal, cfg.q_offset);
    Case::new(
        label,
        inputs,
        move |v| attention(&v[0], &v[1], &v[2], if has_mask { Some(v[3].tensor()) } else { None }, &cfg),
        move |d| r::attention(&d[0], &d[1], &d[2], s, if has_mask { Some(&d[3]) } else { None }, &cfg),
    )
}

#[allow(clippy::too_many_arguments)]
fn fused_case(name: &str, batch: usize, len: usize, hq: usize, hkv: usize, d: usize, cfg: AttentionConfig, mask: Option<Vec<u32>>) -> Case {
    let mut inputs = vec![Input::f(&[batch, len, (hq + 2 * hkv) * d])];
    let has_mask = mask.is_some();
    if let Some(m) = mask {
        inputs.push(Input::FixedIndex { shape: vec![batch, len], data: m });
    }
    Case::new(
        format!("{name} fused qkv B={batch} T={len} Hq={hq} Hkv={hkv} D={d} causal={}", cfg.causal),
        inputs,
        move |v| attention_fused_qkv(&v[0], hq, hkv, if has_mask { Some(v[1].tensor()) } else { None }, &cfg),
        move |x| r::attention_fused_qkv(&x[0], batch, len, hq, hkv, if has_mask { Some(&x[1]) } else { None }, &cfg),
    )
}

/// Left padding: batch row b has `pad[b]` masked keys at the front.
fn left_pad(len: usize, pad: &[usize]) -> Vec<u32> {
    pad.iter().flat_map(|&p| (0..len).map(move |s| (s >= p) as u32)).collect()
}

fn table() -> Vec<Case> {
    let mut random_mask = left_pad(9, &[0, 0]);
    for i in [1, 4, 6, 11, 15] {
        random_mask[i] = 0;
    }
    vec![
        case("causal", sh(2, 7, 7, 2, 2, 8), causal(0), None),
        case("non-causal S>T", sh(2, 7, 9, 2, 2, 8), full(), None),
        case("causal T=33 GQA 4/2", sh(1, 33, 33, 4, 2, 8), causal(0), None),
        case("causal MQA 4/1 D=12", sh(2, 7, 7, 4, 1, 12), causal(0), None),
        case("non-causal GQA 4/2", sh(1, 5, 6, 4, 2, 8), full(), None),
        case("T=1 decode-like", sh(2, 1, 5, 2, 1, 8), causal(4), None),
        case("q_offset S>T", sh(1, 7, 12, 2, 2, 8), causal(5), None),
        case("scale 0.5", sh(1, 6, 6, 1, 1, 8), AttentionConfig { causal: true, scale: Some(0.5), q_offset: 0 }, None),
        case("D=128", sh(1, 5, 5, 1, 1, 128), causal(0), None),
        case("D=32 T=33 S=37", sh(1, 33, 37, 2, 2, 32), causal(4), None),
        // Batch 1 is left-padded by 3: its rows 0..2 see no key at all (0 output, 0 gradients).
        case("left padding", sh(2, 7, 7, 2, 1, 8), causal(0), Some(left_pad(7, &[0, 3]))),
        case("holes, batch 1 all masked", sh(2, 9, 9, 2, 2, 8), full(), Some(random_mask.iter().enumerate().map(|(i, &m)| if i >= 9 { 0 } else { m }).collect())),
        fused_case("GPT-2", 2, 7, 2, 2, 8, causal(0), None),
        fused_case("GQA", 1, 33, 4, 2, 8, causal(0), None),
        fused_case("padded", 2, 6, 2, 1, 12, causal(0), Some(left_pad(6, &[2, 0]))),
    ]
}

#[test]
fn attention_table_register() {
    let Some(gpu) = common::gpu() else { return };
    gpu.set_variant(KernelVariant::Register);
    run_table(&gpu, "attention register", &table());
}

/// The register kernels without their subgroup variants (which lavapipe takes by default).
#[test]
fn attention_table_register_no_subgroups() {
    let Some(gpu) = common::gpu() else { return };
    gpu.set_variant(KernelVariant::Register);
    gpu.set_subgroup_kernels(false);
    run_table(&gpu, "attention register, no subgroups", &table());
    gpu.set_subgroup_kernels(true);
}

#[test]
fn attention_table_tiled() {
    let Some(gpu) = common::gpu() else { return };
    gpu.set_variant(KernelVariant::Tiled);
    run_table(&gpu, "attention tiled", &table());
}

fn upload(gpu: &Gpu, data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_f32(gpu, data, shape).unwrap()
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

#[test]
fn lse_and_fully_masked_rows() {
    let Some(gpu) = common::gpu() else { return };
    for variant in [KernelVariant::Register, KernelVariant::Tiled] {
        gpu.set_variant(variant);
        let s = sh(2, 9, 9, 4, 2, 8);
        let cfg = causal(0);
        let (qn, kn) = (s.batch * s.q_len * s.n_head * s.head_dim, s.batch * s.kv_len * s.n_kv_head * s.head_dim);
        let (qh, kh, vh) = (common::rand_vec(qn, 1, -2.0, 2.0), common::rand_vec(kn, 2, -2.0, 2.0), common::rand_vec(kn, 3, -1.0, 1.0));
        let mask = left_pad(9, &[0, 4]);
        let q = upload(&gpu, &qh, &[2, 9, 4, 8]);
        let k = upload(&gpu, &kh, &[2, 9, 2, 8]);
        let v = upload(&gpu, &vh, &[2, 9, 2, 8]);
        let m = Tensor::from_u32(&gpu, &mask, &[2, 9]).unwrap();
        let (out, lse) = attention_forward(&q, &k, &v, Some(&m), &cfg).unwrap();
        let maskf: Vec<f64> = mask.iter().map(|&x| x as f64).collect();
        let (want_out, want_lse) = r::attention_with_lse(&f64s(&qh), &f64s(&kh), &f64s(&vh), s, Some(&maskf), &cfg);
        let got_lse = lse.to_f32_vec().unwrap();
        for (i, (&g, &w)) in got_lse.iter().zip(&want_lse).enumerate() {
            if w == f64::NEG_INFINITY {
                assert_eq!(g, LSE_NO_KEYS, "lse {i} of a row with no key");
            } else {
                assert!((g as f64 - w).abs() < 1e-4 * (1.0 + w.abs()), "{variant:?} lse {i}: {g} vs {w}");
            }
        }
        let got = out.to_f32_vec().unwrap();
        common::assert_close("out", &got, &want_out, 1e-5, 1e-4);
        // Batch 1, rows 0..3, see no key: exactly 0, and so are their gradients.
        let row = 4 * 8;
        assert!(got[9 * row..13 * row].iter().all(|&x| x == 0.0));
        let dout = upload(&gpu, &common::rand_vec(qn, 4, -1.0, 1.0), &[2, 9, 4, 8]);
        let (dq, dk, dv) = attention_backward(&q, &k, &v, &out, &lse, &dout, Some(&m), &cfg).unwrap();
        let (dq, dk, dv) = (dq.to_f32_vec().unwrap(), dk.to_f32_vec().unwrap(), dv.to_f32_vec().unwrap());
        assert!(dq.iter().chain(&dk).chain(&dv).all(|x| x.is_finite()));
        assert!(dq[9 * row..13 * row].iter().all(|&x| x == 0.0));
        let krow = 2 * 8;
        assert!(dk[9 * krow..13 * krow].iter().chain(&dv[9 * krow..13 * krow]).all(|&x| x == 0.0));
        // Deterministic: a second backward is bit-identical.
        let (dq2, _, _) = attention_backward(&q, &k, &v, &out, &lse, &dout, Some(&m), &cfg).unwrap();
        assert_eq!(dq, dq2.to_f32_vec().unwrap());
    }
}

/// Rows [from, to) of a (B, L, row) host array, as (B, to - from, row).
fn tokens(x: &[f32], batch: usize, len: usize, row: usize, from: usize, to: usize) -> Vec<f32> {
    (0..batch).flat_map(|b| x[(b * len + from) * row..(b * len + to) * row].to_vec()).collect()
}

#[test]
fn kv_cache_matches_full_causal_attention() {
    let Some(gpu) = common::gpu() else { return };
    for variant in [KernelVariant::Register, KernelVariant::Tiled] {
        gpu.set_variant(variant);
        let (b, len, hq, hkv, d, max_len) = (2, 11, 4, 2, 8, 16);
        let (qh, kh, vh) = (
            common::rand_vec(b * len * hq * d, 11, -1.0, 1.0),
            common::rand_vec(b * len * hkv * d, 12, -1.0, 1.0),
            common::rand_vec(b * len * hkv * d, 13, -1.0, 1.0),
        );
        // Batch 1 is left-padded by 2; the cache's mask is (B, max_len), the full one (B, len).
        let pad = [0, 2];
        let mask_full = Tensor::from_u32(&gpu, &left_pad(len, &pad), &[b, len]).unwrap();
        let mask_cache = Tensor::from_u32(&gpu, &left_pad(max_len, &pad), &[b, max_len]).unwrap();
        for masked in [false, true] {
            let (want, _) = attention_forward(
                &upload(&gpu, &qh, &[b, len, hq, d]),
                &upload(&gpu, &kh, &[b, len, hkv, d]),
                &upload(&gpu, &vh, &[b, len, hkv, d]),
                masked.then_some(&mask_full),
                &causal(0),
            )
            .unwrap();
            let want = want.to_f32_vec().unwrap();
            let mut cache = KvCache::new(&gpu, b, max_len, hkv, d).unwrap();
            // Prefill 4 tokens, then decode one at a time.
            let mut steps = vec![(0, 4)];
            steps.extend((4..len).map(|t| (t, t + 1)));
            for (from, to) in steps {
                let n = to - from;
                cache
                    .append(
                        &upload(&gpu, &tokens(&kh, b, len, hkv * d, from, to), &[b, n, hkv, d]),
                        &upload(&gpu, &tokens(&vh, b, len, hkv * d, from, to), &[b, n, hkv, d]),
                    )
                    .unwrap();
                assert_eq!(cache.len(), to);
                let q = upload(&gpu, &tokens(&qh, b, len, hq * d, from, to), &[b, n, hq, d]);
                let got = cache.attend(&q, masked.then_some(&mask_cache)).unwrap().to_f32_vec().unwrap();
                let want_rows = tokens(&want, b, len, hq * d, from, to);
                common::assert_close(&format!("{variant:?} mask={masked} tokens {from}..{to}"), &got, &f64s(&want_rows), 1e-5, 1e-4);
            }
            cache.reset();
            assert!(cache.is_empty());
        }
    }
}

#[test]
fn kv_cache_fused_qkv_matches_full_attention() {
    let Some(gpu) = common::gpu() else { return };
    let (b, len, h, d) = (3, 6, 2, 8);
    let width = 3 * h * d;
    let qkv_h = common::rand_vec(b * len * width, 21, -1.0, 1.0);
    let qkv = plumb::Var::constant(upload(&gpu, &qkv_h, &[b, len, width]));
    let want = attention_fused_qkv(&qkv, h, h, None, &causal(0)).unwrap().to_f32_vec().unwrap();
    let mut cache = KvCache::new(&gpu, b, 8, h, d).unwrap();
    for t in 0..len {
        let step = upload(&gpu, &tokens(&qkv_h, b, len, width, t, t + 1), &[b, 1, width]);
        cache.append_fused_qkv(&step, h).unwrap();
        let got = cache.attend_fused_qkv(&step, h, None).unwrap().to_f32_vec().unwrap();
        common::assert_close(&format!("fused token {t}"), &got, &f64s(&tokens(&want, b, len, h * d, t, t + 1)), 1e-5, 1e-4);
    }
}

#[test]
fn bad_inputs_are_errors() {
    let Some(gpu) = common::gpu() else { return };
    let z = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::F32, "t").unwrap();
    let cfg = AttentionConfig::default();
    // Head dim above 128, or not a multiple of 4.
    assert!(attention_forward(&z(&[1, 2, 1, 132]), &z(&[1, 2, 1, 132]), &z(&[1, 2, 1, 132]), None, &cfg).is_err());
    assert!(attention_forward(&z(&[1, 2, 1, 7]), &z(&[1, 2, 1, 7]), &z(&[1, 2, 1, 7]), None, &cfg).is_err());
    // 3 query heads over 2 kv heads.
    assert!(attention_forward(&z(&[1, 2, 3, 8]), &z(&[1, 2, 2, 8]), &z(&[1, 2, 2, 8]), None, &cfg).is_err());
    // k and v differ; q is 3-D.
    assert!(attention_forward(&z(&[1, 2, 2, 8]), &z(&[1, 2, 2, 8]), &z(&[1, 3, 2, 8]), None, &cfg).is_err());
    assert!(attention_forward(&z(&[2, 2, 8]), &z(&[1, 2, 2, 8]), &z(&[1, 2, 2, 8]), None, &cfg).is_err());
    // A float mask, and a mask of the wrong length.
    let (q, k) = (z(&[1, 2, 2, 8]), z(&[1, 3, 2, 8]));
    assert!(attention_forward(&q, &k, &k, Some(&z(&[1, 3])), &cfg).is_err());
    let m = Tensor::from_u32(&gpu, &[1, 1], &[1, 2]).unwrap();
    assert!(attention_forward(&q, &k, &k, Some(&m), &cfg).is_err());
    // Fused width not a multiple of the heads.
    assert!(attention_fused_qkv(&plumb::Var::constant(z(&[1, 2, 25])), 2, 2, None, &cfg).is_err());
    // Cache overflow and attending before appending.
    let mut cache = KvCache::new(&gpu, 1, 2, 2, 8).unwrap();
    assert!(cache.attend(&z(&[1, 1, 2, 8]), None).is_err());
    assert!(cache.append(&z(&[1, 3, 2, 8]), &z(&[1, 3, 2, 8])).is_err());
    assert!(cache.append(&z(&[1, 2, 2, 8]), &z(&[1, 2, 2, 8])).is_ok());
    assert!(cache.append(&z(&[1, 1, 2, 8]), &z(&[1, 1, 2, 8])).is_err());
}
