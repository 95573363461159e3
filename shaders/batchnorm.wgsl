// Per-channel kernels for batch normalisation and channel affines. A tensor
// [..., C] is viewed as rows × C (NHWC: rows = N·H·W, channels innermost).
//
// Column reductions take two stages so that any number of rows stays accurate
// and inside the binding limits: `col_partial` reduces blocks of at most
// row_block rows per channel into a partials buffer (one window of rows per
// dispatch), then a `finalize_*` kernel combines a channel's few hundred
// partials and derives what the op needs. Short sequential f32 sums plus a sum
// of partials keep the error near sqrt(rows)·ε instead of rows·ε; batch
// moments use Welford per block and Chan's merge across blocks, one pass over
// x that stays accurate when |mean| ≫ std.
//
// Binding numbers depend on the specialisation, so they arrive as B_NAME
// defines; the element shift of binding k (see Window) is sh(k).
//
// With VEC4 the row-walking kernels (col_partial, apply) see four channels
// as one vec4: p.c counts vec4s and the shifts are in vec4s. Each channel
// is summed in the same order either way, so the results are identical;
// on lavapipe every lane-varying load is scalarised, and four values per
// load is what makes these memory-bound passes fast.
#include "common"

#if VEC4
alias T = vec4<f32>;
#else
alias T = f32;
#endif

struct Params {
    // Rows: in this window (col_partial, apply) or in all (finalize_moments).
    n: u32,
    c: u32,
    row_block: u32,
    // First block of this window (col_partial).
    g0: u32,
    // Workgroups across the channels (col_partial, apply).
    ntiles: u32,
    // Blocks in total: the partials planes hold nblocks × c values.
    nblocks: u32,
    alpha: f32,
    beta: f32,
    shifts: array<vec4<u32>, 3>,
}

@group(0) @binding(0) var<uniform> p: Params;

// Where a lane of the row kernels (col_partial, apply) works: the lanes of
// a tile cover min(c, 64) channels (vec4s with VEC4); when c < 64, `sets`
// sets of lanes share the workgroup and this lane is in set `set_index`. `ok` is
// false for lanes past the channels or the last whole set.
struct RowLane {
    c: u32,
    set_index: u32,
    sets: u32,
    ok: bool,
}

fn row_lane(g: u32, lid: u32) -> RowLane {
    let tw = min(p.c, 64u);
    let sets = 64u / tw;
    let set_index = lid / tw;
    let c = (g % p.ntiles) * 64u + lid % tw;
    return RowLane(c, set_index, sets, c < p.c && set_index < sets);
}

fn sh(binding: u32) -> u32 {
    let k = binding - 1u;
    return p.shifts[k / 4u][k % 4u];
}

#if COL_PARTIAL
@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read_write> part: array<T>;
#if CENTER
@group(0) @binding({{B_M}}) var<storage, read> m: array<T>;
#endif
#if DOT
@group(0) @binding({{B_B}}) var<storage, read> b: array<T>;
#endif
#if MASK
@group(0) @binding({{B_MASK}}) var<storage, read> mask: array<T>;
#endif

// MOMENTS: s1 = the block's mean of a, s2 = Σ(a − that mean)² (Welford)
// DOT:     s1 = Σa, s2 = Σa·(b−m)  (m = 0 without CENTER)
// else:    s1 = Σa
// MASK reads a as a·[mask > 0]: a ReLU's gradient, mask its output.
// Lanes as row_lane lays them out; the sets of lanes of a workgroup take
// consecutive blocks, so every lane has work when c < 64.
@compute @workgroup_size(64)
fn col_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = linear_group(wid, nwg);
    let blocks = (p.n + p.row_block - 1u) / p.row_block;
    let lane = row_lane(g, lid);
    let blk = (g / p.ntiles) * lane.sets + lane.set_index;
    if (!lane.ok || blk >= blocks) {
        return;
    }
    let c = lane.c;
    let r0 = blk * p.row_block;
    let r1 = min(r0 + p.row_block, p.n);
#if CENTER
    let mc = m[sh({{B_M}}) + c];
#else
    let mc = T(0.0);
#endif
    var s1 = T(0.0);
    var s2 = T(0.0);
#if MOMENTS
    // Welford on values shifted by the block's first one: with |mean| ≫ std the
    // running mean's f32 roundings would otherwise be relative to |mean|.
    var k = 0.0;
    let origin = a[sh(1u) + r0 * p.c + c];
#endif
    for (var r = r0; r < r1; r++) {
        let i = r * p.c + c;
#if MASK
        let av = select(T(0.0), a[sh(1u) + i], mask[sh({{B_MASK}}) + i] > T(0.0));
#else
        let av = a[sh(1u) + i];
#endif
#if MOMENTS
        k += 1.0;
        let xs = av - origin;
        let d = xs - s1;
        s1 += d / k;
        s2 += d * (xs - s1);
#else
        s1 += av;
#if DOT
        s2 += av * (b[sh({{B_B}}) + i] - mc);
#endif
#endif
    }
#if MOMENTS
    s1 += origin;
#endif
    let o = (p.g0 + blk) * p.c + c;
    part[o] = s1;
#if SECOND
    part[p.nblocks * p.c + o] = s2;
#endif
}
#endif

#if FINALIZE
@group(0) @binding(1) var<storage, read> part: array<f32>;

// Sum of the partials of plane k for channel c.
fn total(k: u32, c: u32) -> f32 {
    var s = 0.0;
    let base = k * p.nblocks * p.c + c;
    for (var g = 0u; g < p.nblocks; g++) {
        s += part[base + g * p.c];
    }
    return s;
}
#endif

#if FIN_SUMS
@group(0) @binding(2) var<storage, read_write> out1: array<f32>;
#if SECOND
@group(0) @binding(3) var<storage, read_write> out2: array<f32>;
#endif

// out1 = S1 (and out2 = S2): channel sums, affine parameter gradients.
@compute @workgroup_size(64)
fn finalize_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = linear_index(wid, nwg, lid, 64u);
    if (c >= p.c) {
        return;
    }
    out1[sh(2u) + c] = total(0u, c);
#if SECOND
    out2[sh(3u) + c] = total(1u, c);
#endif
}
#endif

#if FIN_MOMENTS
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> var_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> scale: array<f32>;

// Chan's merge of the blocks' (count, mean, M2), in block order, over
// p.n rows: the batch mean, the biased variance M2/N and the normalising
// scale γ/√(var+ε) (ε in beta). Means are merged relative to the first
// block's, for the same reason as the shift in col_partial.
@compute @workgroup_size(64)
fn finalize_moments(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = linear_index(wid, nwg, lid, 64u);
    if (c >= p.c) {
        return;
    }
    let origin = part[c];
    var n = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var g = 0u; g < p.nblocks; g++) {
        let nb = f32(min(p.row_block, p.n - g * p.row_block));
        let o = g * p.c + c;
        let d = (part[o] - origin) - mean;
        let nn = n + nb;
        mean += d * (nb / nn);
        m2 += part[p.nblocks * p.c + o] + d * d * (n * nb / nn);
        n = nn;
    }
    let v = m2 / n;
    mean_out[sh(3u) + c] = origin + mean;
    var_out[sh(4u) + c] = v;
    scale[sh(5u) + c] = gamma[sh(2u) + c] / sqrt(v + p.beta);
}
#endif

#if FIN_BN_BACKWARD
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> var_in: array<f32>;
@group(0) @binding(4) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(5) var<storage, read_write> dbeta: array<f32>;
// Three planes of c: coefficient of dy, of (x−μ), and the constant term of dx.
@group(0) @binding(6) var<storage, read_write> coef: array<f32>;
#if STAT_GRADS
@group(0) @binding(7) var<storage, read> dmean: array<f32>;
@group(0) @binding(8) var<storage, read> dvar: array<f32>;
#endif

// From S1 = Σdy, S2 = Σdy·(x−μ), with α = 1/N and σ⁻¹ = 1/√(var+ε):
//   dx = γσ⁻¹·dy + k·(x−μ) + d,  k = −γσ⁻³·S2/N (+ 2·dvar/N),  d = −γσ⁻¹·S1/N (+ dmean/N)
//   dγ = σ⁻¹·S2, dβ = S1.
@compute @workgroup_size(64)
fn finalize_bn_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = linear_index(wid, nwg, lid, 64u);
    if (c >= p.c) {
        return;
    }
    let s1 = total(0u, c);
    let s2 = total(1u, c);
    let inv = 1.0 / sqrt(var_in[sh(3u) + c] + p.beta);
    let gi = gamma[sh(2u) + c] * inv;
    var k = -gi * inv * inv * s2 * p.alpha;
    var d = -gi * s1 * p.alpha;
#if STAT_GRADS
    k += 2.0 * dvar[sh(8u) + c] * p.alpha;
    d += dmean[sh(7u) + c] * p.alpha;
#endif
    dgamma[sh(4u) + c] = inv * s2;
    dbeta[sh(5u) + c] = s1;
    coef[sh(6u) + c] = gi;
    coef[sh(6u) + p.c + c] = k;
    coef[sh(6u) + 2u * p.c + c] = d;
}
#endif

#if RUNNING
@group(0) @binding(1) var<storage, read_write> run_mean: array<f32>;
@group(0) @binding(2) var<storage, read_write> run_var: array<f32>;
@group(0) @binding(3) var<storage, read> batch_mean: array<f32>;
@group(0) @binding(4) var<storage, read> batch_var: array<f32>;

// new = (1−α)·running + α·batch, the variance scaled by β (n/(n−1) or 1).
@compute @workgroup_size(64)
fn running_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = linear_index(wid, nwg, lid, 64u);
    if (c >= p.c) {
        return;
    }
    let keep = 1.0 - p.alpha;
    run_mean[sh(1u) + c] = keep * run_mean[sh(1u) + c] + p.alpha * batch_mean[sh(3u) + c];
    run_var[sh(2u) + c] = keep * run_var[sh(2u) + c] + p.alpha * p.beta * batch_var[sh(4u) + c];
}
#endif

#if APPLY
@group(0) @binding(1) var<storage, read> u: array<T>;
@group(0) @binding({{B_OUT}}) var<storage, read_write> out: array<T>;
#if CENTER
@group(0) @binding({{B_M}}) var<storage, read> m: array<T>;
#endif
#if SCALE
@group(0) @binding({{B_SU}}) var<storage, read> su: array<T>;
#endif
#if V
@group(0) @binding({{B_V}}) var<storage, read> v: array<T>;
@group(0) @binding({{B_SV}}) var<storage, read> sv: array<T>;
#endif
#if SHIFT
@group(0) @binding({{B_T}}) var<storage, read> t: array<T>;
#endif
#if MASK
@group(0) @binding({{B_MASK}}) var<storage, read> mask: array<T>;
#endif
#if RESIDUAL
@group(0) @binding({{B_R}}) var<storage, read> res: array<T>;
#endif

// out = act((u − m[c])·su[c] + v·sv[c] + t[c] + r), each term present per
// its define, over one window of whole rows. MASK reads v as v·[mask > 0]
// (a ReLU's gradient), RELU makes act max(0, ·) (else the identity). Laid out like col_partial so that a lane
// loads its channel's operands once and then touches one element per row
// (no per-element channel division): lanes as row_lane lays them out, and
// when c < 64 the sets of lanes take interleaved rows.
@compute @workgroup_size(64)
fn apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = linear_group(wid, nwg);
    let blocks = (p.n + p.row_block - 1u) / p.row_block;
    let lane = row_lane(g, lid);
    if (g >= p.ntiles * blocks || !lane.ok) {
        return;
    }
    let c = lane.c;
#if CENTER
    let mc = m[sh({{B_M}}) + c];
#endif
#if SCALE
    let suc = su[sh({{B_SU}}) + c];
#endif
#if V
    let svc = sv[sh({{B_SV}}) + c];
#endif
#if SHIFT
    let tc = t[sh({{B_T}}) + c];
#endif
    let blk = g / p.ntiles;
    let r1 = min((blk + 1u) * p.row_block, p.n);
    for (var r = blk * p.row_block + lane.set_index; r < r1; r += lane.sets) {
        let i = r * p.c + c;
        var y = u[sh(1u) + i];
#if CENTER
        y -= mc;
#endif
#if SCALE
        y *= suc;
#endif
#if V
#if MASK
        y += select(T(0.0), v[sh({{B_V}}) + i], mask[sh({{B_MASK}}) + i] > T(0.0)) * svc;
#else
        y += v[sh({{B_V}}) + i] * svc;
#endif
#endif
#if SHIFT
        y += tc;
#endif
#if RESIDUAL
        y += res[sh({{B_R}}) + i];
#endif
#if RELU
        y = max(y, T(0.0));
#endif
        out[sh({{B_OUT}}) + i] = y;
    }
}
#endif
