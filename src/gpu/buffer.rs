//! Device buffers, uploads, readbacks and sub-range windows. A window is how a
//! tensor larger than one storage binding (128 MiB on lavapipe and WebGPU
//! defaults) is processed: kernels bind an aligned sub-range and add the
//! remaining element shift themselves.

use wgpu::util::DeviceExt;

use super::device::Gpu;
use crate::error::{Error, Result};

/// A byte range of a buffer bound as one storage binding.
#[derive(Clone, Debug)]
pub struct BufSlice {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

/// An aligned window onto `count` f32 elements starting at element `start`;
/// the kernel reads element i of the window at index `shift + i`.
#[derive(Clone, Debug)]
pub struct Window {
    pub slice: BufSlice,
    pub shift: u32,
}

pub const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl Gpu {
    /// A zero-filled storage buffer of `bytes` (rounded up to 16), checked against the device limits.
    pub fn storage_buffer(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        let size = bytes.max(16).div_ceil(16) * 16;
        if size > self.limits.max_buffer_size {
            return Err(Error::LimitExceeded {
                what: format!("buffer '{label}'"),
                needed: size,
                limit: self.limits.max_buffer_size,
                name: "max_buffer_size",
                fix: "use a smaller batch or image size".into(),
            });
        }
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
        self.queue.write_buffer(&buf, 0, bytemuck::cast_slice(data));
        Ok(buf)
    }

    pub fn upload_init(
        &self,
        label: &str,
        bytes: &[u8],
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage,
            })
    }

    /// Copies `len` f32 values starting at byte `offset` back to the host.
    pub fn download(&self, buffer: &wgpu::Buffer, offset: u64, len: usize) -> Result<Vec<f32>> {
        let bytes = (len * 4) as u64;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes.div_ceil(4) * 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, bytes);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| Error::DeviceLost("readback callback never ran".into()))?
            .map_err(|e| Error::Validation {
                what: "reading back a buffer".into(),
                detail: e.to_string(),
            })?;
        let mut out = vec![0f32; len];
        {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Validation {
                    what: "mapping a readback buffer".into(),
                    detail: e.to_string(),
                })?;
            out.copy_from_slice(bytemuck::cast_slice(&view[..len * 4]));
        }
        staging.unmap();
        Ok(out)
    }

    /// A window of `count` f32 elements from element `start` of `buffer`.
    pub fn window(&self, buffer: &wgpu::Buffer, start: u64, count: u64) -> Result<Window> {
        let align = self.binding_alignment();
        let byte = start * 4;
        let offset = byte / align * align;
        let shift = (byte - offset) / 4;
        let size = ((shift + count.max(1)) * 4).min(buffer.size() - offset);
        if size > self.max_binding_bytes() {
            return Err(Error::LimitExceeded {
                what: format!("a window of {count} elements"),
                needed: size,
                limit: self.max_binding_bytes(),
                name: "max_storage_buffer_binding_size",
                fix: "the op must split its work into smaller chunks (a bug: please report it)"
                    .into(),
            });
        }
        Ok(Window {
            slice: BufSlice {
                buffer: buffer.clone(),
                offset,
                size,
            },
            shift: shift as u32,
        })
    }

    /// Largest number of f32 elements a window is guaranteed to hold whatever its start.
    pub fn max_window_elems(&self) -> u64 {
        (self.max_binding_bytes() - self.binding_alignment()) / 4
    }
}

/// One dispatch's share of a chunk for kernels with a VEC4 variant: `n` and
/// `shifts` are in units of the kernel's element (vec4 or f32).
pub struct Piece {
    pub vec4: bool,
    pub n: u64,
    pub shifts: Vec<u32>,
}

/// Splits a chunk of `count` elements, whose windows start at element
/// `shifts`, into a vec4 piece over whole vec4s (when every window starts on
/// 16 bytes) and a scalar piece for the rest. A window's vec4 view ends at its
/// last whole vec4, which the vec4 piece never passes.
pub fn vec4_pieces(shifts: &[u32], count: u64) -> Vec<Piece> {
    let whole = if shifts.iter().all(|s| s % 4 == 0) {
        count / 4
    } else {
        0
    };
    let mut pieces = Vec::new();
    if whole > 0 {
        pieces.push(Piece {
            vec4: true,
            n: whole,
            shifts: shifts.iter().map(|s| s / 4).collect(),
        });
    }
    let done = whole * 4;
    if done < count {
        pieces.push(Piece {
            vec4: false,
            n: count - done,
            shifts: shifts.iter().map(|s| s + done as u32).collect(),
        });
    }
    pieces
}

/// Splits `total` items into consecutive chunks of at most `per_chunk` items.
pub fn chunks(total: u64, per_chunk: u64) -> impl Iterator<Item = std::ops::Range<u64>> {
    let per = per_chunk.max(1);
    (0..total.div_ceil(per)).map(move |i| i * per..((i + 1) * per).min(total))
}

/// A tensor living in a device buffer, starting at byte `offset`.
#[derive(Clone, Debug)]
pub struct DeviceTensor {
    pub shape: crate::tensor::Shape,
    pub buffer: wgpu::Buffer,
    pub offset: u64,
}

impl DeviceTensor {
    pub fn numel(&self) -> u64 {
        self.shape.numel() as u64
    }
    /// First element index of this tensor inside its buffer.
    pub fn base(&self) -> u64 {
        self.offset / 4
    }
    /// A window over elements [start, start+count) of this tensor.
    pub fn window(&self, gpu: &Gpu, start: u64, count: u64) -> Result<Window> {
        gpu.window(&self.buffer, self.base() + start, count)
    }
    /// The whole tensor as one window; errors when it exceeds one binding,
    /// for kernels that have no chunked path.
    pub fn whole(&self, gpu: &Gpu) -> Result<Window> {
        self.window(gpu, 0, self.numel())
    }
    pub fn upload(gpu: &Gpu, t: &crate::tensor::HostTensor) -> Result<DeviceTensor> {
        Ok(DeviceTensor {
            shape: t.shape.clone(),
            buffer: gpu.upload("tensor", &t.data)?,
            offset: 0,
        })
    }
    pub fn zeros(gpu: &Gpu, shape: crate::tensor::Shape) -> Result<DeviceTensor> {
        Ok(DeviceTensor {
            buffer: gpu.storage_buffer("tensor", shape.bytes())?,
            shape,
            offset: 0,
        })
    }
    pub fn download(&self, gpu: &Gpu) -> Result<crate::tensor::HostTensor> {
        let data = gpu.download(&self.buffer, self.offset, self.shape.numel())?;
        Ok(crate::tensor::Tensor {
            shape: self.shape.clone(),
            data,
        })
    }
}
