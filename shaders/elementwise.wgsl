// Elementwise kernels over windows of at most one storage binding each.
// One pipeline per entry point and width; the operation is a uniform switch
// on p.kind, which costs nothing measurable next to the loads. With VEC4 the
// same code runs on vec4<f32>: on lavapipe every lane-varying load is
// scalarised, so four values per load is what makes these kernels fast.
#include "common"

#if VEC4
alias T = vec4<f32>;
#else
alias T = f32;
#endif

struct Params {
    n: u32,
    kind: u32,
    shift_x: u32,
    shift_y: u32,
    shift_out: u32,
    alpha: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// softplus with PyTorch's threshold 20 and an exact far tail (see common.wgsl).
fn softplus_t(x: T) -> T {
    let mid = select(log(T(1.0) + exp(x)), exp(x), x < T(-15.0));
    return select(mid, x, x > T(20.0));
}

fn sigmoid_t(x: T) -> T {
    let e = exp(-abs(x));
    return select(e / (T(1.0) + e), T(1.0) / (T(1.0) + e), x >= T(0.0));
}

#if UNARY
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> out: array<T>;

@compute @workgroup_size(256)
fn unary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.n) {
        return;
    }
    let a = x[p.shift_x + i];
    var r: T;
    switch p.kind {
        case 0u: { r = max(a, T(0.0)); }       // relu
        case 1u: { r = softplus_t(a); }        // softplus
        case 2u: { r = p.alpha * a; }          // scale
        default: { r = a; }                    // copy
    }
    out[p.shift_out + i] = r;
}
#endif

#if BINARY
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read> y: array<T>;
@group(0) @binding(3) var<storage, read_write> out: array<T>;

@compute @workgroup_size(256)
fn binary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.n) {
        return;
    }
    let a = x[p.shift_x + i];
    let b = y[p.shift_y + i];
    var r: T;
    switch p.kind {
        case 0u: { r = a + b; }                              // add
        case 1u: { r = a - b; }                              // sub
        case 2u: { r = a * b; }                              // mul
        case 3u: { r = select(T(0.0), b, a > T(0.0)); }      // relu gradient: x, dy
        case 4u: { r = b * sigmoid_t(a); }                   // softplus gradient: x, dy
        default: { r = a; }
    }
    out[p.shift_out + i] = r;
}
#endif

#if FILL
@group(0) @binding(1) var<storage, read_write> out: array<T>;

@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.n) {
        return;
    }
    out[p.shift_out + i] = T(p.alpha);
}
#endif
