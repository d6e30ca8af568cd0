// GRPO, per token (TRL's GRPOTrainer, loss type "grpo"): the clipped objective with the
// sequence's advantage, plus β times the k3 KL to the reference (grpo_tokens_ref), its
// derivative with respect to the new log-prob, and the metric terms, in one pass. One thread
// per token; masked tokens (mask 0) write zeros.
//   ratio = exp(logp - old_logp),  A = advantage of the token's sequence
//   loss  = -min(ratio A, clip(ratio, 1 - ε, 1 + ε) A) + β (exp(ref - logp) - (ref - logp) - 1)
// Row i of `parts` (STRIDE floats), each term times the mask m:
//   0 d loss / d logp   1 unused (0)   2 loss   3 k3 KL   4 [low clipped]   5 [high clipped]
//   6 m   7 unused (0)

struct Params {
    n: u32,
    cols: u32,     // tokens per sequence
    clip: f32,     // ε
    beta: f32,     // β
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> parts: array<f32>;
@group(0) @binding(2) var<storage, read> logp: array<f32>;
@group(0) @binding(3) var<storage, read> old_logp: array<f32>;
@group(0) @binding(4) var<storage, read> advantages: array<f32>;
@group(0) @binding(5) var<storage, read> mask: array<f32>;
@group(0) @binding(6) var<storage, read> ref_logp: array<f32>;

const WG: u32 = 64u;
const STRIDE: u32 = 8u;

// exp(x) - 1, as a series for small |x| where the subtraction would cancel.
fn expm1(x: f32) -> f32 {
    if (abs(x) < 0.1) {
        return x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0)))));
    }
    return exp(x) - 1.0;
}

// exp(-d) - 1 + d, as a series for small |d|.
fn k3(d: f32) -> f32 {
    if (abs(d) < 0.1) {
        return d * d * (0.5 + d * (-1.0 / 6.0 + d * (1.0 / 24.0 + d * (-1.0 / 120.0 + d * (1.0 / 720.0)))));
    }
    return exp(-d) - 1.0 + d;
}

// `kl_d` is logp - ref (unused when `with_ref` is false).
fn token(i: u32, with_ref: bool, kl_d: f32) {
    let o = i * STRIDE;
    let m = mask[i];
    if (m == 0.0) {
        for (var c = 0u; c < STRIDE; c++) {
            parts[o + c] = 0.0;
        }
        return;
    }
    // clipped objective: the unclipped term is the min (ties included) unless the clipped one
    // is smaller
    let ratio = exp(logp[i] - old_logp[i]);
    let a = advantages[i / p.cols];
    let l1 = ratio * a;
    let l2 = clamp(ratio, 1.0 - p.clip, 1.0 + p.clip) * a;
    var loss = -min(l1, l2);
    var dloss = select(0.0, -l1, l1 <= l2);
    // KL to the reference
    var kl = 0.0;
    if (with_ref) {
        kl = k3(kl_d);
        loss += p.beta * kl;
        dloss += p.beta * -expm1(-kl_d);
    }
    // store
    parts[o] = m * dloss;
    parts[o + 1u] = 0.0;
    parts[o + 2u] = m * loss;
    parts[o + 3u] = m * kl;
    parts[o + 4u] = m * select(0.0, 1.0, ratio < 1.0 - p.clip && a < 0.0);
    parts[o + 5u] = m * select(0.0, 1.0, ratio > 1.0 + p.clip && a > 0.0);
    parts[o + 6u] = m;
    parts[o + 7u] = 0.0;
}

@compute @workgroup_size(WG)
fn grpo_tokens(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    token(i, false, 0.0);
}

@compute @workgroup_size(WG)
fn grpo_tokens_ref(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    token(i, true, logp[i] - ref_logp[i]);
}
