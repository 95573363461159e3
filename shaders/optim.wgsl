// Optimiser steps and gradient accumulation. The learning rate, the clip
// factor and the accumulation flag are one-element tensors, so a schedule,
// global-norm clipping or the micro-batch index changes them between runs
// without re-recording.
#include "common"

// VEC4: each invocation updates 4 consecutive elements. On llvmpipe every
// per-lane load or store is scalarised with its own bounds check, so a vec4
// access costs little more than a scalar one; the host uses it when all
// windows start on a 16-byte boundary and handles the <4-element tail with
// the scalar kernel. n and the shifts are in units of V.
#if VEC4
alias V = vec4<f32>;
#else
alias V = f32;
#endif

#if SGD
struct Params {
    n: u32,
    shift_param: u32,
    shift_grad: u32,
    shift_velocity: u32,
    shift_lr: u32,
    shift_clip: u32,
    nesterov: u32,
    momentum: f32,
    weight_decay: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<V>;
@group(0) @binding(2) var<storage, read> grad: array<V>;
@group(0) @binding(3) var<storage, read_write> velocity: array<V>;
@group(0) @binding(4) var<storage, read> lr: array<f32>;
@group(0) @binding(5) var<storage, read> clip: array<f32>;

// PyTorch SGD (dampening 0) on the clipped gradient; a zero velocity makes the
// first step v = g', as PyTorch's lazily created buffer does.
@compute @workgroup_size(256)
fn sgd_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.n) {
        return;
    }
    let w = param[p.shift_param + i];
    let g = clip[p.shift_clip] * grad[p.shift_grad + i] + p.weight_decay * w;
    let v = p.momentum * velocity[p.shift_velocity + i] + g;
    velocity[p.shift_velocity + i] = v;
    let step = select(v, g + p.momentum * v, p.nesterov != 0u);
    param[p.shift_param + i] = w - lr[p.shift_lr] * step;
}
#endif

#if ACCUMULATE
struct Params {
    n: u32,
    shift_sum: u32,
    shift_grad: u32,
    shift_keep: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> sum: array<V>;
@group(0) @binding(2) var<storage, read> grad: array<V>;
@group(0) @binding(3) var<storage, read> keep: array<f32>;

// The first micro-batch of a step overwrites the sum (keep = 0) instead of
// adding to it, so no separate zeroing pass is needed and a stale sum never
// leaks into the next step.
@compute @workgroup_size(256)
fn grad_accumulate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.n) {
        return;
    }
    let g = p.scale * grad[p.shift_grad + i];
    let s = sum[p.shift_sum + i];
    sum[p.shift_sum + i] = select(g, s + g, keep[p.shift_keep] != 0.0);
}
#endif
