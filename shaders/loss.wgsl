// Losses and the reductions to a scalar they share with the optimiser.
// Every loss is fused: one kernel computes the loss and the gradient of the
// loss with respect to its main input, so the backward pass is one scaling.
// Reductions are two-level: a kernel writes one partial per workgroup (or per
// row), then `sum_partials` adds the partials in a single workgroup. Workgroup
// memory is used only for the final tree of each workgroup, once per 256+
// elements.
#include "common"

const WG: u32 = 256u;

// VEC4 (elementwise kernels only): each invocation handles 4 consecutive
// elements. On llvmpipe every per-lane load or store is scalarised with its
// own bounds check, so a vec4 access costs little more than a scalar one; the
// host uses it when all windows start on 16 bytes and runs the scalar kernel
// on the <4-element tail. Element counts and shifts are in units of V.
#if VEC4
alias V = vec4<f32>;
fn sq(d: V) -> f32 {
    return dot(d, d);
}
#else
alias V = f32;
fn sq(d: V) -> f32 {
    return d * d;
}
#endif

var<workgroup> red: array<f32, 256>;

// Labels are class ids stored as f32. The host cannot see them, so a label
// outside [0, cols) is clamped to the nearest class instead of reading out of
// bounds (TF's DELG clips corrupt labels too); a NaN picks an unspecified
// class in range.
fn class_of(l: f32, cols: u32) -> u32 {
    return min(u32(max(floor(l + 0.5), 0.0)), cols - 1u);
}

// Sums red[0..256) into red[0]; every invocation must call it.
fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            red[lid] = red[lid] + red[lid + stride];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

#if SOFTMAX_XENT
// One workgroup per row of logits (plain cross-entropy) or cosines (ArcFace).
struct Params {
    rows: u32,
    cols: u32,
    row0: u32,
    batch: u32,
    shift_x: u32,
    shift_labels: u32,
    shift_grad: u32,
    shift_gamma: u32,
    arcface: u32,
    gamma: f32,
    inv_batch: f32,
    cos_m: f32,
    sin_m: f32,
    threshold: f32,
    penalty: f32,
    shift_t: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;
#if CURRICULAR
// DOLG's CurricularFace statistic t (already updated for this batch).
@group(0) @binding({{T_BINDING}}) var<storage, read> curricular_t: array<f32>;
#endif
// [row losses (batch) | row dL/dγ·B (batch)], summed by `sum_partials`.
@group(0) @binding(4) var<storage, read_write> rows: array<f32>;
#if GAMMA_INPUT
@group(0) @binding(5) var<storage, read> gamma_in: array<f32>;
#endif

var<workgroup> red_m: array<f32, 256>;

// Below the smallest non-zero sin θ of an f32 cosine (≈3.5e-4), so it only
// bounds the margin's derivative where θ = 0 exactly, where it is infinite.
const SIN_FLOOR: f32 = 1e-4;
// A finite -inf: the online softmax multiplies by exp(m_old - m_new) = 0.
const NEG_BIG: f32 = -3.0e38;

// Target cosine after the margin, and its derivative with respect to the
// cosine. Cosines are clamped to [-1, 1] first (a GEMM of unit vectors can
// overshoot by rounding), and the clamp is treated as the identity.
fn margin_target(c: f32) -> vec2<f32> {
    if (p.arcface == 0u) {
        return vec2<f32>(c, 1.0);
    }
    let cc = clamp(c, -1.0, 1.0);
    if (cc >= p.threshold) {
        // cos(θ + m) with sin θ ≥ 0 on [0, π]: no acos needed.
        let s = sqrt(max(1.0 - cc * cc, 0.0));
        return vec2<f32>(cc * p.cos_m - s * p.sin_m, p.cos_m + p.sin_m * cc / max(s, SIN_FLOOR));
    }
    return vec2<f32>(cc - p.penalty, 1.0);
}

// A non-target cosine and its derivative. With CURRICULAR, a hard negative
// (above the target's cos(θ + m), `hard`) becomes c·(t + c), as DOLG's
// official head re-weights it; otherwise it is left alone.
fn negative(c: f32, hard: f32, t: f32) -> vec2<f32> {
#if CURRICULAR
    if (c > hard) {
        return vec2<f32>(c * (t + c), t + 2.0 * c);
    }
#endif
    return vec2<f32>(c, 1.0);
}

// log(1 + q) for q ≥ 0, accurate for small q where log(1 + q) loses the low
// bits of q (and the driver's log has an absolute, not relative, error bound).
fn log1p_pos(q: f32) -> f32 {
    if (q >= 0.1) {
        return log(1.0 + q);
    }
    // Alternating series to q^9/9: relative truncation error below q^9/10 ≤ 1e-10.
    var acc = 0.0;
    for (var k = 9u; k >= 1u; k = k - 1u) {
        acc = 1.0 / f32(k) - q * acc;
    }
    return q * acc;
}


@compute @workgroup_size(256)
fn softmax_xent(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = linear_group(wid, nwg);
    // Folded grids have spare groups: they loop over no columns but still
    // take part in the barriers.
    let live = r < p.rows;
    let cols = select(0u, p.cols, live);
    let rr = min(r, p.rows - 1u);
    let base = p.shift_x + rr * p.cols;
    let gbase = p.shift_grad + rr * p.cols;
    let y = class_of(labels[p.shift_labels + rr], p.cols);
#if GAMMA_INPUT
    let gamma = gamma_in[p.shift_gamma];
#else
    let gamma = p.gamma;
#endif
    let ty = margin_target(x[base + y]);
    // cos(θ_y + m) by the same formula on both sides of π − m (the official
    // head's hard-negative threshold), and t; unused without CURRICULAR.
    let cy = clamp(x[base + y], -1.0, 1.0);
    let hard = cy * p.cos_m - sqrt(max(1.0 - cy * cy, 0.0)) * p.sin_m;
#if CURRICULAR
    let t = curricular_t[p.shift_t];
#else
    let t = 0.0;
#endif

    // Pass 1: online max and sum of exponentials over the non-target logits,
    // one exp per element. The target joins afterwards, so that the loss and
    // its gradient never subtract nearly equal numbers when it dominates.
    var m = NEG_BIG;
    var s = 0.0;
    for (var j = lid; j < cols; j = j + WG) {
        let v = select(gamma * negative(x[base + j], hard, t).x, NEG_BIG, j == y);
        if (v > m) {
            s = s * exp(m - v) + 1.0;
            m = v;
        } else if (v > NEG_BIG) {
            s = s + exp(v - m);
        }
    }
    red_m[lid] = m;
    red[lid] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            let m1 = red_m[lid];
            let m2 = red_m[lid + stride];
            let mm = max(m1, m2);
            red[lid] = red[lid] * exp(m1 - mm) + red[lid + stride] * exp(m2 - mm);
            red_m[lid] = mm;
        }
        workgroupBarrier();
    }
    let ly = gamma * ty.x;
    let mx = max(red_m[0], ly);
    let rest = red[0] * exp(red_m[0] - mx);
    let ey = exp(ly - mx);
    let inv_sum = 1.0 / (rest + ey);
    // -log p_y = log1p(rest / ey) while ey is far from underflow (then the
    // ratio is at most C·1e20); otherwise the loss is ≥ 46 and needs no care.
    var row_loss = log(rest + ey) + mx - ly;
    if (ey >= 1e-20) {
        row_loss = log1p_pos(rest / ey);
    }
    workgroupBarrier();

    // Pass 2: dL/dx = (softmax - onehot) · dlogit/dx / B, and Σ (p - onehot)·cos' for dL/dγ.
    var dg = 0.0;
    for (var j = lid; j < cols; j = j + WG) {
        let is_y = j == y;
        let neg = negative(x[base + j], hard, t);
        let c = select(neg.x, ty.x, is_y);
        // p_y - 1 = -rest / Σ, without the cancellation.
        let d = select(exp(gamma * c - mx), -rest, is_y) * inv_sum;
        grad[gbase + j] = d * gamma * select(neg.y, ty.y, is_y) * p.inv_batch;
        dg = dg + d * c;
    }
    let dgamma = reduce_sum(lid, dg);
    if (lid == 0u && live) {
        rows[p.row0 + r] = row_loss;
        rows[p.batch + p.row0 + r] = dgamma;
    }
}
#endif

#if GATHER_TARGETS
// targets[r] = clamp(x[r, y_r], -1, 1): the target cosines CurricularFace's
// statistic averages, one invocation per row of a window.
struct Params {
    rows: u32,
    cols: u32,
    row0: u32,
    shift_x: u32,
    shift_labels: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read_write> targets: array<f32>;

@compute @workgroup_size(256)
fn gather_targets(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = linear_index(wid, nwg, lid, WG);
    if (r >= p.rows) {
        return;
    }
    let y = class_of(labels[p.shift_labels + r], p.cols);
    targets[p.row0 + r] = clamp(x[p.shift_x + r * p.cols + y], -1.0, 1.0);
}
#endif

#if CURRICULAR_EMA
// t ← rate·mean(targets) + (1 − rate)·t, in one workgroup.
struct Params {
    n: u32,
    shift_in: u32,
    shift_t: u32,
    rate: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> targets: array<f32>;
@group(0) @binding(2) var<storage, read_write> t_state: array<f32>;

@compute @workgroup_size(256)
fn curricular_ema(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < p.n; i = i + WG) {
        acc = acc + targets[p.shift_in + i];
    }
    let total = reduce_sum(lid, acc);
    if (lid == 0u) {
        t_state[p.shift_t] = p.rate * total / f32(p.n) + (1.0 - p.rate) * t_state[p.shift_t];
    }
}
#endif

#if SUM
// out = alpha · Σ partials in one workgroup; with NORM, out is the L2 norm of
// the summed squares and clip = min(1, max_norm / (norm + 1e-6)), exactly
// torch.nn.utils.clip_grad_norm_'s coefficient.
struct Params {
    n: u32,
    shift_in: u32,
    shift_out: u32,
    shift_clip: u32,
    alpha: f32,
    max_norm: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
#if NORM
@group(0) @binding(3) var<storage, read_write> clip: array<f32>;
#endif

@compute @workgroup_size(256)
fn sum_partials(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < p.n; i = i + WG) {
        acc = acc + partials[p.shift_in + i];
    }
    let total = p.alpha * reduce_sum(lid, acc);
    if (lid == 0u) {
#if NORM
        let norm = sqrt(total);
        out[p.shift_out] = norm;
        clip[p.shift_clip] = min(1.0, p.max_norm / (norm + 1e-6));
#else
        out[p.shift_out] = total;
#endif
    }
}
#endif

#if SQ
// One partial Σ d² per workgroup of 256·PER_THREAD elements, d = x (DIFF off) or
// d = x - y with grad = alpha·d written on the way (the MSE gradient).
struct Params {
    n: u32,
    shift_x: u32,
    shift_y: u32,
    shift_grad: u32,
    shift_part: u32,
    alpha: f32,
    _pad0: u32,
    _pad1: u32,
}

const PER_THREAD: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<V>;
#if DIFF
@group(0) @binding(2) var<storage, read> y: array<V>;
@group(0) @binding(3) var<storage, read_write> grad: array<V>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;
#else
@group(0) @binding(2) var<storage, read_write> part: array<f32>;
#endif

@compute @workgroup_size(256)
fn sq_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = linear_group(wid, nwg);
    let start = g * WG * PER_THREAD;
    var acc = 0.0;
    for (var k = 0u; k < PER_THREAD; k = k + 1u) {
        // Consecutive invocations read consecutive elements.
        let i = start + k * WG + lid;
        if (i < p.n) {
#if DIFF
            let d = x[p.shift_x + i] - y[p.shift_y + i];
            grad[p.shift_grad + i] = p.alpha * d;
#else
            let d = x[p.shift_x + i];
#endif
            acc = acc + sq(d);
        }
    }
    let total = reduce_sum(lid, acc);
    // Spare groups of a folded grid must not overwrite the next chunk's partials.
    if (lid == 0u && start < p.n) {
        part[p.shift_part + g] = total;
    }
}
#endif

#if SCALE_BY
// out = x · s[0]: the backward of a fused loss (saved gradient × upstream gradient).
struct Params {
    n: u32,
    shift_x: u32,
    shift_s: u32,
    shift_out: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> s: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<V>;

@compute @workgroup_size(256)
fn scale_by(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, WG);
    if (i >= p.n) {
        return;
    }
    out[p.shift_out + i] = x[p.shift_x + i] * s[p.shift_s];
}
#endif
