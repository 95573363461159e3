// GEMM family: C = op(A)·op(B) (+ bias), the operand packing for the
// subgroup-broadcast kernel, column sums and their broadcast.
//
// Every dispatch works on one chunk of the product whose operands each fit one
// storage binding (and, for the subgroup kernel, one texture); the Rust side
// splits rows, columns and the reduction dimension into such chunks and asks
// later K-chunks to accumulate into C.
#if SGB
// naga 30 rejects the directive itself ("not yet implemented") but accepts the
// subgroup builtins; this comment is what ShaderSpec::required_features looks
// for to demand the SUBGROUP feature: enable subgroups;
#endif
#include "common"

#if GEMM
struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    shift_a: u32,
    shift_b: u32,
    shift_c: u32,
    shift_bias: u32,
    trans_a: u32,
    trans_b: u32,
    accumulate: u32,
    groups_m: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif

// Later K-chunks add to what the first one wrote; the bias is added once.
fn store_c(row: u32, col: u32, v: f32) {
    let i = p.shift_c + row * p.ldc + col;
    var r = v;
    if (p.accumulate != 0u) {
        r += c[i];
    }
#if BIAS
    else {
        r += bias[p.shift_bias + col];
    }
#endif
    c[i] = r;
}
#endif

#if TILED
// Classic block tiling for GPUs with on-chip workgroup memory, in the shape
// of a TiledConfig (src/gpu/tuning.rs): a TBM×TBN block of C per workgroup, K
// in steps of TBK through shared tiles, and an MM×MN register block per
// invocation, strided by GM (GN) so that neighbouring invocations touch
// neighbouring addresses in shared memory and in C. The tiles are
// double-buffered: step k+1 is staged into one buffer while step k is
// multiplied from the other, with one barrier per step.
// VEC4 (the host's choice where both operands' contiguous axes, leading
// dimensions and window shifts are whole vec4s) stages them with 16-byte
// loads; the scalar form handles every layout.
#if VEC4
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
#else
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
#endif

const TBM: u32 = {{TILE_M}}u;
const TBN: u32 = {{TILE_N}}u;
const TBK: u32 = {{TILE_K}}u;
const MM: u32 = {{MICRO_M}}u;
const MN: u32 = {{MICRO_N}}u;
const WG: u32 = {{WORKGROUP}}u;
// Invocations down M and across N.
const GM: u32 = TBM / MM;
const GN: u32 = TBN / MN;
// One buffer of each tile: TBK × TBM and TBK × TBN.
const TILE_A: u32 = TBK * TBM;
const TILE_B: u32 = TBK * TBN;
const TILES_A: u32 = 2u * TILE_A;
const TILES_B: u32 = 2u * TILE_B;

var<workgroup> tile_a: array<f32, TILES_A>; // [buffer][k][m]
var<workgroup> tile_b: array<f32, TILES_B>; // [buffer][k][n]

#if VEC4
// Quad q of A's contiguous axis (K, or M when transposed) starting at
// element `first` of the window, zero when the quad starts outside A (the
// host keeps that axis a whole number of quads, so none straddles the edge).
fn quad_a(inside: bool, first: u32) -> vec4<f32> {
    if (!inside) {
        return vec4<f32>(0.0);
    }
    return a[(p.shift_a + first) / 4u];
}

fn quad_b(inside: bool, first: u32) -> vec4<f32> {
    if (!inside) {
        return vec4<f32>(0.0);
    }
    return b[(p.shift_b + first) / 4u];
}

// Stages K step `k0` into buffers `buf_a`, `buf_b`: one quad per
// invocation and pass, consecutive invocations at consecutive addresses
// along the operand's contiguous axis, scattered into the [k][m] / [k][n]
// tiles (a transposed A and a plain B are stored k-major already).
fn stage_tiles(buf_a: u32, buf_b: u32, row0: u32, col0: u32, k0: u32, lid: u32) {
    for (var v = lid; v < TILE_A / 4u; v += WG) {
        if (p.trans_a != 0u) {
            let kk = v / (TBM / 4u);
            let mm = (v % (TBM / 4u)) * 4u;
            let q = quad_a(row0 + mm < p.m && k0 + kk < p.k, (k0 + kk) * p.lda + row0 + mm);
            for (var e = 0u; e < 4u; e++) {
                tile_a[buf_a + kk * TBM + mm + e] = q[e];
            }
        } else {
            let kk = (v % (TBK / 4u)) * 4u;
            let mm = v / (TBK / 4u);
            let q = quad_a(row0 + mm < p.m && k0 + kk < p.k, (row0 + mm) * p.lda + k0 + kk);
            for (var e = 0u; e < 4u; e++) {
                tile_a[buf_a + (kk + e) * TBM + mm] = q[e];
            }
        }
    }
    for (var v = lid; v < TILE_B / 4u; v += WG) {
        if (p.trans_b != 0u) {
            let kk = (v % (TBK / 4u)) * 4u;
            let nn = v / (TBK / 4u);
            let q = quad_b(col0 + nn < p.n && k0 + kk < p.k, (col0 + nn) * p.ldb + k0 + kk);
            for (var e = 0u; e < 4u; e++) {
                tile_b[buf_b + (kk + e) * TBN + nn] = q[e];
            }
        } else {
            let kk = v / (TBN / 4u);
            let nn = (v % (TBN / 4u)) * 4u;
            let q = quad_b(col0 + nn < p.n && k0 + kk < p.k, (k0 + kk) * p.ldb + col0 + nn);
            for (var e = 0u; e < 4u; e++) {
                tile_b[buf_b + kk * TBN + nn + e] = q[e];
            }
        }
    }
}
#else
fn load_a(row: u32, kk: u32) -> f32 {
    if (row >= p.m || kk >= p.k) {
        return 0.0;
    }
    if (p.trans_a != 0u) {
        return a[p.shift_a + kk * p.lda + row];
    }
    return a[p.shift_a + row * p.lda + kk];
}

fn load_b(kk: u32, col: u32) -> f32 {
    if (kk >= p.k || col >= p.n) {
        return 0.0;
    }
    if (p.trans_b != 0u) {
        return b[p.shift_b + col * p.ldb + kk];
    }
    return b[p.shift_b + kk * p.ldb + col];
}

// Stages K step `k0` into buffers `buf_a`, `buf_b` of the tiles, one element
// per invocation and pass, consecutive invocations at consecutive addresses,
// zero outside A and B.
fn stage_tiles(buf_a: u32, buf_b: u32, row0: u32, col0: u32, k0: u32, lid: u32) {
    for (var e = lid; e < TILE_A; e += WG) {
        tile_a[buf_a + e] = load_a(row0 + e % TBM, k0 + e / TBM);
    }
    for (var e = lid; e < TILE_B; e += WG) {
        tile_b[buf_b + e] = load_b(k0 + e / TBN, col0 + e % TBN);
    }
}
#endif

@compute @workgroup_size(WG)
fn gemm_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = linear_group(wid, nwg);
    let groups_n = (p.n + TBN - 1u) / TBN;
    if (g >= p.groups_m * groups_n) {
        return;
    }
    let row0 = (g % p.groups_m) * TBM;
    let col0 = (g / p.groups_m) * TBN;
    let tx = lid % GN;
    let ty = lid / GN;
    var acc: array<array<f32, MN>, MM>;
    // Which buffer (0 or 1) holds the step being multiplied.
    var cur = 0u;
    stage_tiles(0u, 0u, row0, col0, 0u, lid);
    workgroupBarrier();
    for (var k0 = 0u; k0 < p.k; k0 += TBK) {
        // Everyone finished reading the other buffer before the last barrier.
        if (k0 + TBK < p.k) {
            stage_tiles((1u - cur) * TILE_A, (1u - cur) * TILE_B, row0, col0, k0 + TBK, lid);
        }
        let base_a = cur * TILE_A;
        let base_b = cur * TILE_B;
        for (var kk = 0u; kk < TBK; kk++) {
            var av: array<f32, MM>;
            var bv: array<f32, MN>;
            for (var i = 0u; i < MM; i++) {
                av[i] = tile_a[base_a + kk * TBM + ty + GM * i];
            }
            for (var j = 0u; j < MN; j++) {
                bv[j] = tile_b[base_b + kk * TBN + tx + GN * j];
            }
            for (var i = 0u; i < MM; i++) {
                for (var j = 0u; j < MN; j++) {
                    acc[i][j] += av[i] * bv[j];
                }
            }
        }
        workgroupBarrier();
        cur = 1u - cur;
    }
    for (var i = 0u; i < MM; i++) {
        let row = row0 + ty + GM * i;
        for (var j = 0u; j < MN; j++) {
            let col = col0 + tx + GN * j;
            if (row < p.m && col < p.n) {
                store_c(row, col, acc[i][j]);
            }
        }
    }
}
#endif

#if SGB
// Subgroup-broadcast kernel for llvmpipe (shared/spec/lavapipe.md): a subgroup
// is one SIMD register of LANES lanes (8 at 256 bits, 16 at 512) and every
// lane-varying load is scalarised, so the lanes own different rows (4 each,
// strided by LANES) and share one LANES×32 slab of B per K-step: each lane
// loads one row of the slab and subgroupBroadcast with a constant lane hands
// it to all lanes as a register shuffle. Operands come packed and zero-padded
// in read-only storage textures (inlined, branch-free loads on llvmpipe), so
// the loop has no bounds checks: A is [rows][K/4 texels], B is [K][cols/4
// texels], K padded to LANES. A lane's tile is 4 rows × 32 columns: 32 columns
// rather than 16 halve the A loads per multiply-add and made the kernel ~1.3×
// faster on lavapipe, although the 128 accumulators far exceed the 32 vector
// registers (see the loop for why that is affordable).
@group(0) @binding(1) var tex_a: texture_storage_2d<rgba32float, read>;
@group(0) @binding(2) var tex_b: texture_storage_2d<rgba32float, read>;

const LANES: u32 = {{LANES}}u;
const SG_M: u32 = {{SG_M}}u;
const SG_N: u32 = {{SG_N}}u;
// Rows of C per subgroup: 4 per lane.
const SG_ROWS: u32 = 4u * LANES;
const BM: u32 = SG_M * SG_ROWS;
const BN: u32 = SG_N * 32u;

// 16 columns of one row of the lane's tile, as 4 quads.
fn store_quads(row: u32, col0: u32, q0: vec4<f32>, q1: vec4<f32>, q2: vec4<f32>, q3: vec4<f32>) {
    if (row >= p.m) {
        return;
    }
    let qs = array<vec4<f32>, 4>(q0, q1, q2, q3);
    for (var e = 0u; e < 16u; e++) {
        let col = col0 + e;
        if (col < p.n) {
            store_c(row, col, qs[e / 4u][e % 4u]);
        }
    }
}

@compute @workgroup_size(256)
fn gemm_sgb(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let g = linear_group(wid, nwg);
    let groups_n = (p.n + BN - 1u) / BN;
    if (g >= p.groups_m * groups_n) {
        return;
    }
    let row0 = (g % p.groups_m) * BM + (sg % SG_M) * SG_ROWS + lane;
    let col0 = (g / p.groups_m) * BN + (sg / SG_M) * 32u;
    let nq = col0 / 4u;
    let kq_end = (p.k + LANES - 1u) / LANES * (LANES / 4u);
    // The tile as named registers: cR_Q holds row R, columns 4Q..4Q+3.
    // Everything below is unrolled (#for) because the broadcast lane must
    // be a constant and llvmpipe keeps indexed arrays in memory.
#for R in 0..4
    var c{{R}}_0 = vec4<f32>(0.0); var c{{R}}_1 = vec4<f32>(0.0); var c{{R}}_2 = vec4<f32>(0.0); var c{{R}}_3 = vec4<f32>(0.0); var c{{R}}_4 = vec4<f32>(0.0); var c{{R}}_5 = vec4<f32>(0.0); var c{{R}}_6 = vec4<f32>(0.0); var c{{R}}_7 = vec4<f32>(0.0);
#endfor
    for (var kq = 0u; kq < kq_end; kq += LANES / 4u) {
        // aT_R: texel T (k = 4T..4T+3 of the step) of the lane's row R.
#for T in 0..{{TEXELS}}
#for R in 0..4
        let a{{T}}_{{R}} = textureLoad(tex_a, vec2<u32>(kq + {{T}}u, row0 + {{R}}u * LANES));
#endfor
#endfor
        let brow = kq * 4u + lane;
#for Q in 0..8
        let b{{Q}} = textureLoad(tex_b, vec2<u32>(nq + {{Q}}u, brow));
#endfor
        // k = LANES·step + 4T + E: lane 4T+E holds row k of the B slab; the
        // lane's A values for it are component E of aT_0..aT_3.
        // One column quad at a time, so only its 4 accumulators are live and
        // each spilled accumulator is reloaded once per LANES k, not once per k.
#for Q in 0..8
#for T in 0..{{TEXELS}}
#for E in 0..4
        let s{{Q}}_{{T}}_{{E}} = subgroupBroadcast(b{{Q}}, {{T}}u * 4u + {{E}}u); c0_{{Q}} += a{{T}}_0[{{E}}] * s{{Q}}_{{T}}_{{E}}; c1_{{Q}} += a{{T}}_1[{{E}}] * s{{Q}}_{{T}}_{{E}}; c2_{{Q}} += a{{T}}_2[{{E}}] * s{{Q}}_{{T}}_{{E}}; c3_{{Q}} += a{{T}}_3[{{E}}] * s{{Q}}_{{T}}_{{E}};
#endfor
#endfor
#endfor
    }
#for R in 0..4
    store_quads(row0 + {{R}}u * LANES, col0 + 0u, c{{R}}_0, c{{R}}_1, c{{R}}_2, c{{R}}_3);
    store_quads(row0 + {{R}}u * LANES, col0 + 16u, c{{R}}_4, c{{R}}_5, c{{R}}_6, c{{R}}_7);
#endfor
}
#endif

#if PACK
// Copies a rows×cols block of a row-major (or, with trans, column-major)
// matrix into a texture of 4-float texels, zero-filling the padding the
// subgroup kernel reads past the edges. Arbitrary strides and offsets are
// why this is a kernel and not a buffer-to-texture copy (those need 256-byte
// rows and 16-byte offsets).
struct Params {
    rows: u32,
    cols: u32,
    ld: u32,
    shift: u32,
    trans: u32,
    width: u32,
    height: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var dst: texture_storage_2d<rgba32float, write>;

@compute @workgroup_size(256)
fn pack(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.width * p.height) {
        return;
    }
    let x = i % p.width;
    let y = i / p.width;
    var v = vec4<f32>(0.0);
    if (y < p.rows) {
        for (var e = 0u; e < 4u; e++) {
            let col = 4u * x + e;
            if (col < p.cols) {
                if (p.trans != 0u) {
                    v[e] = src[p.shift + col * p.ld + y];
                } else {
                    v[e] = src[p.shift + y * p.ld + col];
                }
            }
        }
    }
    textureStore(dst, vec2<u32>(x, y), v);
}
#endif

#if COLUMN_SUM
// Sums of blocks of `block` rows: out[out_row0 + b][n] = Σ x[r][n] over the
// rows of block b. Applied repeatedly to its own output until one row is
// left, which is a pairwise-like tree that keeps f32 error low and gives
// every column many invocations even when there are few columns.
struct Params {
    rows: u32,
    cols: u32,
    block: u32,
    shift_x: u32,
    shift_out: u32,
    out_row0: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn column_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    let blocks = (p.rows + p.block - 1u) / p.block;
    if (i >= blocks * p.cols) {
        return;
    }
    let n = i % p.cols;
    let b = i / p.cols;
    let r1 = min(p.rows, (b + 1u) * p.block);
    var s = 0.0;
    for (var r = b * p.block; r < r1; r++) {
        s += x[p.shift_x + r * p.cols + n];
    }
    out[p.shift_out + (p.out_row0 + b) * p.cols + n] = s;
}
#endif

#if BROADCAST
// out[r][n] = x[n] over a chunk of whole rows.
struct Params {
    count: u32,
    cols: u32,
    shift_x: u32,
    shift_out: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn broadcast_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.count) {
        return;
    }
    out[p.shift_out + i] = x[p.shift_x + i % p.cols];
}
#endif

#if ROW_DOT
// out[r] = Σ_k matrix[r][k]·vector[k] (+ bias[r·bias_step]), one invocation
// per row: matrix-vector products (M = 1 or N = 1), which the tiled kernels
// would compute as whole tiles of mostly padding. K is bounded by the host
// (llvmpipe's loop cap).
struct Params {
    rows: u32,
    k: u32,
    shift_matrix: u32,
    shift_vector: u32,
    shift_out: u32,
    shift_bias: u32,
    bias_step: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> row_data: array<f32>;
@group(0) @binding(2) var<storage, read> vec_data: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#if ROW_BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif

@compute @workgroup_size(64)
fn row_dot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = linear_index(wid, nwg, lid, 64u);
    if (r >= p.rows) {
        return;
    }
    let base = p.shift_matrix + r * p.k;
    var s = 0.0;
    for (var i = 0u; i < p.k; i++) {
        s += row_data[base + i] * vec_data[p.shift_vector + i];
    }
#if ROW_BIAS
    s += bias[p.shift_bias + r * p.bias_step];
#endif
    out[p.shift_out + r] = s;
}
#endif
