//! Kernel families. Each module pairs `shaders/<family>.wgsl` with its Rust
//! binding (shape rules, dispatch), its f64 reference and its backward rules.

pub mod autodiff;
pub mod batchnorm;
pub mod cast;
pub mod concat;
pub mod conv2d;
pub mod elementwise;
pub mod fusion;
pub mod gemm;
pub mod global_pool;
pub mod loss;
pub mod normalize;
pub mod optim;
pub mod pool;
pub mod resize;
pub mod select;

// all_shader_specs() and uniform_shape(), one line per shaders/<family>.wgsl.
include!(concat!(env!("OUT_DIR"), "/ops_registry.rs"));
