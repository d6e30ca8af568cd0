// Reward shaping for the RL trainers, one thread per output:
//   kl_penalty: per-token KL estimate from log-probs, k1 = logp - ref, or
//     k3 = (r - 1) - log r with r = exp(ref - logp), i.e. expm1(-d) + d with d = logp - ref,
//     computed as a series for small |d| where the subtraction would cancel;
//   group_advantages (one thread per group of `size` consecutive rewards): r - mean, divided by
//     (std + 1e-4) when `flag` is 1, with the unbiased std (as torch.std).

struct Params {
    n: u32,     // elements (kl_penalty) or groups (group_advantages)
    k: u32,     // estimator: 0 = k1, 1 = k3 (kl_penalty); group size (group_advantages)
    flag: u32,  // divide by the std (group_advantages)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

const WG: u32 = 64u;

// k3(d) = exp(-d) - 1 + d
fn k3(d: f32) -> f32 {
    if (abs(d) < 0.1) {
        return d * d * (0.5 + d * (-1.0 / 6.0 + d * (1.0 / 24.0 + d * (-1.0 / 120.0 + d * (1.0 / 720.0)))));
    }
    return exp(-d) - 1.0 + d;
}

// out = KL estimate of logp (a) against the reference's ref (b)
@compute @workgroup_size(WG)
fn kl_penalty(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    let d = a[i] - b[i];
    out[i] = select(d, k3(d), p.k == 1u);
}

// out = group-normalised advantages of the rewards (a)
@compute @workgroup_size(WG)
fn group_advantages(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = gid.x + gid.y * nwg.x * WG;
    if (g >= p.n) { return; }
    let start = g * p.k;
    // mean, then the centred sum of squares
    var s = 0.0;
    for (var j = 0u; j < p.k; j++) {
        s += a[start + j];
    }
    let mean = s / f32(p.k);
    var q = 0.0;
    for (var j = 0u; j < p.k; j++) {
        let d = a[start + j] - mean;
        q += d * d;
    }
    let scale = select(1.0, 1.0 / (sqrt(q / f32(p.k - 1u)) + 1e-4), p.flag == 1u);
    // store
    for (var j = 0u; j < p.k; j++) {
        out[start + j] = (a[start + j] - mean) * scale;
    }
}
