//! Storage precision conversion (`shaders/cast.wgsl`): where an f16 part of
//! a graph meets ops that read f32 (the image into the backbone, its feature
//! maps into the heads). f32 → f16 rounds as `tensor::f16_store`; f16 → f32
//! is exact.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{chunks, DeviceTensor, Recorder, ShaderSpec};
use crate::graph::Op;
use crate::ops::elementwise::expect_inputs;
use crate::tensor::{Precision, RefTensor, Shape, Tensor};

const WG: u64 = 256;

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct Params {
        n: u32,
        shift_x: u32,
        shift_out: u32,
        _pad: u32,
    }
}

/// The Rust side of the uniform block of `entry` (tests compare it with the WGSL).
pub(crate) fn uniform_shape(_entry: &str) -> Option<crate::gpu::UniformShape> {
    Some(<Params as crate::gpu::Uniform>::shape())
}

fn spec(to: Precision) -> ShaderSpec {
    ShaderSpec::new("cast", "convert").def("TO_F16", (to == Precision::F16) as u32)
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    vec![spec(Precision::F16), spec(Precision::F32)]
}

/// y = x stored at precision `to` (the input must be stored at the other one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cast {
    pub to: Precision,
}

impl Op for Cast {
    fn name(&self) -> &'static str {
        "cast"
    }
    fn output_precision(&self, inputs: &[Precision]) -> Result<Precision> {
        match inputs {
            [from] if *from != self.to => Ok(self.to),
            _ => Err(Error::Internal(format!(
                "cast to {} of inputs stored in {inputs:?}",
                self.to.name()
            ))),
        }
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        Ok(vec![inputs[0].clone()])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        Ok(vec![Tensor {
            shape: inputs[0].shape.clone(),
            data: inputs[0].data.iter().map(|&v| self.to.round(v)).collect(),
        }])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let (x, out) = (inputs[0], outputs[0]);
        if (x.precision, out.precision) == (self.to, self.to) || out.precision != self.to {
            return Err(Error::Internal(format!(
                "cast to {}: tensors stored in {} and {}",
                self.to.name(),
                x.precision.name(),
                out.precision.name()
            )));
        }
        for range in chunks(x.numel(), gpu.max_window_elems()) {
            let count = range.end - range.start;
            let src = x.window(gpu, range.start, count)?;
            let dst = out.window(gpu, range.start, count)?;
            let params = Params {
                n: count as u32,
                shift_x: src.shift,
                shift_out: dst.shift,
                _pad: 0,
            };
            rec.dispatch_groups(
                &spec(self.to),
                bytemuck::bytes_of(&params),
                vec![(&src).into(), (&dst).into()],
                count.div_ceil(WG),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_op, OpCase};

    #[test]
    fn casts_round_like_the_host_on_awkward_sizes_and_windows() {
        // Values far beyond f16's range check the saturation, small ones its
        // subnormals; odd sizes and tiny windows check the shifts of 2-byte
        // elements. The reference rounds exactly as the host does; a kernel
        // whose conversion picks the other neighbour of a value differs by
        // one f16 step (2^-10 relative), within the tolerance.
        for (n, window) in [(1, None), (7, None), (1029, None), (1029, Some(100))] {
            let mut case = OpCase::new(Cast { to: Precision::F16 })
                .input([n], -7e4, 7e4)
                .tol(1e-3, 0.0);
            if let Some(w) = window {
                case = case.windows(w);
            }
            check_op(&case);
            let mut back = OpCase::new(Cast { to: Precision::F32 })
                .input([n], -3.0, 3.0)
                .stored(0, Precision::F16)
                .tol(0.0, 0.0);
            if let Some(w) = window {
                back = back.windows(w);
            }
            check_op(&back);
        }
    }

    #[test]
    fn a_cast_to_the_precision_a_tensor_has_is_refused_when_the_graph_is_built() {
        let mut g = crate::graph::Graph::new();
        let x = g.input("x", [4]);
        let err = g.apply1(Cast { to: Precision::F32 }, &[x]).unwrap_err();
        assert!(err.to_string().contains("cast to f32"), "{err}");
    }
}
