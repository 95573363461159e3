// Per row of a score matrix, the columns whose score is not below the row's
// threshold: search keeps each query's k best over database chunks, and once
// it has k, only scores at least as good as its k-th can enter. Reading back
// those few candidates instead of the whole chunk of scores is what lets a
// GPU's product outrun the host (a 1 000 × 8 191 chunk is 32 MiB of scores
// and typically ~k candidates per query).
//
// One invocation per row, scanning it in column order, so the candidates
// come out in ascending column order and the result is deterministic (no
// atomics). The first `capacity` are stored as (score, column) pairs, the
// rest of the row's slots as (0, -1); the count is of every passing column,
// so a count above `capacity` tells the host to read that chunk's scores.
//
// NaN is tested on its bits, not with a comparison (which fast-math
// compilation may fold away): a NaN score passes, as the host's total order
// ranks a NaN best, and a NaN threshold passes every score.
#include "common"

struct Params {
    rows: u32,
    c: u32,
    capacity: u32,
    shift_scores: u32,
    shift_thresholds: u32,
    shift_found: u32,
    shift_counts: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read> thresholds: array<f32>;
@group(0) @binding(3) var<storage, read_write> found: array<f32>;
@group(0) @binding(4) var<storage, read_write> counts: array<f32>;

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

@compute @workgroup_size(64)
fn threshold_candidates(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = linear_index(wid, nwg, lid, 64u);
    if (r >= p.rows) {
        return;
    }
    let t = thresholds[p.shift_thresholds + r];
    let every = is_nan(t);
    let row = p.shift_scores + r * p.c;
    let out = p.shift_found + r * p.capacity * 2u;
    var n = 0u;
    for (var j = 0u; j < p.c; j++) {
        let v = scores[row + j];
        if (every || is_nan(v) || v >= t) {
            if (n < p.capacity) {
                found[out + 2u * n] = v;
                found[out + 2u * n + 1u] = f32(j);
            }
            n += 1u;
        }
    }
    for (var s = n; s < p.capacity; s++) {
        found[out + 2u * s] = 0.0;
        found[out + 2u * s + 1u] = -1.0;
    }
    counts[p.shift_counts + r] = f32(n);
}
