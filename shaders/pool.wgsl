// Windowed pooling kernels on NHWC activations: max-pool (and the 1×1
// strided subsample, which is a max-pool with a one-element window) and its
// backward pass. The global poolings are in global_pool.wgsl.
//
// Every dispatch covers a chunk of rows of its thread space, and every operand
// is bound as a window of at most one storage binding. Kernels compute
// tensor-relative element indices and add the operand's offset o<binding>
// (window shift minus window start, wrapping), so one index formula serves
// every chunk. Backward passes gather (each output element sums what reaches
// it) instead of scattering, so they need no atomics and are deterministic.
//
// F16 (max_pool values only): x and y are stored in f16. A maximum picks one
// of its inputs, so it runs in f16 and is exact.
#if F16
enable f16;
#endif
#include "common"
#include "pool_params"

#if MAX_POOL
#if F16
alias Scalar = f16;
#else
alias Scalar = f32;
#endif
#if VEC4
// Four channels per invocation (c and the offsets in vec4s): a quarter of the
// lane-varying loads and index arithmetic, which llvmpipe pays per lane. Only
// values: the argmax is per channel.
alias Elem = vec4<Scalar>;
#else
alias Elem = Scalar;
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
    y[(g * p.ow + ox) * p.c + c + p.o2] = Scalar(best.k);
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
