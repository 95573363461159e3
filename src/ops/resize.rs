//! Bilinear resize (`shaders/resize.wgsl`) of NHWC activations with
//! half-pixel centres, as tf.image.resize (bilinear, no antialias) and
//! PyTorch's `interpolate(mode="bilinear", align_corners=False)`: up- and
//! downsampling, with a separable, gathering (deterministic) backward pass.
//! Chunked by rows like the pooling kernels, so tensors of any size run.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{image_rows, scaled, RowLaunch};
use crate::gpu::{DeviceTensor, Recorder, ShaderSpec};
use crate::graph::{Graph, Op, TensorId};
use crate::ops::elementwise::expect_inputs;
use crate::tensor::{RefTensor, Shape, Tensor};

crate::uniform! {
    #[derive(Clone, Copy, Default, Pod, Zeroable)]
    struct Params {
        threads: u32,
        row0: u32,
        h: u32,
        w: u32,
        c: u32,
        oh: u32,
        ow: u32,
        row_lo: u32,
        row_hi: u32,
        scale_y: f32,
        scale_x: f32,
        o1: u32,
        o2: u32,
        _pad: [u32; 3],
    }
}

/// The Rust side of the uniform block of `entry` (tests compare it with the WGSL).
pub(crate) fn uniform_shape(_entry: &str) -> Option<crate::gpu::UniformShape> {
    Some(<Params as crate::gpu::Uniform>::shape())
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    vec![forward_spec(), grad_spec()]
}

fn forward_spec() -> ShaderSpec {
    ShaderSpec::new("resize", "resize").def("FORWARD", 1)
}
fn grad_spec() -> ShaderSpec {
    ShaderSpec::new("resize", "resize_grad").def("GRAD", 1)
}

/// in/out as the kernels see it (f32, as PyTorch computes it).
fn scale(n_in: usize, n_out: usize) -> f32 {
    n_in as f32 / n_out as f32
}

/// Source indices and second weight of output coordinate `d` (f64 reference).
fn tap(d: usize, scale: f32, n: usize) -> (usize, usize, f64) {
    let s = ((d as f64 + 0.5) * scale as f64 - 0.5).max(0.0);
    let i0 = (s as usize).min(n - 1);
    (i0, (i0 + 1).min(n - 1), s - i0 as f64)
}

/// Output indices [lo, hi) that may read source index i, one wider on each
/// side than the kernel's own bound so that f32 rounding there cannot escape.
fn readers(i: usize, scale: f32, n_out: usize) -> (u64, u64) {
    let s = scale as f64;
    let lo = ((i as f64 - 0.5) / s - 0.5).floor() - 2.0;
    let hi = ((i as f64 + 1.5) / s - 0.5).ceil() + 3.0;
    (lo.max(0.0) as u64, hi.clamp(0.0, n_out as f64) as u64)
}

#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
}

impl Dims {
    fn params(&self) -> Params {
        Params {
            h: self.h as u32,
            w: self.w as u32,
            c: self.c as u32,
            oh: self.oh as u32,
            ow: self.ow as u32,
            scale_y: scale(self.h, self.oh),
            scale_x: scale(self.w, self.ow),
            ..Params::default()
        }
    }
}

fn check(op: &str, x: &Shape, out_h: usize, out_w: usize) -> Result<Dims> {
    let [n, h, w, c] = x.nhwc(op)?;
    if h == 0 || w == 0 {
        return Err(Error::shape(
            op,
            format!("cannot resize an empty map {x:?}"),
        ));
    }
    if out_h == 0 || out_w == 0 {
        return Err(Error::unsupported(
            op,
            format!("output size must be positive, got {out_h}×{out_w}"),
        ));
    }
    Ok(Dims {
        n,
        h,
        w,
        c,
        oh: out_h,
        ow: out_w,
    })
}

/// Calls `f(input index, output index, weight)` for every bilinear term.
fn for_each_term(d: &Dims, mut f: impl FnMut(usize, usize, f64)) {
    let (sy, sx) = (scale(d.h, d.oh), scale(d.w, d.ow));
    for b in 0..d.n {
        for oy in 0..d.oh {
            let (y0, y1, ly) = tap(oy, sy, d.h);
            for ox in 0..d.ow {
                let (x0, x1, lx) = tap(ox, sx, d.w);
                for (iy, wy) in [(y0, 1.0 - ly), (y1, ly)] {
                    for (ix, wx) in [(x0, 1.0 - lx), (x1, lx)] {
                        for ch in 0..d.c {
                            let i = ((b * d.h + iy) * d.w + ix) * d.c + ch;
                            let o = ((b * d.oh + oy) * d.ow + ox) * d.c + ch;
                            f(i, o, wy * wx);
                        }
                    }
                }
            }
        }
    }
}

/// Bilinear resize of [N,H,W,C] to [N,out_h,out_w,C].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResizeBilinear {
    pub out_h: usize,
    pub out_w: usize,
}

impl Op for ResizeBilinear {
    fn name(&self) -> &'static str {
        "resize_bilinear"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        let d = check(self.name(), inputs[0], self.out_h, self.out_w)?;
        Ok(vec![Shape::new(&[d.n, d.oh, d.ow, d.c])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let d = check(self.name(), &inputs[0].shape, self.out_h, self.out_w)?;
        let mut y = vec![0.0; d.n * d.oh * d.ow * d.c];
        for_each_term(&d, |i, o, wt| y[o] += wt * inputs[0].data[i]);
        Ok(vec![Tensor::new([d.n, d.oh, d.ow, d.c], y)?])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let d = check(self.name(), &inputs[0].shape, self.out_h, self.out_w)?;
        let base = d.params();
        let (h, w, c, oh, ow) = (d.h as u64, d.w as u64, d.c as u64, d.oh as u64, d.ow as u64);
        // Input rows read by output rows a..=b, one wider each side for f32 rounding.
        let rows = |a: u64, b: u64| {
            let lo = tap(a as usize, base.scale_y, d.h).0 as u64;
            let hi = tap(b as usize, base.scale_y, d.h).1 as u64;
            (lo.saturating_sub(1), (hi + 2).min(h))
        };
        RowLaunch {
            op: self.name(),
            spec: &forward_spec(),
            operands: &[inputs[0], outputs[0]],
            rows: d.n as u64 * oh,
            max_rows: u64::MAX,
        }
        .record(
            rec,
            |r0, r1| {
                vec![
                    scaled(image_rows(r0, r1, oh, h, rows), w * c),
                    r0 * ow * c..r1 * ow * c,
                ]
            },
            |r0, r1| (r1 - r0) * ow * c,
            |r, threads, off| {
                bytemuck::bytes_of(&Params {
                    threads,
                    row0: r.start as u32,
                    o1: off[0],
                    o2: off[1],
                    ..base
                })
                .to_vec()
            },
        )
    }
    fn backward(
        &self,
        g: &mut Graph,
        inputs: &[TensorId],
        _outputs: &[TensorId],
        grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        let Some(dy) = grads[0] else {
            return Ok(vec![None]);
        };
        let [_, h, w, _] = g.shape(inputs[0]).nhwc(self.name())?;
        let (along_h, along_w) = (
            ResizeBilinearGrad {
                axis: Axis::H,
                size: h,
            },
            ResizeBilinearGrad {
                axis: Axis::W,
                size: w,
            },
        );
        // The axis that shrinks the intermediate more goes first.
        let (first, second) = if self.out_h * w <= h * self.out_w {
            (along_w, along_h)
        } else {
            (along_h, along_w)
        };
        let mid = g.apply1(first, &[dy])?;
        Ok(vec![Some(g.apply1(second, &[mid])?)])
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        let [n, _, _, c] = inputs[0].nhwc(self.name()).unwrap_or_default();
        (8 * n * self.out_h * self.out_w * c) as u64
    }
}

/// The axis one `ResizeBilinearGrad` pass differentiates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    H,
    W,
}

/// Gradient of `ResizeBilinear` along one axis (the gradient is separable):
/// dy [N,A,B,C] → [N,size,B,C] for `Axis::H`, [N,A,size,C] for `Axis::W`,
/// where `size` is the input extent of that axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResizeBilinearGrad {
    pub axis: Axis,
    pub size: usize,
}

/// dy viewed as [outer, n_out, inner] along the differentiated axis.
#[derive(Clone, Copy, Debug)]
struct AxisDims {
    outer: usize,
    n_in: usize,
    n_out: usize,
    inner: usize,
}

impl ResizeBilinearGrad {
    fn dims(&self, dy: &Shape) -> Result<(AxisDims, Shape)> {
        let [n, a, b, c] = dy.nhwc(self.name())?;
        if self.size == 0 || a * b == 0 {
            return Err(Error::shape(
                self.name(),
                format!(
                    "cannot resize between {dy:?} and an extent of {}",
                    self.size
                ),
            ));
        }
        Ok(match self.axis {
            Axis::H => (
                AxisDims {
                    outer: n,
                    n_in: self.size,
                    n_out: a,
                    inner: b * c,
                },
                Shape::new(&[n, self.size, b, c]),
            ),
            Axis::W => (
                AxisDims {
                    outer: n * a,
                    n_in: self.size,
                    n_out: b,
                    inner: c,
                },
                Shape::new(&[n, a, self.size, c]),
            ),
        })
    }
}

impl Op for ResizeBilinearGrad {
    fn name(&self) -> &'static str {
        "resize_bilinear_grad"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        Ok(vec![self.dims(inputs[0])?.1])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let (d, shape) = self.dims(&inputs[0].shape)?;
        let sc = scale(d.n_in, d.n_out);
        let mut dx = vec![0.0; d.outer * d.n_in * d.inner];
        for o in 0..d.outer {
            for od in 0..d.n_out {
                let (i0, i1, l) = tap(od, sc, d.n_in);
                for k in 0..d.inner {
                    let v = inputs[0].data[(o * d.n_out + od) * d.inner + k];
                    dx[(o * d.n_in + i0) * d.inner + k] += (1.0 - l) * v;
                    dx[(o * d.n_in + i1) * d.inner + k] += l * v;
                }
            }
        }
        Ok(vec![Tensor::new(shape, dx)?])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let (d, _) = self.dims(&inputs[0].shape)?;
        let sc = scale(d.n_in, d.n_out);
        let base = Params {
            h: d.n_in as u32,
            oh: d.n_out as u32,
            c: d.inner as u32,
            scale_y: sc,
            ..Params::default()
        };
        let (n_in, n_out, inner) = (d.n_in as u64, d.n_out as u64, d.inner as u64);
        let dy_rows = move |r0, r1| {
            image_rows(r0, r1, n_in, n_out, |a, b| {
                (
                    readers(a as usize, sc, d.n_out).0,
                    readers(b as usize, sc, d.n_out).1,
                )
            })
        };
        RowLaunch {
            op: self.name(),
            spec: &grad_spec(),
            operands: &[inputs[0], outputs[0]],
            rows: d.outer as u64 * n_in,
            max_rows: u64::MAX,
        }
        .record(
            rec,
            |r0, r1| vec![scaled(dy_rows(r0, r1), inner), r0 * inner..r1 * inner],
            |r0, r1| (r1 - r0) * inner,
            |r, threads, off| {
                let bound = dy_rows(r.start, r.end);
                let p = Params {
                    threads,
                    row0: r.start as u32,
                    row_lo: bound.start as u32,
                    row_hi: bound.end as u32,
                    o1: off[0],
                    o2: off[1],
                    ..base
                };
                bytemuck::bytes_of(&p).to_vec()
            },
        )
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        4 * inputs[0].numel() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_op, grad_check, OpCase};

    const CASES: [([usize; 4], usize, usize); 6] = [
        ([2, 3, 5, 3], 7, 9), // upsampling, non-integer ratios
        ([1, 4, 4, 1], 8, 8), // exact ×2
        ([1, 9, 7, 1], 4, 3), // downsampling
        ([2, 5, 5, 3], 1, 1), // to one pixel
        ([2, 1, 1, 5], 6, 3), // from one pixel (DOLG's image-pool branch)
        ([1, 5, 3, 2], 5, 3), // identity
    ];

    #[test]
    fn resize_matches_reference() {
        for (shape, oh, ow) in CASES {
            check_op(
                &OpCase::new(ResizeBilinear {
                    out_h: oh,
                    out_w: ow,
                })
                .input(shape, -2.0, 2.0),
            );
        }
    }

    #[test]
    fn known_values() {
        // PyTorch: interpolate([[0, 1]], size=4, mode="bilinear", align_corners=False) = [0, .25, .75, 1].
        let x = Tensor::new([1, 1, 2, 1], vec![0.0, 1.0]).unwrap();
        let y = ResizeBilinear { out_h: 1, out_w: 4 }
            .reference(&[&x])
            .unwrap();
        assert_eq!(y[0].data, vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn resize_gradients() {
        for (shape, oh, ow) in CASES {
            grad_check(
                &OpCase::new(ResizeBilinear {
                    out_h: oh,
                    out_w: ow,
                })
                .input(shape, -2.0, 2.0),
            );
        }
    }

    /// A large upsampling factor: a 2-D gather would loop 300·260 times per
    /// input pixel, past llvmpipe's loop limit; the separable passes do not.
    #[test]
    fn large_upsampling_gradient() {
        grad_check(
            &OpCase::new(ResizeBilinear {
                out_h: 300,
                out_w: 260,
            })
            .input([1, 1, 1, 2], -1.0, 1.0),
        );
        grad_check(
            &OpCase::new(ResizeBilinear {
                out_h: 250,
                out_w: 3,
            })
            .input([2, 2, 3, 1], -1.0, 1.0),
        );
    }

    #[test]
    fn chunked_resize() {
        for (shape, oh, ow) in [
            ([3, 7, 5, 3], 11, 6),
            ([2, 11, 9, 2], 4, 5),
            ([2, 1, 2, 3], 9, 5),
        ] {
            grad_check(
                &OpCase::new(ResizeBilinear {
                    out_h: oh,
                    out_w: ow,
                })
                .input(shape, -2.0, 2.0)
                .windows(200),
            );
        }
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let op = ResizeBilinear { out_h: 4, out_w: 4 };
        assert!(matches!(
            op.infer(&[&Shape::new(&[4, 4, 2])]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            op.infer(&[&Shape::new(&[1, 0, 4, 2])]),
            Err(Error::Shape { .. })
        ));
        let grad = ResizeBilinearGrad {
            axis: Axis::W,
            size: 0,
        };
        assert!(matches!(
            grad.infer(&[&Shape::new(&[1, 4, 4, 2])]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            ResizeBilinear { out_h: 0, out_w: 4 }.infer(&[&Shape::new(&[1, 4, 4, 2])]),
            Err(Error::Unsupported { .. })
        ));
    }
}
