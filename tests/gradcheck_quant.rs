//! Frozen stored-form weights against the CPU reference (ggml's decoders + an f64 product): for
//! every stored type, `quant_linear`'s value and its gradient with respect to the activations
//! (and a trained bias) by central differences, on shapes that are not multiples of any tile,
//! with both kernel variants; the embedding gather from stored rows; bad inputs.
mod common;
use common::gradcheck::{run_table, Case, Input};
use plumb::ops::quant::{self as q, reference as r, QuantTensor, StoredType};
use plumb::{KernelVariant, Tensor, Var};

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
    cases
}

#[test]
fn quant_table_both_variants() {
    let Some(gpu) = common::gpu() else { return };
    let cases = cases();
    gpu.set_variant(KernelVariant::Register);
    run_table(&gpu, "register", &cases);
    gpu.set_variant(KernelVariant::Tiled);
    run_table(&gpu, "tiled", &cases);
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
