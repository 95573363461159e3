//! Models as graphs: the builder, ResNet backbones, the DELG and DOLG heads
//! and their parameters. Jobs ask a model everything through the
//! `Architecture` trait (`contract.rs`); `arch.rs` alone knows which
//! architectures exist. A new architecture is a file implementing the trait,
//! a variant of `ModelConfig` and `TrainModel` in `arch.rs`, and its `pub mod`
//! here (plus its flags in `cli/groups.rs`).

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
/// `META_ARCH` of a file that holds only a ResNet backbone (an ImageNet
/// initialisation): it can start a training run, which gives it heads, but
/// it cannot extract features.
pub const ARCH_BACKBONE: &str = "backbone";
