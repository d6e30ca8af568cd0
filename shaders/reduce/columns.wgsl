// Column sums in blocks of rows: out[b, c] = sum of x[r, c] for r in block b (rows_per_block rows).
// One thread per (block, column); adjacent threads read adjacent columns. Called repeatedly until
// one block is left, so the sum over any number of rows is deterministic and needs no atomics.

struct Params {
    rows: u32,
    cols: u32,
    rows_per_block: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;

@compute @workgroup_size(64)
fn sum_columns(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let blocks = (p.rows + p.rows_per_block - 1u) / p.rows_per_block;
    if (i >= blocks * p.cols) { return; }
    let c = i % p.cols;
    let b = i / p.cols;
    let r0 = b * p.rows_per_block;
    let r1 = min(r0 + p.rows_per_block, p.rows);
    // accumulate: the block's rows in order
    var s = 0.0;
    for (var r = r0; r < r1; r++) {
        s += x[r * p.cols + c];
    }
    // store
    out[i] = s;
}
