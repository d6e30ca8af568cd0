//! Frozen stored-form weights against the CPU reference (ggml's decoders + an f64 product): for
//! every stored type, `quant_linear`'s value and its gradient with respect to the activations
//! (and a trained bias) by central differences, on shapes that are not multiples of any tile,
//! with both kernel variants, W decoded inside the product or to f32 first; the embedding
//! gather from stored rows; bad inputs; a LoRA step on a base frozen in f16 / Q8_0 against the
//! same step on the f32 base.
mod common;
use common::gradcheck::{run_table, Case, Input};
use plumb::ops::quant::{self as q, reference as r, QuantTensor, StoredType};
use plumb::lora::LoraConfig;
use plumb::model::{presets, Model, ModelConfig};
use plumb::ops::loss::cross_entropy;
use plumb::ops::optim::{AdamW, AdamWConfig};
use plumb::gpu::StoredMatmul;
use plumb::{KernelVariant, Tape, Tensor, Var};

/// x (rows, inp) times a stored (out, inp) weight, optionally plus a trained bias.
fn linear_case(t: StoredType, lead: &[usize], inp: usize, out: usize, bias: bool) -> Case {
    let mut sx = lead.to_vec();
    sx.push(inp);
    let rows: usize = lead.iter().product();
    let mut inputs = vec![Input::f(&sx), Input::nograd(&[out, inp])];
    if bias {
        inputs.push(Input::f(&[out]));
    }
    let name = format!("quant_linear {} x {sx:?} w [{out}, {inp}] bias {bias}", t.name());
    Case::new(
        name,
        inputs,
        move |v| {
            let w = QuantTensor::from_f32(v[0].tensor().gpu(), t, [out, inp], &v[1].to_f32_vec()?)?;
            q::quant_linear(&v[0], &w, v.get(2))
        },
        move |d| r::quant_linear(t, &d[0], &d[1], d.get(2).map(|b| &b[..]), rows, inp, out),
    )
}

/// Token ids (some past the vocabulary) gathered from a stored (vocab, cols) table.
fn embedding_case(t: StoredType, tokens: usize, vocab: usize, cols: usize) -> Case {
    let name = format!("quant_embedding {} {tokens} tokens from [{vocab}, {cols}]", t.name());
    Case::new(
        name,
        vec![Input::index(&[tokens], vocab as u32 + 2), Input::nograd(&[vocab, cols])],
        move |v| {
            let table = QuantTensor::from_f32(v[0].tensor().gpu(), t, [vocab, cols], &v[1].to_f32_vec()?)?;
            Ok(Var::constant(q::quant_embedding(v[0].tensor(), &table)?))
        },
        move |d| {
            let w = r::stored(t, &d[1], vocab, cols);
            let mut out = Vec::with_capacity(d[0].len() * cols);
            for &id in &d[0] {
                let id = id as usize;
                out.extend((0..cols).map(|c| if id < vocab { w[id * cols + c] } else { 0.0 }));
            }
            out
        },
    )
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for t in StoredType::ALL {
        let block = t.block_elems().max(4);
        // A row length of a few blocks (odd for f16/bf16: rows not word-aligned).
        let k = if block == 4 { 37 } else { 2 * block.max(32) };
        cases.push(linear_case(t, &[3, 3], k, 13, false));
        // Past one 64x64 tile both ways, ragged, with a trained bias.
        let k2 = if block == 4 { 70 } else { block.max(32) };
        cases.push(linear_case(t, &[67], k2, 69, true));
        // One row (decode-time product).
        cases.push(linear_case(t, &[1], k, 5, false));
        cases.push(embedding_case(t, 11, 9, if block == 4 { 37 } else { block.max(32) }));
    }
    // Past one register-kernel workgroup both ways (64 rows by 32 outputs, or 32 columns of
    // dx), ragged, several blocks a row: W5's and SmolLM2's type.
    cases.push(linear_case(StoredType::Q4_1, &[2, 67], 96, 70, false));
    // A few rows on CPU adapters (`forward_rows`): 3 rows in a 4-row thread, 300 columns over
    // two 64-thread workgroups, a bias.
    cases.push(linear_case(StoredType::Q4_1, &[3], 64, 300, true));
    cases.push(linear_case(StoredType::Q8_0, &[2, 1], 64, 7, false));
    cases
}

/// Both kernel variants, each with W decoded inside the product (fused) and decoded to f32
/// first (the CPU adapters' default from 32 rows).
#[test]
fn quant_table_both_variants() {
    let Some(gpu) = common::gpu() else { return };
    let cases = cases();
    for (variant, choice, label) in [
        (KernelVariant::Register, StoredMatmul::Fused, "register fused"),
        (KernelVariant::Register, StoredMatmul::Decode, "register decode"),
        (KernelVariant::Tiled, StoredMatmul::Fused, "tiled fused"),
        (KernelVariant::Tiled, StoredMatmul::Decode, "tiled decode"),
    ] {
        gpu.set_variant(variant);
        gpu.set_stored_matmul(choice);
        run_table(&gpu, label, &cases);
    }
    gpu.set_stored_matmul(StoredMatmul::Auto);
}

#[test]
fn stored_bytes_round_trip_and_bad_inputs_are_errors() {
    let Some(gpu) = common::gpu() else { return };
    let data = common::rand_vec(3 * 64, 5, -1.0, 1.0);
    for t in [StoredType::Q8_0, StoredType::Q4_1, StoredType::Bf16] {
        let bytes = q::quantize(t, &data, 3, 64).unwrap();
        let w = QuantTensor::from_bytes(&gpu, t, [3, 64], &bytes).unwrap();
        assert_eq!(w.to_bytes().unwrap(), bytes, "{t:?} bytes come back unchanged");
        assert_eq!(w.dequantize().unwrap(), q::dequantize(t, &bytes, 3, 64).unwrap());
    }
    // Wrong byte count, ragged blocks, wrong activation width: errors, not panics.
    assert!(QuantTensor::from_bytes(&gpu, StoredType::Q8_0, [3, 64], &[0; 10]).is_err());
    assert!(QuantTensor::from_f32(&gpu, StoredType::Q4K, [1, 100], &[0.0; 100]).is_err());
    let w = QuantTensor::from_f32(&gpu, StoredType::Q4_0, [3, 64], &data).unwrap();
    let x = Tensor::from_f32(&gpu, &[0.0; 2 * 63], &[2, 63]).unwrap();
    let e = q::quant_linear_forward(&x, &w, None).unwrap_err().to_string();
    assert!(e.contains("64"), "{e}");
}

/// A Llama whose matrices are all whole Q8_0 blocks (C 64, I 96), and GPT-2 nano (C 32).
const LLAMA: &str = r#"{"model_type": "llama", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false, "hidden_act": "silu"}"#;

/// (loss before, LoRA gradients, loss after one AdamW step) of a LoRA step on `model`.
fn lora_step(model: &Model, ids: &Tensor, tg: &Tensor) -> (f32, Vec<f32>, f32) {
    let mut opt = AdamW::new(model.trainable(), AdamWConfig::default()).unwrap();
    let tape = Tape::new();
    let loss = cross_entropy(&model.forward(Some(&tape), ids, None).unwrap(), tg, None).unwrap();
    tape.backward(&loss).unwrap();
    let grads = model.trainable().grads().to_f32_vec().unwrap();
    opt.step(model.trainable(), 1e-2).unwrap();
    model.trainable().zero_grad().unwrap();
    let after = cross_entropy(&model.forward(None, ids, None).unwrap(), tg, None).unwrap();
    (loss.tensor().scalar().unwrap(), grads, after.tensor().scalar().unwrap())
}

/// A LoRA step on a base frozen in stored form runs and matches the same step on the f32 base
/// within the quantization error; the f32 copies of the matrices are gone.
#[test]
fn lora_step_on_a_stored_form_base_matches_the_f32_base() {
    let Some(gpu) = common::gpu() else { return };
    let (b, t) = (2, 12);
    let ids: Vec<u32> = (0..b * (t + 1)).map(|i| (i as u32 * 7 + 3) % 61 + (i as u32 % 5)).collect();
    let (mut x, mut y) = (vec![], vec![]);
    for r in 0..b {
        x.extend_from_slice(&ids[r * (t + 1)..r * (t + 1) + t]);
        y.extend_from_slice(&ids[r * (t + 1) + 1..(r + 1) * (t + 1)]);
    }
    let (ids, tg) = (Tensor::from_u32(&gpu, &x, &[b, t]).unwrap(), Tensor::from_u32(&gpu, &y, &[b * t]).unwrap());
    let llama = ModelConfig::from_json(LLAMA, std::path::Path::new("test llama")).unwrap();
    let gpt = presets::resolve("gpt-nano").unwrap();
    // Tolerances: about 5x the differences measured on lavapipe (2026-12-07: Llama f16 loss
    // 5e-7 relative, LoRA gradients 3e-4; Q8_0 9e-5 and 8e-3).
    for (cfg, kind, tol_loss, tol_grad) in [
        (&llama, StoredType::F16, 1e-5, 2e-3),
        (&llama, StoredType::Q8_0, 5e-4, 4e-2),
        (&gpt, StoredType::Q8_0, 5e-4, 4e-2),
    ] {
        let make = || {
            let mut m = Model::new(&gpu, cfg, 0).unwrap();
            m.add_lora(&LoraConfig::default(), 1).unwrap();
            m
        };
        let (full, mut frozen) = (make(), make());
        let before = frozen.params().numel();
        frozen.freeze_base(kind).unwrap();
        assert!(frozen.params().numel() * 8 < before, "{kind:?}: the matrices left the f32 store");
        let fb = frozen.frozen().unwrap();
        // At most half of the f32 bytes (f16: 2 bytes a weight, Q8_0: 34 bytes per 32).
        assert!(fb.bytes() <= before * 2, "{kind:?}: {} stored bytes for {before} f32 parameters", fb.bytes());
        let (l0, g0, l1) = lora_step(&full, &ids, &tg);
        let (q0, gq, q1) = lora_step(&frozen, &ids, &tg);
        let gmax = g0.iter().fold(0f32, |a, v| a.max(v.abs()));
        let gerr = g0.iter().zip(&gq).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / gmax;
        println!("{kind:?}: loss {l0} vs {q0}, after step {l1} vs {q1}, LoRA grad max rel err {gerr:.2e}");
        assert!(gmax > 0.0 && q1 < q0, "{kind:?}: the adapter trains on the frozen base");
        assert!(((l0 - q0) / l0).abs() < tol_loss && ((l1 - q1) / l1).abs() < tol_loss, "{kind:?}: losses differ");
        assert!(gerr < tol_grad, "{kind:?}: LoRA gradients differ by {gerr}");
        assert!(frozen.merge_lora().is_err() && frozen.freeze_base(kind).is_err());
    }
}

/// The f32 decode that products of many rows run first on CPU adapters (`decode_vec4`: eight
/// vec4 a thread, a whole Q4_1 block from its five words) equals the CPU dequantize bit for bit,
/// for every stored type, a whole matrix and a range of rows (a vocabulary-head slice), with a
/// vec4 count that is not a multiple of eight (the last thread stops part way).
#[test]
fn decode_matches_cpu_dequantize_exactly() {
    let Some(gpu) = common::gpu() else { return };
    for t in StoredType::ALL {
        let block = t.block_elems().max(4);
        // f16/bf16 rows of 36 (9 vec4) and of 37 (the scalar-store decode); blocks otherwise.
        let widths: Vec<usize> = if block == 4 { vec![36, 37] } else { vec![block.max(32), 3 * block.max(32)] };
        for k in widths {
            let n = 7;
            let w = QuantTensor::from_f32(&gpu, t, [n, k], &common::rand_vec(n * k, 5, -2.0, 2.0)).unwrap();
            let want = w.dequantize().unwrap();
            let got = q::decode_rows(&w).unwrap().to_f32_vec().unwrap();
            assert_eq!(got, want, "{} [{n}, {k}] decoded on the GPU", t.name());
            let got = q::decode_rows(w.rows(2, 3).unwrap()).unwrap().to_f32_vec().unwrap();
            assert_eq!(got, want[2 * k..5 * k], "{} rows 2..5 of [{n}, {k}] decoded on the GPU", t.name());
        }
    }
}
