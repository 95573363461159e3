//! Adapter choice, device creation and the error plumbing that keeps wgpu from
//! panicking: every device gets an uncaptured-error sink and a device-lost
//! callback, and fallible work runs inside error scopes.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::tuning::{MatmulVariant, Tuning};

/// How the user asked for an adapter: `--backend`, `--adapter`, or wgpu's own
/// `WGPU_BACKEND` / `WGPU_ADAPTER_NAME` environment variables.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    pub backend: Option<String>,
    /// Adapter name substring (case-insensitive) or index into `delg-gpu info`'s list.
    pub adapter: Option<String>,
    /// Ops split their operands as if one storage binding held at most this
    /// many bytes: the one knob with which tests run every windowed path on
    /// tiny tensors. Bindings are still validated against the real limit.
    pub max_binding_override: Option<u64>,
    /// Folder that keeps compiled pipelines across runs (see
    /// `gpu::pipeline_store`); `None` compiles every pipeline afresh. The CLI
    /// sets the user's cache folder unless `--no-pipeline-cache` is given.
    pub pipeline_cache_dir: Option<std::path::PathBuf>,
}

impl GpuOptions {
    /// The options with compiled pipelines kept across runs in the user's
    /// cache folder (`io::user_dirs`), as the command line, the Python
    /// package and the C library open devices.
    pub fn with_user_pipeline_cache(mut self) -> GpuOptions {
        self.pipeline_cache_dir = crate::io::user_dirs::UserDir::Pipelines.path();
        self
    }
}

/// Facts about the chosen adapter that kernels and reports need.
#[derive(Clone, Debug)]
pub struct AdapterFacts {
    pub name: String,
    pub backend: wgpu::Backend,
    pub device_type: wgpu::DeviceType,
    pub driver: String,
    pub driver_info: String,
    /// PCI vendor id (0x10de NVIDIA, 0x1002 AMD, 0x8086 Intel, 0x106b
    /// Apple), 0 where the backend gives none.
    pub vendor: u32,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
}

impl From<&wgpu::AdapterInfo> for AdapterFacts {
    fn from(info: &wgpu::AdapterInfo) -> AdapterFacts {
        AdapterFacts {
            name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            vendor: info.vendor,
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
        }
    }
}

/// Names of software rasterisers that present themselves as a GPU.
const CPU_EMULATIONS: [&str; 5] = [
    "llvmpipe",
    "lavapipe",
    "swiftshader",
    "microsoft basic render",
    "warp",
];

impl AdapterFacts {
    /// Whether the adapter runs shaders on the CPU: lavapipe, llvmpipe, WARP, SwiftShader.
    pub fn is_cpu_emulation(&self) -> bool {
        let name = self.name.to_lowercase();
        self.device_type == wgpu::DeviceType::Cpu || CPU_EMULATIONS.iter().any(|n| name.contains(n))
    }

    /// One line that tells a user the adapter emulates a GPU on the CPU, or
    /// `None` for a real GPU. OpenGL's llvmpipe is the slowest route there is
    /// (no subgroups, fewer storage bindings: the demo's extraction took 209 s
    /// on it against 8.2 s on Vulkan's lavapipe), so unless the user chose that
    /// backend the line names the package that brings lavapipe.
    pub fn emulation_note(&self, backend_chosen: bool) -> Option<String> {
        if !self.is_cpu_emulation() {
            return None;
        }
        let api = format!("{:?}", self.backend);
        let mut note = format!(
            "note: the adapter \"{}\" ({api}) emulates a GPU on the CPU: expect CPU speed, \
             far below a real GPU's",
            self.name
        );
        if self.backend == wgpu::Backend::Gl && !backend_chosen {
            note.push_str(if cfg!(target_os = "linux") {
                "; only OpenGL's llvmpipe was found, and Vulkan's lavapipe runs this work about 25× \
                 faster: install it with `apt-get install mesa-vulkan-drivers libvulkan1` \
                 (Debian/Ubuntu) or `dnf install mesa-vulkan-drivers` (Fedora)"
            } else {
                "; only an OpenGL CPU driver was found: install the GPU's Vulkan, Metal or DX12 driver"
            });
        }
        Some(note)
    }
}

/// An open device with its limits, features and tuning table.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub facts: AdapterFacts,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    pub tuning: Tuning,
    pub(crate) pipelines: super::pipeline::PipelineCache,
    pub(crate) pipeline_store: Option<super::pipeline_store::PipelineStore>,
    pub(crate) counters: super::counters::HostCounters,
    max_binding_override: Option<u64>,
    pub(crate) scratch: Mutex<super::scratch::Scratch>,
    errors: Arc<Mutex<Vec<String>>>,
    lost: Arc<Mutex<Option<String>>>,
}

/// Features we use when the adapter has them; every kernel also has a path without them.
pub const OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::PIPELINE_CACHE)
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);

pub fn parse_backend(name: &str) -> Result<wgpu::Backends> {
    match name.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Ok(wgpu::Backends::VULKAN),
        "metal" | "mtl" => Ok(wgpu::Backends::METAL),
        "dx12" | "d3d12" => Ok(wgpu::Backends::DX12),
        "gl" | "gles" | "opengl" => Ok(wgpu::Backends::GL),
        "all" => Ok(wgpu::Backends::all()),
        other => Err(Error::InvalidArgument(format!(
            "unknown backend '{other}': use vulkan, metal, dx12 or gl"
        ))),
    }
}

fn no_adapter_hint(backend: Option<&str>) -> String {
    let requested = backend.map(|b| b.to_ascii_lowercase());
    let native = if cfg!(target_os = "windows") {
        ["dx12", "d3d12", "vulkan", "vk", "gl", "gles", "opengl"].as_slice()
    } else if cfg!(target_os = "macos") {
        ["metal", "mtl", "vulkan", "vk"].as_slice()
    } else {
        ["vulkan", "vk", "gl", "gles", "opengl"].as_slice()
    };
    if let Some(b) = requested.filter(|b| b != "all" && !native.contains(&b.as_str())) {
        return format!(
            "{b} is not available on this operating system; try --backend {}",
            native[0]
        );
    }
    if cfg!(target_os = "linux") {
        "install a Vulkan driver for your GPU, or the CPU driver lavapipe with \
         `apt-get install mesa-vulkan-drivers libvulkan1` (Debian/Ubuntu)"
            .into()
    } else if cfg!(target_os = "macos") {
        "Metal should always be present on macOS 10.13+; check that the GPU is not disabled".into()
    } else {
        "install or update the GPU driver (DX12 or Vulkan)".into()
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    // Before the Vulkan driver loads: llvmpipe reads its width only then.
    super::cpu::choose_llvmpipe_width();
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle().with_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

fn requested_backends(opts: &GpuOptions) -> Result<wgpu::Backends> {
    match &opts.backend {
        Some(b) => parse_backend(b),
        None => {
            Ok(wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY | wgpu::Backends::GL))
        }
    }
}

/// All adapters the requested backends expose, in a stable order: real GPUs first.
pub fn list_adapters(opts: &GpuOptions) -> Result<Vec<wgpu::Adapter>> {
    let inst = instance(requested_backends(opts)?);
    let mut adapters = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
    adapters.sort_by_key(|a| {
        let info = a.get_info();
        let rank = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            wgpu::DeviceType::Other => 4,
        };
        // GL exposes fewer storage buffers and no subgroups: prefer native APIs.
        (rank, info.backend == wgpu::Backend::Gl)
    });
    Ok(adapters)
}

fn pick_adapter(opts: &GpuOptions) -> Result<wgpu::Adapter> {
    let adapters = list_adapters(opts)?;
    if adapters.is_empty() {
        return Err(Error::NoAdapter {
            backend: opts.backend.clone(),
            hint: no_adapter_hint(opts.backend.as_deref()),
        });
    }
    let wanted = opts
        .adapter
        .clone()
        .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok());
    let Some(wanted) = wanted else {
        return Ok(adapters.into_iter().next().expect("checked non-empty"));
    };
    let describe = |v: &[wgpu::Adapter]| {
        v.iter()
            .enumerate()
            .map(|(i, a)| format!("{i}: {} ({:?})", a.get_info().name, a.get_info().backend))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Ok(index) = wanted.parse::<usize>() {
        if index < adapters.len() {
            return Ok(adapters.into_iter().nth(index).expect("index checked"));
        }
        return Err(Error::AdapterNotFound {
            wanted,
            available: describe(&adapters),
        });
    }
    let needle = wanted.to_lowercase();
    match adapters
        .iter()
        .position(|a| a.get_info().name.to_lowercase().contains(&needle))
    {
        Some(i) => Ok(adapters.into_iter().nth(i).expect("index found")),
        None => Err(Error::AdapterNotFound {
            wanted,
            available: describe(&adapters),
        }),
    }
}

impl Gpu {
    /// Opens the adapter the options name (or the best one) with its real limits.
    pub fn new(opts: &GpuOptions) -> Result<Arc<Gpu>> {
        Self::from_adapter(pick_adapter(opts)?, None, opts)
    }

    /// Opens a device whose kernels use `tuning` instead of the adapter's table
    /// entry; tests use it to run every variant on one adapter.
    pub fn new_with_tuning(opts: &GpuOptions, tuning: Tuning) -> Result<Arc<Gpu>> {
        Self::from_adapter(pick_adapter(opts)?, Some(tuning), opts)
    }

    /// One device per matmul variant of `MatmulVariant::ALL` the adapter
    /// supports, the tuning table's own first: tests run every variant side
    /// by side.
    pub fn every_variant(opts: &GpuOptions) -> Result<Vec<Arc<Gpu>>> {
        Self::each_variant(opts, &MatmulVariant::ALL)
    }

    /// The same for `variants`, e.g. `MatmulVariant::every()` (benchmarks).
    pub fn each_variant(opts: &GpuOptions, variants: &[MatmulVariant]) -> Result<Vec<Arc<Gpu>>> {
        let first = Gpu::new(opts)?;
        let mut gpus = vec![first.clone()];
        for &v in variants {
            if v != first.tuning.matmul && v.supported(first.features, &first.facts, &first.limits)
            {
                gpus.push(Gpu::new_with_tuning(
                    opts,
                    Tuning {
                        matmul: v,
                        ..first.tuning
                    },
                )?);
            }
        }
        Ok(gpus)
    }

    pub fn from_adapter(
        adapter: wgpu::Adapter,
        tuning: Option<Tuning>,
        opts: &GpuOptions,
    ) -> Result<Arc<Gpu>> {
        let facts = AdapterFacts::from(&adapter.get_info());
        Self::open(adapter, facts, tuning, opts)
    }

    /// Opens `adapter`, described to the tuning table and reports by `facts`.
    pub(super) fn open(
        adapter: wgpu::Adapter,
        facts: AdapterFacts,
        tuning: Option<Tuning>,
        opts: &GpuOptions,
    ) -> Result<Arc<Gpu>> {
        let info = adapter.get_info();
        let features = adapter.features() & OPTIONAL_FEATURES;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("delg-gpu"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::DeviceRequest {
            adapter: facts.name.clone(),
            reason: e.to_string(),
        })?;

        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let lost = Arc::new(Mutex::new(None));
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = lost_sink.lock() {
                *l = Some(format!("{reason:?}: {msg}"));
            }
        });

        let pipeline_store = opts.pipeline_cache_dir.as_deref().and_then(|dir| {
            super::pipeline_store::PipelineStore::open(&device, &info, features, dir)
        });
        let tuning = tuning.unwrap_or_else(|| Tuning::for_adapter(&facts, features, &limits));
        Ok(Arc::new(Gpu {
            device,
            queue,
            facts,
            features,
            limits,
            tuning,
            pipelines: Default::default(),
            pipeline_store,
            counters: Default::default(),
            max_binding_override: opts.max_binding_override,
            scratch: Default::default(),
            errors,
            lost,
        }))
    }

    /// The host's work for this device so far (see `gpu::counters`).
    pub fn host_work(&self) -> super::counters::HostWork {
        self.counters.snapshot()
    }

    pub fn has(&self, f: wgpu::Features) -> bool {
        self.features.contains(f)
    }

    /// Largest byte range one storage binding may cover: what ops plan
    /// their windows with (lowered by `GpuOptions::max_binding_override`).
    pub fn max_binding_bytes(&self) -> u64 {
        let device = self.device_binding_bytes();
        self.max_binding_override
            .map_or(device, |o| o.clamp(self.binding_alignment() + 4, device))
    }

    /// The device's own limit on one storage binding.
    pub fn device_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Offsets of bound sub-ranges must be multiples of this.
    pub fn binding_alignment(&self) -> u64 {
        self.limits.min_storage_buffer_offset_alignment as u64
    }

    /// Turns errors the device reported asynchronously into a typed error.
    pub fn check(&self, what: &str) -> Result<()> {
        if let Some(msg) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(Error::DeviceLost(msg));
        }
        let pending: Vec<String> = self
            .errors
            .lock()
            .map(|mut v| v.drain(..).collect())
            .unwrap_or_default();
        if let Some(first) = pending.into_iter().next() {
            return Err(classify(what, first));
        }
        Ok(())
    }

    /// Runs `f` inside validation and out-of-memory error scopes.
    pub fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let val_err = pollster::block_on(val.pop());
        let oom_err = pollster::block_on(oom.pop());
        if let Some(e) = oom_err {
            return Err(Error::OutOfMemory {
                what: what.into(),
                detail: e.to_string(),
            });
        }
        if let Some(e) = val_err {
            return Err(classify(what, e.to_string()));
        }
        Ok(out)
    }

    /// Blocks until all submitted work finished.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        self.check("waiting for the GPU")
    }
}

fn classify(what: &str, detail: String) -> Error {
    if detail.to_lowercase().contains("out of memory") {
        Error::OutOfMemory {
            what: what.into(),
            detail,
        }
    } else {
        Error::Validation {
            what: what.into(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AdapterFacts;

    fn facts(name: &str, backend: wgpu::Backend, device_type: wgpu::DeviceType) -> AdapterFacts {
        AdapterFacts {
            name: name.into(),
            backend,
            device_type,
            driver: String::new(),
            driver_info: String::new(),
            vendor: 0,
            subgroup_min_size: 8,
            subgroup_max_size: 8,
        }
    }

    #[test]
    fn cpu_emulations_are_named_and_real_gpus_are_not() {
        use wgpu::{Backend, DeviceType};
        let gpu = facts(
            "NVIDIA GeForce RTX 4090",
            Backend::Vulkan,
            DeviceType::DiscreteGpu,
        );
        assert_eq!(gpu.emulation_note(false), None);
        let lavapipe = facts(
            "llvmpipe (LLVM 15.0.6, 256 bits)",
            Backend::Vulkan,
            DeviceType::Cpu,
        );
        let note = lavapipe
            .emulation_note(false)
            .expect("lavapipe is a CPU emulation");
        assert!(note.contains("emulates a GPU on the CPU"), "{note}");
        assert!(!note.contains("mesa-vulkan-drivers"), "{note}");
        // WARP reports itself as a discrete or integrated GPU on some drivers.
        let warp = facts(
            "Microsoft Basic Render Driver",
            Backend::Dx12,
            DeviceType::Other,
        );
        assert!(warp.emulation_note(false).is_some());
    }

    #[test]
    fn opengl_llvmpipe_names_the_package_that_brings_lavapipe_unless_gl_was_chosen() {
        let gl = facts(
            "llvmpipe (LLVM 15.0.6, 256 bits)",
            wgpu::Backend::Gl,
            wgpu::DeviceType::Cpu,
        );
        let found = gl.emulation_note(false).expect("a CPU emulation");
        assert!(
            !cfg!(target_os = "linux") || found.contains("apt-get install mesa-vulkan-drivers"),
            "{found}"
        );
        let chosen = gl.emulation_note(true).expect("a CPU emulation");
        assert!(!chosen.contains("install"), "{chosen}");
    }
}
