// Token embedding lookup over one row chunk of a (V, C) table: the chunk holds rows
// row_start .. row_start + rows. out[n, c] = chunk[ids[n] - row_start, c] for ids inside the
// chunk; for ids outside it the thread writes 0 when zero_outside is 1 (the first chunk, which
// also covers ids >= V) and leaves out alone otherwise (later chunks fill their own rows).
// An unsplit table is one chunk with row_start 0, rows V, zero_outside 1. One thread per
// output element.

struct Params {
    tokens: u32,
    cols: u32,
    row_start: u32,
    rows: u32,
    zero_outside: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read> table: array<f32>;

@compute @workgroup_size(256)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.tokens * p.cols) { return; }
    let id = ids[i / p.cols];
    // (unsigned: ids below row_start wrap past rows)
    let row = id - p.row_start;
    if (row < p.rows) {
        out[i] = table[row * p.cols + i % p.cols];
    } else if (p.zero_outside == 1u) {
        out[i] = 0.0;
    }
}
