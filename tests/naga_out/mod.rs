//! naga's Metal and DX12 output with the options the shader tests share, so
//! every test reads the same MSL and HLSL.
#![allow(dead_code)] // each test binary uses its own subset

pub fn msl(label: &str, module: &naga::Module, info: &naga::valid::ModuleInfo) -> String {
    let options = naga::back::msl::Options {
        lang_version: (2, 4),
        ..Default::default()
    };
    let pipeline = naga::back::msl::PipelineOptions::default();
    naga::back::msl::write_string(module, info, &options, &pipeline)
        .unwrap_or_else(|e| panic!("{label}: MSL: {e}"))
        .0
}

pub fn hlsl(label: &str, module: &naga::Module, info: &naga::valid::ModuleInfo) -> String {
    let options = naga::back::hlsl::Options {
        shader_model: naga::back::hlsl::ShaderModel::V6_2,
        ..Default::default()
    };
    let mut out = String::new();
    naga::back::hlsl::Writer::new(&mut out, &options, &Default::default())
        .write(module, info, None)
        .unwrap_or_else(|e| panic!("{label}: HLSL: {e}"));
    out
}

/// naga's analysis of a module, with every capability as
/// `gpu::shader::validate` grants (the backends need the analysis).
pub fn info(label: &str, module: &naga::Module) -> naga::valid::ModuleInfo {
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(module)
    .unwrap_or_else(|e| panic!("{label}: {e}"))
}
