//! Shared test helpers: opening the GPU (a failure in CI, a skip elsewhere) and the one
//! gradient-check harness that every op goes through.
#![allow(dead_code)]

pub mod f64_ops;
pub mod gradcheck;
pub mod resume;

use plumb::{Gpu, GpuOptions};

/// Open the GPU the way the product does. With `CI=true` a missing adapter fails the test;
/// elsewhere the test is skipped with a message.
pub fn gpu() -> Option<Gpu> {
    match GpuOptions::from_env().and_then(|o| Gpu::with_options(&o)) {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false) {
                panic!("CI=true and no GPU adapter: {e}");
            }
            eprintln!("skipping GPU test: {e}");
            None
        }
    }
}

/// Deterministic pseudo-random values in [lo, hi).
pub fn rand_vec(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

/// Assert two slices agree within `atol + rtol*|b|`, naming the worst element.
pub fn assert_close(what: &str, a: &[f32], b: &[f64], atol: f64, rtol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let mut worst = (0.0f64, 0usize);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let err = (x as f64 - y).abs() / (atol + rtol * y.abs());
        if !(err <= worst.0) {
            worst = (err, i);
        }
    }
    let i = worst.1;
    assert!(worst.0 <= 1.0, "{what}: element {i}: gpu {} vs reference {} (err ratio {:.3})", a[i], b[i], worst.0);
}

/// Pairs whose chosen completions use letters a-h and rejected ones letters q-x, after a
/// random prompt of digits: a preference any model can learn.
pub fn synthetic_pairs(n: usize, seed: u64) -> Vec<plumb::align::Pair> {
    let r = rand_vec(n * 20, seed, 0.0, 8.0);
    (0..n)
        .map(|i| {
            let x = &r[i * 20..(i + 1) * 20];
            plumb::align::Pair {
                prompt: x[..4].iter().map(|v| b'0' as u32 + *v as u32).collect(),
                chosen: x[4..12].iter().map(|v| b'a' as u32 + *v as u32).collect(),
                rejected: x[12..20].iter().map(|v| b'q' as u32 + *v as u32).collect(),
                reference: None,
            }
        })
        .collect()
}
