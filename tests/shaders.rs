//! Every shader specialisation any op can compile is parsed and validated by
//! naga exactly as it is handed to the device, then translated to SPIR-V, MSL,
//! HLSL and GLSL, so a shader that could not run on Metal or DX12 fails here,
//! on any machine, GPU or not.

use delg_gpu::gpu::shader::validate;
use delg_gpu::ops::all_shader_specs;

fn translate_all(label: &str, module: &naga::Module) {
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(module)
    .unwrap_or_else(|e| panic!("{label}: {e}"));

    let spv = naga::back::spv::write_vec(module, &info, &Default::default(), None);
    assert!(
        spv.is_ok_and(|w| !w.is_empty()),
        "{label}: SPIR-V translation failed"
    );

    let msl_opts = naga::back::msl::Options {
        lang_version: (2, 4),
        ..Default::default()
    };
    let pipeline = naga::back::msl::PipelineOptions::default();
    naga::back::msl::write_string(module, &info, &msl_opts, &pipeline)
        .unwrap_or_else(|e| panic!("{label}: MSL: {e}"));

    let hlsl_opts = naga::back::hlsl::Options {
        shader_model: naga::back::hlsl::ShaderModel::V6_2,
        ..Default::default()
    };
    let mut hlsl = String::new();
    naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_opts, &Default::default())
        .write(module, &info, None)
        .unwrap_or_else(|e| panic!("{label}: HLSL: {e}"));

    for ep in &module.entry_points {
        let glsl_opts = naga::back::glsl::Options {
            version: naga::back::glsl::Version::Desktop(450),
            ..Default::default()
        };
        let pipe = naga::back::glsl::PipelineOptions {
            shader_stage: ep.stage,
            entry_point: ep.name.clone(),
            multiview: None,
        };
        let mut out = String::new();
        naga::back::glsl::Writer::new(
            &mut out,
            module,
            &info,
            &glsl_opts,
            &pipe,
            naga::proc::BoundsCheckPolicies::default(),
        )
        .and_then(|mut w| w.write())
        .unwrap_or_else(|e| panic!("{label}: GLSL ({}): {e}", ep.name));
    }
}

#[test]
fn every_shader_validates_and_translates() {
    let specs = all_shader_specs();
    assert!(!specs.is_empty());
    for spec in specs {
        let label = spec.label();
        let src = spec.source().unwrap_or_else(|e| panic!("{e}"));
        let module = validate(&label, &src).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            module.entry_points.iter().any(|e| e.name == spec.entry),
            "{label}: entry point missing"
        );
        translate_all(&label, &module);
    }
}
