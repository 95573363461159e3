//! Device buffers, uploads, readbacks, and tensors living in them.

use wgpu::util::DeviceExt;

use super::device::Gpu;
use super::window::Window;
use crate::error::{Error, Result};

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
        let bytes = self.read_bytes(buffer, offset, (len * 4) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// `bytes` bytes of `buffer` from `offset` (a multiple of 4), copied back to the host.
    pub fn read_bytes(&self, buffer: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
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
        let out = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Validation {
                    what: "mapping a readback buffer".into(),
                    detail: e.to_string(),
                })?;
            view[..bytes as usize].to_vec()
        };
        staging.unmap();
        Ok(out)
    }
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
