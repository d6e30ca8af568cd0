//! A buffer pool: GPU memory is reused across ops and steps instead of being allocated and freed
//! each time. Sizes are rounded up to a size class (four classes per power of two, so at most
//! ~19% waste); a dropped tensor's buffer goes back to its class's free list.
//!
//! Reuse inside one recorded step is safe: the recorder keeps dispatches in order and wgpu puts a
//! barrier between a dispatch that reads a buffer and a later one that writes it. Host uploads
//! into a recycled buffer go through the encoder when work is pending (see `Tensor::upload`).

use super::GpuInner;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::Arc;

/// Usage of every tensor buffer: read and written by shaders, copied in and out.
const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// The system's available memory from /proc/meminfo (CPU adapters use it), if readable.
pub fn system_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// The size class for `bytes`: a multiple of 256, with four steps per power of two.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let b = bytes.max(256);
    let pow = 63 - (b - 1).leading_zeros().min(63); // floor(log2(b-1))
    let step = (1u64 << pow) / 4;
    let step = step.max(256);
    b.div_ceil(step) * step
}

#[derive(Default)]
pub(crate) struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    pub(crate) in_use_bytes: u64,
    pub(crate) cached_bytes: u64,
    /// Most bytes held from the driver (in use + cached) since the last reset.
    pub(crate) peak_bytes: u64,
}

impl Pool {
    pub(crate) fn trim(&mut self) {
        self.free.clear();
        self.cached_bytes = 0;
    }
}

/// A pooled GPU buffer; returns itself to the pool when dropped.
pub(crate) struct PoolBuffer {
    pub(crate) buffer: Option<wgpu::Buffer>,
    pub(crate) size: u64,
    gpu: Arc<GpuInner>,
}

impl PoolBuffer {
    pub(crate) fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("pool buffer used after drop")
    }
}

impl Drop for PoolBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            let mut p = self.gpu.pool.lock().unwrap_or_else(|e| e.into_inner());
            p.in_use_bytes -= self.size;
            p.cached_bytes += self.size;
            p.free.entry(self.size).or_default().push(b);
        }
    }
}

/// Take a buffer of at least `bytes` from the pool, or allocate one. `what` names the tensor in
/// errors (out of memory, larger than the adapter allows).
pub(crate) fn alloc(gpu: &Arc<GpuInner>, bytes: u64, what: &str) -> Result<Arc<PoolBuffer>> {
    let size = size_class(bytes);
    let max_bind = gpu.summary.limits.max_storage_buffer_binding_size.min(gpu.summary.limits.max_buffer_size);
    if bytes > max_bind {
        return Err(Error::TooLarge { what: what.into(), bytes, limit: max_bind, kind: "storage binding" });
    }
    // A class may round past the limit; then allocate exactly (rounded to 256).
    let size = if size > max_bind { bytes.div_ceil(256) * 256 } else { size };
    let reused = {
        let mut p = gpu.pool.lock().unwrap_or_else(|e| e.into_inner());
        // The same class, else the smallest idle buffer of a larger one up to twice the size:
        // bindings carry their own sizes, and taking it beats holding both (on lavapipe every
        // byte the pool ever held stays resident).
        let class = if p.free.get(&size).is_some_and(|v| !v.is_empty()) {
            Some(size)
        } else {
            p.free.iter().filter(|(&c, v)| c > size && c <= 2 * size && !v.is_empty()).map(|(&c, _)| c).min()
        };
        let b = class.and_then(|c| p.free.get_mut(&c).and_then(|v| v.pop()).map(|b| (b, c)));
        if let Some((_, c)) = &b {
            p.cached_bytes -= c;
            p.in_use_bytes += c;
            p.peak_bytes = p.peak_bytes.max(p.in_use_bytes + p.cached_bytes);
        }
        b
    };
    let (buffer, size) = match reused {
        Some(b) => b,
        None => {
            // On failure give cached memory back to the driver and try once more.
            let b = match create(gpu, size, what) {
                Some(b) => b,
                None => {
                    gpu.pool.lock().unwrap_or_else(|e| e.into_inner()).trim();
                    create(gpu, size, what).ok_or_else(|| out_of_memory(gpu, what, size))?
                }
            };
            let mut p = gpu.pool.lock().unwrap_or_else(|e| e.into_inner());
            p.in_use_bytes += size;
            p.peak_bytes = p.peak_bytes.max(p.in_use_bytes + p.cached_bytes);
            drop(p);
            (b, size)
        }
    };
    Ok(Arc::new(PoolBuffer { buffer: Some(buffer), size, gpu: gpu.clone() }))
}

/// The out-of-memory error for `what`: its size, what the pool holds and the run's plan.
fn out_of_memory(gpu: &GpuInner, what: &str, bytes: u64) -> Error {
    let in_use = gpu.pool.lock().unwrap_or_else(|e| e.into_inner()).in_use_bytes;
    let plan = gpu.memory_plan.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Error::OutOfMemory {
        what: what.into(),
        bytes,
        held: in_use,
        plan: plan.unwrap_or_else(|| "no memory plan was set (`plumb info --model ...` prints one)".into()),
    }
}

/// Allocate a fresh buffer, catching out-of-memory in an error scope (None if it failed, or
/// if the pool would pass its budget).
fn create(gpu: &GpuInner, size: u64, what: &str) -> Option<wgpu::Buffer> {
    if let Some(budget) = gpu.max_memory {
        let p = gpu.pool.lock().unwrap_or_else(|e| e.into_inner());
        if p.in_use_bytes + p.cached_bytes + size > budget {
            return None;
        }
    }
    let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let b = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(what),
        size,
        usage: USAGE,
        mapped_at_creation: false,
    });
    match pollster::block_on(scope.pop()) {
        None => Some(b),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;
    #[test]
    fn size_classes_cover_and_bound_waste() {
        for bytes in [1u64, 255, 256, 257, 1000, 4096, 4097, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let c = size_class(bytes);
            assert!(c >= bytes && c.is_multiple_of(256), "{bytes} -> {c}");
            assert!(c as f64 <= (bytes.max(256) as f64) * 1.25 + 256.0, "{bytes} -> {c}");
        }
    }
}
