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
// the 8 lanes own different rows (4 each, strided by 8) and share one 8×16
// slab of B per K-step: each lane loads one row of the slab and
// subgroupBroadcast with a constant lane hands it to all lanes as a register
// shuffle. Operands come packed and zero-padded in read-only storage
// textures (inlined, branch-free loads on llvmpipe), so the loop has no bounds
// checks: A is [rows][K/4 texels], B is [K][cols/4 texels].
@group(0) @binding(1) var tex_a: texture_storage_2d<rgba32float, read>;
@group(0) @binding(2) var tex_b: texture_storage_2d<rgba32float, read>;

const SG_M: u32 = {{SG_M}}u;
const SG_N: u32 = {{SG_N}}u;
const BM: u32 = SG_M * 32u;
const BN: u32 = SG_N * 16u;

// One row of the lane's tile: 16 columns as 4 quads.
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
    let col0 = (g / p.groups_m) * BN + (sg / SG_M) * 16u;
    let nq = col0 / 4u;
    let kq_end = (p.k + 7u) / 8u * 2u;
    // The 4×16 tile as named registers: crq holds row r, columns 4q..4q+3.
    // Everything below is unrolled by hand because the broadcast lane must
    // be a constant and llvmpipe keeps indexed arrays in memory.
    var c00 = vec4<f32>(0.0); var c01 = vec4<f32>(0.0); var c02 = vec4<f32>(0.0); var c03 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0); var c11 = vec4<f32>(0.0); var c12 = vec4<f32>(0.0); var c13 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0); var c21 = vec4<f32>(0.0); var c22 = vec4<f32>(0.0); var c23 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0); var c31 = vec4<f32>(0.0); var c32 = vec4<f32>(0.0); var c33 = vec4<f32>(0.0);
    for (var kq = 0u; kq < kq_end; kq += 2u) {
        let a0 = textureLoad(tex_a, vec2<u32>(kq, row0));
        let a1 = textureLoad(tex_a, vec2<u32>(kq, row0 + 8u));
        let a2 = textureLoad(tex_a, vec2<u32>(kq, row0 + 16u));
        let a3 = textureLoad(tex_a, vec2<u32>(kq, row0 + 24u));
        let a4 = textureLoad(tex_a, vec2<u32>(kq + 1u, row0));
        let a5 = textureLoad(tex_a, vec2<u32>(kq + 1u, row0 + 8u));
        let a6 = textureLoad(tex_a, vec2<u32>(kq + 1u, row0 + 16u));
        let a7 = textureLoad(tex_a, vec2<u32>(kq + 1u, row0 + 24u));
        let brow = kq * 4u + lane;
        let b0 = textureLoad(tex_b, vec2<u32>(nq, brow));
        let b1 = textureLoad(tex_b, vec2<u32>(nq + 1u, brow));
        let b2 = textureLoad(tex_b, vec2<u32>(nq + 2u, brow));
        let b3 = textureLoad(tex_b, vec2<u32>(nq + 3u, brow));
        // k = 8·(kq/2) + j: lane j holds row k of the B slab; the lane's A
        // values for it are component j of a0..a3 (j < 4) or of a4..a7. One
        // column quad at a time, so only its 4 accumulators are live (the
        // whole tile does not fit the 32 vector registers).
        let s00 = subgroupBroadcast(b0, 0u); c00 += a0.x * s00; c10 += a1.x * s00; c20 += a2.x * s00; c30 += a3.x * s00;
        let s01 = subgroupBroadcast(b0, 1u); c00 += a0.y * s01; c10 += a1.y * s01; c20 += a2.y * s01; c30 += a3.y * s01;
        let s02 = subgroupBroadcast(b0, 2u); c00 += a0.z * s02; c10 += a1.z * s02; c20 += a2.z * s02; c30 += a3.z * s02;
        let s03 = subgroupBroadcast(b0, 3u); c00 += a0.w * s03; c10 += a1.w * s03; c20 += a2.w * s03; c30 += a3.w * s03;
        let s04 = subgroupBroadcast(b0, 4u); c00 += a4.x * s04; c10 += a5.x * s04; c20 += a6.x * s04; c30 += a7.x * s04;
        let s05 = subgroupBroadcast(b0, 5u); c00 += a4.y * s05; c10 += a5.y * s05; c20 += a6.y * s05; c30 += a7.y * s05;
        let s06 = subgroupBroadcast(b0, 6u); c00 += a4.z * s06; c10 += a5.z * s06; c20 += a6.z * s06; c30 += a7.z * s06;
        let s07 = subgroupBroadcast(b0, 7u); c00 += a4.w * s07; c10 += a5.w * s07; c20 += a6.w * s07; c30 += a7.w * s07;
        let s10 = subgroupBroadcast(b1, 0u); c01 += a0.x * s10; c11 += a1.x * s10; c21 += a2.x * s10; c31 += a3.x * s10;
        let s11 = subgroupBroadcast(b1, 1u); c01 += a0.y * s11; c11 += a1.y * s11; c21 += a2.y * s11; c31 += a3.y * s11;
        let s12 = subgroupBroadcast(b1, 2u); c01 += a0.z * s12; c11 += a1.z * s12; c21 += a2.z * s12; c31 += a3.z * s12;
        let s13 = subgroupBroadcast(b1, 3u); c01 += a0.w * s13; c11 += a1.w * s13; c21 += a2.w * s13; c31 += a3.w * s13;
        let s14 = subgroupBroadcast(b1, 4u); c01 += a4.x * s14; c11 += a5.x * s14; c21 += a6.x * s14; c31 += a7.x * s14;
        let s15 = subgroupBroadcast(b1, 5u); c01 += a4.y * s15; c11 += a5.y * s15; c21 += a6.y * s15; c31 += a7.y * s15;
        let s16 = subgroupBroadcast(b1, 6u); c01 += a4.z * s16; c11 += a5.z * s16; c21 += a6.z * s16; c31 += a7.z * s16;
        let s17 = subgroupBroadcast(b1, 7u); c01 += a4.w * s17; c11 += a5.w * s17; c21 += a6.w * s17; c31 += a7.w * s17;
        let s20 = subgroupBroadcast(b2, 0u); c02 += a0.x * s20; c12 += a1.x * s20; c22 += a2.x * s20; c32 += a3.x * s20;
        let s21 = subgroupBroadcast(b2, 1u); c02 += a0.y * s21; c12 += a1.y * s21; c22 += a2.y * s21; c32 += a3.y * s21;
        let s22 = subgroupBroadcast(b2, 2u); c02 += a0.z * s22; c12 += a1.z * s22; c22 += a2.z * s22; c32 += a3.z * s22;
        let s23 = subgroupBroadcast(b2, 3u); c02 += a0.w * s23; c12 += a1.w * s23; c22 += a2.w * s23; c32 += a3.w * s23;
        let s24 = subgroupBroadcast(b2, 4u); c02 += a4.x * s24; c12 += a5.x * s24; c22 += a6.x * s24; c32 += a7.x * s24;
        let s25 = subgroupBroadcast(b2, 5u); c02 += a4.y * s25; c12 += a5.y * s25; c22 += a6.y * s25; c32 += a7.y * s25;
        let s26 = subgroupBroadcast(b2, 6u); c02 += a4.z * s26; c12 += a5.z * s26; c22 += a6.z * s26; c32 += a7.z * s26;
        let s27 = subgroupBroadcast(b2, 7u); c02 += a4.w * s27; c12 += a5.w * s27; c22 += a6.w * s27; c32 += a7.w * s27;
        let s30 = subgroupBroadcast(b3, 0u); c03 += a0.x * s30; c13 += a1.x * s30; c23 += a2.x * s30; c33 += a3.x * s30;
        let s31 = subgroupBroadcast(b3, 1u); c03 += a0.y * s31; c13 += a1.y * s31; c23 += a2.y * s31; c33 += a3.y * s31;
        let s32 = subgroupBroadcast(b3, 2u); c03 += a0.z * s32; c13 += a1.z * s32; c23 += a2.z * s32; c33 += a3.z * s32;
        let s33 = subgroupBroadcast(b3, 3u); c03 += a0.w * s33; c13 += a1.w * s33; c23 += a2.w * s33; c33 += a3.w * s33;
        let s34 = subgroupBroadcast(b3, 4u); c03 += a4.x * s34; c13 += a5.x * s34; c23 += a6.x * s34; c33 += a7.x * s34;
        let s35 = subgroupBroadcast(b3, 5u); c03 += a4.y * s35; c13 += a5.y * s35; c23 += a6.y * s35; c33 += a7.y * s35;
        let s36 = subgroupBroadcast(b3, 6u); c03 += a4.z * s36; c13 += a5.z * s36; c23 += a6.z * s36; c33 += a7.z * s36;
        let s37 = subgroupBroadcast(b3, 7u); c03 += a4.w * s37; c13 += a5.w * s37; c23 += a6.w * s37; c33 += a7.w * s37;
    }
    store_quads(row0 + 0u, col0, c00, c01, c02, c03);
    store_quads(row0 + 8u, col0, c10, c11, c12, c13);
    store_quads(row0 + 16u, col0, c20, c21, c22, c23);
    store_quads(row0 + 24u, col0, c30, c31, c32, c33);
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
