//! Device buffers, uploads, readbacks, and tensors living in them.

use std::borrow::Borrow;

use wgpu::util::DeviceExt;

use super::counters::{Count, UnreadGuard};
use super::device::Gpu;
use super::window::Window;
use crate::error::{Error, Result};
use crate::tensor::{f16_store, f16_to_f32, Precision};

pub const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Bytes a storage buffer of `bytes` takes: at least 16, a multiple of 16.
pub fn storage_size(bytes: u64) -> u64 {
    bytes.max(16).div_ceil(16) * 16
}

impl Gpu {
    /// A zero-filled storage buffer of `bytes` (rounded up to 16), checked against the device limits.
    pub fn storage_buffer(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        let size = storage_size(bytes);
        if size > self.limits.max_buffer_size {
            return Err(Error::LimitExceeded {
                what: format!("buffer '{label}'"),
                needed: size,
                limit: self.limits.max_buffer_size,
                name: "max_buffer_size",
                fix: "use a smaller batch or image size".into(),
            });
        }
        self.counters.add(Count::Buffer, 1);
        self.scoped(
            &format!("allocating {} MiB for {label}", size >> 20),
            || {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage: STORAGE,
                    mapped_at_creation: false,
                })
            },
        )
    }

    pub fn upload(&self, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
        let buf = self.storage_buffer(label, (data.len() * 4) as u64)?;
        self.write(&buf, 0, bytemuck::cast_slice(data));
        Ok(buf)
    }

    /// `queue.write_buffer`, counted.
    pub fn write(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        self.counters.add(Count::Uploaded, bytes.len() as u64);
        self.queue.write_buffer(buffer, offset, bytes);
    }

    pub fn upload_init(
        &self,
        label: &str,
        bytes: &[u8],
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        self.counters.add(Count::Buffer, 1);
        self.counters.add(Count::Uploaded, bytes.len() as u64);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage,
            })
    }

    /// Copies `len` f32 values starting at byte `offset` back to the host.
    pub fn download(&self, buffer: &wgpu::Buffer, offset: u64, len: usize) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(buffer, offset, (len * 4) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// `bytes` bytes of `buffer` from `offset` (multiples of 4), copied back to the host.
    pub fn read_bytes(&self, buffer: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let readback = Readback::of_slices(self, vec![(buffer.clone(), offset, bytes)])?;
        let mut enc = self.device.create_command_encoder(&Default::default());
        readback.encode(&mut enc);
        let mut parts = self.submit_and_read(enc, &[&readback])?;
        Ok(parts.swap_remove(0).swap_remove(0))
    }

    /// Submits `enc` (which ends with each readback's `encode`), waits once,
    /// and returns every readback's parts as bytes, in order.
    pub fn submit_and_read(
        &self,
        enc: wgpu::CommandEncoder,
        readbacks: &[&Readback],
    ) -> Result<Vec<Vec<Vec<u8>>>> {
        self.submit_reading(enc, readbacks.to_vec())?.wait(self)
    }

    /// Submits `enc` (which ends with each readback's `encode`) and starts
    /// mapping the readbacks without waiting: the host works on while the
    /// device runs, and `PendingRead::wait` collects the bytes. A readback
    /// stays busy until its ticket is waited on or dropped, so the next
    /// submission must copy into another one.
    pub fn submit_reading<R: Borrow<Readback>>(
        &self,
        enc: wgpu::CommandEncoder,
        readbacks: Vec<R>,
    ) -> Result<PendingRead<R>> {
        let submission = self.submit(enc)?;
        let maps = readbacks
            .into_iter()
            .map(|r| {
                let (tx, rx) = std::sync::mpsc::channel();
                r.borrow()
                    .staging
                    .slice(..)
                    .map_async(wgpu::MapMode::Read, move |result| {
                        let _ = tx.send(result);
                    });
                (r, rx)
            })
            .collect();
        Ok(PendingRead {
            submission,
            maps,
            _unread: self.counters.read_started(),
        })
    }

    /// Submits `enc`, counted (and counted as overlapped when an earlier
    /// submission's results are still unread).
    pub fn submit(&self, enc: wgpu::CommandEncoder) -> Result<wgpu::SubmissionIndex> {
        if !self.executes() {
            return Err(Error::InvalidArgument(format!(
                "{} runs no kernels, so it has no results to read: a device profile \
                 only plans and records (use a real adapter)",
                self.facts.name
            )));
        }
        self.counters.submitted();
        self.counters
            .recording(|| self.scoped("submitting GPU work", || self.queue.submit([enc.finish()])))
    }
}

/// Results of a submitted run on their way back: `wait` blocks on that
/// submission alone and returns every readback's parts; dropped unread, it
/// releases the staging buffers (the map is aborted) so they can be reused.
pub struct PendingRead<R: Borrow<Readback>> {
    submission: wgpu::SubmissionIndex,
    /// Each readback with the channel its map callback answers on; emptied when read.
    maps: Vec<(R, MapAnswer)>,
    /// Keeps the device's count of unread submissions up while this lives
    /// (only its drop matters).
    _unread: UnreadGuard,
}

type MapAnswer = std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>;

impl<R: Borrow<Readback>> PendingRead<R> {
    pub fn wait(mut self, gpu: &Gpu) -> Result<Vec<Vec<Vec<u8>>>> {
        gpu.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(self.submission.clone()),
                timeout: None,
            })
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        gpu.check("waiting for the GPU")?;
        // Every readback is read (and so unmapped) even after one fails, so
        // none stays mapped for the next run's copy.
        let parts: Vec<Result<Vec<Vec<u8>>>> = std::mem::take(&mut self.maps)
            .into_iter()
            .map(|(r, answer)| {
                let r = r.borrow();
                answer
                    .recv()
                    .map_err(|_| Error::DeviceLost("readback callback never ran".into()))?
                    .map_err(|e| Error::Validation {
                        what: "reading back a buffer".into(),
                        detail: e.to_string(),
                    })?;
                let parts = r.mapped_parts();
                r.staging.unmap();
                gpu.counters.add(Count::ReadBack, r.bytes());
                parts
            })
            .collect();
        parts.into_iter().collect()
    }
}

impl<R: Borrow<Readback>> Drop for PendingRead<R> {
    fn drop(&mut self) {
        for (r, answer) in &self.maps {
            // Unmapping a pending map aborts it; a map that failed left the
            // buffer unmapped already.
            if !matches!(answer.try_recv(), Ok(Err(_))) {
                r.borrow().staging.unmap();
            }
        }
    }
}

/// A host-readable buffer that receives the same device slices after every
/// run: made once per plan, so reading results back creates nothing per run.
pub struct Readback {
    staging: wgpu::Buffer,
    parts: Vec<ReadbackPart>,
}

struct ReadbackPart {
    source: wgpu::Buffer,
    offset: u64,
    bytes: u64,
    /// Where the part starts in the staging buffer.
    at: u64,
}

impl Readback {
    /// For whole tensors, read back in the order given.
    pub fn new(gpu: &Gpu, tensors: &[&DeviceTensor]) -> Result<Readback> {
        let slices = tensors
            .iter()
            .map(|t| (t.buffer.clone(), t.offset, t.bytes()))
            .collect();
        Self::of_slices(gpu, slices)
    }

    /// For `(buffer, offset, bytes)` slices; offsets and sizes are multiples of 4.
    fn of_slices(gpu: &Gpu, slices: Vec<(wgpu::Buffer, u64, u64)>) -> Result<Readback> {
        let mut at = 0;
        let mut parts = Vec::with_capacity(slices.len());
        for (source, offset, bytes) in slices {
            if offset % 4 != 0 || bytes % 4 != 0 {
                return Err(Error::Internal(format!(
                    "readback of {bytes} bytes at offset {offset}: both must be multiples of 4"
                )));
            }
            parts.push(ReadbackPart {
                source,
                offset,
                bytes,
                at,
            });
            at += bytes;
        }
        if at > gpu.limits.max_buffer_size {
            return Err(Error::LimitExceeded {
                what: "a readback".into(),
                needed: at,
                limit: gpu.limits.max_buffer_size,
                name: "max_buffer_size",
                fix: "read the outputs back in parts".into(),
            });
        }
        gpu.counters.add(Count::Buffer, 1);
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: at.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Readback { staging, parts })
    }

    /// Copies every part into the staging buffer.
    pub fn encode(&self, enc: &mut wgpu::CommandEncoder) {
        for p in &self.parts {
            enc.copy_buffer_to_buffer(&p.source, p.offset, &self.staging, p.at, p.bytes);
        }
    }

    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }

    /// Every part's bytes, copied out of the mapped staging buffer.
    fn mapped_parts(&self) -> Result<Vec<Vec<u8>>> {
        let view = self
            .staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Validation {
                what: "mapping a readback buffer".into(),
                detail: e.to_string(),
            })?;
        Ok(self
            .parts
            .iter()
            .map(|p| view[p.at as usize..(p.at + p.bytes) as usize].to_vec())
            .collect())
    }
}

/// A tensor living in a device buffer, starting at byte `offset`.
#[derive(Clone, Debug)]
pub struct DeviceTensor {
    pub shape: crate::tensor::Shape,
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub precision: Precision,
}

impl DeviceTensor {
    pub fn numel(&self) -> u64 {
        self.shape.numel() as u64
    }
    /// Bytes of its elements.
    pub fn bytes(&self) -> u64 {
        self.shape.bytes_as(self.precision)
    }
    /// First element index of this tensor inside its buffer.
    pub fn base(&self) -> u64 {
        self.offset / self.precision.bytes()
    }
    /// A window over elements [start, start+count) of this tensor.
    pub fn window(&self, gpu: &Gpu, start: u64, count: u64) -> Result<Window> {
        gpu.window_of(&self.buffer, self.base() + start, count, self.precision)
    }
    /// The whole tensor as one window; errors when it exceeds one binding,
    /// for kernels that have no chunked path.
    pub fn whole(&self, gpu: &Gpu) -> Result<Window> {
        self.window(gpu, 0, self.numel())
    }
    pub fn upload(gpu: &Gpu, t: &crate::tensor::HostTensor) -> Result<DeviceTensor> {
        Self::upload_as(gpu, t, Precision::F32)
    }
    /// Uploads `t` stored at `precision` (f16: rounded by `f16_store`).
    pub fn upload_as(
        gpu: &Gpu,
        t: &crate::tensor::HostTensor,
        precision: Precision,
    ) -> Result<DeviceTensor> {
        let buffer = match precision {
            Precision::F32 => gpu.upload("tensor", &t.data)?,
            Precision::F16 => {
                let halves: Vec<u16> = t.data.iter().map(|&v| f16_store(v)).collect();
                let buf = gpu.storage_buffer("tensor", t.shape.bytes_as(precision))?;
                gpu.write(&buf, 0, &padded_to_4(bytemuck::cast_slice(&halves)));
                buf
            }
        };
        Ok(DeviceTensor {
            shape: t.shape.clone(),
            buffer,
            offset: 0,
            precision,
        })
    }
    pub fn zeros(gpu: &Gpu, shape: crate::tensor::Shape) -> Result<DeviceTensor> {
        Self::zeros_as(gpu, shape, Precision::F32)
    }
    pub fn zeros_as(
        gpu: &Gpu,
        shape: crate::tensor::Shape,
        precision: Precision,
    ) -> Result<DeviceTensor> {
        Ok(DeviceTensor {
            buffer: gpu.storage_buffer("tensor", shape.bytes_as(precision))?,
            shape,
            offset: 0,
            precision,
        })
    }
    /// The tensor's values as f32 (f16 ones widened exactly).
    pub fn download(&self, gpu: &Gpu) -> Result<crate::tensor::HostTensor> {
        let data = match self.precision {
            Precision::F32 => gpu.download(&self.buffer, self.offset, self.shape.numel())?,
            Precision::F16 => {
                let bytes =
                    gpu.read_bytes(&self.buffer, self.offset, self.bytes().next_multiple_of(4))?;
                bytes
                    .chunks_exact(2)
                    .take(self.shape.numel())
                    .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                    .collect()
            }
        };
        Ok(crate::tensor::Tensor {
            shape: self.shape.clone(),
            data,
        })
    }
}

/// `bytes` with zeros appended to a multiple of 4, as `write_buffer` needs.
fn padded_to_4(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.resize(bytes.len().next_multiple_of(4), 0);
    v
}
