// Storage precision conversion over one window pair (`cast` is a reserved
// word in WGSL, hence the entry point `convert`): f32 -> f16 (TO_F16) or
// f16 -> f32. Stores to f16 saturate at +-65504 first, as every f16 store in
// the kernels does (WGSL leaves the conversion of larger values undefined);
// the CPU reference rounds the same way (tensor::f16_store).
enable f16;
#include "common"

struct Params {
    n: u32,
    shift_x: u32,
    shift_out: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

#if TO_F16
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f16>;
#else
@group(0) @binding(1) var<storage, read> x: array<f16>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
#endif

@compute @workgroup_size(256)
fn convert(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.n) {
        return;
    }
#if TO_F16
    out[p.shift_out + i] = f16(clamp(x[p.shift_x + i], -65504.0, 65504.0));
#else
    out[p.shift_out + i] = f32(x[p.shift_x + i]);
#endif
}
