// Backward passes of the reductions: spread an output gradient back over the reduced elements.
//   spread_last:    dx[i] = scale * g[i / cols]              (sum_last, mean_last, sum_all)
//   spread_leading: dx[i] = scale * g[i % cols]              (sum_leading)
//   scatter_argmax: dx[i] = g[r] if i % cols == argmax[r] else 0, r = i / cols   (max_last)
// One thread per element of dx.

struct Params {
    n: u32,
    cols: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read> argmax: array<u32>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn spread_last(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    dx[i] = p.scale * g[i / p.cols];
}

@compute @workgroup_size(256)
fn spread_leading(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    dx[i] = p.scale * g[i % p.cols];
}

@compute @workgroup_size(256)
fn scatter_argmax(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    let r = i / p.cols;
    dx[i] = select(0.0, g[r], i % p.cols == argmax[r]);
}
