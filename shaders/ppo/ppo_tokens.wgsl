// PPO, per token (TRL's PPOTrainer): the clipped policy surrogate and the clipped value loss,
// their derivatives with respect to the new log-prob and the new value, and the metric terms, in
// one pass. One thread per token; masked tokens (mask 0) write zeros.
//   ratio = exp(logp - old_logp)
//   pg    = max(-A ratio, -A clip(ratio, 1 - ε, 1 + ε))
//   v_c   = old_v + clip(v - old_v, -ε_v, ε_v)
//   vf    = 0.5 max((v - R)², (v_c - R)²)
// Row i of `parts` (STRIDE floats), each term times the mask m:
//   0 d pg / d logp   1 d vf / d v   2 pg   3 vf   4 [pg clipped]   5 [value clipped]
//   6 0.5 (logp - old_logp)²   7 m

struct Params {
    n: u32,
    _pad: u32,
    clip: f32,      // ε
    clip_v: f32,    // ε_v
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> parts: array<f32>;
@group(0) @binding(2) var<storage, read> logp: array<f32>;
@group(0) @binding(3) var<storage, read> old_logp: array<f32>;
@group(0) @binding(4) var<storage, read> advantages: array<f32>;
@group(0) @binding(5) var<storage, read> values: array<f32>;
@group(0) @binding(6) var<storage, read> old_values: array<f32>;
@group(0) @binding(7) var<storage, read> returns: array<f32>;
@group(0) @binding(8) var<storage, read> mask: array<f32>;

const WG: u32 = 64u;
const STRIDE: u32 = 8u;

@compute @workgroup_size(WG)
fn ppo_tokens(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    let o = i * STRIDE;
    let m = mask[i];
    if (m == 0.0) {
        for (var c = 0u; c < STRIDE; c++) {
            parts[o + c] = 0.0;
        }
        return;
    }
    // policy: the unclipped term is the max (ties included) unless the clipped one is larger
    let d = logp[i] - old_logp[i];
    let ratio = exp(d);
    let a = advantages[i];
    let pg1 = -a * ratio;
    let pg2 = -a * clamp(ratio, 1.0 - p.clip, 1.0 + p.clip);
    let unclipped = pg1 >= pg2;
    // value: same rule for the squared errors
    let v = values[i];
    let r = returns[i];
    let v_c = old_values[i] + clamp(v - old_values[i], -p.clip_v, p.clip_v);
    let l1 = (v - r) * (v - r);
    let l2 = (v_c - r) * (v_c - r);
    // store
    parts[o] = m * select(0.0, pg1, unclipped);
    parts[o + 1u] = m * select(0.0, v - r, l1 >= l2);
    parts[o + 2u] = m * max(pg1, pg2);
    parts[o + 3u] = m * 0.5 * max(l1, l2);
    parts[o + 4u] = m * select(0.0, 1.0, pg2 > pg1);
    parts[o + 5u] = m * select(0.0, 1.0, l2 > l1);
    parts[o + 6u] = m * 0.5 * d * d;
    parts[o + 7u] = m;
}
