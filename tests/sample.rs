//! GPU token sampling: greedy is the argmax (ties to the lowest index), a seed reproduces a run,
//! draws agree one for one with the CPU reference given the same uniform, empirical frequencies
//! follow softmax(logits / T) and its top-k / top-p restrictions, stop ids finish rows, and a
//! GPT-2-sized vocabulary works. Statistical checks use a fixed seed, so they are deterministic.
mod common;
use plumb::ops::sample::{reference as r, sample, SampleState, SamplingConfig};
use plumb::{DType, Gpu, KernelVariant, Tensor};

const PAD: u32 = u32::MAX;

fn cfg(temperature: f32, top_k: usize, top_p: f32) -> SamplingConfig {
    SamplingConfig { temperature, top_k, top_p }
}

/// Run `steps` decode steps on fixed logits (B, V), all recorded before one readback; returns
/// `out` as B rows of `steps` tokens, and the done flags.
fn run(
    gpu: &Gpu,
    logits: &[f32],
    b: usize,
    c: &SamplingConfig,
    seed: u64,
    steps: usize,
    stop: &[u32],
) -> (Vec<Vec<u32>>, Vec<bool>) {
    let v = logits.len() / b;
    let l = Tensor::from_f32(gpu, logits, &[b, v]).unwrap();
    let state = SampleState::new(gpu, b, stop, seed).unwrap();
    let next = Tensor::empty(gpu, &[b, 1], DType::U32, "next").unwrap();
    let out = Tensor::empty(gpu, &[b, steps], DType::U32, "out").unwrap();
    for s in 0..steps {
        sample(&l, c, &state, s as u32, &next, &out, PAD).unwrap();
    }
    let flat = out.to_u32_vec().unwrap();
    (flat.chunks(steps).map(|r| r.to_vec()).collect(), state.done_rows().unwrap())
}

fn both_variants(gpu: &Gpu, mut f: impl FnMut(KernelVariant)) {
    for v in [KernelVariant::Register, KernelVariant::Tiled] {
        gpu.set_variant(v);
        f(v);
    }
    gpu.set_variant(KernelVariant::Register);
}

/// Pearson chi-square of observed counts against probabilities (cells with p = 0 must be empty).
fn chi_square(counts: &[usize], probs: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    let mut chi = 0.0;
    for (&c, &q) in counts.iter().zip(probs) {
        if q == 0.0 {
            assert_eq!(c, 0, "a token of probability 0 was drawn");
            continue;
        }
        let e = q * n as f64;
        chi += (c as f64 - e).powi(2) / e;
    }
    chi
}

fn softmax(logits: &[f32], t: f64) -> Vec<f64> {
    let m = logits.iter().fold(f64::MIN, |a, &x| a.max(x as f64));
    let e: Vec<f64> = logits.iter().map(|&x| ((x as f64 - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

fn counts(rows: &[Vec<u32>], v: usize) -> Vec<usize> {
    let mut c = vec![0; v];
    for t in rows.iter().flatten() {
        c[*t as usize] += 1;
    }
    c
}

#[test]
fn greedy_is_argmax_with_ties_to_the_lowest_index() {
    let Some(gpu) = common::gpu() else { return };
    both_variants(&gpu, |variant| {
        for v in [1usize, 7, 33, 130, 1000] {
            let b = 6;
            let mut l = common::rand_vec(b * v, v as u64, -3.0, 3.0);
            if v > 4 {
                // row 1: the maximum three times; row 2: a NaN before a tie; row 3: all -inf;
                // row 4: +inf present; row 5: -0 and +0 as the maximum.
                l[v + 4] = 9.0;
                l[v + 1] = 9.0;
                l[2 * v - 1] = 9.0;
                l[2 * v] = f32::NAN;
                l[2 * v + 2] = 5.0;
                l[2 * v + 3] = 5.0;
                l[3 * v..4 * v].fill(f32::NEG_INFINITY);
                l[4 * v + 3] = f32::INFINITY;
                l[5 * v..6 * v].fill(-1.0);
                l[5 * v + 2] = -0.0;
                l[5 * v + 4] = 0.0;
            }
            let (out, _) = run(&gpu, &l, b, &SamplingConfig::greedy(), 1, 2, &[]);
            for row in 0..b {
                let want = r::argmax(&l[row * v..(row + 1) * v]) as u32;
                assert_eq!(out[row], vec![want, want], "{variant:?} V={v} row {row}");
            }
            if v > 4 {
                assert_eq!(out[1][0], 1, "tie goes to the lowest index");
                assert_eq!(out[2][0], 2, "NaN is never the maximum; tie to the lowest index");
                assert_eq!(out[3][0], 0, "all -inf: index 0");
                assert_eq!(out[4][0], 3, "+inf is the maximum");
                assert_eq!(out[5][0], 2, "-0 == +0");
            }
        }
    });
}

#[test]
fn a_seed_reproduces_a_run_and_rows_are_independent() {
    let Some(gpu) = common::gpu() else { return };
    let (b, v, steps) = (4, 50, 16);
    let l = common::rand_vec(b * v, 3, -1.0, 1.0);
    let c = SamplingConfig::default();
    let (a1, _) = run(&gpu, &l, b, &c, 7, steps, &[]);
    let (a2, _) = run(&gpu, &l, b, &c, 7, steps, &[]);
    assert_eq!(a1, a2, "same seed, same tokens");
    let (a3, _) = run(&gpu, &l, b, &c, 8, steps, &[]);
    let same = a1.iter().flatten().zip(a3.iter().flatten()).filter(|(x, y)| x == y).count();
    assert!(same < b * steps / 4, "seeds 7 and 8 agree on {same} of {} draws", b * steps);
    // The draws within one row differ from step to step.
    let distinct = |row: &Vec<u32>| row.iter().collect::<std::collections::HashSet<_>>().len();
    assert!(a1.iter().all(|row| distinct(row) > steps / 2), "{a1:?}");
    // Row 0's draws do not depend on the other rows' logits.
    let mut l2 = l.clone();
    for x in &mut l2[v..] {
        *x = -*x * 2.0;
    }
    let (a4, _) = run(&gpu, &l2, b, &c, 7, steps, &[]);
    assert_eq!(a1[0], a4[0]);
    assert_ne!(a1[1..], a4[1..]);
}

/// How far f32 sums on the GPU may move a CDF or nucleus boundary (as a probability).
const EPS: f64 = 1e-4;

/// True when some tie group's cumulative mass (largest first) lies within EPS of top_p, so that
/// f32 (GPU) and f64 (reference) sums may disagree about the nucleus.
fn nucleus_ambiguous(row: &[f32], c: &SamplingConfig) -> bool {
    if c.top_p >= 1.0 || c.is_greedy() {
        return false;
    }
    let open = r::distribution(row, &SamplingConfig { top_p: 1.0, ..*c });
    let mut idx: Vec<usize> = (0..row.len()).filter(|&i| open[i] > 0.0).collect();
    idx.sort_by_key(|&i| std::cmp::Reverse(r::order_key(row[i])));
    let mut acc = 0.0;
    for (j, &i) in idx.iter().enumerate() {
        acc += open[i];
        let group_ends = j + 1 == idx.len() || r::order_key(row[idx[j + 1]]) != r::order_key(row[i]);
        if group_ends && (acc - c.top_p as f64).abs() < EPS {
            return true;
        }
    }
    false
}

/// Check the GPU's draws against the reference: the same token wherever u is more than EPS from
/// the picked token's CDF interval ends; elsewhere a token that is allowed and whose interval
/// lies within EPS of u. Returns (exactly compared, total).
fn check_draws(l: &[f32], b: usize, c: &SamplingConfig, seed: u64, out: &[Vec<u32>], what: &str) -> (usize, usize) {
    let v = l.len() / b;
    let (mut exact, mut total) = (0, 0);
    for row in 0..b {
        let logits = &l[row * v..(row + 1) * v];
        let d = r::distribution(logits, c);
        let fuzzy_nucleus = nucleus_ambiguous(logits, c);
        let wide = r::distribution(logits, &SamplingConfig { top_p: (c.top_p + 1e-3).min(1.0), ..*c });
        for (s, &got) in out[row].iter().enumerate() {
            total += 1;
            let u = r::uniform(seed, row as u32, s as u32) as f64;
            let got = got as usize;
            let want = r::pick(logits, c, u as f32);
            let lo: f64 = d[..want].iter().sum();
            let hi = lo + d[want];
            let at = format!("{what} {c:?}: row {row} step {s} (u {u}): gpu {got}, reference {want}");
            if !fuzzy_nucleus && u - lo > EPS && hi - u > EPS {
                exact += 1;
                assert_eq!(got, want, "{at}");
            } else if fuzzy_nucleus {
                assert!(got < v && wide[got] > 0.0, "{at}: outside even the widened nucleus");
            } else {
                assert!(got < v && d[got] > 0.0, "{at}: not an allowed token");
                let glo: f64 = d[..got].iter().sum();
                assert!(glo - EPS <= u && u < glo + d[got] + EPS, "{at}: [{glo}, {}) is far from u", glo + d[got]);
            }
        }
    }
    (exact, total)
}

fn check_against_reference(
    gpu: &Gpu,
    l: &[f32],
    b: usize,
    c: &SamplingConfig,
    seed: u64,
    steps: usize,
    what: &str,
) -> (usize, usize) {
    let (out, _) = run(gpu, l, b, c, seed, steps, &[]);
    check_draws(l, b, c, seed, &out, what)
}

#[test]
fn draws_match_the_reference_given_the_same_uniform() {
    let Some(gpu) = common::gpu() else { return };
    let configs = [
        cfg(1.0, 0, 1.0),
        cfg(0.7, 0, 1.0),
        cfg(1.3, 5, 1.0),
        cfg(1.0, 1, 1.0),
        cfg(0.9, 0, 0.8),
        cfg(0.8, 20, 0.9),
        cfg(2.0, 3, 0.5),
        cfg(1.0, 0, 0.0),
    ];
    let (mut exact, mut total) = (0, 0);
    both_variants(&gpu, |variant| {
        // On the Register variant V <= 1536 takes the serial kernel, 2000 the 8-thread one.
        for (vi, v) in [7usize, 130, 1000, 2000].into_iter().enumerate() {
            let b = 5;
            let mut l = common::rand_vec(b * v, 100 + vi as u64, -4.0, 4.0);
            // Quantised logits in one row make tie groups at the top-k and top-p thresholds.
            for x in &mut l[..v] {
                *x = x.round();
            }
            for (ci, c) in configs.iter().enumerate() {
                let (e, t) = check_against_reference(&gpu, &l, b, c, 11 + ci as u64, 6, &format!("{variant:?} V={v}"));
                exact += e;
                total += t;
            }
        }
    });
    println!("{exact} of {total} draws compared exactly");
    assert!(exact * 10 >= total * 9, "only {exact} of {total} draws were far enough from a boundary");
}

#[test]
fn frequencies_follow_softmax_at_the_temperature() {
    let Some(gpu) = common::gpu() else { return };
    let l = [2.0f32, 1.0, 0.5, 0.0, -1.0, -2.0];
    let (b, steps) = (32, 250);
    let logits: Vec<f32> = (0..b).flat_map(|_| l).collect();
    let (out, _) = run(&gpu, &logits, b, &cfg(0.7, 0, 1.0), 2024, steps, &[]);
    let n = counts(&out, l.len());
    // 5 degrees of freedom: P(chi2 > 30) ~ 1.5e-5.
    let right = chi_square(&n, &softmax(&l, 0.7));
    let wrong_t = chi_square(&n, &softmax(&l, 0.8));
    println!("counts {n:?}: chi2 {right:.1} at T=0.7, {wrong_t:.1} at T=0.8");
    assert!(right < 30.0, "chi2 {right} against softmax(l / 0.7)");
    assert!(wrong_t > 30.0, "the test cannot tell T=0.7 from T=0.8 (chi2 {wrong_t})");
}

#[test]
fn top_k_draws_only_the_k_largest_in_proportion() {
    let Some(gpu) = common::gpu() else { return };
    let (b, steps) = (32, 200);
    // Distinct logits: top 3 = indices 4, 0, 7.
    let l = [2.5f32, -1.0, 0.3, 1.1, 3.0, -0.5, 0.9, 2.0, -2.0, 1.5];
    let logits: Vec<f32> = (0..b).flat_map(|_| l).collect();
    let (out, _) = run(&gpu, &logits, b, &cfg(1.5, 3, 1.0), 5, steps, &[]);
    let n = counts(&out, l.len());
    let mut want = vec![0.0; l.len()];
    let sub = softmax(&[2.5, 3.0, 2.0], 1.5);
    (want[0], want[4], want[7]) = (sub[0], sub[1], sub[2]);
    let chi = chi_square(&n, &want); // also asserts nothing outside the top 3
    println!("top-k counts {n:?}: chi2 {chi:.1}");
    assert!(chi < 25.0, "chi2 {chi} (2 dof)");
    // Ties at the k-th value stay in: with k = 2 and logits (3, 1, 3, 3) all three 3s are drawn.
    let tie = [3.0f32, 1.0, 3.0, 3.0];
    let logits: Vec<f32> = (0..8).flat_map(|_| tie).collect();
    let (out, _) = run(&gpu, &logits, 8, &cfg(1.0, 2, 1.0), 9, 50, &[]);
    let n = counts(&out, 4);
    assert_eq!(n[1], 0);
    assert!(n[0] > 80 && n[2] > 80 && n[3] > 80, "{n:?}");
}

#[test]
fn top_p_draws_only_the_nucleus_in_proportion() {
    let Some(gpu) = common::gpu() else { return };
    let (b, steps) = (32, 200);
    let l = [0.2f32, 1.9, -1.0, 1.2, 0.7, -0.3, 2.4, 0.0];
    for (t, top_k, top_p) in [(1.0f32, 0usize, 0.75f32), (0.8, 4, 0.6)] {
        let logits: Vec<f32> = (0..b).flat_map(|_| l).collect();
        let (out, _) = run(&gpu, &logits, b, &cfg(t, top_k, top_p), 77, steps, &[]);
        let n = counts(&out, l.len());
        // The nucleus, computed here by sorting: most likely first until the mass reaches top_p.
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_by(|&a, &b| l[b].partial_cmp(&l[a]).unwrap());
        if top_k > 0 {
            order.truncate(top_k);
        }
        let sub: Vec<f32> = order.iter().map(|&i| l[i]).collect();
        let q = softmax(&sub, t as f64);
        let mut mass = 0.0;
        let mut keep = 0;
        while mass < top_p as f64 {
            assert!((mass - top_p as f64).abs() > 1e-3, "test logits sit on the nucleus boundary");
            mass += q[keep];
            keep += 1;
        }
        let mut want = vec![0.0; l.len()];
        for j in 0..keep {
            want[order[j]] = q[j] / mass;
        }
        let chi = chi_square(&n, &want); // also asserts nothing outside the nucleus
        println!("top-p {top_p} top-k {top_k}: nucleus {:?}, counts {n:?}: chi2 {chi:.1}", &order[..keep]);
        assert!(keep >= 2, "the nucleus should hold more than the argmax");
        assert!(chi < 10.0 + 5.0 * keep as f64, "chi2 {chi} ({} dof)", keep - 1);
    }
}

#[test]
fn stop_ids_finish_rows_and_later_tokens_are_pad() {
    let Some(gpu) = common::gpu() else { return };
    let (b, v, steps) = (3, 16, 6);
    let state = SampleState::new(&gpu, b, &[5, 9], 1).unwrap();
    let l = Tensor::empty(&gpu, &[b, v], DType::F32, "logits").unwrap();
    let next = Tensor::empty(&gpu, &[b, 1], DType::U32, "next").unwrap();
    let out = Tensor::empty(&gpu, &[b, steps], DType::U32, "out").unwrap();
    // Greedy targets per step: row 0 stops at once, row 1 at step 3, row 2 never; the logits
    // after a stop would pick other tokens if the row were not done.
    let want_tok = |row: usize, s: usize| -> usize {
        match row {
            0 => {
                if s == 0 {
                    5
                } else {
                    2
                }
            }
            1 => {
                if s == 3 {
                    9
                } else {
                    1 + s
                }
            }
            _ => 10 + s % 3,
        }
    };
    for s in 0..steps {
        let mut host = vec![0.0f32; b * v];
        for row in 0..b {
            host[row * v + want_tok(row, s)] = 4.0;
        }
        l.write_f32(&host).unwrap();
        sample(&l, &SamplingConfig::greedy(), &state, s as u32, &next, &out, PAD).unwrap();
    }
    let got = out.to_u32_vec().unwrap();
    assert_eq!(&got[..steps], &[5, PAD, PAD, PAD, PAD, PAD]);
    assert_eq!(&got[steps..2 * steps], &[1, 2, 3, 9, PAD, PAD]);
    assert_eq!(&got[2 * steps..], &[10, 11, 12, 10, 11, 12]);
    assert_eq!(state.done_rows().unwrap(), vec![true, true, false]);
    assert_eq!(next.to_u32_vec().unwrap(), vec![PAD, PAD, 12]);
    // Sampled rows stop too: one row where the stop id is the only likely token.
    let mut host = vec![0.0f32; 2 * v];
    host[9] = 30.0;
    let (out, done) = run(&gpu, &host, 2, &SamplingConfig::default(), 3, 4, &[9]);
    assert_eq!(out[0], vec![9, PAD, PAD, PAD]);
    // Row 1 is uniform over 16 tokens (9 included): replay it with the reference.
    let mut ref_done = vec![false; 2];
    let steps: Vec<Vec<u32>> =
        (0..4).map(|s| r::step(&host, &SamplingConfig::default(), 3, s, &mut ref_done, &[9], PAD)).collect();
    assert_eq!(out[1], steps.iter().map(|t| t[1]).collect::<Vec<_>>());
    assert_eq!(done, ref_done);
    // reset() clears the flags.
    state.reset().unwrap();
    assert_eq!(state.done_rows().unwrap(), vec![false; b]);
}

#[test]
fn gpt2_sized_vocabulary() {
    let Some(gpu) = common::gpu() else { return };
    let (b, v) = (3, 50257);
    let mut l = common::rand_vec(b * v, 42, -6.0, 6.0);
    // A few peaked tokens so that top-k / top-p sets are small and meaningful.
    for (row, tok) in [(0usize, 50256usize), (1, 0), (2, 31337)] {
        l[row * v + tok] = 14.0;
        l[row * v + (tok + 17) % v] = 13.0;
    }
    both_variants(&gpu, |variant| {
        let (out, _) = run(&gpu, &l, b, &SamplingConfig::greedy(), 1, 1, &[]);
        let want: Vec<u32> = (0..b).map(|row| r::argmax(&l[row * v..(row + 1) * v]) as u32).collect();
        assert_eq!(out.iter().map(|r| r[0]).collect::<Vec<_>>(), want, "{variant:?}");
        // Unrestricted (half the mass in the 50k-token tail), top-k inside the tail, and nuclei
        // that hold the two peaks.
        for c in [cfg(1.0, 0, 1.0), cfg(1.2, 2000, 1.0), cfg(0.8, 50, 0.9), cfg(1.0, 0, 0.4)] {
            let (e, t) = check_against_reference(&gpu, &l, b, &c, 3, 4, &format!("{variant:?} V={v}"));
            println!("{variant:?} {c:?}: {e} of {t} draws compared exactly");
        }
    });
}

#[test]
fn bad_inputs_are_errors() {
    let Some(gpu) = common::gpu() else { return };
    let state = SampleState::new(&gpu, 2, &[], 0).unwrap();
    let l = Tensor::from_f32(&gpu, &[0.0; 10], &[2, 5]).unwrap();
    let next = Tensor::empty(&gpu, &[2, 1], DType::U32, "next").unwrap();
    let out = Tensor::empty(&gpu, &[2, 4], DType::U32, "out").unwrap();
    let ok = SamplingConfig::default();
    assert!(sample(&l, &ok, &state, 3, &next, &out, 0).is_ok());
    assert!(sample(&l, &ok, &state, 4, &next, &out, 0).is_err(), "step outside out");
    assert!(sample(&l, &cfg(-1.0, 0, 1.0), &state, 0, &next, &out, 0).is_err());
    assert!(sample(&l, &cfg(f32::NAN, 0, 1.0), &state, 0, &next, &out, 0).is_err());
    assert!(sample(&l, &cfg(1.0, 0, 1.5), &state, 0, &next, &out, 0).is_err());
    let l3 = Tensor::from_f32(&gpu, &[0.0; 15], &[3, 5]).unwrap();
    assert!(sample(&l3, &ok, &state, 0, &next, &out, 0).is_err(), "batch mismatch");
    let flat = l.reshape(&[10]).unwrap();
    assert!(sample(&flat, &ok, &state, 0, &next, &out, 0).is_err(), "1-D logits");
    let next_f = Tensor::empty(&gpu, &[2, 1], DType::F32, "next").unwrap();
    assert!(sample(&l, &ok, &state, 0, &next_f, &out, 0).is_err(), "f32 next_ids");
    let out_bad = Tensor::empty(&gpu, &[3, 4], DType::U32, "out").unwrap();
    assert!(sample(&l, &ok, &state, 0, &next, &out_bad, 0).is_err(), "out rows");
    assert!(SampleState::new(&gpu, 0, &[], 0).is_err());
    assert!(SampleState::new(&gpu, 1, &vec![0; 1025], 0).is_err());
}
