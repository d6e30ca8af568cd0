//! Gradient-check rows for the elementwise family, and the tape's own behaviour.
mod common;
use common::gradcheck::{run_table, Case, Input};
use plumb::ops::elementwise::{self as ew, reference as r};
use plumb::{Tape, Tensor, Var};

#[test]
fn elementwise_table() {
    let Some(gpu) = common::gpu() else { return };
    let mut cases = Vec::new();
    // From 8192 elements, lengths that are multiples of 4 take the texture-fed add/sub and
    // accumulation on CPU adapters.
    for n in [1usize, 7, 16, 33, 130, 8192, 8197] {
        cases.push(Case::new(format!("add n={n}"), vec![Input::f(&[n]), Input::f(&[n])], |v| ew::add(&v[0], &v[1]), |d| r::add(&d[0], &d[1])));
        cases.push(Case::new(format!("sub n={n}"), vec![Input::f(&[n]), Input::f(&[n])], |v| ew::sub(&v[0], &v[1]), |d| r::sub(&d[0], &d[1])));
        cases.push(Case::new(format!("mul n={n}"), vec![Input::f(&[n]), Input::f(&[n])], |v| ew::mul(&v[0], &v[1]), |d| r::mul(&d[0], &d[1])));
        cases.push(Case::new(format!("scale n={n}"), vec![Input::f(&[n])], |v| ew::scale(&v[0], -2.5), |d| r::scale(&d[0], -2.5)));
    }
    for (rows, cols, start, width) in [(1usize, 7usize, 2usize, 3usize), (5, 33, 0, 33), (7, 130, 64, 66)] {
        cases.push(Case::new(
            format!("slice_last {rows}x{cols} [{start}+{width}]"),
            vec![Input::f(&[rows, cols])],
            move |v| ew::slice_last(&v[0], start, width),
            move |d| r::slice_last(&d[0], cols, start, width),
        ));
    }
    // A value used twice: gradients from both uses must add up.
    for n in [5, 8192] {
        cases.push(Case::new(format!("x*x + x n={n}"), vec![Input::f(&[n])], |v| ew::add(&ew::mul(&v[0], &v[0])?, &v[0]), |d| {
            d[0].iter().map(|x| x * x + x).collect()
        }));
    }
    run_table(&gpu, "elementwise", &cases);
}

#[test]
fn params_accumulate_and_no_grad_records_nothing() {
    let Some(gpu) = common::gpu() else { return };
    let w = Tensor::from_f32(&gpu, &[1.0, 2.0, 3.0], &[3]).unwrap();
    let gw = Tensor::zeros(&gpu, &[3], plumb::DType::F32, "grad").unwrap();
    for _ in 0..2 {
        let tape = Tape::new();
        let p = tape.param(w.clone(), gw.clone()).unwrap();
        let y = ew::scale(&p, 3.0).unwrap();
        tape.backward_with(&y, Tensor::from_f32(&gpu, &[1.0, 1.0, 1.0], &[3]).unwrap()).unwrap();
    }
    // Two micro-batches: 3 + 3.
    assert_eq!(gw.to_f32_vec().unwrap(), vec![6.0, 6.0, 6.0]);
    let tape = Tape::new();
    let x = tape.var(w.clone());
    let n = tape.len();
    {
        let _g = tape.no_grad();
        let y = ew::scale(&x, 2.0).unwrap();
        assert!(!y.requires_grad());
    }
    assert_eq!(tape.len(), n);
    assert!(ew::scale(&x, 2.0).unwrap().requires_grad());
    let c = Var::constant(w);
    assert!(!ew::scale(&c, 2.0).unwrap().requires_grad());
}

#[test]
fn one_submit_for_many_dispatches() {
    let Some(gpu) = common::gpu() else { return };
    let x = Tensor::from_f32(&gpu, &[1.0; 1000], &[1000]).unwrap();
    gpu.flush().unwrap();
    let (d0, s0) = gpu.counters();
    let mut y = x.clone();
    for _ in 0..50 {
        y = ew::axpby(&y, &x, 1.0, 1.0).unwrap();
    }
    let v = y.to_f32_vec().unwrap();
    let (d1, s1) = gpu.counters();
    assert_eq!(d1 - d0, 50);
    assert_eq!(s1 - s0, 1, "50 dispatches and a readback must be one submit");
    assert!(v.iter().all(|&a| a == 51.0));
}

#[test]
fn oversized_tensor_is_a_clear_error_not_a_panic() {
    let Some(gpu) = common::gpu() else { return };
    let n = (gpu.limits().max_storage_buffer_binding_size as usize / 4) + 1024;
    let err = Tensor::empty(&gpu, &[n], plumb::DType::F32, "huge activations").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("huge activations") && msg.contains("at most"), "{msg}");
    // The device is still usable afterwards.
    assert_eq!(Tensor::from_f32(&gpu, &[1.0, 2.0], &[2]).unwrap().to_f32_vec().unwrap(), vec![1.0, 2.0]);
}
