// DOLG's orthogonal fusion (spec §8.4) on pooled vectors, one invocation per
// batch row: rows are few (the batch) and C is ~1024, so each row's dot
// products and its writes stay in one invocation's cache.
//
//   out = [g, l − (l·g / g·g)·g]
//
// A zero global vector has no direction to remove: the projection is then 0.
#include "common"

// Rows come in windows of whole rows; shifts place each window in its binding.
struct Params {
    rows: u32,
    c: u32,
    shift_g: u32,
    shift_l: u32,
    shift_dy: u32,
    shift_out: u32,
    shift_dl: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> l: array<f32>;

fn ratio(num: f32, q: f32) -> f32 {
    return select(num / q, 0.0, q == 0.0);
}

#if FORWARD
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn orthogonal_fusion(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = linear_index(wid, nwg, lid, 64u);
    if (r >= p.rows) {
        return;
    }
    let bg = p.shift_g + r * p.c;
    let bl = p.shift_l + r * p.c;
    var s = 0.0;
    var q = 0.0;
    for (var k = 0u; k < p.c; k++) {
        let gv = g[bg + k];
        s += l[bl + k] * gv;
        q += gv * gv;
    }
    let ks = ratio(s, q);
    let o = p.shift_out + 2u * r * p.c;
    for (var k = 0u; k < p.c; k++) {
        let gv = g[bg + k];
        out[o + k] = gv;
        out[o + p.c + k] = l[bl + k] - ks * gv;
    }
}
#endif

#if BACKWARD
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dg: array<f32>;
@group(0) @binding(5) var<storage, read_write> dl: array<f32>;

// With s = l·g, q = g·g, e = d·g (d the gradient of the orthogonal half, a of
// the copied half):
//   dl = d − (e/q)·g
//   dg = a − (s/q)·d − (e/q)·l + 2·(s/q)·(e/q)·g
@compute @workgroup_size(64)
fn orthogonal_fusion_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = linear_index(wid, nwg, lid, 64u);
    if (r >= p.rows) {
        return;
    }
    let bg = p.shift_g + r * p.c;
    let bl = p.shift_l + r * p.c;
    let o = p.shift_dy + 2u * r * p.c;
    var s = 0.0;
    var q = 0.0;
    var e = 0.0;
    for (var k = 0u; k < p.c; k++) {
        let gv = g[bg + k];
        s += l[bl + k] * gv;
        q += gv * gv;
        e += dy[o + p.c + k] * gv;
    }
    let ks = ratio(s, q);
    let ke = ratio(e, q);
    let bdg = p.shift_out + r * p.c;
    let bdl = p.shift_dl + r * p.c;
    for (var k = 0u; k < p.c; k++) {
        let gv = g[bg + k];
        let d = dy[o + p.c + k];
        dl[bdl + k] = d - ke * gv;
        dg[bdg + k] = dy[o + k] - ks * d - ke * l[bl + k] + 2.0 * ks * ke * gv;
    }
}
#endif
