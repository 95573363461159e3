// Copies a block of columns between two row-major matrices with the same row
// count: the channel concatenation of NHWC maps ([rows, C] views) and, for
// its gradient, the slice back out. One invocation per copied element.
#include "common"

struct Params {
    rows: u32,
    cols: u32,
    src_stride: u32,
    src_col: u32,
    dst_stride: u32,
    dst_col: u32,
    shift_src: u32,
    shift_dst: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256)
fn copy_columns(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.rows * p.cols) {
        return;
    }
    let r = i / p.cols;
    let k = i - r * p.cols;
    dst[p.shift_dst + r * p.dst_stride + p.dst_col + k] = src[p.shift_src + r * p.src_stride + p.src_col + k];
}
