//! The device layer: adapters, buffers, shaders, pipelines and dispatch recording.

pub mod buffer;
pub mod counters;
pub mod cpu;
pub mod device;
pub mod pipeline;
pub mod pipeline_store;
pub mod profile;
pub mod recorder;
pub mod scratch;
pub mod shader;
pub mod tuning;
pub mod uniform;
pub mod window;

pub use buffer::DeviceTensor;
pub use counters::{HostWork, HostWorkPerImage};
pub use device::{list_adapters, AdapterFacts, Gpu, GpuOptions};
pub use profile::DeviceProfile;
pub use recorder::{Binding, RecordStats, Recorder, Recording};
pub use scratch::{needs_bytes, ScratchNeed, TextureNeed};
pub use shader::ShaderSpec;
pub use tuning::{
    MatmulVariant, TiledConfig, Tuning, BROADCAST_LANES, TILED_APPLE, TILED_COMPACT, TILED_CONFIGS,
    TILED_WAVE64, TILED_WIDE, VENDOR_AMD, VENDOR_APPLE, VENDOR_INTEL, VENDOR_NVIDIA,
};
pub use uniform::{ScalarKind, Uniform, UniformField, UniformShape, UniformSlot};
pub use window::{
    chunks, image_rows, rows_per_window, scaled, vec4_pieces, BufSlice, RowLaunch, Window,
};
