// 2-D convolution as an implicit GEMM, NHWC activations, HWIO weights.
//
// One kernel body serves the three products of a convolution, chosen by define:
//   FWD: rows = output pixels, k = (ky, kx, c_in), cols = c_out; A gathers the input patch.
//   DX:  rows = input pixels,  k = (ky, kx, c_out), cols = c_in; A gathers dy through the
//        transposed geometry (a tap contributes only where the stride divides the offset),
//        B is the weight with its last two axes swapped.
//   DW:  rows = (ky, kx, c_in), k = output pixels,  cols = c_out; A gathers the input
//        patch with the roles of row and k exchanged, B is dy.
// B is always a row-major matrix [k, cols] and C a row-major [rows, cols] window.
//
// Variants: TILED (shared-memory block tiles, for GPUs whose workgroup memory is on
// chip) and SGB (lavapipe: subgroups of LANES lanes, 8 at llvmpipe's default 256 bits
// and 16 at 512; each lane owns 4 rows, the LANES×16 slab of B is loaded one row per
// lane and shared by subgroupBroadcast; see shared/spec/lavapipe.md). SGB with TEX reads A and B as vec4 texels from read-only
// storage textures, whose loads llvmpipe inlines branch-free; without TEX it reads
// scalars from storage buffers and handles any channel count.
// (No `enable subgroups;`: naga 30 rejects it; the SGB variant is only chosen
// when the device has SUBGROUP, see MatmulVariant::supported.)
// F16 (forward only): x, w, the residual and y are stored in f16 and read
// into f32, every sum accumulates in f32 and each output is rounded once on
// store; bias, scale and shift stay f32. The TEX form stages A and B as
// rgba16float texels, which the texture loads widen to f32.
#if F16
enable f16;
alias Store = f16;
#else
alias Store = f32;
#endif
#include "common"

struct Params {
    m: u32,           // rows of this dispatch
    n: u32,           // columns
    k: u32,           // reduction length of this dispatch
    row0: u32,        // global index of the first row (a pixel for FWD and DX)
    k0: u32,          // global index of the first k (a pixel for DW)
    taps_x: u32,      // kernel width
    src_h: u32,       // gathered tensor [N, src_h, src_w, src_c]
    src_w: u32,
    src_c: u32,
    grid_h: u32,      // pixel grid the gather walks (output for FWD/DW, input for DX)
    grid_w: u32,
    div_y: u32,       // DX: source coordinate = numerator / stride when it divides
    div_x: u32,
    a_base: u32,      // global element index where the A window starts
    a_shift: u32,
    b_shift: u32,
    c_shift: u32,
    r_shift: u32,
    accum: u32,       // add to C instead of overwriting (chunks of a DW reduction)
    col_tiles: u32,
    tex_log2: u32,    // texels per texture row, log2
    mul_y: i32,       // source numerator = pixel·mul + off + tap·dk
    off_y: i32,
    dk_y: i32,
    mul_x: i32,
    off_x: i32,
    dk_x: i32,
    v_shift0: u32,    // shifts of the bias, scale and shift windows
    v_shift1: u32,
    v_shift2: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

#if GEMM
#if TEX
#if ASCALAR
@group(0) @binding(1) var a_tex: texture_storage_2d<r32float, read>;
#else
#if F16
@group(0) @binding(1) var a_tex: texture_storage_2d<rgba16float, read>;
#else
@group(0) @binding(1) var a_tex: texture_storage_2d<rgba32float, read>;
#endif
#endif
#if F16
@group(0) @binding(2) var b_tex: texture_storage_2d<rgba16float, read>;
#else
@group(0) @binding(2) var b_tex: texture_storage_2d<rgba32float, read>;
#endif
#else
#if VEC4
@group(0) @binding(1) var<storage, read> a_buf: array<vec4<Store>>;
@group(0) @binding(2) var<storage, read> b_buf: array<vec4<Store>>;
#else
@group(0) @binding(1) var<storage, read> a_buf: array<Store>;
@group(0) @binding(2) var<storage, read> b_buf: array<Store>;
#endif
#endif
#endif

// Batch image, first source row and first source column of a pixel of the grid:
// (n·src_h, y·mul_y + off_y, x·mul_x + off_x).
fn pixel_origin(q: u32) -> vec3<i32> {
    let per_image = p.grid_h * p.grid_w;
    let n = q / per_image;
    let r = q - n * per_image;
    let y = r / p.grid_w;
    let x = r - y * p.grid_w;
    return vec3<i32>(i32(n * p.src_h), i32(y) * p.mul_y + p.off_y, i32(x) * p.mul_x + p.off_x);
}

// Window element index of channel 0 of the source pixel tap (ky, kx) reads for a
// grid pixel, or -1 where the tap falls in the padding (or between strides for DX).
fn source_pixel(o: vec3<i32>, ky: u32, kx: u32) -> i32 {
    // Branch-free: it is inlined dozens of times per k-step in the gather form.
    var sy = o.y + i32(ky) * p.dk_y;
    var sx = o.z + i32(kx) * p.dk_x;
    var ok = sy >= 0 & sx >= 0;
#if DX
    ok = ok & sy % i32(p.div_y) == 0 & sx % i32(p.div_x) == 0;
    sy = sy / i32(p.div_y);
    sx = sx / i32(p.div_x);
#endif
    ok = ok & sy < i32(p.src_h) & sx < i32(p.src_w);
    return select(-1, ((o.x + sy) * i32(p.src_w) + sx) * i32(p.src_c) - i32(p.a_base) + i32(p.a_shift), ok);
}

// Element of the source at tap t = (ky·kw + kx)·src_c + c for grid pixel q, or -1.
fn gather_index(q: u32, t: u32) -> i32 {
    let tap = t / p.src_c;
    let c = t - tap * p.src_c;
    let ky = tap / p.taps_x;
    let e = source_pixel(pixel_origin(q), ky, tap - ky * p.taps_x);
    return select(-1, e + i32(c), e >= 0);
}

#if ASCALAR
// Element e of the source staged in the r32float texture a_tex.
fn a_scalar(e: u32) -> f32 {
    return textureLoad(a_tex, vec2<u32>(e & ((1u << p.tex_log2) - 1u), e >> p.tex_log2)).x;
}
#endif

#if GEMM
#if TEX
fn texel(e: u32) -> vec2<u32> {
    let t = e >> 2u;
    return vec2<u32>(t & ((1u << p.tex_log2) - 1u), t >> p.tex_log2);
}
#if !ASCALAR
fn a_vec(e: u32) -> vec4<f32> {
    return textureLoad(a_tex, texel(e));
}
#endif
fn b_vec(e: u32) -> vec4<f32> {
    return textureLoad(b_tex, texel(e));
}
#else
#if VEC4
// The tiled kernel's 16-byte loads: 4 consecutive elements along A's
// contiguous axis, channels of one tap: k..k+3 (FWD, DX) or rows
// row..row+3 (DW), zero outside A or in the padding. The host makes the
// channel count, that axis's extent and the window's start whole quads.
fn a_quad(row: u32, k: u32) -> vec4<f32> {
    if (row >= p.m || k >= p.k) {
        return vec4<f32>(0.0);
    }
#if DW
    let e = gather_index(p.k0 + k, row);
#else
    let e = gather_index(p.row0 + row, k);
#endif
    if (e < 0) {
        return vec4<f32>(0.0);
    }
    return vec4<f32>(a_buf[u32(e) / 4u]);
}

// B[k, col..col+3] (n and the shift are whole quads), zero outside.
fn b_quad(k: u32, col: u32) -> vec4<f32> {
    if (k >= p.k || col >= p.n) {
        return vec4<f32>(0.0);
    }
    return vec4<f32>(b_buf[(k * p.n + col + p.b_shift) / 4u]);
}
#else
// A[row, k] of this dispatch (row and k local), zero outside.
fn a_elem(row: u32, k: u32) -> f32 {
    if (row >= p.m || k >= p.k) {
        return 0.0;
    }
#if DW
    let e = gather_index(p.k0 + k, row);
#else
    let e = gather_index(p.row0 + row, k);
#endif
    if (e < 0) {
        return 0.0;
    }
    return f32(a_buf[e]);
}

fn b_elem(k: u32, col: u32) -> f32 {
    if (k >= p.k || col >= p.n) {
        return 0.0;
    }
    return f32(b_buf[k * p.n + col + p.b_shift]);
}
#endif
#endif

// The epilogue of 4 consecutive columns of one row. llvmpipe scalarises every
// lane-varying access into a per-lane loop: 64 scalar stores per invocation
// made its JIT take ~12 s per pipeline (vec4 stores: under 1 s). The column
// terms are loaded once per column group (`columns`), loads read clamped
// indices outside any branch, and only the store is conditional. The TEX form (n and
// every shift multiples of 4) moves vec4s; the scalar form drops columns past n.
// (acc + bias)·scale + shift is applied as acc·mul + add.
struct Cols {
    mul: vec4<f32>,
    add: vec4<f32>,
}

// A finished value as stored: f16 stores saturate at +-65504 first (WGSL
// leaves the conversion of larger values undefined; tensor::f16_store).
fn stored(v: f32) -> Store {
#if F16
    return f16(clamp(v, -65504.0, 65504.0));
#else
    return v;
#endif
}

fn stored4(v: vec4<f32>) -> vec4<Store> {
#if F16
    return vec4<f16>(clamp(v, vec4<f32>(-65504.0), vec4<f32>(65504.0)));
#else
    return v;
#endif
}

#if TEX
@group(0) @binding(3) var<storage, read_write> out: array<vec4<Store>>;
#if BIAS
@group(0) @binding({{BIAS_BINDING}}) var<storage, read> bias: array<vec4<f32>>;
#endif
#if AFFINE
@group(0) @binding({{SCALE_BINDING}}) var<storage, read> scale: array<vec4<f32>>;
@group(0) @binding({{SHIFT_BINDING}}) var<storage, read> shift: array<vec4<f32>>;
#endif
#if RESIDUAL
@group(0) @binding({{RESIDUAL_BINDING}}) var<storage, read> residual: array<vec4<Store>>;
#endif

fn columns(col0: u32) -> Cols {
    let col = min(col0, p.n - 4u);
    var c = Cols(vec4<f32>(1.0), vec4<f32>(0.0));
#if BIAS
    c.add = bias[(col + p.v_shift0) / 4u];
#endif
#if AFFINE
    c.mul = scale[(col + p.v_shift1) / 4u];
    c.add = c.add * c.mul + shift[(col + p.v_shift2) / 4u];
#endif
    return c;
}

fn store4(row0: u32, col0: u32, acc4: vec4<f32>, c: Cols) {
    let row = min(row0, p.m - 1u);
    let col = min(col0, p.n - 4u);
    var v = acc4 * c.mul + c.add;
#if RESIDUAL
    v += vec4<f32>(residual[(row * p.n + col + p.r_shift) / 4u]);
#endif
#if RELU
    v = max(v, vec4<f32>(0.0));
#endif
    let io = (row * p.n + col + p.c_shift) / 4u;
#if DW
    if (p.accum != 0u) {
        v += vec4<f32>(out[io]);
    }
#endif
    if (row0 < p.m && col0 < p.n) {
        out[io] = stored4(v);
    }
}
#else
@group(0) @binding(3) var<storage, read_write> out: array<Store>;
#if BIAS
@group(0) @binding({{BIAS_BINDING}}) var<storage, read> bias: array<f32>;
#endif
#if AFFINE
@group(0) @binding({{SCALE_BINDING}}) var<storage, read> scale: array<f32>;
@group(0) @binding({{SHIFT_BINDING}}) var<storage, read> shift: array<f32>;
#endif
#if RESIDUAL
@group(0) @binding({{RESIDUAL_BINDING}}) var<storage, read> residual: array<Store>;
#endif

fn clamped4(col: u32) -> vec4<u32> {
    return min(vec4<u32>(col, col + 1u, col + 2u, col + 3u), vec4<u32>(p.n - 1u));
}

fn columns(col: u32) -> Cols {
    let i = clamped4(col);
    var c = Cols(vec4<f32>(1.0), vec4<f32>(0.0));
#if BIAS
    let b = i + p.v_shift0;
    c.add = vec4<f32>(bias[b.x], bias[b.y], bias[b.z], bias[b.w]);
#endif
#if AFFINE
    let sc = i + p.v_shift1;
    let sh = i + p.v_shift2;
    c.mul = vec4<f32>(scale[sc.x], scale[sc.y], scale[sc.z], scale[sc.w]);
    c.add = c.add * c.mul + vec4<f32>(shift[sh.x], shift[sh.y], shift[sh.z], shift[sh.w]);
#endif
    return c;
}

fn store4(row0: u32, col: u32, acc4: vec4<f32>, c: Cols) {
    let row = min(row0, p.m - 1u);
    var v = acc4 * c.mul + c.add;
#if RESIDUAL
    let r = clamped4(col) + row * p.n + p.r_shift;
    v += vec4<f32>(f32(residual[r.x]), f32(residual[r.y]), f32(residual[r.z]), f32(residual[r.w]));
#endif
#if RELU
    v = max(v, vec4<f32>(0.0));
#endif
    let io = clamped4(col) + row * p.n + p.c_shift;
#if DW
    if (p.accum != 0u) {
        v += vec4<f32>(f32(out[io.x]), f32(out[io.y]), f32(out[io.z]), f32(out[io.w]));
    }
#endif
    if (row0 < p.m) {
        for (var e = 0u; e < 4u; e++) {
            if (col + e < p.n) {
                out[io[e]] = stored(v[e]);
            }
        }
    }
}
#endif

#if TILED
// Shared-memory block tiling in the shape of a TiledConfig (see gemm_tiled):
// a BM×BN block of C per workgroup, K in steps of BK through double-buffered
// tiles (one barrier per step), MM consecutive rows × MN consecutive columns
// per invocation so the epilogue stores column quads. VEC4 stages the tiles
// with 16-byte loads.
const BM: u32 = {{TILE_M}}u;
const BN: u32 = {{TILE_N}}u;
const BK: u32 = {{TILE_K}}u;
const MM: u32 = {{MICRO_M}}u;
const MN: u32 = {{MICRO_N}}u;
const WG: u32 = {{WORKGROUP}}u;
// Invocations across N, column quads per invocation, accumulators.
const GN: u32 = BN / MN;
const QN: u32 = MN / 4u;
const ACC: u32 = MM * QN;
const TILE_A: u32 = BK * BM;
const TILE_B: u32 = BK * BN;
const TILES_A: u32 = 2u * TILE_A;
const TILES_B: u32 = 2u * TILE_B;

var<workgroup> a_tile: array<f32, TILES_A>; // [buffer][k][m]
var<workgroup> b_tile: array<f32, TILES_B>; // [buffer][k][n]

// Stages K step `k0` into buffers `buf_a`, `buf_b`, zero outside A and B.
fn stage_tiles(buf_a: u32, buf_b: u32, r0: u32, c0: u32, k0: u32, lid: u32) {
#if VEC4
    // Consecutive invocations read consecutive quads of the contiguous
    // axis and scatter them into the [k][m] / [k][n] tiles.
    for (var v = lid; v < TILE_A / 4u; v += WG) {
#if DW
        let kk = v / (BM / 4u);
        let mm = (v % (BM / 4u)) * 4u;
        let q = a_quad(r0 + mm, k0 + kk);
        for (var e = 0u; e < 4u; e++) {
            a_tile[buf_a + kk * BM + mm + e] = q[e];
        }
#else
        let kk = (v % (BK / 4u)) * 4u;
        let mm = v / (BK / 4u);
        let q = a_quad(r0 + mm, k0 + kk);
        for (var e = 0u; e < 4u; e++) {
            a_tile[buf_a + (kk + e) * BM + mm] = q[e];
        }
#endif
    }
    for (var v = lid; v < TILE_B / 4u; v += WG) {
        let kk = v / (BN / 4u);
        let nn = (v % (BN / 4u)) * 4u;
        let q = b_quad(k0 + kk, c0 + nn);
        for (var e = 0u; e < 4u; e++) {
            b_tile[buf_b + kk * BN + nn + e] = q[e];
        }
    }
#else
    for (var e = lid; e < TILE_A; e += WG) {
        a_tile[buf_a + e] = a_elem(r0 + e % BM, k0 + e / BM);
    }
    for (var e = lid; e < TILE_B; e += WG) {
        b_tile[buf_b + e] = b_elem(k0 + e / BN, c0 + e % BN);
    }
#endif
}

@compute @workgroup_size(WG)
fn conv_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = linear_group(wid, nwg);
    let row_tiles = (p.m + BM - 1u) / BM;
    if (g >= row_tiles * p.col_tiles) {
        return;
    }
    let r0 = (g / p.col_tiles) * BM;
    let c0 = (g % p.col_tiles) * BN;
    let tr = (lid / GN) * MM;
    let tc = (lid % GN) * MN;
    var acc: array<vec4<f32>, ACC>;
    // Which buffer (0 or 1) holds the step being multiplied.
    var cur = 0u;
    stage_tiles(0u, 0u, r0, c0, 0u, lid);
    workgroupBarrier();
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Everyone finished reading the other buffer before the last barrier.
        if (k0 + BK < p.k) {
            stage_tiles((1u - cur) * TILE_A, (1u - cur) * TILE_B, r0, c0, k0 + BK, lid);
        }
        let base_a = cur * TILE_A;
        let base_b = cur * TILE_B;
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<f32, MM>;
            var bv: array<vec4<f32>, QN>;
            for (var i = 0u; i < MM; i++) {
                av[i] = a_tile[base_a + kk * BM + tr + i];
            }
            for (var q = 0u; q < QN; q++) {
                let o = base_b + kk * BN + tc + 4u * q;
                bv[q] = vec4<f32>(b_tile[o], b_tile[o + 1u], b_tile[o + 2u], b_tile[o + 3u]);
            }
            for (var i = 0u; i < MM; i++) {
                for (var q = 0u; q < QN; q++) {
                    acc[i * QN + q] += av[i] * bv[q];
                }
            }
        }
        workgroupBarrier();
        cur = 1u - cur;
    }
    for (var q = 0u; q < QN; q++) {
        let col = c0 + tc + 4u * q;
        let cols = columns(col);
        for (var i = 0u; i < MM; i++) {
            store4(r0 + tr + i, col, acc[i * QN + q], cols);
        }
    }
}
#endif

#if SGB
// Per lane: 4 rows × 4·TNV columns of C, and the current LANES-step slab of A as
// av[kk] = (A[row0, kk], .., A[row3, kk]). The scalar form keeps one vec4 of
// columns: its loads dominate anyway, and it compiles much faster.
#if TEX
const TNV: u32 = 4u;
#else
const TNV: u32 = 1u;
#endif
const LANES: u32 = {{LANES}}u;
var<private> acc: array<vec4<f32>, 16>;
var<private> av: array<vec4<f32>, LANES>;

// One column quad j over the slab's LANES steps of k: lane kk holds row kk of
// the slab, handed to every lane by a broadcast from a constant lane (hence
// the #for). Quad by quad, only 4 accumulators are live across the steps, so
// those that spill are reloaded once per slab rather than once per k (~1.5 %
// faster on lavapipe).
fn quad(j: u32, b: vec4<f32>) {
    var c0 = acc[j];
    var c1 = acc[TNV + j];
    var c2 = acc[2u * TNV + j];
    var c3 = acc[3u * TNV + j];
#for L in 0..{{LANES}}
    let s{{L}} = subgroupBroadcast(b, {{L}}u); c0 += av[{{L}}].x * s{{L}}; c1 += av[{{L}}].y * s{{L}}; c2 += av[{{L}}].z * s{{L}}; c3 += av[{{L}}].w * s{{L}};
#endfor
    acc[j] = c0;
    acc[TNV + j] = c1;
    acc[2u * TNV + j] = c2;
    acc[3u * TNV + j] = c3;
}

// Row k of B, this lane's share of the slab (zero outside).
fn slab_b(k: u32, col0: u32) {
    var b: array<vec4<f32>, TNV>;
    for (var j = 0u; j < TNV; j++) {
        let c = col0 + 4u * j;
#if TEX
        let ok = k < p.k && c < p.n;
        b[j] = select(vec4<f32>(0.0), b_vec(select(0u, k, ok) * p.n + p.b_shift + select(0u, c, ok)), ok);
#else
        b[j] = vec4<f32>(b_elem(k, c), b_elem(k, c + 1u), b_elem(k, c + 2u), b_elem(k, c + 3u));
#endif
    }
    // Written out: a loop here was left rolled, indexing acc dynamically (4x slower).
    quad(0u, b[0]);
#if TEX
    quad(1u, b[1]);
    quad(2u, b[2]);
    quad(3u, b[3]);
#endif
}

#if TEX
#if ASCALAR
#else
#if DW
#else
// The LANES-step of k at channels c0.. of one tap: per row, LANES/4 texels
// (tT[m] is texel T of row m) from the row's source pixel `base` (-1:
// padding, zeros).
fn tap_slab(base: array<i32, 4>, c0: u32, kt: u32, col0: u32) {
#for T in 0..{{TEXELS}}
    var t{{T}}: array<vec4<f32>, 4>;
#endfor
    for (var m = 0u; m < 4u; m++) {
        let e = u32(max(base[m], 0)) + c0;
#for T in 0..{{TEXELS}}
        t{{T}}[m] = select(vec4<f32>(0.0), a_vec(e + {{T}}u * 4u), base[m] >= 0);
#endfor
    }
    for (var kk = 0u; kk < 4u; kk++) {
#for T in 0..{{TEXELS}}
        av[kk + {{T}}u * 4u] = vec4<f32>(t{{T}}[0][kk], t{{T}}[1][kk], t{{T}}[2][kk], t{{T}}[3][kk]);
#endfor
    }
    slab_b(kt + c0, col0);
}
#endif
#endif
#endif

// Written out rather than looped: when a large epilogue stopped Mesa from
// unrolling the store loops, acc was indexed dynamically and the JIT took ~9 s.
fn store_group(j: u32, rbase: u32, col: u32) {
    let cols = columns(col);
    store4(rbase, col, acc[j], cols);
    store4(rbase + 1u, col, acc[TNV + j], cols);
    store4(rbase + 2u, col, acc[2u * TNV + j], cols);
    store4(rbase + 3u, col, acc[3u * TNV + j], cols);
}

@compute @workgroup_size(64)
fn conv_sgb(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let g = linear_group(wid, nwg);
    let row_tiles = (p.m + 255u) / 256u;
    if (g >= row_tiles * p.col_tiles) {
        return;
    }
    // 64/LANES subgroups × LANES lanes × 4 rows = 256 rows, 4·TNV columns per
    // workgroup.
    let rbase = (g / p.col_tiles) * 256u + (lid / LANES) * (4u * LANES) + lane * 4u;
    let col0 = (g % p.col_tiles) * 4u * TNV;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
#if TEX
#if DW
    // Each of this lane's rows is a (ky, kx, c); the vec4 form needs only the
    // first, its 4 rows being 4 channels of one tap (src_c % 4 == 0). The grid
    // pixel of each k is advanced incrementally: a division per k cost 40 %.
    var tap_of: array<vec3<u32>, 4>;
    var row_ok: array<bool, 4>;
    for (var m = 0u; m < 4u; m++) {
        let t = min(rbase + m, p.m - 1u);
        let tap = t / p.src_c;
        tap_of[m] = vec3<u32>(tap / p.taps_x, tap % p.taps_x, t % p.src_c);
        row_ok[m] = rbase + m < p.m;
    }
    let first = pixel_origin(p.k0);
    var img = first.x;
    var py = (first.y - p.off_y) / p.mul_y;
    var px = (first.z - p.off_x) / p.mul_x;
    for (var k0 = 0u; k0 < p.k; k0 += LANES) {
        // Unrolled by #for: Mesa leaves a 16-step loop of this size rolled,
        // and av is then indexed in memory.
#for KK in 0..{{LANES}}
        {
            let kk = {{KK}}u;
            let live = k0 + kk < p.k;
            let o = vec3<i32>(img, py * p.mul_y + p.off_y, px * p.mul_x + p.off_x);
#if ASCALAR
            for (var m = 0u; m < 4u; m++) {
                let e = source_pixel(o, tap_of[m].x, tap_of[m].y);
                av[kk][m] = select(0.0, a_scalar(u32(max(e, 0)) + tap_of[m].z), live & row_ok[m] & e >= 0);
            }
#else
            let e = source_pixel(o, tap_of[0].x, tap_of[0].y);
            av[kk] = select(vec4<f32>(0.0), a_vec(u32(max(e, 0)) + tap_of[0].z), live & row_ok[0] & e >= 0);
#endif
            px += 1;
            let next_row = px == i32(p.grid_w);
            px = select(px, 0, next_row);
            py = select(py, py + 1, next_row);
            let next_image = py == i32(p.grid_h);
            py = select(py, 0, next_image);
            img = select(img, img + i32(p.src_h), next_image);
        }
#endfor
        slab_b(k0 + lane, col0);
    }
#else
#if ASCALAR
    // Any channel count: a LANES-step of k may span taps, so the tap of each k is
    // advanced incrementally (no divisions) and each lane reads single floats.
    var origin: array<vec3<i32>, 4>;
    for (var m = 0u; m < 4u; m++) {
        origin[m] = select(vec3<i32>(0, -1 << 30, 0), pixel_origin(p.row0 + min(rbase + m, p.m - 1u)), rbase + m < p.m);
    }
    var c = 0u;
    var kx = 0u;
    var ky = 0u;
    for (var k0 = 0u; k0 < p.k; k0 += LANES) {
        for (var kk = 0u; kk < LANES; kk++) {
            let live = k0 + kk < p.k;
            for (var m = 0u; m < 4u; m++) {
                let e = source_pixel(origin[m], ky, kx);
                av[kk][m] = select(0.0, a_scalar(u32(max(e, 0)) + c), live & e >= 0);
            }
            c += 1u;
            let next_tap = c == p.src_c;
            c = select(c, 0u, next_tap);
            kx = select(kx, kx + 1u, next_tap);
            let next_row = kx == p.taps_x;
            kx = select(kx, 0u, next_row);
            ky = select(ky, ky + 1u, next_row);
        }
        slab_b(k0 + lane, col0);
    }
#else
    // Each LANES-step of k stays inside one tap (src_c % LANES == 0): per row,
    // LANES/4 texels.
    var origin: array<vec3<i32>, 4>;
    for (var m = 0u; m < 4u; m++) {
        origin[m] = pixel_origin(p.row0 + min(rbase + m, p.m - 1u));
    }
    let taps = p.k / p.src_c;
    for (var tap = 0u; tap < taps; tap++) {
        let ky = tap / p.taps_x;
        let kx = tap - ky * p.taps_x;
        var base: array<i32, 4>;
        for (var m = 0u; m < 4u; m++) {
            base[m] = select(-1, source_pixel(origin[m], ky, kx), rbase + m < p.m);
        }
        // One LANES-step per iteration: two per iteration at 8 lanes (fewer
        // exec-mask merges of the loop-carried accumulators) measured 10-30 %
        // slower.
        let kt = tap * p.src_c + lane;
        for (var c0 = 0u; c0 < p.src_c; c0 += LANES) {
            tap_slab(base, c0, kt, col0);
        }
    }
#endif
#endif
#else
    for (var k0 = 0u; k0 < p.k; k0 += LANES) {
        for (var kk = 0u; kk < LANES; kk++) {
            av[kk] = vec4<f32>(a_elem(rbase, k0 + kk), a_elem(rbase + 1u, k0 + kk), a_elem(rbase + 2u, k0 + kk), a_elem(rbase + 3u, k0 + kk));
        }
        slab_b(k0 + lane, col0);
    }
#endif
    store_group(0u, rbase, col0);
#if TEX
    store_group(1u, rbase, col0 + 4u);
    store_group(2u, rbase, col0 + 8u);
    store_group(3u, rbase, col0 + 12u);
#endif
}
#endif
#endif

#if REDUCE
// sum[split, col] (+)= Σ of rows [split·k0, (split+1)·k0) ∩ [0, m) of a [m, n]
// window: the bias gradient, in row splits so every core gets work, then
// once more over the splits.
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> sum: array<f32>;

@compute @workgroup_size(64)
fn column_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = linear_group(wid, nwg);
    let split = g / p.col_tiles;
    let col = (g % p.col_tiles) * 64u + lid;
    let first = split * p.k0;
    if (col >= p.n || first >= p.m) {
        return;
    }
    var s = 0.0;
    for (var r = first; r < min(first + p.k0, p.m); r++) {
        s += src[r * p.n + col + p.a_shift];
    }
    let o = split * p.n + col + p.c_shift;
    if (p.accum != 0u) {
        s += sum[o];
    }
    sum[o] = s;
}
#endif

#if UNFOLD
// The forward A written out row by row, [m, n] with n a multiple of 8: element
// (row, t) is the input gather_index(row0 + row, t) reads for t < k, zero past k.
// Channel counts that do not fill texels (the RGB stem) then take the vec4
// texture form as a 1×1 product instead of one scalar load per element.
// The source is staged in an r32float texture (its loads are the bulk of the
// work); the destination is a scratch buffer of its own, starting at element 0.
// F16 reads the source window in place (no 16-bit scalar storage texture
// format exists in WebGPU) and writes f16: a copy, so it rounds nothing.
#if F16
@group(0) @binding(1) var<storage, read> a_src: array<f16>;
#else
@group(0) @binding(1) var a_tex: texture_storage_2d<r32float, read>;
#endif
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<Store>>;

fn unfold_source(e: u32) -> f32 {
#if F16
    return f32(a_src[e]);
#else
    return a_scalar(e);
#endif
}

// One invocation per row: the walk over k is then the same in every lane, so
// its divisions leave the loop and only the loads and stores vary per lane.
@compute @workgroup_size(64)
fn unfold(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = linear_index(wid, nwg, lid, 64u);
    if (row >= p.m) {
        return;
    }
    let o = pixel_origin(p.row0 + row);
    let per_row = p.n / 4u;
    var ky = 0u;
    var kx = 0u;
    var c = 0u;
    for (var t4 = 0u; t4 < per_row; t4++) {
        var v = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j++) {
            let e = source_pixel(o, ky, kx);
            if (t4 * 4u + j < p.k && e >= 0) {
                v[j] = unfold_source(u32(e) + c);
            }
            c += 1u;
            if (c == p.src_c) {
                c = 0u;
                kx += 1u;
                if (kx == p.taps_x) {
                    kx = 0u;
                    ky += 1u;
                }
            }
        }
        dst[row * per_row + t4] = vec4<Store>(v);
    }
}
#endif

#if SWAP
// [taps, m, n] -> [taps, n, m]: HWIO weights to the HWOI layout DX multiplies by.
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(64)
fn swap_last(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 64u);
    let per = p.m * p.n;
    if (i >= p.k * per) {
        return;
    }
    let t = i / per;
    let r = i - t * per;
    let a = r / p.n;
    let b = r - a * p.n;
    dst[t * per + b * p.m + a + p.c_shift] = src[i + p.a_shift];
}
#endif
