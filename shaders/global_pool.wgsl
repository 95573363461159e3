// Global poolings of NHWC maps to [N, C] (mean, GeM, attention-weighted
// mean), their backward passes, and the deterministic sum of a vector.
// Chunked by rows as in pool.wgsl, whose uniform block they share: a kernel
// adds an operand's offset o<binding> (window shift minus window start,
// wrapping) to tensor-relative indices.
#include "common"
#include "pool_params"

#if REDUCE
// One invocation per (image, channel) of the chunk: reduces the chunk's rows
// of that image over H and W. A chunk that does not start an image adds to
// (or, for GeM, merges with) what earlier chunks left in the output.
// The host bounds the rows of a dispatch: llvmpipe silently ends a loop nest
// after 65535 iterations per invocation.
@group(0) @binding(1) var<storage, read> x: array<f32>;
#if MEAN
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
#endif
#if ATTN
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#endif
#if GEM
@group(0) @binding(2) var<storage, read> pw: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#endif
#if GEM_DP
@group(0) @binding(2) var<storage, read> pw: array<f32>;
@group(0) @binding(3) var<storage, read> gem: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
#endif

@compute @workgroup_size(64)
fn reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid, 64u);
    if (t >= p.threads) {
        return;
    }
    let c = t % p.c;
    let n = p.row0 / p.h + t / p.c;
    let lo = max(p.row0, n * p.h);
    let hi = min(p.row_end, (n + 1u) * p.h);
    let first = lo == n * p.h;
    let nc = n * p.c + c;
#if GEM
    // Scaled by the maximum so that z^p neither overflows nor underflows:
    // (mean z^p)^(1/p) = m · (mean (z/m)^p)^(1/p).
    let pv = pw[p.o2];
    var m = p.eps;
    for (var row = lo; row < hi; row++) {
        for (var e = row * p.w * p.c + c; e < (row + 1u) * p.w * p.c; e += p.c) {
            m = max(m, x[e + p.o1]);
        }
    }
#endif
#if GEM_DP
    // ∂g/∂p = g/(p·HW) · Σ (z/g)^p · log(z/g); z/g <= (HW)^(1/p) keeps it finite.
    let pv = pw[p.o2];
    let gv = gem[nc + p.o3];
#endif
    var s = 0.0;
    for (var row = lo; row < hi; row++) {
        for (var e = row * p.w * p.c + c; e < (row + 1u) * p.w * p.c; e += p.c) {
#if MEAN
            s += x[e + p.o1];
#endif
#if ATTN
            s += x[e + p.o1] * a[e / p.c + p.o2];
#endif
#if GEM
            s += pow(max(x[e + p.o1], p.eps) / m, pv);
#endif
#if GEM_DP
            let q = max(x[e + p.o1], p.eps) / gv;
            s += pow(q, pv) * log(q);
#endif
        }
    }
#if MEAN
    let r = s * p.inv_hw;
    let o = nc + p.o2;
    out[o] = select(out[o] + r, r, first);
#endif
#if ATTN
    let r = s * p.inv_hw;
    let o = nc + p.o3;
    out[o] = select(out[o] + r, r, first);
#endif
#if GEM
    let last = hi == (n + 1u) * p.h;
    let o = nc + p.o3;
    if (first && last) {
        out[o] = m * pow(s * p.inv_hw, 1.0 / pv);
    } else {
        // Between chunks the output holds log Σ z^p, merged by log-add-exp.
        var l = pv * log(m) + log(s);
        if (!first) {
            let prev = out[o];
            l = max(prev, l) + log(1.0 + exp(-abs(prev - l)));
        }
        out[o] = select(l, exp((l + log(p.inv_hw)) / pv), last);
    }
#endif
#if GEM_DP
    let r = dy[nc + p.o4] * gv * p.inv_hw / pv * s;
    let o = nc + p.o5;
    out[o] = select(out[o] + r, r, first);
#endif
}
#endif

#if SPREAD
// Backward of the global poolings with respect to the pooled map: one
// invocation per element of dx; rows are global rows n·H + h.
#if MEAN
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
#endif
#if ATTN
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
#endif
#if GEM
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> pw: array<f32>;
@group(0) @binding(3) var<storage, read> gem: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
#endif

@compute @workgroup_size(64)
fn spread(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid, 64u);
    if (t >= p.threads) {
        return;
    }
    let c = t % p.c;
    let pix = p.row0 * p.w + t / p.c;
    let e = pix * p.c + c;
    let nc = pix / (p.h * p.w) * p.c + c;
#if MEAN
    dx[e + p.o2] = dy[nc + p.o1] * p.inv_hw;
#endif
#if ATTN
    dx[e + p.o3] = a[pix + p.o1] * dy[nc + p.o2] * p.inv_hw;
#endif
#if GEM
    // ∂g/∂x = (z/g)^(p−1) / HW where x >= eps (the clamp passes no gradient below).
    let xv = x[e + p.o1];
    let pv = pw[p.o2];
    let d = dy[nc + p.o4] * p.inv_hw * pow(max(xv, p.eps) / gem[nc + p.o3], pv - 1.0);
    dx[e + p.o5] = select(0.0, d, xv >= p.eps);
#endif
}
#endif

#if ATTN_GRAD
// Backward of attention pooling with respect to the attention map: one
// invocation per pixel, a dot product over channels.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> da: array<f32>;

@compute @workgroup_size(64)
fn attn_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid, 64u);
    if (t >= p.threads) {
        return;
    }
    let pix = p.row0 * p.w + t;
    let nc0 = pix / (p.h * p.w) * p.c;
    var s = 0.0;
    for (var c = 0u; c < p.c; c++) {
        s += x[pix * p.c + c + p.o1] * dy[nc0 + c + p.o2];
    }
    da[pix + p.o3] = s * p.inv_hw;
}
#endif

#if SUM_ALL
// Sum of a chunk of a vector by one workgroup in a fixed tree order
// (deterministic); chunks after the first add to the result.
@group(0) @binding(1) var<storage, read> v: array<f32>;
@group(0) @binding(2) var<storage, read_write> total: array<f32>;

var<workgroup> part: array<f32, 64>;

@compute @workgroup_size(64)
fn sum_all(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = p.row0 + lid; i < p.row_end; i += 64u) {
        s += v[i + p.o1];
    }
    part[lid] = s;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k >>= 1u) {
        if (lid < k) {
            part[lid] += part[lid + k];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        total[p.o2] = select(total[p.o2] + part[0], part[0], p.row0 == 0u);
    }
}
#endif
