// Generalised advantage estimation, one thread per sequence running the reverse recursion over
// its valid tokens (mask != 0), skipping masked ones:
//   δ_t = r_t + γ V_next - V_t,   A_t = δ_t + γλ A_next,   returns_t = A_t + V_t,
// where V_next and A_next belong to the next valid token (0 after the last one). Masked
// positions get 0 in both outputs. Tensors are (rows, cols) row-major.

struct Params {
    rows: u32,
    cols: u32,
    gamma: f32,
    lam: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> advantages: array<f32>;
@group(0) @binding(2) var<storage, read_write> returns: array<f32>;
@group(0) @binding(3) var<storage, read> rewards: array<f32>;
@group(0) @binding(4) var<storage, read> values: array<f32>;
@group(0) @binding(5) var<storage, read> mask: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn gae(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * WG;
    if (row >= p.rows) { return; }
    var next_v = 0.0;
    var next_a = 0.0;
    // walk the row backwards: load, recurse, store
    for (var k = 0u; k < p.cols; k++) {
        let i = row * p.cols + (p.cols - 1u - k);
        if (mask[i] == 0.0) {
            advantages[i] = 0.0;
            returns[i] = 0.0;
            continue;
        }
        let v = values[i];
        let delta = rewards[i] + p.gamma * next_v - v;
        let a = delta + p.gamma * p.lam * next_a;
        advantages[i] = a;
        returns[i] = a + v;
        next_v = v;
        next_a = a;
    }
}
