//! Kernel families. Each module pairs `shaders/<family>.wgsl` with its Rust
//! binding (shape rules, dispatch), its f64 reference and its backward rules.

pub mod check;
pub mod conv2d;
pub mod elementwise;

use crate::gpu::ShaderSpec;

/// Every shader specialisation any op can compile, for the naga validation tests.
pub fn all_shader_specs() -> Vec<ShaderSpec> {
    let mut specs = Vec::new();
    specs.extend(elementwise::shader_specs());
    specs.extend(conv2d::shader_specs());
    specs
}
