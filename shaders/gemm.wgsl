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
// Classic block tiling for GPUs with on-chip workgroup memory: a 64×64 block
// of C per workgroup, K in steps of 16 through shared tiles, and a 4×4
// register micro-tile per invocation, strided by 16 so that neighbouring
// invocations touch neighbouring addresses in shared memory and in C. The
// tiles are double-buffered: step k+1 is staged into one buffer while step k
// is multiplied from the other, with one barrier per step.
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;

const TBM: u32 = 64u;
const TBN: u32 = 64u;
const TBK: u32 = 16u;
// One buffer of a tile: TBK × TBM (= TBK × TBN).
const TILE: u32 = 1024u;

// Two buffers each (16 KiB in all, WebGPU's guaranteed workgroup storage).
var<workgroup> tile_a: array<f32, 2048>; // [buffer][k][m]
var<workgroup> tile_b: array<f32, 2048>; // [buffer][k][n]

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

// Stages K step `k0` into buffer `buf` (0 or TILE) of both tiles: 4
// elements of each per invocation, consecutive invocations at consecutive
// addresses, zero outside A and B.
fn stage_tiles(buf: u32, row0: u32, col0: u32, k0: u32, lid: u32) {
    for (var e = lid; e < TILE; e += 256u) {
        let kk = e / TBM;
        let mn = e % TBM;
        tile_a[buf + e] = load_a(row0 + mn, k0 + kk);
        tile_b[buf + e] = load_b(k0 + kk, col0 + mn);
    }
}

@compute @workgroup_size(256)
fn gemm_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = linear_group(wid, nwg);
    let groups_n = (p.n + TBN - 1u) / TBN;
    if (g >= p.groups_m * groups_n) {
        return;
    }
    let row0 = (g % p.groups_m) * TBM;
    let col0 = (g / p.groups_m) * TBN;
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: array<array<f32, 4>, 4>;
    var cur = 0u;
    stage_tiles(cur, row0, col0, 0u, lid);
    workgroupBarrier();
    for (var k0 = 0u; k0 < p.k; k0 += TBK) {
        // Everyone finished reading the other buffer before the last barrier.
        if (k0 + TBK < p.k) {
            stage_tiles(TILE - cur, row0, col0, k0 + TBK, lid);
        }
        for (var kk = 0u; kk < TBK; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = tile_a[cur + kk * TBM + ty + 16u * i];
                bv[i] = tile_b[cur + kk * TBN + tx + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] += av[i] * bv[j];
                }
            }
        }
        workgroupBarrier();
        cur = TILE - cur;
    }
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + ty + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + tx + 16u * j;
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
