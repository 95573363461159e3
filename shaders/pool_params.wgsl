// The uniform block of the row-chunked pooling kernels (pool.wgsl and
// global_pool.wgsl); its Rust side is `ops::pool::Params`.

struct Params {
    threads: u32,
    // First and end (exclusive) global row of this chunk's thread space.
    row0: u32,
    row_end: u32,
    h: u32,
    w: u32,
    c: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    pt: u32,
    pl: u32,
    eps: f32,
    inv_hw: f32,
    o1: u32,
    o2: u32,
    o3: u32,
    o4: u32,
    o5: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
