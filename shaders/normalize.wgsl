// L2 normalisation over the last dimension, PyTorch's F.normalize convention:
// y = x / max(‖x‖, ε). One invocation per row: rows are many (every pixel of
// a descriptor map) and short (C ≤ a few thousand), and the two passes over a
// row then hit the cache. Rows are processed in windows of whole rows.
#include "common"

struct Params {
    rows: u32,
    c: u32,
    eps: f32,
    shift_x: u32,
    shift_dy: u32,
    shift_out: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;

#if FORWARD
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn l2_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = linear_index(wid, nwg, lid, 64u);
    if (r >= p.rows) {
        return;
    }
    let bx = p.shift_x + r * p.c;
    var ss = 0.0;
    for (var k = 0u; k < p.c; k++) {
        let v = x[bx + k];
        ss += v * v;
    }
    let inv = 1.0 / max(sqrt(ss), p.eps);
    let bo = p.shift_out + r * p.c;
    for (var k = 0u; k < p.c; k++) {
        out[bo + k] = x[bx + k] * inv;
    }
}
#endif

#if BACKWARD
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// With n = ‖x‖: dx = (dy − x·(x·dy)/n²)/n where n ≥ ε (PyTorch's clamp_min
// passes the gradient at equality), else dx = dy/ε.
@compute @workgroup_size(64)
fn l2_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = linear_index(wid, nwg, lid, 64u);
    if (r >= p.rows) {
        return;
    }
    let bx = p.shift_x + r * p.c;
    let bd = p.shift_dy + r * p.c;
    var ss = 0.0;
    var xd = 0.0;
    for (var k = 0u; k < p.c; k++) {
        let v = x[bx + k];
        ss += v * v;
        xd += v * dy[bd + k];
    }
    let n = sqrt(ss);
    var inv = 1.0 / p.eps;
    var proj = 0.0;
    if (n >= p.eps) {
        inv = 1.0 / n;
        proj = xd / ss;
    }
    let bo = p.shift_out + r * p.c;
    for (var k = 0u; k < p.c; k++) {
        out[bo + k] = (dy[bd + k] - x[bx + k] * proj) * inv;
    }
}
#endif
