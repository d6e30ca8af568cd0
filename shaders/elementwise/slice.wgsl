// Column slices of row-major matrices: out (rows, width) = x[:, start .. start + width] of x
// (rows, cols), and its adjoint, which adds a (rows, width) block into columns start.. of a
// (rows, cols) matrix. One thread per output element.

struct Params {
    rows: u32,
    cols: u32,
    start: u32,
    width: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;

// out[r, j] = x[r, start + j]
@compute @workgroup_size(256)
fn slice_cols(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.rows * p.width) { return; }
    let r = i / p.width;
    let j = i % p.width;
    out[i] = x[r * p.cols + p.start + j];
}

// out (rows, cols)[r, start + j] += x (rows, width)[r, j]
@compute @workgroup_size(256)
fn add_into_cols(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.rows * p.width) { return; }
    let r = i / p.width;
    let j = i % p.width;
    let o = r * p.cols + p.start + j;
    out[o] = out[o] + x[i];
}
