//! Device profiles: the limits, features and subgroup widths of a kind of
//! adapter, opened without any device on wgpu's no-op backend. Everything
//! up to the submission runs for real there (the tuning table's choice, the
//! memory plan, every op's `record`, and wgpu's validation of each shader,
//! pipeline, bind group and dispatch against the profile's limits); only
//! the kernels never execute and buffers read back what was written.
//!
//! So recording is unit-tested on any machine, with or without a GPU, for
//! adapters the machine does not have, and `train --plan-only` can plan
//! the memory of a GPU before one is bought.

use std::sync::Arc;

use super::device::{AdapterFacts, Gpu, GpuOptions};
use super::tuning::{VENDOR_AMD, VENDOR_APPLE, VENDOR_INTEL, VENDOR_NVIDIA};
use crate::error::{Error, Result};

/// What a kind of adapter reports, as the tuning table and the ops see it.
#[derive(Clone, Debug)]
pub struct DeviceProfile {
    pub name: &'static str,
    pub summary: &'static str,
    pub device_type: wgpu::DeviceType,
    /// PCI vendor id the tuning table picks the tiled config by (0: none).
    pub vendor: u32,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    /// Smallest and largest subgroup the adapter may run.
    pub subgroup_sizes: (u32, u32),
}

/// The optional features a modern Vulkan, Metal or DX12 driver exposes.
const MODERN_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);

/// WebGPU's default limits with a profile's binding and buffer sizes,
/// storage buffers per stage, KiB of workgroup memory, and the 1024
/// invocations per workgroup desktop drivers allow.
fn compute_limits(
    binding: u64,
    buffer: u64,
    buffers_per_stage: u32,
    workgroup_kib: u32,
) -> wgpu::Limits {
    wgpu::Limits {
        max_storage_buffer_binding_size: binding,
        max_buffer_size: buffer,
        max_storage_buffers_per_shader_stage: buffers_per_stage,
        max_compute_workgroup_storage_size: workgroup_kib << 10,
        max_compute_invocations_per_workgroup: 1024,
        max_compute_workgroup_size_x: 1024,
        max_compute_workgroup_size_y: 1024,
        ..wgpu::Limits::default()
    }
}

impl DeviceProfile {
    /// Mesa's lavapipe as `delg-gpu info` reports it (Mesa 22.3): one
    /// subgroup is one SIMD register, 8 lanes at 256 bits, 16 at 512.
    fn lavapipe(name: &'static str, summary: &'static str, lanes: u32) -> DeviceProfile {
        DeviceProfile {
            name,
            summary,
            device_type: wgpu::DeviceType::Cpu,
            vendor: 0,
            features: MODERN_FEATURES.union(wgpu::Features::PIPELINE_CACHE),
            limits: compute_limits(128 << 20, (2047 << 20) as u64, 32, 32),
            subgroup_sizes: (lanes, lanes),
        }
    }

    /// Every profile, the ones a test should always cover.
    pub fn all() -> Vec<DeviceProfile> {
        let lavapipe_512 = Self::lavapipe(
            "lavapipe-512",
            "Mesa lavapipe with llvmpipe at 512 bits (16-lane subgroups)",
            16,
        );
        vec![
            Self::lavapipe(
                "lavapipe-256",
                "Mesa lavapipe with llvmpipe at 256 bits (8-lane subgroups)",
                8,
            ),
            lavapipe_512.clone(),
            DeviceProfile {
                name: "discrete-gpu",
                summary: "an NVIDIA desktop GPU on Vulkan or DX12: 32-lane subgroups, \
                          f16, 48 KiB of workgroup memory, 2 GiB bindings",
                device_type: wgpu::DeviceType::DiscreteGpu,
                vendor: VENDOR_NVIDIA,
                features: MODERN_FEATURES.union(wgpu::Features::PIPELINE_CACHE),
                limits: compute_limits(2 << 30, 4 << 30, 64, 48),
                subgroup_sizes: (32, 32),
            },
            DeviceProfile {
                name: "wave32-64-gpu",
                summary: "a GPU whose subgroups are 32 or 64 lanes, chosen per pipeline \
                          by the driver (as AMD's RDNA reports)",
                device_type: wgpu::DeviceType::DiscreteGpu,
                vendor: VENDOR_AMD,
                features: MODERN_FEATURES,
                limits: wgpu::Limits {
                    max_storage_buffer_binding_size: 2 << 30,
                    max_buffer_size: 4 << 30,
                    max_storage_buffers_per_shader_stage: 64,
                    max_compute_workgroup_storage_size: 64 << 10,
                    ..wgpu::Limits::default()
                },
                subgroup_sizes: (32, 64),
            },
            DeviceProfile {
                name: "webgpu-baseline",
                summary: "only what WebGPU guarantees every adapter: no optional feature, \
                          128 MiB bindings, 16 KiB of workgroup memory, 8 storage buffers \
                          per stage",
                device_type: wgpu::DeviceType::Other,
                vendor: 0,
                features: wgpu::Features::empty(),
                limits: wgpu::Limits::default(),
                subgroup_sizes: (
                    wgpu::MINIMUM_SUBGROUP_MIN_SIZE,
                    wgpu::MAXIMUM_SUBGROUP_MAX_SIZE,
                ),
            },
            DeviceProfile {
                name: "apple-gpu",
                summary: "an Apple silicon GPU on Metal: 32-wide simdgroups, f16, \
                          32 KiB of threadgroup memory",
                device_type: wgpu::DeviceType::IntegratedGpu,
                vendor: VENDOR_APPLE,
                features: MODERN_FEATURES,
                limits: compute_limits(1 << 30, 1 << 30, 31, 32),
                subgroup_sizes: (32, 32),
            },
            DeviceProfile {
                name: "intel-igpu",
                summary: "an Intel integrated GPU on Vulkan or DX12: subgroups of 8 to \
                          32 lanes chosen by the compiler, 64 KiB of shared local memory",
                device_type: wgpu::DeviceType::IntegratedGpu,
                vendor: VENDOR_INTEL,
                features: MODERN_FEATURES,
                limits: compute_limits(1 << 30, 2 << 30, 64, 64),
                subgroup_sizes: (8, 32),
            },
            DeviceProfile {
                name: "small-bindings",
                summary: "lavapipe-512 allowing only 256 KiB per storage binding: every \
                          large operand is split into windows, checked by the validator",
                limits: wgpu::Limits {
                    max_storage_buffer_binding_size: 256 << 10,
                    ..lavapipe_512.limits
                },
                ..lavapipe_512
            },
        ]
    }

    pub fn named(name: &str) -> Result<DeviceProfile> {
        let all = Self::all();
        let names: Vec<&str> = all.iter().map(|p| p.name).collect();
        let names = names.join(", ");
        all.into_iter().find(|p| p.name == name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown device profile '{name}': use one of {names}"
            ))
        })
    }
}

impl Gpu {
    /// A device that records, plans and validates like an adapter of
    /// `profile` but runs nothing (wgpu's no-op backend).
    pub fn without_device(profile: &DeviceProfile) -> Result<Arc<Gpu>> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::NOOP;
        desc.backend_options.noop = wgpu::NoopBackendOptions {
            enable: true,
            limits: Some(profile.limits.clone()),
            features: Some(profile.features),
            device_type: Some(profile.device_type),
            subgroup_min_size: Some(profile.subgroup_sizes.0),
            subgroup_max_size: Some(profile.subgroup_sizes.1),
        };
        let instance = wgpu::Instance::new(desc);
        let adapter =
            pollster::block_on(instance.request_adapter(&Default::default())).map_err(|e| {
                Error::DeviceRequest {
                    adapter: format!("device profile {}", profile.name),
                    reason: e.to_string(),
                }
            })?;
        // wgpu 30's no-op adapter always reports a CPU, whatever it was told.
        let facts = AdapterFacts {
            name: format!("{} (device profile, no device)", profile.name),
            device_type: profile.device_type,
            vendor: profile.vendor,
            driver: "none (wgpu no-op backend)".into(),
            ..AdapterFacts::from(&adapter.get_info())
        };
        Gpu::open(adapter, facts, None, &GpuOptions::default())
    }

    /// Whether kernels actually run (false for a device profile).
    pub fn executes(&self) -> bool {
        self.facts.backend != wgpu::Backend::Noop
    }
}
