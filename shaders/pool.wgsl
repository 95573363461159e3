// Pooling kernels on NHWC activations: windowed max-pool (and the 1×1 strided
// subsample, which is a max-pool with a one-element window), global mean /
// GeM / attention-weighted pooling, and their backward passes.
//
// Every dispatch covers a chunk of rows of its thread space, and every operand
// is bound as a window of at most one storage binding. Kernels compute
// tensor-relative element indices and add the operand's offset o<binding>
// (window shift minus window start, wrapping), so one index formula serves
// every chunk. Backward passes gather (each output element sums what reaches
// it) instead of scattering, so they need no atomics and are deterministic.
#include "common"

struct Params {
    threads: u32,
    // First and end (exclusive) global row of this chunk's thread space.
    row0: u32,
    row_end: u32,
    h: u32,
    w: u32,
    c: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    pt: u32,
    pl: u32,
    eps: f32,
    inv_hw: f32,
    o1: u32,
    o2: u32,
    o3: u32,
    o4: u32,
    o5: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

#if MAX_POOL
#if VEC4
// Four channels per invocation (c and the offsets in vec4s): a quarter of the
// lane-varying loads and index arithmetic, which llvmpipe pays per lane. Only
// values: the argmax is per channel.
alias Elem = vec4<f32>;
#else
alias Elem = f32;
#endif
@group(0) @binding(1) var<storage, read> x: array<Elem>;
@group(0) @binding(2) var<storage, read_write> y: array<Elem>;

struct Best {
    k: u32,
    v: Elem,
}

// Maximum of one pooling window and (scalar form) its position ky·kw + kx.
// Padding is skipped, so it never wins; ties keep the first element in scan order.
fn window_max(n: u32, oy: u32, ox: u32, c: u32) -> Best {
    var best = Best(0u, Elem(0.0));
    var found = false;
    let y0 = i32(oy * p.sh) - i32(p.pt);
    let x0 = i32(ox * p.sw) - i32(p.pl);
    for (var ky = 0u; ky < p.kh; ky++) {
        let iy = y0 + i32(ky);
        if (iy < 0 || iy >= i32(p.h)) {
            continue;
        }
        let row = (n * p.h + u32(iy)) * p.w;
        for (var kx = 0u; kx < p.kw; kx++) {
            let ix = x0 + i32(kx);
            if (ix < 0 || ix >= i32(p.w)) {
                continue;
            }
            let v = x[(row + u32(ix)) * p.c + c + p.o1];
#if VEC4
            best.v = select(max(best.v, v), v, !found);
            found = true;
#else
            if (!found || v > best.v) {
                best = Best(ky * p.kw + kx, v);
                found = true;
            }
#endif
        }
    }
    return best;
}

// One invocation per output element; rows are global output rows n·OH + oy.
// With INDEX the output is the argmax's window position (exact in f32), which
// the backward pass reads instead of searching every window again.
@compute @workgroup_size(64)
fn max_pool(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid, 64u);
    if (t >= p.threads) {
        return;
    }
    let c = t % p.c;
    let ox = (t / p.c) % p.ow;
    let g = p.row0 + t / (p.c * p.ow);
    let best = window_max(g / p.oh, g % p.oh, ox, c);
#if INDEX
    y[(g * p.ow + ox) * p.c + c + p.o2] = f32(best.k);
#else
    y[(g * p.ow + ox) * p.c + c + p.o2] = best.v;
#endif
}
#endif

#if POOL_GRAD
#if INDEXED
@group(0) @binding(1) var<storage, read> idx: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
#else
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
#endif

// One invocation per input element: sums dy over the windows that contain the
// element and whose argmax (position in idx) it is. Without INDEXED (1×1
// windows) the element is its window's only member, so membership decides.
@compute @workgroup_size(64)
fn pool_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid, 64u);
    if (t >= p.threads) {
        return;
    }
#if INDEXED
    let ody = p.o2;
    let odx = p.o3;
#else
    let ody = p.o1;
    let odx = p.o2;
#endif
    let c = t % p.c;
    let ix = (t / p.c) % p.w;
    let g = p.row0 + t / (p.c * p.w);
    let n = g / p.h;
    // Window oy covers padded row ty when oy·sh <= ty < oy·sh + kh.
    let ty = g % p.h + p.pt;
    let tx = ix + p.pl;
    let oy_lo = select(0u, (ty + 1u - p.kh + p.sh - 1u) / p.sh, ty + 1u > p.kh);
    let ox_lo = select(0u, (tx + 1u - p.kw + p.sw - 1u) / p.sw, tx + 1u > p.kw);
    let oy_hi = min(ty / p.sh + 1u, p.oh);
    let ox_hi = min(tx / p.sw + 1u, p.ow);
    var acc = 0.0;
    for (var oy = oy_lo; oy < oy_hi; oy++) {
        for (var ox = ox_lo; ox < ox_hi; ox++) {
            let o = ((n * p.oh + oy) * p.ow + ox) * p.c + c;
#if INDEXED
            if (u32(idx[o + p.o1]) != (ty - oy * p.sh) * p.kw + (tx - ox * p.sw)) {
                continue;
            }
#endif
            acc += dy[o + ody];
        }
    }
    dx[(g * p.w + ix) * p.c + c + odx] = acc;
}
#endif

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
