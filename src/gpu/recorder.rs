//! The recorder: dispatches go into one command encoder and one open compute pass until someone
//! needs a result on the host. On lavapipe a compute pass per dispatch costs ~110 us and a
//! dispatch inside an open pass ~20 us, so a training step is one encoder and one submit.
//!
//! Each dispatch's `Params` uniform gets its own 256-byte slot in an arena buffer, written once
//! before the submit, so two dispatches of the same kernel in one step never share a uniform.

use super::{Gpu, Kernel};
use crate::error::{Error, Result};

/// Bytes of one uniform arena buffer.
const ARENA_BYTES: u64 = 256 * 1024;

/// One storage-buffer binding: a range of a GPU buffer.
#[derive(Clone, Copy)]
pub struct Binding<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

pub(crate) struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    align: u64,
    /// Bytes staged for the arena buffer now being filled.
    staged: Vec<u8>,
    current: Option<wgpu::Buffer>,
    /// Arena buffers used by the pending submit, and ones free for the next.
    used: Vec<wgpu::Buffer>,
    free: Vec<wgpu::Buffer>,
    /// Dispatches recorded since the device was opened (for tests and benches).
    pub(crate) dispatches: u64,
    pub(crate) submits: u64,
    pub(crate) readbacks: u64,
}

impl Recorder {
    pub(crate) fn new(limits: &wgpu::Limits) -> Self {
        Recorder {
            encoder: None,
            pass: None,
            align: limits.min_uniform_buffer_offset_alignment.max(16) as u64,
            staged: Vec::new(),
            current: None,
            used: Vec::new(),
            free: Vec::new(),
            dispatches: 0,
            submits: 0,
            readbacks: 0,
        }
    }

    fn encoder(&mut self, device: &wgpu::Device) -> &mut wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("plumb step") })
        })
    }

    /// Close the open compute pass (copies need the encoder itself).
    pub(crate) fn end_pass(&mut self) {
        self.pass = None;
    }

    /// The encoder, with no pass open: for copies.
    pub(crate) fn copy_encoder(&mut self, device: &wgpu::Device) -> &mut wgpu::CommandEncoder {
        self.end_pass();
        self.encoder(device)
    }

    /// True when commands are recorded but not submitted.
    pub(crate) fn pending(&self) -> bool {
        self.encoder.is_some()
    }

    /// Put `params` into the arena; returns (buffer, offset).
    fn stage_params(&mut self, gpu: &Gpu, params: &[u8]) -> (wgpu::Buffer, u64) {
        let need = (params.len() as u64).max(16).div_ceil(self.align) * self.align;
        if self.current.is_none() || self.staged.len() as u64 + need > ARENA_BYTES {
            self.retire_current(gpu);
            let b = self.free.pop().unwrap_or_else(|| {
                gpu.0.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("plumb params arena"),
                    size: ARENA_BYTES,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            });
            self.current = Some(b);
        }
        let offset = self.staged.len() as u64;
        self.staged.extend_from_slice(params);
        self.staged.resize((offset + need) as usize, 0);
        (self.current.clone().expect("arena buffer"), offset)
    }

    /// Write the staged bytes of the current arena buffer and move it to `used`.
    fn retire_current(&mut self, gpu: &Gpu) {
        if let Some(b) = self.current.take() {
            if !self.staged.is_empty() {
                gpu.0.queue.write_buffer(&b, 0, &self.staged);
            }
            self.staged.clear();
            self.used.push(b);
        }
    }
}

impl Gpu {
    /// Record one dispatch of `k` with `params` at binding 0 (a uniform) and `bufs` at bindings
    /// 1, 2, ... (storage), in the step's open compute pass. Nothing runs until [`Gpu::flush`]
    /// or a readback.
    pub fn dispatch(&self, k: &Kernel, params: &[u8], bufs: &[Binding], groups: [u32; 3]) -> Result<()> {
        self.dispatch_with_textures(k, params, &[], bufs, groups)
    }

    /// [`Gpu::dispatch`] with sampled textures first: `textures` at bindings 1, 2, ..., then
    /// `bufs` after them. CPU drivers fetch texels with vector gathers, much faster than their
    /// per-lane storage-buffer loads (see `gpu::texture`).
    pub fn dispatch_with_textures(
        &self,
        k: &Kernel,
        params: &[u8],
        textures: &[&wgpu::TextureView],
        bufs: &[Binding],
        groups: [u32; 3],
    ) -> Result<()> {
        self.dispatch_at(k, params, (1, textures), (textures.len() as u32 + 1, bufs), groups)
    }

    /// [`Gpu::dispatch_with_textures`] with the textures at bindings `tex_at`, `tex_at + 1`, ...
    /// and the buffers at `buf_at`, ...: for entry points that share a shader file with others
    /// whose bindings come first.
    pub fn dispatch_at(
        &self,
        k: &Kernel,
        params: &[u8],
        (tex_at, textures): (u32, &[&wgpu::TextureView]),
        (buf_at, bufs): (u32, &[Binding]),
        groups: [u32; 3],
    ) -> Result<()> {
        let textures: Vec<(u32, &wgpu::TextureView)> = textures.iter().enumerate().map(|(i, t)| (tex_at + i as u32, *t)).collect();
        let bufs: Vec<(u32, Binding)> = bufs.iter().enumerate().map(|(i, b)| (buf_at + i as u32, *b)).collect();
        self.dispatch_bound(k, params, &textures, &bufs, groups)
    }

    /// The general dispatch: `params` at binding 0, each texture and buffer at the binding
    /// given with it.
    pub fn dispatch_bound(
        &self,
        k: &Kernel,
        params: &[u8],
        textures: &[(u32, &wgpu::TextureView)],
        bufs: &[(u32, Binding)],
        groups: [u32; 3],
    ) -> Result<()> {
        let max = self.limits().max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::shape("dispatch", format!("{}: workgroups {groups:?} exceed the limit {max}", k.entry)));
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let p = self.pipeline(k)?;
        let mut rec = self.0.rec.lock().unwrap_or_else(|e| e.into_inner());
        let (ubuf, uoff) = rec.stage_params(self, params);
        let usize_ = (params.len() as u64).max(16).div_ceil(16) * 16;
        let mut entries = Vec::with_capacity(textures.len() + bufs.len() + 1);
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &ubuf,
                offset: uoff,
                size: wgpu::BufferSize::new(usize_),
            }),
        });
        for &(binding, t) in textures {
            entries.push(wgpu::BindGroupEntry { binding, resource: wgpu::BindingResource::TextureView(t) });
        }
        for &(binding, b) in bufs {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: b.offset,
                    size: wgpu::BufferSize::new(b.size.max(4)),
                }),
            });
        }
        let bg = self.0.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(k.entry),
            layout: &p.layout,
            entries: &entries,
        });
        if rec.pass.is_none() {
            let device = &self.0.device;
            let pass = rec
                .encoder(device)
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("plumb"), timestamp_writes: None })
                .forget_lifetime();
            rec.pass = Some(pass);
        }
        let pass = rec.pass.as_mut().expect("open pass");
        pass.set_pipeline(&p.pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        rec.dispatches += 1;
        drop(rec);
        if self.0.profiler.lock().unwrap_or_else(|e| e.into_inner()).on {
            let consts: Vec<String> = k.constants.iter().map(|(n, v)| format!("{n}={v}")).collect();
            self.profile_dispatch(format!("{}#{} {} {groups:?}", k.shader.path, k.entry, consts.join(",")))?;
        }
        Ok(())
    }

    /// Submit everything recorded so far as one command buffer.
    pub fn flush(&self) -> Result<()> {
        let mut rec = self.0.rec.lock().unwrap_or_else(|e| e.into_inner());
        self.submit_locked(&mut rec)
    }

    pub(crate) fn submit_locked(&self, rec: &mut Recorder) -> Result<()> {
        rec.end_pass();
        let Some(enc) = rec.encoder.take() else { return Ok(()) };
        rec.retire_current(self);
        let scope = self.0.device.push_error_scope(wgpu::ErrorFilter::Validation);
        self.0.queue.submit([enc.finish()]);
        rec.submits += 1;
        let used = std::mem::take(&mut rec.used);
        rec.free.extend(used);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu { context: "submit".into(), msg: e.to_string() });
        }
        Ok(())
    }

    /// Run `f` with the encoder (no pass open) for copy commands.
    pub(crate) fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut rec = self.0.rec.lock().unwrap_or_else(|e| e.into_inner());
        f(rec.copy_encoder(&self.0.device))
    }

    /// True when recorded work has not been submitted yet.
    pub(crate) fn pending(&self) -> bool {
        self.0.rec.lock().unwrap_or_else(|e| e.into_inner()).pending()
    }

    /// Copy `b` to the host: submits pending work, then waits for it.
    pub(crate) fn read_bytes(&self, b: Binding) -> Result<Vec<u8>> {
        let size = b.size.div_ceil(4) * 4;
        let staging = self.0.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("plumb readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut rec = self.0.rec.lock().unwrap_or_else(|e| e.into_inner());
            rec.copy_encoder(&self.0.device).copy_buffer_to_buffer(b.buffer, b.offset, &staging, 0, size);
            rec.readbacks += 1;
            self.submit_locked(&mut rec)?;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.0
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu { context: "waiting for the GPU".into(), msg: e.to_string() })?;
        rx.recv()
            .map_err(|e| Error::Gpu { context: "readback".into(), msg: e.to_string() })?
            .map_err(|e| Error::Gpu { context: "readback".into(), msg: e.to_string() })?;
        let data = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Gpu { context: "readback".into(), msg: e.to_string() })?
            .to_vec();
        staging.unmap();
        Ok(data)
    }

    /// Buffers copied back to the host (each a wait for the GPU) since the device was opened.
    pub fn readbacks(&self) -> u64 {
        self.0.rec.lock().unwrap_or_else(|e| e.into_inner()).readbacks
    }

    /// Dispatches and submits since the device was opened.
    pub fn counters(&self) -> (u64, u64) {
        let rec = self.0.rec.lock().unwrap_or_else(|e| e.into_inner());
        (rec.dispatches, rec.submits)
    }
}
