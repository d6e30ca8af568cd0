//! The chunked vocabulary head against its f64 CPU reference: per-row [log p(label), entropy,
//! mean logit] and their gradients with respect to the hidden states and (trained head) the weight chunks,
//! by central differences, with the head in one chunk or several ragged ones, walked in one
//! slice or several; a frozen head in each stored type (gradient w.r.t. x only); labels past the vocabulary; the masked cross-entropy built on it against
//! the full-logits cross-entropy; both kernel variants.
mod common;
use common::gradcheck::{run_table, Case, Input};
use plumb::ops::loss::cross_entropy;
use plumb::ops::matmul::linear;
use plumb::ops::quant::{reference::stored, QuantTensor, StoredType};
use plumb::ops::vocab_head::{self as vh, reference as r};
use plumb::{KernelVariant, Tape, Tensor};

/// x (rows, c), the head split into chunks of `chunk_rows`, walked `slice` rows at a time.
fn head_case(rows: usize, c: usize, chunk_rows: &[usize], slice: usize, train_w: bool) -> Case {
    let v: usize = chunk_rows.iter().sum();
    let mut inputs = vec![Input::f(&[rows, c]), Input::index(&[rows], v as u32 + 2)];
    for &n in chunk_rows {
        inputs.push(if train_w { Input::f(&[n, c]) } else { Input::nograd(&[n, c]) });
    }
    let name = format!("vocab_head x [{rows}, {c}] chunks {chunk_rows:?} slice {slice} train_w {train_w}");
    Case::new(
        name,
        inputs,
        move |vars| vh::vocab_head_sliced(&vars[0], &vars[2..], vars[1].tensor(), slice),
        move |d| r::vocab_head(&d[0], &d[2..].concat(), &d[1], rows, c, v),
    )
}

/// x (rows, c) against a frozen (v, c) head stored as `t`, walked `slice` rows at a time.
fn stored_case(t: StoredType, rows: usize, c: usize, v: usize, slice: usize) -> Case {
    let name = format!("vocab_head_stored {} x [{rows}, {c}] head [{v}, {c}] slice {slice}", t.name());
    Case::new(
        name,
        vec![Input::f(&[rows, c]), Input::index(&[rows], v as u32 + 2), Input::nograd(&[v, c])],
        move |vars| {
            let w = QuantTensor::from_f32(vars[0].tensor().gpu(), t, [v, c], &vars[2].to_f32_vec()?)?;
            vh::vocab_head_stored_sliced(&vars[0], &w, vars[1].tensor(), slice)
        },
        move |d| r::vocab_head(&d[0], &stored(t, &d[2], v, c), &d[1], rows, c, v),
    )
}

fn cases() -> Vec<Case> {
    vec![
        head_case(7, 12, &[40], 64, true),
        head_case(11, 20, &[130, 5, 70], 64, true),
        head_case(5, 8, &[200], 64, false),
        head_case(3, 33, &[64, 64], 128, true),
        stored_case(StoredType::F16, 6, 20, 150, 64),
        stored_case(StoredType::Bf16, 5, 13, 70, 64),
        stored_case(StoredType::Q8_0, 9, 64, 140, 64),
        stored_case(StoredType::Q4_1, 4, 32, 65, 64),
        stored_case(StoredType::Q4K, 3, 256, 130, 64),
        stored_case(StoredType::Q6K, 3, 256, 70, 128),
        column_case(0),
        column_case(1),
        column_case(2),
        tempered_case(),
    ]
}

/// One column alone (log-probs: what the alignment trainers read; entropy: what PPO logs; mean
/// logit: DPO's logits/* metrics), through a trained head.
fn column_case(column: usize) -> Case {
    let (rows, c, v) = (9, 16, 100);
    Case::new(
        format!("head_column {column} x [9, 16] head [100, 16]"),
        vec![Input::f(&[rows, c]), Input::index(&[rows], v as u32 + 2), Input::f(&[v, c])],
        move |vars| vh::head_column(&vh::vocab_head_sliced(&vars[0], &vars[2..], vars[1].tensor(), 64)?, column),
        move |d| r::vocab_head(&d[0], &d[2], &d[1], rows, c, v).into_iter().skip(column).step_by(3).collect(),
    )
}

/// PPO's tempered head: the hidden states scaled by 1/τ give the log-probs and entropy of
/// softmax(z/τ), against the reference on z/τ (its head scaled by 1/τ).
fn tempered_case() -> Case {
    let (rows, c, v, tau) = (6, 12, 90, 0.7);
    Case::new(
        "vocab_head tempered 0.7 x [6, 12] head [90, 12]",
        vec![Input::f(&[rows, c]), Input::index(&[rows], v as u32), Input::f(&[v, c])],
        move |vars| vh::vocab_head_sliced(&plumb::ops::elementwise::scale(&vars[0], 1.0 / tau)?, &vars[2..], vars[1].tensor(), 64),
        move |d| {
            let w: Vec<f64> = d[2].iter().map(|w| w / tau as f64).collect();
            r::vocab_head(&d[0], &w, &d[1], rows, c, v)
        },
    )
}

#[test]
fn vocab_head_table_both_variants() {
    let Some(gpu) = common::gpu() else { return };
    let cases = cases();
    gpu.set_variant(KernelVariant::Register);
    run_table(&gpu, "register", &cases);
    gpu.set_variant(KernelVariant::Tiled);
    run_table(&gpu, "tiled", &cases);
}

/// The chunked, masked cross-entropy and its gradients equal the full-logits cross-entropy's.
#[test]
fn chunked_cross_entropy_matches_full_logits() {
    let Some(gpu) = common::gpu() else { return };
    let (rows, c, v) = (13, 24, 150);
    let xv = common::rand_vec(rows * c, 1, -1.0, 1.0);
    let wv = common::rand_vec(v * c, 2, -1.0, 1.0);
    let labels: Vec<u32> = (0..rows as u32).map(|i| if i == 4 { v as u32 + 1 } else { i * 37 % v as u32 }).collect();
    let maskv: Vec<f32> = (0..rows).map(|i| if i % 3 == 0 { 0.0 } else { 1.0 }).collect();
    let labels = Tensor::from_u32(&gpu, &labels, &[rows]).unwrap();
    let mask = Tensor::from_f32(&gpu, &maskv, &[rows]).unwrap();
    let run = |chunked: bool| {
        let tape = Tape::new();
        let x = tape.var(Tensor::from_f32(&gpu, &xv, &[rows, c]).unwrap());
        let w = tape.var(Tensor::from_f32(&gpu, &wv, &[v, c]).unwrap());
        let loss = if chunked {
            let (w0, w1) = (w.tensor().view(0, &[64, c]).unwrap(), w.tensor().view(64 * c, &[v - 64, c]).unwrap());
            // Two chunks that are views of one trained weight: their gradients are checked joined.
            let (w0, w1) = (tape.var(w0), tape.var(w1));
            let loss = vh::vocab_cross_entropy(&x, &[w0.clone(), w1.clone()], &labels, Some(&mask)).unwrap();
            let grads = tape.backward(&loss).unwrap();
            let mut dw = grads.get(&w0).unwrap().to_f32_vec().unwrap();
            dw.extend(grads.get(&w1).unwrap().to_f32_vec().unwrap());
            return (loss.tensor().scalar().unwrap(), grads.get(&x).unwrap().to_f32_vec().unwrap(), dw);
        } else {
            cross_entropy(&linear(&x, &w, None).unwrap(), &labels, Some(&mask)).unwrap()
        };
        let grads = tape.backward(&loss).unwrap();
        (loss.tensor().scalar().unwrap(), grads.get(&x).unwrap().to_f32_vec().unwrap(), grads.get(&w).unwrap().to_f32_vec().unwrap())
    };
    for variant in [KernelVariant::Register, KernelVariant::Tiled] {
        gpu.set_variant(variant);
        let (l0, dx0, dw0) = run(false);
        let (l1, dx1, dw1) = run(true);
        assert!((l0 - l1).abs() < 1e-5 * l0.abs().max(1.0), "{variant:?}: loss {l0} vs chunked {l1}");
        let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        common::assert_close(&format!("{variant:?} dx"), &dx1, &f(&dx0), 1e-6, 1e-4);
        common::assert_close(&format!("{variant:?} dw"), &dw1, &f(&dw0), 1e-6, 1e-4);
    }
}
