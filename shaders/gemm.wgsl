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
// invocations touch neighbouring addresses in shared memory and in C.
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;

const TBM: u32 = 64u;
const TBN: u32 = 64u;
const TBK: u32 = 16u;

var<workgroup> tile_a: array<f32, 1024>; // [k][m], TBK × TBM
var<workgroup> tile_b: array<f32, 1024>; // [k][n], TBK × TBN

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
    for (var k0 = 0u; k0 < p.k; k0 += TBK) {
        for (var e = lid; e < TBK * TBM; e += 256u) {
            let kk = e / TBM;
            let mn = e % TBM;
            tile_a[e] = load_a(row0 + mn, k0 + kk);
            tile_b[e] = load_b(k0 + kk, col0 + mn);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TBK; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = tile_a[kk * TBM + ty + 16u * i];
                bv[i] = tile_b[kk * TBN + tx + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] += av[i] * bv[j];
                }
            }
        }
        workgroupBarrier();
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
// is one 8-wide SIMD register and every lane-varying load is scalarised, so
// the 8 lanes own different rows (4 each, strided by 8) and share one 8×32
// slab of B per K-step: each lane loads one row of the slab and
// subgroupBroadcast with a constant lane hands it to all lanes as a register
// shuffle. Operands come packed and zero-padded in read-only storage
// textures (inlined, branch-free loads on llvmpipe), so the loop has no bounds
// checks: A is [rows][K/4 texels], B is [K][cols/4 texels]. A lane's tile is
// 4 rows × 32 columns: 32 columns rather than 16 halve the A loads per
// multiply-add and made the kernel ~1.3× faster on lavapipe, although the 128
// accumulators far exceed the 32 vector registers (see the loop for why that
// is affordable).
@group(0) @binding(1) var tex_a: texture_storage_2d<rgba32float, read>;
@group(0) @binding(2) var tex_b: texture_storage_2d<rgba32float, read>;

const SG_M: u32 = {{SG_M}}u;
const SG_N: u32 = {{SG_N}}u;
const BM: u32 = SG_M * 32u;
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
    let row0 = (g % p.groups_m) * BM + (sg % SG_M) * 32u + lane;
    let col0 = (g / p.groups_m) * BN + (sg / SG_M) * 32u;
    let nq = col0 / 4u;
    let kq_end = (p.k + 7u) / 8u * 2u;
    // The tile as named registers: cr_q holds row r, columns 4q..4q+3.
    // Everything below is unrolled by hand because the broadcast lane must
    // be a constant and llvmpipe keeps indexed arrays in memory.
    var c0_0 = vec4<f32>(0.0); var c0_1 = vec4<f32>(0.0); var c0_2 = vec4<f32>(0.0); var c0_3 = vec4<f32>(0.0); var c0_4 = vec4<f32>(0.0); var c0_5 = vec4<f32>(0.0); var c0_6 = vec4<f32>(0.0); var c0_7 = vec4<f32>(0.0);
    var c1_0 = vec4<f32>(0.0); var c1_1 = vec4<f32>(0.0); var c1_2 = vec4<f32>(0.0); var c1_3 = vec4<f32>(0.0); var c1_4 = vec4<f32>(0.0); var c1_5 = vec4<f32>(0.0); var c1_6 = vec4<f32>(0.0); var c1_7 = vec4<f32>(0.0);
    var c2_0 = vec4<f32>(0.0); var c2_1 = vec4<f32>(0.0); var c2_2 = vec4<f32>(0.0); var c2_3 = vec4<f32>(0.0); var c2_4 = vec4<f32>(0.0); var c2_5 = vec4<f32>(0.0); var c2_6 = vec4<f32>(0.0); var c2_7 = vec4<f32>(0.0);
    var c3_0 = vec4<f32>(0.0); var c3_1 = vec4<f32>(0.0); var c3_2 = vec4<f32>(0.0); var c3_3 = vec4<f32>(0.0); var c3_4 = vec4<f32>(0.0); var c3_5 = vec4<f32>(0.0); var c3_6 = vec4<f32>(0.0); var c3_7 = vec4<f32>(0.0);
    for (var kq = 0u; kq < kq_end; kq += 2u) {
        let a00 = textureLoad(tex_a, vec2<u32>(kq + 0u, row0 + 0u));
        let a01 = textureLoad(tex_a, vec2<u32>(kq + 0u, row0 + 8u));
        let a02 = textureLoad(tex_a, vec2<u32>(kq + 0u, row0 + 16u));
        let a03 = textureLoad(tex_a, vec2<u32>(kq + 0u, row0 + 24u));
        let a10 = textureLoad(tex_a, vec2<u32>(kq + 1u, row0 + 0u));
        let a11 = textureLoad(tex_a, vec2<u32>(kq + 1u, row0 + 8u));
        let a12 = textureLoad(tex_a, vec2<u32>(kq + 1u, row0 + 16u));
        let a13 = textureLoad(tex_a, vec2<u32>(kq + 1u, row0 + 24u));
        let brow = kq * 4u + lane;
        let b0 = textureLoad(tex_b, vec2<u32>(nq + 0u, brow));
        let b1 = textureLoad(tex_b, vec2<u32>(nq + 1u, brow));
        let b2 = textureLoad(tex_b, vec2<u32>(nq + 2u, brow));
        let b3 = textureLoad(tex_b, vec2<u32>(nq + 3u, brow));
        let b4 = textureLoad(tex_b, vec2<u32>(nq + 4u, brow));
        let b5 = textureLoad(tex_b, vec2<u32>(nq + 5u, brow));
        let b6 = textureLoad(tex_b, vec2<u32>(nq + 6u, brow));
        let b7 = textureLoad(tex_b, vec2<u32>(nq + 7u, brow));
        // k = 8·(kq/2) + j: lane j holds row k of the B slab; the lane's A
        // values for it are component j of a00..a03 (j < 4) or of a10..a13.
        // One column quad at a time, so only its 4 accumulators are live and
        // each spilled accumulator is reloaded once per 8 k, not once per k.
        let s0_0 = subgroupBroadcast(b0, 0u); c0_0 += a00.x * s0_0; c1_0 += a01.x * s0_0; c2_0 += a02.x * s0_0; c3_0 += a03.x * s0_0;
        let s0_1 = subgroupBroadcast(b0, 1u); c0_0 += a00.y * s0_1; c1_0 += a01.y * s0_1; c2_0 += a02.y * s0_1; c3_0 += a03.y * s0_1;
        let s0_2 = subgroupBroadcast(b0, 2u); c0_0 += a00.z * s0_2; c1_0 += a01.z * s0_2; c2_0 += a02.z * s0_2; c3_0 += a03.z * s0_2;
        let s0_3 = subgroupBroadcast(b0, 3u); c0_0 += a00.w * s0_3; c1_0 += a01.w * s0_3; c2_0 += a02.w * s0_3; c3_0 += a03.w * s0_3;
        let s0_4 = subgroupBroadcast(b0, 4u); c0_0 += a10.x * s0_4; c1_0 += a11.x * s0_4; c2_0 += a12.x * s0_4; c3_0 += a13.x * s0_4;
        let s0_5 = subgroupBroadcast(b0, 5u); c0_0 += a10.y * s0_5; c1_0 += a11.y * s0_5; c2_0 += a12.y * s0_5; c3_0 += a13.y * s0_5;
        let s0_6 = subgroupBroadcast(b0, 6u); c0_0 += a10.z * s0_6; c1_0 += a11.z * s0_6; c2_0 += a12.z * s0_6; c3_0 += a13.z * s0_6;
        let s0_7 = subgroupBroadcast(b0, 7u); c0_0 += a10.w * s0_7; c1_0 += a11.w * s0_7; c2_0 += a12.w * s0_7; c3_0 += a13.w * s0_7;
        let s1_0 = subgroupBroadcast(b1, 0u); c0_1 += a00.x * s1_0; c1_1 += a01.x * s1_0; c2_1 += a02.x * s1_0; c3_1 += a03.x * s1_0;
        let s1_1 = subgroupBroadcast(b1, 1u); c0_1 += a00.y * s1_1; c1_1 += a01.y * s1_1; c2_1 += a02.y * s1_1; c3_1 += a03.y * s1_1;
        let s1_2 = subgroupBroadcast(b1, 2u); c0_1 += a00.z * s1_2; c1_1 += a01.z * s1_2; c2_1 += a02.z * s1_2; c3_1 += a03.z * s1_2;
        let s1_3 = subgroupBroadcast(b1, 3u); c0_1 += a00.w * s1_3; c1_1 += a01.w * s1_3; c2_1 += a02.w * s1_3; c3_1 += a03.w * s1_3;
        let s1_4 = subgroupBroadcast(b1, 4u); c0_1 += a10.x * s1_4; c1_1 += a11.x * s1_4; c2_1 += a12.x * s1_4; c3_1 += a13.x * s1_4;
        let s1_5 = subgroupBroadcast(b1, 5u); c0_1 += a10.y * s1_5; c1_1 += a11.y * s1_5; c2_1 += a12.y * s1_5; c3_1 += a13.y * s1_5;
        let s1_6 = subgroupBroadcast(b1, 6u); c0_1 += a10.z * s1_6; c1_1 += a11.z * s1_6; c2_1 += a12.z * s1_6; c3_1 += a13.z * s1_6;
        let s1_7 = subgroupBroadcast(b1, 7u); c0_1 += a10.w * s1_7; c1_1 += a11.w * s1_7; c2_1 += a12.w * s1_7; c3_1 += a13.w * s1_7;
        let s2_0 = subgroupBroadcast(b2, 0u); c0_2 += a00.x * s2_0; c1_2 += a01.x * s2_0; c2_2 += a02.x * s2_0; c3_2 += a03.x * s2_0;
        let s2_1 = subgroupBroadcast(b2, 1u); c0_2 += a00.y * s2_1; c1_2 += a01.y * s2_1; c2_2 += a02.y * s2_1; c3_2 += a03.y * s2_1;
        let s2_2 = subgroupBroadcast(b2, 2u); c0_2 += a00.z * s2_2; c1_2 += a01.z * s2_2; c2_2 += a02.z * s2_2; c3_2 += a03.z * s2_2;
        let s2_3 = subgroupBroadcast(b2, 3u); c0_2 += a00.w * s2_3; c1_2 += a01.w * s2_3; c2_2 += a02.w * s2_3; c3_2 += a03.w * s2_3;
        let s2_4 = subgroupBroadcast(b2, 4u); c0_2 += a10.x * s2_4; c1_2 += a11.x * s2_4; c2_2 += a12.x * s2_4; c3_2 += a13.x * s2_4;
        let s2_5 = subgroupBroadcast(b2, 5u); c0_2 += a10.y * s2_5; c1_2 += a11.y * s2_5; c2_2 += a12.y * s2_5; c3_2 += a13.y * s2_5;
        let s2_6 = subgroupBroadcast(b2, 6u); c0_2 += a10.z * s2_6; c1_2 += a11.z * s2_6; c2_2 += a12.z * s2_6; c3_2 += a13.z * s2_6;
        let s2_7 = subgroupBroadcast(b2, 7u); c0_2 += a10.w * s2_7; c1_2 += a11.w * s2_7; c2_2 += a12.w * s2_7; c3_2 += a13.w * s2_7;
        let s3_0 = subgroupBroadcast(b3, 0u); c0_3 += a00.x * s3_0; c1_3 += a01.x * s3_0; c2_3 += a02.x * s3_0; c3_3 += a03.x * s3_0;
        let s3_1 = subgroupBroadcast(b3, 1u); c0_3 += a00.y * s3_1; c1_3 += a01.y * s3_1; c2_3 += a02.y * s3_1; c3_3 += a03.y * s3_1;
        let s3_2 = subgroupBroadcast(b3, 2u); c0_3 += a00.z * s3_2; c1_3 += a01.z * s3_2; c2_3 += a02.z * s3_2; c3_3 += a03.z * s3_2;
        let s3_3 = subgroupBroadcast(b3, 3u); c0_3 += a00.w * s3_3; c1_3 += a01.w * s3_3; c2_3 += a02.w * s3_3; c3_3 += a03.w * s3_3;
        let s3_4 = subgroupBroadcast(b3, 4u); c0_3 += a10.x * s3_4; c1_3 += a11.x * s3_4; c2_3 += a12.x * s3_4; c3_3 += a13.x * s3_4;
        let s3_5 = subgroupBroadcast(b3, 5u); c0_3 += a10.y * s3_5; c1_3 += a11.y * s3_5; c2_3 += a12.y * s3_5; c3_3 += a13.y * s3_5;
        let s3_6 = subgroupBroadcast(b3, 6u); c0_3 += a10.z * s3_6; c1_3 += a11.z * s3_6; c2_3 += a12.z * s3_6; c3_3 += a13.z * s3_6;
        let s3_7 = subgroupBroadcast(b3, 7u); c0_3 += a10.w * s3_7; c1_3 += a11.w * s3_7; c2_3 += a12.w * s3_7; c3_3 += a13.w * s3_7;
        let s4_0 = subgroupBroadcast(b4, 0u); c0_4 += a00.x * s4_0; c1_4 += a01.x * s4_0; c2_4 += a02.x * s4_0; c3_4 += a03.x * s4_0;
        let s4_1 = subgroupBroadcast(b4, 1u); c0_4 += a00.y * s4_1; c1_4 += a01.y * s4_1; c2_4 += a02.y * s4_1; c3_4 += a03.y * s4_1;
        let s4_2 = subgroupBroadcast(b4, 2u); c0_4 += a00.z * s4_2; c1_4 += a01.z * s4_2; c2_4 += a02.z * s4_2; c3_4 += a03.z * s4_2;
        let s4_3 = subgroupBroadcast(b4, 3u); c0_4 += a00.w * s4_3; c1_4 += a01.w * s4_3; c2_4 += a02.w * s4_3; c3_4 += a03.w * s4_3;
        let s4_4 = subgroupBroadcast(b4, 4u); c0_4 += a10.x * s4_4; c1_4 += a11.x * s4_4; c2_4 += a12.x * s4_4; c3_4 += a13.x * s4_4;
        let s4_5 = subgroupBroadcast(b4, 5u); c0_4 += a10.y * s4_5; c1_4 += a11.y * s4_5; c2_4 += a12.y * s4_5; c3_4 += a13.y * s4_5;
        let s4_6 = subgroupBroadcast(b4, 6u); c0_4 += a10.z * s4_6; c1_4 += a11.z * s4_6; c2_4 += a12.z * s4_6; c3_4 += a13.z * s4_6;
        let s4_7 = subgroupBroadcast(b4, 7u); c0_4 += a10.w * s4_7; c1_4 += a11.w * s4_7; c2_4 += a12.w * s4_7; c3_4 += a13.w * s4_7;
        let s5_0 = subgroupBroadcast(b5, 0u); c0_5 += a00.x * s5_0; c1_5 += a01.x * s5_0; c2_5 += a02.x * s5_0; c3_5 += a03.x * s5_0;
        let s5_1 = subgroupBroadcast(b5, 1u); c0_5 += a00.y * s5_1; c1_5 += a01.y * s5_1; c2_5 += a02.y * s5_1; c3_5 += a03.y * s5_1;
        let s5_2 = subgroupBroadcast(b5, 2u); c0_5 += a00.z * s5_2; c1_5 += a01.z * s5_2; c2_5 += a02.z * s5_2; c3_5 += a03.z * s5_2;
        let s5_3 = subgroupBroadcast(b5, 3u); c0_5 += a00.w * s5_3; c1_5 += a01.w * s5_3; c2_5 += a02.w * s5_3; c3_5 += a03.w * s5_3;
        let s5_4 = subgroupBroadcast(b5, 4u); c0_5 += a10.x * s5_4; c1_5 += a11.x * s5_4; c2_5 += a12.x * s5_4; c3_5 += a13.x * s5_4;
        let s5_5 = subgroupBroadcast(b5, 5u); c0_5 += a10.y * s5_5; c1_5 += a11.y * s5_5; c2_5 += a12.y * s5_5; c3_5 += a13.y * s5_5;
        let s5_6 = subgroupBroadcast(b5, 6u); c0_5 += a10.z * s5_6; c1_5 += a11.z * s5_6; c2_5 += a12.z * s5_6; c3_5 += a13.z * s5_6;
        let s5_7 = subgroupBroadcast(b5, 7u); c0_5 += a10.w * s5_7; c1_5 += a11.w * s5_7; c2_5 += a12.w * s5_7; c3_5 += a13.w * s5_7;
        let s6_0 = subgroupBroadcast(b6, 0u); c0_6 += a00.x * s6_0; c1_6 += a01.x * s6_0; c2_6 += a02.x * s6_0; c3_6 += a03.x * s6_0;
        let s6_1 = subgroupBroadcast(b6, 1u); c0_6 += a00.y * s6_1; c1_6 += a01.y * s6_1; c2_6 += a02.y * s6_1; c3_6 += a03.y * s6_1;
        let s6_2 = subgroupBroadcast(b6, 2u); c0_6 += a00.z * s6_2; c1_6 += a01.z * s6_2; c2_6 += a02.z * s6_2; c3_6 += a03.z * s6_2;
        let s6_3 = subgroupBroadcast(b6, 3u); c0_6 += a00.w * s6_3; c1_6 += a01.w * s6_3; c2_6 += a02.w * s6_3; c3_6 += a03.w * s6_3;
        let s6_4 = subgroupBroadcast(b6, 4u); c0_6 += a10.x * s6_4; c1_6 += a11.x * s6_4; c2_6 += a12.x * s6_4; c3_6 += a13.x * s6_4;
        let s6_5 = subgroupBroadcast(b6, 5u); c0_6 += a10.y * s6_5; c1_6 += a11.y * s6_5; c2_6 += a12.y * s6_5; c3_6 += a13.y * s6_5;
        let s6_6 = subgroupBroadcast(b6, 6u); c0_6 += a10.z * s6_6; c1_6 += a11.z * s6_6; c2_6 += a12.z * s6_6; c3_6 += a13.z * s6_6;
        let s6_7 = subgroupBroadcast(b6, 7u); c0_6 += a10.w * s6_7; c1_6 += a11.w * s6_7; c2_6 += a12.w * s6_7; c3_6 += a13.w * s6_7;
        let s7_0 = subgroupBroadcast(b7, 0u); c0_7 += a00.x * s7_0; c1_7 += a01.x * s7_0; c2_7 += a02.x * s7_0; c3_7 += a03.x * s7_0;
        let s7_1 = subgroupBroadcast(b7, 1u); c0_7 += a00.y * s7_1; c1_7 += a01.y * s7_1; c2_7 += a02.y * s7_1; c3_7 += a03.y * s7_1;
        let s7_2 = subgroupBroadcast(b7, 2u); c0_7 += a00.z * s7_2; c1_7 += a01.z * s7_2; c2_7 += a02.z * s7_2; c3_7 += a03.z * s7_2;
        let s7_3 = subgroupBroadcast(b7, 3u); c0_7 += a00.w * s7_3; c1_7 += a01.w * s7_3; c2_7 += a02.w * s7_3; c3_7 += a03.w * s7_3;
        let s7_4 = subgroupBroadcast(b7, 4u); c0_7 += a10.x * s7_4; c1_7 += a11.x * s7_4; c2_7 += a12.x * s7_4; c3_7 += a13.x * s7_4;
        let s7_5 = subgroupBroadcast(b7, 5u); c0_7 += a10.y * s7_5; c1_7 += a11.y * s7_5; c2_7 += a12.y * s7_5; c3_7 += a13.y * s7_5;
        let s7_6 = subgroupBroadcast(b7, 6u); c0_7 += a10.z * s7_6; c1_7 += a11.z * s7_6; c2_7 += a12.z * s7_6; c3_7 += a13.z * s7_6;
        let s7_7 = subgroupBroadcast(b7, 7u); c0_7 += a10.w * s7_7; c1_7 += a11.w * s7_7; c2_7 += a12.w * s7_7; c3_7 += a13.w * s7_7;
    }
    store_quads(row0 + 0u, col0 + 0u, c0_0, c0_1, c0_2, c0_3);
    store_quads(row0 + 0u, col0 + 16u, c0_4, c0_5, c0_6, c0_7);
    store_quads(row0 + 8u, col0 + 0u, c1_0, c1_1, c1_2, c1_3);
    store_quads(row0 + 8u, col0 + 16u, c1_4, c1_5, c1_6, c1_7);
    store_quads(row0 + 16u, col0 + 0u, c2_0, c2_1, c2_2, c2_3);
    store_quads(row0 + 16u, col0 + 16u, c2_4, c2_5, c2_6, c2_7);
    store_quads(row0 + 24u, col0 + 0u, c3_0, c3_1, c3_2, c3_3);
    store_quads(row0 + 24u, col0 + 16u, c3_4, c3_5, c3_6, c3_7);
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
