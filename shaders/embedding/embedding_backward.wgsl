// Token embedding backward without atomics, deterministic: d_table[v, c] is the sum, in token
// order, of dout[n, c] over the tokens n with ids[n] = v. Two kernels:
//   link:       one thread per token n scans all ids and writes links[2n] = the next token with
//               the same id (or N), links[2n+1] = 1 if n is the first token with its id.
//               O(N^2) compares of cached u32s: cheap next to the matmuls for N up to ~10^4-10^5.
//   accumulate: one thread per (first token n, channel c) follows the chain from n and writes
//               d_table[ids[n] - row_start, c] when the id lies in the row chunk
//               row_start .. row_start + rows (an unsplit table: 0 .. V). Rows of ids that do
//               not occur are zeroed beforehand by the host code; ids >= V get no gradient.
//               The links are computed once and serve every chunk.

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
@group(0) @binding(1) var<storage, read_write> links: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> dtable: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;

@compute @workgroup_size(64)
fn link(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = gid.x + gid.y * nwg.x * 64u;
    if (n >= p.tokens) { return; }
    let id = ids[n];
    // accumulate: is there an earlier token with this id, and which later one comes next?
    var first = 1u;
    for (var m = 0u; m < n; m++) {
        if (ids[m] == id) { first = 0u; }
    }
    var next = p.tokens;
    for (var m = p.tokens; m > n + 1u; m--) {
        if (ids[m - 1u] == id) { next = m - 1u; }
    }
    // store
    links[2u * n] = next;
    links[2u * n + 1u] = first;
}

@compute @workgroup_size(256)
fn accumulate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.tokens * p.cols) { return; }
    let n = i / p.cols;
    let c = i % p.cols;
    let id = ids[n];
    // (unsigned: ids below row_start wrap past rows)
    let row = id - p.row_start;
    if (links[2u * n + 1u] == 0u || row >= p.rows) { return; }
    // accumulate: the chain of tokens with this id, in token order
    var s = 0.0;
    var k = n;
    while (k < p.tokens) {
        s += dout[k * p.cols + c];
        k = links[2u * k];
    }
    // store
    dtable[row * p.cols + c] = s;
}
