//! Test-side GGUF helpers, written independently of plumb's reader so tests can check it: a
//! minimal GGUF parser, an f64 dequantize of the types the tests meet, where to find the real
//! SmolLM2-135M-Instruct file, and an f64 plain-Rust Llama forward over the file's own tensors
//! in llama.cpp's layout (interleaved RoPE pairs on the stored q/k rows, so plumb's un-permutation
//! is checked rather than assumed).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

/// Where the real SmolLM2-135M-Instruct GGUF lies: `$PLUMB_SMOLLM2_GGUF`, else the cache path
/// tools/fetch_smollm2.sh writes. None (with a message) when absent; under CI=true a panic.
pub fn smollm2_path() -> Option<PathBuf> {
    let p = match std::env::var_os("PLUMB_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("PLUMB_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/plumb"));
            cache.join("SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    if p.is_file() {
        return Some(p);
    }
    let msg = format!("the SmolLM2-135M-Instruct GGUF is not at {}: run tools/fetch_smollm2.sh (or set PLUMB_SMOLLM2_GGUF)", p.display());
    if std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false) {
        panic!("CI=true and {msg}");
    }
    eprintln!("skipping: {msg}");
    None
}

/// A metadata value, as far as the tests need one.
#[derive(Clone, Debug, PartialEq)]
pub enum Meta {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
    Arr(Vec<Meta>),
}

impl Meta {
    pub fn int(&self) -> i128 {
        match self {
            Meta::Int(v) => *v,
            other => panic!("not an integer: {other:?}"),
        }
    }
    pub fn float(&self) -> f64 {
        match self {
            Meta::Float(v) => *v,
            Meta::Int(v) => *v as f64,
            other => panic!("not a number: {other:?}"),
        }
    }
    pub fn str(&self) -> &str {
        match self {
            Meta::Str(s) => s,
            other => panic!("not a string: {other:?}"),
        }
    }
}

/// One tensor: ggml type id, `ne` (innermost first), bytes.
pub struct RefTensor {
    pub ty: u32,
    pub ne: Vec<usize>,
    pub data: Vec<u8>,
}

/// A whole GGUF file read into memory.
pub struct RefGguf {
    pub version: u32,
    pub meta: HashMap<String, Meta>,
    pub meta_types: HashMap<String, u32>,
    pub tensors: HashMap<String, RefTensor>,
    pub order: Vec<String>,
}

struct Rd<'a>(&'a [u8], usize);
impl Rd<'_> {
    fn b(&mut self, n: usize) -> &[u8] {
        let s = &self.0[self.1..self.1 + n];
        self.1 += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.b(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.b(8).try_into().unwrap())
    }
    fn s(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.b(n).to_vec()).unwrap()
    }
    fn v(&mut self, t: u32) -> Meta {
        match t {
            0 => Meta::Int(self.b(1)[0] as i128),
            1 => Meta::Int(self.b(1)[0] as i8 as i128),
            2 => Meta::Int(u16::from_le_bytes(self.b(2).try_into().unwrap()) as i128),
            3 => Meta::Int(i16::from_le_bytes(self.b(2).try_into().unwrap()) as i128),
            4 => Meta::Int(self.u32() as i128),
            5 => Meta::Int(self.u32() as i32 as i128),
            6 => Meta::Float(f32::from_le_bytes(self.b(4).try_into().unwrap()) as f64),
            7 => Meta::Bool(self.b(1)[0] != 0),
            8 => Meta::Str(self.s()),
            9 => {
                let et = self.u32();
                let n = self.u64() as usize;
                Meta::Arr((0..n).map(|_| self.v(et)).collect())
            }
            10 => Meta::Int(self.u64() as i128),
            11 => Meta::Int(self.u64() as i64 as i128),
            12 => Meta::Float(f64::from_le_bytes(self.b(8).try_into().unwrap())),
            _ => panic!("value type {t}"),
        }
    }
}

/// (elements, bytes) per block of ggml type `ty`.
pub fn block(ty: u32) -> (usize, usize) {
    match ty {
        0 => (1, 4),
        1 | 30 => (1, 2),
        2 => (32, 18),
        3 => (32, 20),
        8 => (32, 34),
        12 => (256, 144),
        14 => (256, 210),
        _ => panic!("type {ty}"),
    }
}

impl RefGguf {
    pub fn parse(bytes: &[u8]) -> RefGguf {
        let mut r = Rd(bytes, 0);
        assert_eq!(r.b(4), b"GGUF");
        let version = r.u32();
        let (nt, nkv) = (r.u64() as usize, r.u64() as usize);
        let mut meta = HashMap::new();
        let mut meta_types = HashMap::new();
        for _ in 0..nkv {
            let k = r.s();
            let t = r.u32();
            meta_types.insert(k.clone(), t);
            meta.insert(k, r.v(t));
        }
        let align = meta.get("general.alignment").map(|m| m.int() as usize).unwrap_or(32);
        let mut infos = Vec::new();
        for _ in 0..nt {
            let name = r.s();
            let nd = r.u32() as usize;
            let ne: Vec<usize> = (0..nd).map(|_| r.u64() as usize).collect();
            let ty = r.u32();
            let off = r.u64() as usize;
            infos.push((name, ne, ty, off));
        }
        let start = r.1.div_ceil(align) * align;
        let mut tensors = HashMap::new();
        let mut order = Vec::new();
        for (name, ne, ty, off) in infos {
            let n: usize = ne.iter().product();
            let (be, bb) = block(ty);
            let nbytes = n / be * bb;
            let data = bytes[start + off..start + off + nbytes].to_vec();
            order.push(name.clone());
            tensors.insert(name, RefTensor { ty, ne, data });
        }
        RefGguf { version, meta, meta_types, tensors, order }
    }
    pub fn open(path: &std::path::Path) -> RefGguf {
        RefGguf::parse(&std::fs::read(path).unwrap())
    }
    pub fn t(&self, name: &str) -> &RefTensor {
        self.tensors.get(name).unwrap_or_else(|| panic!("no tensor {name}"))
    }
}

fn h(b: &[u8]) -> f64 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f64()
}

/// Dequantize one row (`ne[0]` elements starting at element `start`) in f64.
pub fn dequant_row(t: &RefTensor, row: usize, out: &mut [f64]) {
    let n = t.ne[0];
    let (be, bb) = block(t.ty);
    let bytes = &t.data[row * n / be * bb..(row + 1) * n / be * bb];
    for (k, blk) in bytes.chunks_exact(bb).enumerate() {
        let y = &mut out[k * be..(k + 1) * be];
        match t.ty {
            0 => y[0] = f32::from_le_bytes(blk.try_into().unwrap()) as f64,
            1 => y[0] = h(blk),
            30 => y[0] = half::bf16::from_le_bytes([blk[0], blk[1]]).to_f64(),
            8 => {
                for i in 0..32 {
                    y[i] = h(blk) * blk[2 + i] as i8 as f64;
                }
            }
            2 | 3 => {
                let (d, m, q) = if t.ty == 2 { (h(blk), 0.0, &blk[2..]) } else { (h(blk), h(&blk[2..]), &blk[4..]) };
                let off = if t.ty == 2 { 8.0 } else { 0.0 };
                for i in 0..16 {
                    y[i] = d * ((q[i] & 15) as f64 - off) + m;
                    y[i + 16] = d * ((q[i] >> 4) as f64 - off) + m;
                }
            }
            _ => panic!("reference dequantize: type {}", t.ty),
        }
    }
}

/// The whole tensor in f64, rows of `ne[0]`.
pub fn dequant(t: &RefTensor) -> Vec<f64> {
    let n = t.ne[0];
    let rows = t.ne.iter().skip(1).product::<usize>();
    let mut out = vec![0.0; n * rows];
    for r in 0..rows {
        dequant_row(t, r, &mut out[r * n..(r + 1) * n]);
    }
    out
}

/// y = W x for a ggml matrix (ne = [in, out]), dequantizing one row at a time; rows split over
/// the machine's cores (the test profile is opt-level 1, and this is the test's hot loop).
fn matvec(t: &RefTensor, x: &[f64]) -> Vec<f64> {
    let (n, rows) = (t.ne[0], t.ne[1]);
    assert_eq!(x.len(), n);
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get()).min(8);
    let mut y = vec![0.0; rows];
    let chunk = rows.div_ceil(threads);
    std::thread::scope(|s| {
        for (k, part) in y.chunks_mut(chunk).enumerate() {
            s.spawn(move || {
                let mut row = vec![0.0; n];
                for (j, out) in part.iter_mut().enumerate() {
                    dequant_row(t, k * chunk + j, &mut row);
                    *out = row.iter().zip(x).map(|(a, b)| a * b).sum();
                }
            });
        }
    });
    y
}

fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * r * g).collect()
}

/// ggml's "normal" RoPE (llama.cpp's mode 0 for `llama`): pairs (2i, 2i+1) of each head rotate
/// by pos·theta^(-2i/D). This is how the stored, permuted q/k rows are meant to be rotated.
fn rope_interleaved(x: &mut [f64], heads: usize, d: usize, pos: usize, theta: f64) {
    for h in 0..heads {
        for i in 0..d / 2 {
            let a = pos as f64 * theta.powf(-((2 * i) as f64) / d as f64);
            let (s, c) = a.sin_cos();
            let (x0, x1) = (x[h * d + 2 * i], x[h * d + 2 * i + 1]);
            x[h * d + 2 * i] = x0 * c - x1 * s;
            x[h * d + 2 * i + 1] = x0 * s + x1 * c;
        }
    }
}

/// An f64 Llama (GQA, RoPE, RMSNorm, SwiGLU, tied or untied head) over a `llama` GGUF, one token at
/// a time with a KV cache.
pub struct RefLlama<'a> {
    pub g: &'a RefGguf,
    pub layers: usize,
    pub c: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub eps: f64,
    pub theta: f64,
    norms: HashMap<String, Vec<f64>>,
    kcache: Vec<Vec<Vec<f64>>>,
    vcache: Vec<Vec<Vec<f64>>>,
}

impl<'a> RefLlama<'a> {
    pub fn new(g: &'a RefGguf) -> RefLlama<'a> {
        let a = g.meta["general.architecture"].str().to_string();
        assert_eq!(a, "llama");
        let m = |k: &str| g.meta[&format!("{a}.{k}")].clone();
        let layers = m("block_count").int() as usize;
        let norms = g
            .order
            .iter()
            .filter(|n| n.contains("norm"))
            .map(|n| (n.clone(), dequant(g.t(n))))
            .collect();
        RefLlama {
            g,
            layers,
            c: m("embedding_length").int() as usize,
            heads: m("attention.head_count").int() as usize,
            kv_heads: m("attention.head_count_kv").int() as usize,
            eps: m("attention.layer_norm_rms_epsilon").float(),
            theta: m("rope.freq_base").float(),
            norms,
            kcache: vec![Vec::new(); layers],
            vcache: vec![Vec::new(); layers],
        }
    }

    /// Logits of the next token after feeding `tok` at the next position.
    pub fn step(&mut self, tok: u32) -> Vec<f64> {
        let (c, hq, hkv) = (self.c, self.heads, self.kv_heads);
        let d = c / hq;
        let pos = self.kcache[0].len();
        let mut x = vec![0.0; c];
        dequant_row(self.g.t("token_embd.weight"), tok as usize, &mut x);
        for l in 0..self.layers {
            let t = |n: &str| self.g.t(&format!("blk.{l}.{n}.weight"));
            let h = rms_norm(&x, &self.norms[&format!("blk.{l}.attn_norm.weight")], self.eps);
            let mut q = matvec(t("attn_q"), &h);
            let mut k = matvec(t("attn_k"), &h);
            let v = matvec(t("attn_v"), &h);
            rope_interleaved(&mut q, hq, d, pos, self.theta);
            rope_interleaved(&mut k, hkv, d, pos, self.theta);
            self.kcache[l].push(k);
            self.vcache[l].push(v);
            let mut att = vec![0.0; c];
            for head in 0..hq {
                let kvh = head / (hq / hkv);
                let qh = &q[head * d..(head + 1) * d];
                let scores: Vec<f64> = self.kcache[l]
                    .iter()
                    .map(|k| qh.iter().zip(&k[kvh * d..(kvh + 1) * d]).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt())
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for (p, v) in e.iter().zip(&self.vcache[l]) {
                    for i in 0..d {
                        att[head * d + i] += p / z * v[kvh * d + i];
                    }
                }
            }
            let o = matvec(t("attn_output"), &att);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let h = rms_norm(&x, &self.norms[&format!("blk.{l}.ffn_norm.weight")], self.eps);
            let gate = matvec(t("ffn_gate"), &h);
            let up = matvec(t("ffn_up"), &h);
            let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let down = matvec(t("ffn_down"), &act);
            x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
        let h = rms_norm(&x, &self.norms["output_norm.weight"], self.eps);
        let head = self.g.tensors.get("output.weight").unwrap_or_else(|| self.g.t("token_embd.weight"));
        matvec(head, &h)
    }
}

/// Index of the largest value.
pub fn argmax(v: &[f64]) -> u32 {
    v.iter().enumerate().fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0 as u32
}
