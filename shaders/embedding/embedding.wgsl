// Token embedding lookup: out[n, c] = table[ids[n], c] for a (V, C) table. An id >= V reads
// nothing and gives a row of zeros. One thread per output element.

struct Params {
    tokens: u32,
    cols: u32,
    vocab: u32,
    _pad: u32,
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
    var v = 0.0;
    if (id < p.vocab) {
        v = table[id * p.cols + i % p.cols];
    }
    out[i] = v;
}
