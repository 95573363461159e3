// Bilinear resize of NHWC activations with half-pixel centres
// (tf.image.resize bilinear without antialias, PyTorch align_corners=False):
// src = (dst + 0.5)·in/out − 0.5, clamped at the edges as PyTorch does.
//
// Operands are bound as windows of at most one storage binding; kernels add
// the operand's offset o<binding> (window shift minus window start, wrapping)
// to tensor-relative indices. The backward pass gathers: each input element
// sums the weighted dy of the outputs that read it, so it is deterministic.
// In the backward pass h/oh/scale_y describe the axis being differentiated.
#include "common"

struct Params {
    threads: u32,
    row0: u32,
    h: u32,
    w: u32,
    c: u32,
    oh: u32,
    ow: u32,
    // Global dy rows [row_lo, row_hi) bound in this chunk (backward only).
    row_lo: u32,
    row_hi: u32,
    scale_y: f32,
    scale_x: f32,
    o1: u32,
    o2: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// The two source indices of output coordinate d and the weight of the second.
struct Tap {
    i0: u32,
    i1: u32,
    l: f32,
}

fn tap(d: u32, scale: f32, n: u32) -> Tap {
    let s = max((f32(d) + 0.5) * scale - 0.5, 0.0);
    let i0 = min(u32(s), n - 1u);
    return Tap(i0, min(i0 + 1u, n - 1u), s - f32(i0));
}

#if FORWARD
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// One invocation per output element; rows are global output rows n·OH + oy.
@compute @workgroup_size(64)
fn resize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid, 64u);
    if (t >= p.threads) {
        return;
    }
    let c = t % p.c;
    let ox = (t / p.c) % p.ow;
    let g = p.row0 + t / (p.c * p.ow);
    let n = g / p.oh;
    let ty = tap(g % p.oh, p.scale_y, p.h);
    let tx = tap(ox, p.scale_x, p.w);
    let r0 = (n * p.h + ty.i0) * p.w;
    let r1 = (n * p.h + ty.i1) * p.w;
    let top = (1.0 - tx.l) * x[(r0 + tx.i0) * p.c + c + p.o1] + tx.l * x[(r0 + tx.i1) * p.c + c + p.o1];
    let bottom = (1.0 - tx.l) * x[(r1 + tx.i0) * p.c + c + p.o1] + tx.l * x[(r1 + tx.i1) * p.c + c + p.o1];
    y[(g * p.ow + ox) * p.c + c + p.o2] = (1.0 - ty.l) * top + ty.l * bottom;
}
#endif

#if GRAD
// The gradient is separable: one pass per axis. Viewing dy as
// [outer, oh, c] (oh: the resized axis, c: everything after it) and dx as
// [outer, h, c], each dx element gathers the weighted dy along that axis.
// Two 1-D passes keep each invocation's loop at about oh/h + 5 iterations,
// where a 2-D gather would exceed llvmpipe's 65535-iteration loop limit for
// large upsampling factors.
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;

// Weight of source index i in the interpolation of tap t.
fn weight(t: Tap, i: u32) -> f32 {
    return select(0.0, 1.0 - t.l, t.i0 == i) + select(0.0, t.l, t.i1 == i);
}

// Output indices [lo, hi) that may read source index i: those whose source
// coordinate lies in [i − 1, i + 1), widened by one for rounding.
fn readers(i: u32, scale: f32, n_out: u32) -> vec2<u32> {
    let lo = i32(floor((f32(i) - 0.5) / scale - 0.5)) - 1;
    let hi = i32(ceil((f32(i) + 1.5) / scale - 0.5)) + 2;
    return vec2<u32>(u32(max(lo, 0)), u32(clamp(hi, 0, i32(n_out))));
}

// One invocation per dx element; rows are global rows outer·h + i.
@compute @workgroup_size(64)
fn resize_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid, 64u);
    if (t >= p.threads) {
        return;
    }
    let k = t % p.c;
    let g = p.row0 + t / p.c;
    let i = g % p.h;
    let first = g / p.h * p.oh;
    let r = readers(i, p.scale_y, p.oh);
    // Clamped to the dy rows bound in this chunk (which hold every reader).
    let hi = min(first + r.y, p.row_hi);
    var acc = 0.0;
    for (var gd = max(first + r.x, p.row_lo); gd < hi; gd++) {
        acc += weight(tap(gd - first, p.scale_y, p.h), i) * dy[gd * p.c + k + p.o1];
    }
    dx[g * p.c + k + p.o2] = acc;
}
#endif
