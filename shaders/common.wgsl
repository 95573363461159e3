// Shared helpers, included by every kernel family.

// Linear invocation index over a grid folded into 2-D (see Recorder::grid):
// dispatches larger than max_compute_workgroups_per_dimension spill into y.
fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, wg_size: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * wg_size + lid;
}

fn linear_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Numerically safe softplus with PyTorch's threshold (beta = 1, threshold 20).
fn softplus(x: f32) -> f32 {
    if (x > 20.0) {
        return x;
    }
    // log(1 + e) rounds to 0 in f32 long before e does; keep the tail exact.
    if (x < -15.0) {
        return exp(x);
    }
    return log(1.0 + exp(x));
}

fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}
