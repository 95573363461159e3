//! Kernel families. Each module pairs `shaders/<family>.wgsl` with its Rust
//! binding (shape rules, dispatch), its f64 reference and its backward rules.

pub mod batchnorm;
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

use crate::gpu::ShaderSpec;

/// Every shader specialisation any op can compile, for the naga validation tests.
pub fn all_shader_specs() -> Vec<ShaderSpec> {
    let mut specs = Vec::new();
    specs.extend(batchnorm::shader_specs());
    specs.extend(concat::shader_specs());
    specs.extend(conv2d::shader_specs());
    specs.extend(elementwise::shader_specs());
    specs.extend(fusion::shader_specs());
    specs.extend(gemm::shader_specs());
    specs.extend(global_pool::shader_specs());
    specs.extend(loss::shader_specs());
    specs.extend(normalize::shader_specs());
    specs.extend(optim::shader_specs());
    specs.extend(pool::shader_specs());
    specs.extend(resize::shader_specs());
    specs
}
