//! Models as graphs: ResNet backbones, the DELG and DOLG heads, their
//! parameters, and the extractor that runs either over an image pyramid.

pub mod arch;
pub mod builder;
pub mod contract;
pub mod delg;
pub mod dolg;
pub mod params;
pub mod resnet;

pub use arch::{ModelConfig, TrainModel};
pub use contract::Architecture;

/// Metadata keys of a delg-gpu weight file.
pub const META_ARCH: &str = "delg_gpu.arch";
pub const META_CONFIG: &str = "delg_gpu.config";
pub const META_SCORE_THRESHOLD: &str = "delg_gpu.score_threshold";

