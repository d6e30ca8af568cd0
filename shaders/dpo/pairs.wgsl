// DPO, per preference pair: the weighted mixture of loss types, its derivatives with respect to
// the policy's sequence log-prob sums pc_i and pr_i, and the per-pair metric terms, in one pass.
// One thread per pair. The formulas are documented on `DpoLoss` in src/ops/dpo.rs.
// aot and aot_unpaired pair the log-ratios by their rank in the batch, as TRL's torch.sort
// does: dpo_sort first writes the sorted columns (a rank sort, one thread per pair, ties broken
// by index so the ranks are a permutation), then dpo_pairs finds each pair's rank the same way.
//
// Row i of `pairs` (STRIDE floats):
//   0 loss_i = sum over types of w_type * L_type(i)
//   1 d(batch loss)/d pc_i   2 d(batch loss)/d pr_i   (already divided by N)
//   3 beta (pc - rc)   4 beta (pr - rr)   5 3 minus 4   6 [3 > 4]   7 pc   8 pr

struct Params {
    n: u32,
    _pad0: u32,
    beta: f32,
    eps: f32,        // label smoothing (sigmoid, robust)
    gamma: f32,      // margin of sigmoid_norm
    delta: f32,      // running reward mean of bco_pair
    inv_n: f32,
    tau: f32,        // temperature of discopop's modulation
    w_a: vec4<f32>,  // weights of sigmoid, hinge, ipo, robust
    w_b: vec4<f32>,  // weights of bco_pair, apo_zero, apo_down, sigmoid_norm
    w_c: vec4<f32>,  // weights of sft, exo_pair, nca_pair, sppo_hard
    w_d: vec4<f32>,  // weights of discopop, orpo, aot, aot_unpaired
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> pairs: array<f32>;
@group(0) @binding(2) var<storage, read> pc: array<f32>;
@group(0) @binding(3) var<storage, read> pr: array<f32>;
@group(0) @binding(4) var<storage, read> rc: array<f32>;
@group(0) @binding(5) var<storage, read> rr: array<f32>;
@group(0) @binding(6) var<storage, read> lc: array<f32>;
@group(0) @binding(7) var<storage, read> lr: array<f32>;
// (N, 3), ascending: the chosen log-ratios pc - rc, the rejected ones pr - rr, the reference's
// pair log-ratios rc - rr (written by dpo_sort, read by dpo_pairs)
@group(0) @binding(8) var<storage, read_write> sorted: array<f32>;

const WG: u32 = 64u;
const STRIDE: u32 = 9u;

// sigma(x) without overflow for either sign.
fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

// log sigma(x) = min(x, 0) - log(1 + exp(-|x|)) (the softplus form), with log1p's series for
// tiny arguments.
fn log_sigmoid(x: f32) -> f32 {
    let t = exp(-abs(x));
    var l = log(1.0 + t);
    if (t < 1e-4) {
        l = t * (1.0 - 0.5 * t);
    }
    return min(x, 0.0) - l;
}

// log(1 - exp(a)) for a < 0, with log1p's series when exp(a) is tiny.
fn log1m_exp(a: f32) -> f32 {
    let t = exp(a);
    if (t < 1e-4) {
        return -t * (1.0 + 0.5 * t);
    }
    return log(1.0 - t);
}

// Column `c` of the values that dpo_sort orders, at pair j: 0 chosen log-ratio, 1 rejected
// log-ratio, 2 the reference's pair log-ratio, 3 the policy's pair log-ratio pc - pr.
fn column(c: u32, j: u32) -> f32 {
    var v = pc[j] - pr[j];
    switch c {
        case 0u: { v = pc[j] - rc[j]; }
        case 1u: { v = pr[j] - rr[j]; }
        case 2u: { v = rc[j] - rr[j]; }
        default: {}
    }
    return v;
}

// The position of pair i in column c sorted ascending (ties by index: a permutation).
fn rank(c: u32, i: u32) -> u32 {
    let x = column(c, i);
    var r = 0u;
    for (var j = 0u; j < p.n; j++) {
        let y = column(c, j);
        if (y < x || (y == x && j < i)) { r += 1u; }
    }
    return r;
}

// The sigmoid loss with label smoothing on a margin d, -(1 - eps) log sigma(b d) - eps log
// sigma(-b d), as x = loss and y = d loss / d d.
fn smoothed_sigmoid(d: f32, b: f32, eps: f32) -> vec2<f32> {
    let z = b * d;
    let loss = -(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z);
    return vec2<f32>(loss, -b * (1.0 - eps) * sigmoid(-z) + b * eps * sigmoid(z));
}

// sigma'(x) = sigma(x) sigma(-x)
fn dsigmoid(x: f32) -> f32 {
    return sigmoid(x) * sigmoid(-x);
}

// sorted[rank(c, i) * 3 + c] = column(c, i) for c = 0, 1, 2
@compute @workgroup_size(WG)
fn dpo_sort(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    for (var c = 0u; c < 3u; c++) {
        sorted[rank(c, i) * 3u + c] = column(c, i);
    }
}

@compute @workgroup_size(WG)
fn dpo_pairs(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    // load: log-ratios of the chosen and rejected completions and their difference h
    let b = p.beta;
    let eps = p.eps;
    let sc = pc[i] - rc[i];
    let sr = pr[i] - rr[i];
    let h = sc - sr;
    var loss = 0.0;
    var dc = 0.0;  // d loss_i / d pc_i
    var dr = 0.0;  // d loss_i / d pr_i

    // accumulate: each loss type with a non-zero weight (the weights are uniform, so every
    // thread takes the same branches)
    if (p.w_a.x != 0.0) {  // sigmoid
        let w = p.w_a.x;
        let z = b * h;
        let dh = -b * (1.0 - eps) * sigmoid(-z) + b * eps * sigmoid(z);
        loss += w * (-(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z));
        dc += w * dh;
        dr -= w * dh;
    }
    if (p.w_a.y != 0.0) {  // hinge
        let w = p.w_a.y;
        let m = 1.0 - b * h;
        let dh = select(0.0, -b, m > 0.0);
        loss += w * max(m, 0.0);
        dc += w * dh;
        dr -= w * dh;
    }
    if (p.w_a.z != 0.0) {  // ipo, on length-normalised log-ratios
        let w = p.w_a.z;
        let hn = sc / lc[i] - sr / lr[i];
        let d = hn - 1.0 / (2.0 * b);
        loss += w * d * d;
        dc += w * 2.0 * d / lc[i];
        dr -= w * 2.0 * d / lr[i];
    }
    if (p.w_a.w != 0.0) {  // robust
        let w = p.w_a.w;
        let z = b * h;
        let k = 1.0 / (1.0 - 2.0 * eps);
        let dh = k * (-b * (1.0 - eps) * sigmoid(-z) - b * eps * sigmoid(z));
        loss += w * k * (-(1.0 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z));
        dc += w * dh;
        dr -= w * dh;
    }
    if (p.w_b.x != 0.0) {  // bco_pair
        let w = p.w_b.x;
        let zc = b * sc - p.delta;
        let zr = b * sr - p.delta;
        loss += w * (-log_sigmoid(zc) - log_sigmoid(-zr));
        dc += w * (-b * sigmoid(-zc));
        dr += w * (b * sigmoid(zr));
    }
    if (p.w_b.y != 0.0) {  // apo_zero
        let w = p.w_b.y;
        loss += w * (sigmoid(-b * sc) + sigmoid(b * sr));
        dc += w * (-b * dsigmoid(b * sc));
        dr += w * (b * dsigmoid(b * sr));
    }
    if (p.w_b.z != 0.0) {  // apo_down
        let w = p.w_b.z;
        let q = b * dsigmoid(b * h);
        loss += w * (sigmoid(b * sc) + sigmoid(-b * h));
        dc += w * (b * dsigmoid(b * sc) - q);
        dr += w * q;
    }
    if (p.w_b.w != 0.0) {  // sigmoid_norm
        let w = p.w_b.w;
        let hn = sc / lc[i] - sr / lr[i];
        let z = b * hn - p.gamma;
        let dz = -b * sigmoid(-z);
        loss += w * -log_sigmoid(z);
        dc += w * dz / lc[i];
        dr -= w * dz / lr[i];
    }
    if (p.w_c.x != 0.0) {  // sft
        let w = p.w_c.x;
        loss += w * -pc[i] / lc[i];
        dc += w * -1.0 / lc[i];
    }
    if (p.w_c.y != 0.0) {  // exo_pair; d/dz = sigma'(z) (z - log((1 - e) / e))
        let w = p.w_c.y;
        var e = eps;
        if (e == 0.0) { e = 1e-3; }
        let z = b * h;
        loss += w * (sigmoid(z) * (log_sigmoid(z) - log(1.0 - e)) + sigmoid(-z) * (log_sigmoid(-z) - log(e)));
        let dh = b * dsigmoid(z) * (z - log((1.0 - e) / e));
        dc += w * dh;
        dr -= w * dh;
    }
    if (p.w_c.z != 0.0) {  // nca_pair
        let w = p.w_c.z;
        let zc = b * sc;
        let zr = b * sr;
        loss += w * (-log_sigmoid(zc) - 0.5 * log_sigmoid(-zc) - 0.5 * log_sigmoid(-zr));
        dc += w * b * (-sigmoid(-zc) + 0.5 * sigmoid(zc));
        dr += w * b * 0.5 * sigmoid(zr);
    }
    if (p.w_c.w != 0.0) {  // sppo_hard
        let w = p.w_c.w;
        let a = sc - 0.5 / b;
        let c = sr + 0.5 / b;
        loss += w * (a * a + c * c);
        dc += w * 2.0 * a;
        dr += w * 2.0 * c;
    }
    if (p.w_d.x != 0.0) {  // discopop: -log sigma(z)(1 - m) + exp(-z) m, m = sigma(z / tau)
        let w = p.w_d.x;
        let z = b * h;
        let m = sigmoid(z / p.tau);
        let dm = dsigmoid(z / p.tau) / p.tau;
        let ez = exp(-z);
        loss += w * (-log_sigmoid(z) * (1.0 - m) + ez * m);
        let dz = -sigmoid(-z) * (1.0 - m) - ez * m + dm * (log_sigmoid(z) + ez);
        dc += w * b * dz;
        dr -= w * b * dz;
    }
    if (p.w_d.y != 0.0) {  // orpo: chosen NLL - beta log sigma(log odds ratio), on mean log-probs
        let w = p.w_d.y;
        let a = pc[i] / lc[i];
        let c = pr[i] / lr[i];
        let lo = (a - c) - (log1m_exp(a) - log1m_exp(c));
        loss += w * (-a - b * log_sigmoid(lo));
        let dlo = -b * sigmoid(-lo);
        dc += w * (-1.0 + dlo / (1.0 - exp(a))) / lc[i];
        dr += w * (-dlo / (1.0 - exp(c))) / lr[i];
    }
    if (p.w_d.z != 0.0) {  // aot: the k-th smallest policy pair log-ratio against the k-th reference one
        let w = p.w_d.z;
        let f = smoothed_sigmoid(column(3u, i) - sorted[rank(3u, i) * 3u + 2u], b, eps);
        loss += w * f.x;
        dc += w * f.y;
        dr -= w * f.y;
    }
    if (p.w_d.w != 0.0) {  // aot_unpaired: the k-th smallest chosen log-ratio against the k-th rejected one
        let w = p.w_d.w;
        // this pair's chosen log-ratio at its rank k, against the rejected one ranked k
        let fc = smoothed_sigmoid(sc - sorted[rank(0u, i) * 3u + 1u], b, eps);
        // this pair's rejected log-ratio at its rank k, against the chosen one ranked k
        let fr = smoothed_sigmoid(sorted[rank(1u, i) * 3u] - sr, b, eps);
        loss += w * fc.x;
        dc += w * fc.y;
        dr -= w * fr.y;
    }

    // store: loss, gradients of the batch mean, metric terms
    let o = i * STRIDE;
    let reward_c = b * sc;
    let reward_r = b * sr;
    pairs[o] = loss;
    pairs[o + 1u] = dc * p.inv_n;
    pairs[o + 2u] = dr * p.inv_n;
    pairs[o + 3u] = reward_c;
    pairs[o + 4u] = reward_r;
    pairs[o + 5u] = reward_c - reward_r;
    pairs[o + 6u] = select(0.0, 1.0, reward_c > reward_r);
    pairs[o + 7u] = pc[i];
    pairs[o + 8u] = pr[i];
}
