//! Every shader specialisation any op can compile is parsed and validated by
//! naga exactly as it is handed to the device, then translated to SPIR-V, MSL,
//! HLSL and GLSL, so a shader that could not run on Metal or DX12 fails here,
//! on any machine, GPU or not.

use delg_gpu::gpu::shader::validate;
use delg_gpu::gpu::{ScalarKind, UniformShape, UniformSlot};
use delg_gpu::ops::{all_shader_specs, uniform_shape};

mod naga_out;

/// `glsl`: also to GLSL, which has no 16-bit floats: wgpu's GL backend never
/// offers SHADER_F16, so f16 kernels are never compiled there.
fn translate_all(label: &str, module: &naga::Module, glsl: bool) {
    let info = naga_out::info(label, module);

    let spv = naga::back::spv::write_vec(module, &info, &Default::default(), None);
    assert!(
        spv.is_ok_and(|w| !w.is_empty()),
        "{label}: SPIR-V translation failed"
    );
    naga_out::msl(label, module, &info);
    naga_out::hlsl(label, module, &info);

    if !glsl {
        return;
    }
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
        let f16 = spec
            .required_features()
            .unwrap_or_else(|e| panic!("{e}"))
            .contains(wgpu::Features::SHADER_F16);
        translate_all(&label, &module, !f16);
    }
}

/// The WGSL uniform block at @group(0) @binding(0) flattened to scalar slots
/// (byte offset, type, member name), and its size, from naga's own layout.
fn wgsl_uniform(module: &naga::Module) -> Option<UniformShape> {
    fn flatten(
        module: &naga::Module,
        ty: naga::Handle<naga::Type>,
        base: usize,
        name: &str,
        out: &mut Vec<UniformSlot>,
    ) {
        let scalar = |s: naga::Scalar| match (s.kind, s.width) {
            (naga::ScalarKind::Uint, 4) => ScalarKind::U32,
            (naga::ScalarKind::Sint, 4) => ScalarKind::I32,
            (naga::ScalarKind::Float, 4) => ScalarKind::F32,
            other => panic!("uniform member of unsupported type {other:?}"),
        };
        let slot = |offset, s| UniformSlot {
            offset,
            kind: scalar(s),
            name: Some(name.to_string()),
        };
        match &module.types[ty].inner {
            naga::TypeInner::Scalar(s) => out.push(slot(base, *s)),
            naga::TypeInner::Vector { size, scalar: s } => {
                for i in 0..*size as usize {
                    out.push(slot(base + 4 * i, *s));
                }
            }
            naga::TypeInner::Array {
                base: elem,
                size: naga::ArraySize::Constant(n),
                stride,
            } => {
                for i in 0..n.get() as usize {
                    flatten(module, *elem, base + i * *stride as usize, name, out);
                }
            }
            naga::TypeInner::Struct { members, .. } => {
                for m in members {
                    let member = m.name.as_deref().unwrap_or("");
                    flatten(module, m.ty, base + m.offset as usize, member, out);
                }
            }
            other => panic!("uniform member of unsupported type {other:?}"),
        }
    }
    let var = module.global_variables.iter().find_map(|(_, v)| {
        let b = v.binding.as_ref()?;
        (v.space == naga::AddressSpace::Uniform && b.group == 0 && b.binding == 0).then_some(v)
    })?;
    let mut slots = Vec::new();
    flatten(module, var.ty, 0, "", &mut slots);
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).expect("layout");
    let size = layouter[var.ty].size as usize;
    Some(UniformShape { slots, size })
}

/// Every kernel's Rust parameter struct has the layout of the WGSL uniform
/// block it fills: same scalar at every offset, same size. A field added on
/// one side only, reordered, or of another type fails here.
#[test]
fn every_uniform_block_matches_its_rust_struct() {
    let mut checked = 0;
    for spec in all_shader_specs() {
        let label = spec.label();
        let module = validate(&label, &spec.source().unwrap()).unwrap();
        let Some(wgsl) = wgsl_uniform(&module) else {
            continue;
        };
        let rust = uniform_shape(&spec)
            .unwrap_or_else(|| panic!("{label}: no Rust uniform struct for this entry point"));
        let offsets_kinds = |s: &UniformShape| -> Vec<(usize, ScalarKind)> {
            s.slots.iter().map(|x| (x.offset, x.kind)).collect()
        };
        assert_eq!(
            offsets_kinds(&rust),
            offsets_kinds(&wgsl),
            "{label}: uniform members differ (Rust, WGSL)"
        );
        // Scalar fields carry their names on both sides; array elements match
        // WGSL members of any name (o1..o5 for off[5], vectors for shifts[12]),
        // and padding any padding (_pad vs _pad0).
        let padding = |n: &Option<String>| n.as_deref().is_some_and(|n| n.starts_with('_'));
        for (r, w) in rust.slots.iter().zip(&wgsl.slots) {
            if r.name.is_some() && !(padding(&r.name) && padding(&w.name)) {
                assert_eq!(
                    r.name, w.name,
                    "{label}: member at byte {} (Rust, WGSL)",
                    r.offset
                );
            }
        }
        // WGSL rounds a uniform struct up to 16 bytes; the Rust struct must
        // cover that, and bytemuck writes exactly size_of.
        assert_eq!(
            rust.size, wgsl.size,
            "{label}: uniform block sizes differ (Rust, WGSL)"
        );
        checked += 1;
    }
    assert!(checked > 20, "only {checked} uniform blocks found");
}
