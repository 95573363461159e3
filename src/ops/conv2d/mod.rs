//! 2-D convolution (`shaders/conv2d.wgsl`): NHWC activations, HWIO weights,
//! any kernel size, stride, dilation and asymmetric padding, an optional bias
//! and a fused epilogue (folded batch norm, residual add, ReLU). Forward and
//! both gradients are implicit GEMMs of one kernel body; `gpu.tuning.matmul`
//! picks shared-memory tiles or the lavapipe subgroup-broadcast design.
//!
//! Tensors larger than one storage binding are processed in chunks of whole
//! pixel rows whose destination window and matching source-row window each fit
//! one binding (`plan_chunks`).

use std::ops::Range;

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{
    Binding, BufSlice, DeviceTensor, Gpu, MatmulVariant, Recorder, ScratchNeed, ShaderSpec,
    TextureNeed, TiledConfig, Window, TILED_CONFIGS,
};
use crate::graph::{Graph, Op, TensorId};
use crate::ops::elementwise::{expect_inputs, zeros_like, Binary, BinaryKind};
use crate::ops::gemm::{record_row_dot, RowBias, ROW_DOT_MAX_K};
use crate::tensor::{Precision, RefTensor, Shape, Tensor};

mod geometry;
mod grad;
mod kernel;
mod staging;

use geometry::*;
pub use grad::{BiasGrad, Conv2dInputGrad, Conv2dWeightGrad, SwapLastAxes};
pub use kernel::shader_specs;
use kernel::*;
use staging::*;

/// The Rust side of the uniform block of `entry` (tests compare it with the WGSL).
pub(crate) fn uniform_shape(_entry: &str) -> Option<crate::gpu::UniformShape> {
    Some(<Params as crate::gpu::Uniform>::shape())
}

/// Explicit zero padding of the two spatial axes, in pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Padding {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Padding {
    /// PyTorch's `padding=(h, w)`: the same amount on both sides.
    pub fn symmetric(h: usize, w: usize) -> Self {
        Padding {
            top: h,
            bottom: h,
            left: w,
            right: w,
        }
    }

    /// TensorFlow's "same" padding for an input of `in_hw`: the output has
    /// ceil(in/stride) pixels and any odd padding pixel goes to the bottom/right.
    pub fn same(
        in_hw: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
    ) -> Self {
        let total = |i: usize| {
            let s = stride[i].max(1);
            let needed =
                (in_hw[i].div_ceil(s).max(1) - 1) * s + (kernel[i].max(1) - 1) * dilation[i] + 1;
            needed.saturating_sub(in_hw[i])
        };
        let (th, tw) = (total(0), total(1));
        Padding {
            top: th / 2,
            bottom: th - th / 2,
            left: tw / 2,
            right: tw - tw / 2,
        }
    }
}

/// What the kernel applies to each output after the sum, in this order:
/// + bias[c], ·scale[c] + shift[c] (inference batch norm folded), + residual, ReLU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Epilogue {
    pub bias: bool,
    pub scale_shift: bool,
    pub residual: bool,
    pub relu: bool,
}

impl Epilogue {
    fn all() -> impl Iterator<Item = Epilogue> {
        (0..16u32).map(|b| Epilogue {
            bias: b & 1 != 0,
            scale_shift: b & 2 != 0,
            residual: b & 4 != 0,
            relu: b & 8 != 0,
        })
    }
}

/// y = conv(x, w) with the epilogue. Inputs, in order: x [N, H, W, C_in],
/// w [kh, kw, C_in, C_out], then bias [C_out], scale and shift [C_out] and the
/// residual [N, OH, OW, C_out] when the epilogue has them. x, w, the residual
/// and y are stored at `precision` (f16: forward only, sums in f32, y rounded
/// once); bias, scale and shift are always f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2d {
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub padding: Padding,
    pub epilogue: Epilogue,
    pub precision: Precision,
    /// The output feeds only a training-mode batch norm (see
    /// `bias_before_batch_norm`): the bias gradient is exactly zero.
    pub bias_cancelled: bool,
}

impl Conv2d {
    pub fn new(stride: [usize; 2], padding: Padding) -> Self {
        Conv2d {
            stride,
            dilation: [1, 1],
            padding,
            epilogue: Epilogue::default(),
            precision: Precision::F32,
            bias_cancelled: false,
        }
    }
    /// Stores x, w, the residual and y at `precision`.
    pub fn stored(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }
    pub fn dilation(mut self, d: [usize; 2]) -> Self {
        self.dilation = d;
        self
    }
    pub fn bias(mut self) -> Self {
        self.epilogue.bias = true;
        self
    }
    /// The output goes only into a batch norm in training mode, whose mean
    /// and variance outputs take no gradient: it subtracts each channel's
    /// batch mean, so nothing downstream depends on the bias and the
    /// bias's gradient is exactly zero. The backward then fills zeros
    /// instead of summing dy over every pixel (which would give rounding
    /// noise around zero). The forward, and so the running mean, still adds it.
    pub fn bias_before_batch_norm(mut self) -> Self {
        self.bias_cancelled = true;
        self
    }
    pub fn scale_shift(mut self) -> Self {
        self.epilogue.scale_shift = true;
        self
    }
    pub fn residual(mut self) -> Self {
        self.epilogue.residual = true;
        self
    }
    pub fn relu(mut self) -> Self {
        self.epilogue.relu = true;
        self
    }
    fn input_count(&self) -> usize {
        let e = self.epilogue;
        2 + e.bias as usize + 2 * e.scale_shift as usize + e.residual as usize
    }

    /// Output spatial size for an input of `in_hw` and a kernel of `k`.
    pub fn output_hw(&self, in_hw: [usize; 2], k: [usize; 2]) -> Result<[usize; 2]> {
        let pads = [
            self.padding.top + self.padding.bottom,
            self.padding.left + self.padding.right,
        ];
        let mut out = [0; 2];
        for i in 0..2 {
            if self.stride[i] == 0 || self.dilation[i] == 0 || k[i] == 0 {
                return Err(Error::unsupported(
                    "conv2d",
                    "stride, dilation and kernel size must be at least 1",
                ));
            }
            let span = (k[i] - 1) * self.dilation[i] + 1;
            let padded = in_hw[i] + pads[i];
            if padded < span {
                return Err(Error::shape(
                    "conv2d",
                    format!("a dilated kernel of {span} pixels does not fit a padded input of {padded} (axis {i})"),
                ));
            }
            out[i] = (padded - span) / self.stride[i] + 1;
        }
        Ok(out)
    }

    fn geom(&self, x: &Shape, w: &Shape) -> Result<Geom> {
        let [n, h, wd, cin] = x.nhwc("conv2d")?;
        let [kh, kw, wcin, cout] = match w.dims() {
            &[a, b, c, d] => [a, b, c, d],
            _ => {
                return Err(Error::shape(
                    "conv2d",
                    format!("weights must be HWIO [kh, kw, c_in, c_out], got {w:?}"),
                ))
            }
        };
        if wcin != cin {
            return Err(Error::shape(
                "conv2d",
                format!("input has {cin} channels but the weights expect {wcin}"),
            ));
        }
        if n == 0 || h == 0 || wd == 0 || cin == 0 || cout == 0 {
            return Err(Error::shape(
                "conv2d",
                format!("empty tensor: x {x:?}, w {w:?}"),
            ));
        }
        let [oh, ow] = self.output_hw([h, wd], [kh, kw])?;
        Ok(Geom {
            n,
            h,
            w: wd,
            cin,
            kh,
            kw,
            cout,
            oh,
            ow,
        })
    }

    /// The gather of the forward product (and of the weight gradient).
    fn forward_gather(&self, g: &Geom) -> Gather {
        Gather {
            src: [g.h, g.w, g.cin],
            grid: [g.oh, g.ow],
            taps: [g.kh, g.kw],
            mul: [self.stride[0] as i64, self.stride[1] as i64],
            off: [-(self.padding.top as i64), -(self.padding.left as i64)],
            dk: [self.dilation[0] as i64, self.dilation[1] as i64],
            div: [1, 1],
        }
    }

    /// The transposed gather of the input gradient: input pixel (y, x) receives
    /// dy at (y + top − ky·d)/s wherever the stride divides that offset.
    fn input_grad_gather(&self, g: &Geom) -> Gather {
        Gather {
            src: [g.oh, g.ow, g.cout],
            grid: [g.h, g.w],
            taps: [g.kh, g.kw],
            mul: [1, 1],
            off: [self.padding.top as i64, self.padding.left as i64],
            dk: [-(self.dilation[0] as i64), -(self.dilation[1] as i64)],
            div: [self.stride[0] as i64, self.stride[1] as i64],
        }
    }

    /// Calls `f(n, oy, ox, iy, ix, ky, kx)` for every tap that reads a real
    /// (non-padding) input pixel: the loop nest all three references share.
    fn for_each_tap(&self, g: &Geom, mut f: impl FnMut([usize; 7])) {
        for n in 0..g.n {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    for ky in 0..g.kh {
                        let iy = (oy * self.stride[0] + ky * self.dilation[0]) as i64
                            - self.padding.top as i64;
                        if iy < 0 || iy >= g.h as i64 {
                            continue;
                        }
                        for kx in 0..g.kw {
                            let ix = (ox * self.stride[1] + kx * self.dilation[1]) as i64
                                - self.padding.left as i64;
                            if ix < 0 || ix >= g.w as i64 {
                                continue;
                            }
                            f([n, oy, ox, iy as usize, ix as usize, ky, kx]);
                        }
                    }
                }
            }
        }
    }
}

fn vector_shape(op: &str, what: &str, s: &Shape, len: usize) -> Result<()> {
    if s.dims() != [len] {
        return Err(Error::shape(
            op,
            format!("{what} must be [{len}], got {s:?}"),
        ));
    }
    Ok(())
}

impl Op for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn output_precision(&self, inputs: &[Precision]) -> Result<Precision> {
        let vectors = 2 + self.epilogue.bias as usize + 2 * self.epilogue.scale_shift as usize;
        for (i, p) in inputs.iter().enumerate() {
            let want = if (2..vectors).contains(&i) {
                Precision::F32
            } else {
                self.precision
            };
            if *p != want {
                return Err(Error::Internal(format!(
                    "conv2d ({}) input {i} is stored in {}, it reads {}",
                    self.precision.name(),
                    p.name(),
                    want.name()
                )));
            }
        }
        Ok(self.precision)
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, self.input_count())?;
        let g = self.geom(inputs[0], inputs[1])?;
        let out = Shape::new(&[g.n, g.oh, g.ow, g.cout]);
        let mut i = 2;
        if self.epilogue.bias {
            vector_shape("conv2d", "bias", inputs[i], g.cout)?;
            i += 1;
        }
        if self.epilogue.scale_shift {
            vector_shape("conv2d", "scale", inputs[i], g.cout)?;
            vector_shape("conv2d", "shift", inputs[i + 1], g.cout)?;
            i += 2;
        }
        if self.epilogue.residual && *inputs[i] != out {
            return Err(Error::shape(
                "conv2d",
                format!("residual must be {out:?}, got {:?}", inputs[i]),
            ));
        }
        Ok(vec![out])
    }

    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let shapes: Vec<&Shape> = inputs.iter().map(|t| &t.shape).collect();
        let out_shape = self.infer(&shapes)?.remove(0);
        let g = self.geom(&inputs[0].shape, &inputs[1].shape)?;
        let (x, w) = (&inputs[0].data, &inputs[1].data);
        let mut y = vec![0f64; out_shape.numel()];
        self.for_each_tap(&g, |[n, oy, ox, iy, ix, ky, kx]| {
            let (xi, yi, wi) = (
                g.in_index(n, iy, ix),
                g.out_index(n, oy, ox),
                g.w_index(ky, kx),
            );
            for ci in 0..g.cin {
                let xv = x[xi + ci];
                let wrow = &w[wi + ci * g.cout..wi + (ci + 1) * g.cout];
                for (acc, wv) in y[yi..yi + g.cout].iter_mut().zip(wrow) {
                    *acc += xv * wv;
                }
            }
        });
        let e = self.epilogue;
        let mut next = 2;
        let mut take = |on: bool| {
            on.then(|| {
                next += 1;
                &inputs[next - 1].data
            })
        };
        let (bias, scale, shift) = (take(e.bias), take(e.scale_shift), take(e.scale_shift));
        let residual = take(e.residual);
        for (i, v) in y.iter_mut().enumerate() {
            let c = i % g.cout;
            if let Some(b) = bias {
                *v += b[c];
            }
            if let (Some(s), Some(t)) = (scale, shift) {
                *v = *v * s[c] + t[c];
            }
            if let Some(r) = residual {
                *v += r[i];
            }
            if e.relu {
                *v = v.max(0.0);
            }
            // The kernel rounds once, on store (its inputs are stored
            // rounded already, and so are the reference's).
            *v = self.precision.round(*v);
        }
        Ok(vec![Tensor {
            shape: out_shape,
            data: y,
        }])
    }

    fn scratch(&self, gpu: &Gpu, inputs: &[&Shape]) -> Result<Vec<ScratchNeed>> {
        let g = self.geom(inputs[0], inputs[1])?;
        if self.is_row_dot(&g) {
            return Ok(Vec::new());
        }
        let (x, w) = (inputs[0].numel() as u64, inputs[1].numel() as u64);
        let limit = gpu.max_window_elems();
        let product = |a_channels, a_elems, b_elems| StagedProduct {
            mode: Mode::Forward,
            precision: self.precision,
            a_channels,
            n: g.cout,
            a_elems,
            b_elems,
        };
        Ok(match unfolded_width(gpu, &g, limit) {
            Some(k_rows) => {
                // Chunks are planned so that one chunk's unfolded rows fit a
                // window; the unfold reads its source through the scalar slot.
                let unfolded = ((g.n * g.oh * g.ow * k_rows) as u64).min(limit);
                let padded = (k_rows * g.cout) as u64;
                let elem = self.precision.bytes();
                let mut needs = staging_needs(gpu, &product(k_rows, unfolded, padded));
                if self.precision == Precision::F32 {
                    needs.push(slot_need(gpu, Slot::AScalar, x));
                }
                needs.extend([
                    ScratchNeed::Buffer {
                        purpose: UNFOLDED,
                        bytes: unfolded * elem,
                    },
                    ScratchNeed::Buffer {
                        purpose: PADDED_WEIGHTS,
                        bytes: padded * elem,
                    },
                ]);
                needs
            }
            None => staging_needs(gpu, &product(g.cin, x, w)),
        })
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let g = self.geom(&inputs[0].shape, &inputs[1].shape)?;
        if self.is_row_dot(&g) {
            // Each pixel's channels dotted with the one filter.
            let bias = self.epilogue.bias.then(|| RowBias {
                values: inputs[2],
                per_row: false,
            });
            let rows = (g.n * g.h * g.w) as u64;
            let dims = [rows, g.cin as u64];
            let limit = gpu.max_window_elems();
            return record_row_dot(rec, inputs[0], inputs[1], bias, outputs[0], dims, limit);
        }
        let gather = self.forward_gather(&g);
        let (x, out) = (inputs[0], outputs[0]);
        let weights = inputs[1].whole(gpu)?;
        let vectors = 2 + self.epilogue.bias as usize + 2 * self.epilogue.scale_shift as usize;
        let extra = inputs[2..vectors]
            .iter()
            .map(|t| t.whole(gpu))
            .collect::<Result<Vec<_>>>()?;
        let residual = self.epilogue.residual.then(|| inputs[vectors]);
        let (out_row, in_row) = ((g.ow * g.cout) as u64, (g.w * g.cin) as u64);
        let k = g.kh * g.kw * g.cin;
        let limit = gpu.max_window_elems();
        let unfold = unfolded_width(gpu, &g, limit);
        let (k_rows, dest_row, b) = match unfold {
            Some(k_rows) => {
                let b = record_padded_rows(rec, self.precision, &weights, k, g.cout, k_rows)?;
                (k_rows, out_row.max((g.ow * k_rows) as u64), b)
            }
            None => (k, out_row, weights),
        };
        for chunk in plan_chunks(&gather, g.n, dest_row, in_row, limit)? {
            let rows = chunk.rows.len() as u64;
            let pixels = chunk.rows.len() * g.ow;
            let src_base = chunk.src.start as u64 * in_row;
            let src = x.window(gpu, src_base, chunk.src.len() as u64 * in_row)?;
            let row0 = chunk.rows.start * g.ow;
            let (gather, a, a_base, row0) = if unfold.is_some() {
                let a = record_unfold(
                    rec,
                    self.precision,
                    &gather,
                    &src,
                    src_base,
                    row0,
                    pixels,
                    k,
                    k_rows,
                )?;
                (Gather::rows(pixels, k_rows), a, 0, 0)
            } else {
                (gather, src, src_base, row0)
            };
            let c_start = chunk.rows.start as u64 * out_row;
            record_gemm(
                rec,
                GemmCall {
                    mode: Mode::Forward,
                    precision: self.precision,
                    epilogue: self.epilogue,
                    gather,
                    m: pixels,
                    n: g.cout,
                    k: k_rows,
                    row0,
                    k0: 0,
                    a,
                    a_base,
                    b: b.clone(),
                    c: out.window(gpu, c_start, rows * out_row)?,
                    extra: &extra,
                    residual: residual
                        .map(|r| r.window(gpu, c_start, rows * out_row))
                        .transpose()?,
                    accum: false,
                },
            )?;
        }
        Ok(())
    }

    /// Gradients for bias-only epilogues (ReLU included: its mask comes from
    /// the output). Folded batch norm and residual epilogues are inference
    /// fusions; training uses the separate batch-norm and add ops.
    fn backward(
        &self,
        g: &mut Graph,
        inputs: &[TensorId],
        outputs: &[TensorId],
        grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        if self.precision != Precision::F32 {
            return Err(Error::unsupported(
                "conv2d",
                "no backward through an f16 convolution: train in f32",
            ));
        }
        if self.epilogue.scale_shift || self.epilogue.residual {
            return Err(Error::unsupported(
                "conv2d",
                "no backward through a fused scale/shift or residual epilogue: train with separate batch-norm and add ops",
            ));
        }
        let Some(dy) = grads[0] else {
            return Ok(vec![None; inputs.len()]);
        };
        let dy = if self.epilogue.relu {
            g.apply1(Binary::new(BinaryKind::ReluGrad), &[outputs[0], dy])?
        } else {
            dy
        };
        let x_shape = g.shape(inputs[0]).clone();
        let [_, h, w, _] = x_shape.nhwc("conv2d")?;
        let [kh, kw] = match g.shape(inputs[1]).dims() {
            &[a, b, _, _] => [a, b],
            other => {
                return Err(Error::shape(
                    "conv2d",
                    format!("weights must be HWIO, got {other:?}"),
                ))
            }
        };
        let geometry = Conv2d {
            epilogue: Epilogue::default(),
            bias_cancelled: false,
            ..self.clone()
        };
        let w_t = g.apply1(SwapLastAxes, &[inputs[1]])?;
        let dx = g.apply1(
            Conv2dInputGrad {
                conv: geometry.clone(),
                input_hw: [h, w],
            },
            &[dy, w_t],
        )?;
        let dw = g.apply1(
            Conv2dWeightGrad {
                conv: geometry,
                kernel: [kh, kw],
            },
            &[inputs[0], dy],
        )?;
        let mut out = vec![Some(dx), Some(dw)];
        if self.epilogue.bias {
            let db = if self.bias_cancelled {
                zeros_like(g, inputs[2])?
            } else {
                g.apply1(BiasGrad, &[dy])?
            };
            out.push(Some(db));
        }
        Ok(out)
    }

    fn flops(&self, inputs: &[&Shape]) -> u64 {
        self.geom(inputs[0], inputs[1]).map_or(0, |g| g.flops())
    }

    fn profile_label(&self, inputs: &[&Shape]) -> String {
        self.label(self.name(), self.geom(inputs[0], inputs[1]))
    }
}

impl Conv2d {
    /// A 1×1 convolution to one channel with at most a bias (attention
    /// logits) is a matrix-vector product: the implicit GEMM would compute
    /// 32 output channels per pixel and keep one.
    fn is_row_dot(&self, g: &Geom) -> bool {
        let Epilogue {
            scale_shift,
            residual,
            relu,
            ..
        } = self.epilogue;
        [g.kh, g.kw, g.cout] == [1, 1, 1]
            && self.stride == [1, 1]
            && self.padding == Padding::default()
            && !(scale_shift || residual || relu)
            && g.cin as u64 <= ROW_DOT_MAX_K
    }

    /// `op` with the kernel, stride, dilation and channels of `geom`, the way
    /// `bench kernels` names its cases ("conv2d 3x3/2 256->256").
    fn label(&self, op: &str, geom: Result<Geom>) -> String {
        let Ok(g) = geom else {
            return op.to_string();
        };
        let dilation = match self.dilation {
            [1, 1] => String::new(),
            [dh, dw] if dh == dw => format!(" dilation {dh}"),
            [dh, dw] => format!(" dilation {dh}x{dw}"),
        };
        let stride = match self.stride {
            [sh, sw] if sh == sw => format!("{sh}"),
            [sh, sw] => format!("{sh}x{sw}"),
        };
        format!(
            "{op} {}x{}/{stride}{dilation} {}->{}",
            g.kh, g.kw, g.cin, g.cout
        )
    }
}

#[cfg(test)]
mod tests;
