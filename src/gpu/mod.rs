//! The device layer: adapters, buffers, shaders, pipelines and dispatch recording.

pub mod buffer;
pub mod device;
pub mod pipeline;
pub mod recorder;
pub mod shader;
pub mod tuning;

pub use buffer::{chunks, vec4_pieces, BufSlice, DeviceTensor, Piece, Window};
pub use device::{list_adapters, AdapterFacts, Gpu, GpuOptions};
pub use recorder::{Binding, RecordStats, Recorder, Recording};
pub use shader::ShaderSpec;
pub use tuning::{MatmulVariant, Tuning};
