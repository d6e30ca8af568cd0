// Bradley-Terry reward-model loss, per pair: loss_i = -log σ(rc_i - rr_i - m_i)
// + μ (rc_i + rr_i)² and its derivatives with respect to rc_i and rr_i, in one pass. One
// thread per pair; bt_pairs_margin reads the per-pair margins m_i, bt_pairs uses m_i = 0.
//
// Row i of `pairs` (STRIDE floats):
//   0 loss_i   1 d(batch loss)/d rc_i   2 d(batch loss)/d rr_i (already divided by N)   3 rc_i   4 rr_i

struct Params {
    n: u32,
    inv_n: f32,
    center: f32,     // μ, the centering coefficient
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> pairs: array<f32>;
@group(0) @binding(2) var<storage, read> rc: array<f32>;
@group(0) @binding(3) var<storage, read> rr: array<f32>;
@group(0) @binding(4) var<storage, read> margin: array<f32>;

const WG: u32 = 64u;
const STRIDE: u32 = 5u;

// σ(x) without overflow for either sign.
fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

// log σ(x) = min(x, 0) - log(1 + exp(-|x|)), with log1p's series for tiny arguments.
fn log_sigmoid(x: f32) -> f32 {
    let t = exp(-abs(x));
    var l = log(1.0 + t);
    if (t < 1e-4) {
        l = t * (1.0 - 0.5 * t);
    }
    return min(x, 0.0) - l;
}

fn pair(i: u32, m: f32) {
    // load
    let c = rc[i];
    let r = rr[i];
    // loss and derivatives
    let d = c - r - m;
    let s = c + r;
    let dd = -sigmoid(-d);               // d(-log σ(d))/dd
    let dc = 2.0 * p.center * s;         // d(μ s²)/d rc = d(μ s²)/d rr
    // store
    let o = i * STRIDE;
    pairs[o] = -log_sigmoid(d) + p.center * s * s;
    pairs[o + 1u] = (dd + dc) * p.inv_n;
    pairs[o + 2u] = (-dd + dc) * p.inv_n;
    pairs[o + 3u] = c;
    pairs[o + 4u] = r;
}

@compute @workgroup_size(WG)
fn bt_pairs(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    pair(i, 0.0);
}

@compute @workgroup_size(WG)
fn bt_pairs_margin(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    pair(i, margin[i]);
}
