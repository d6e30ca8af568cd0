// out (cols, rows) = xᵀ for x (rows, cols), row-major: the register matmul's last step when it
// computed a product with few columns as its transpose (see `RegisterPlan::swap` in
// src/ops/matmul.rs). One thread per output element, consecutive threads writing consecutive
// elements.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn transpose(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.rows * p.cols) {
        return;
    }
    // out[j, r] = x[r, j]
    let j = i / p.rows;
    let r = i % p.rows;
    out[i] = x[r * p.cols + j];
}
