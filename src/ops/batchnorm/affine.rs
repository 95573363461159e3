//! Per-channel affine maps (inference batch norm folded, biases, scales),
//! their gradients and channel sums, and the folding of running statistics
//! into an affine map.

use super::*;

/// y = x·scale[c] + shift[c] over [..., C]: inference batch norm when it is not
/// folded into a convolution (see `fold_batchnorm`), or with `scale: false`
/// a plain bias add y = x + shift[c]. Inputs x, [scale,] shift.
#[derive(Clone, Copy, Debug)]
pub struct ChannelAffine {
    pub scale: bool,
}

impl ChannelAffine {
    pub fn affine() -> Self {
        ChannelAffine { scale: true }
    }
    pub fn bias() -> Self {
        ChannelAffine { scale: false }
    }
}

impl Op for ChannelAffine {
    fn name(&self) -> &'static str {
        if self.scale {
            "channel_affine"
        } else {
            "channel_bias"
        }
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 2 + self.scale as usize)?;
        let c = channels(self.name(), inputs[0])?;
        for s in &inputs[1..] {
            expect_channel_vector(self.name(), "a per-channel operand", s, c)?;
        }
        Ok(vec![inputs[0].clone()])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let shift = &inputs[inputs.len() - 1].data;
        let scale = |c: usize| if self.scale { inputs[1].data[c] } else { 1.0 };
        Ok(vec![map_channels(inputs[0], |_, c, v| {
            v * scale(c) + shift[c]
        })])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let su = if self.scale {
            Some(inputs[1].whole(gpu)?)
        } else {
            None
        };
        let t = Some(inputs[inputs.len() - 1].whole(gpu)?);
        record_apply(
            rec,
            inputs[0],
            outputs[0],
            ChannelTerms {
                su,
                t,
                ..Default::default()
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
            return Ok(vec![None; inputs.len()]);
        };
        if !self.scale {
            return Ok(vec![Some(dy), Some(g.apply1(ChannelSum, &[dy])?)]);
        }
        let out = g.apply(ChannelAffineGrad, &[inputs[0], inputs[1], dy])?;
        Ok(out.into_iter().map(Some).collect())
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        (1 + self.scale as u64) * inputs[0].numel() as u64
    }
}

/// Gradients of `ChannelAffine` with a scale: inputs x, scale, dy; outputs
/// dx = dy·scale, dscale = Σ dy·x, dshift = Σ dy (sums over all rows).
#[derive(Clone, Copy, Debug)]
pub struct ChannelAffineGrad;

impl Op for ChannelAffineGrad {
    fn name(&self) -> &'static str {
        "channel_affine_grad"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 3)?;
        let c = channels(self.name(), inputs[0])?;
        expect_channel_vector(self.name(), "scale", inputs[1], c)?;
        expect_same(self.name(), "dy", inputs[2], inputs[0])?;
        Ok(vec![inputs[0].clone(), Shape::new(&[c]), Shape::new(&[c])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let (x, scale, dy) = (inputs[0], &inputs[1].data, inputs[2]);
        let c = scale.len();
        let (mut ds, mut dt) = (vec![0.0; c], vec![0.0; c]);
        for (i, (xv, d)) in x.data.iter().zip(&dy.data).enumerate() {
            ds[i % c] += d * xv;
            dt[i % c] += d;
        }
        Ok(vec![
            map_channels(dy, |_, ch, d| d * scale[ch]),
            vector(ds),
            vector(dt),
        ])
    }
    fn scratch(&self, gpu: &Gpu, inputs: &[&Shape]) -> Result<Vec<ScratchNeed>> {
        Ok(vec![Partials::need(gpu, inputs[0], 2)?])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let (x, scale, dy) = (inputs[0], inputs[1], inputs[2]);
        let parts = Partials::new(gpu, &x.shape, 2)?;
        parts.record(
            rec,
            dy,
            Reduce::Dot {
                b: x,
                center: None,
                mask: None,
            },
        )?;
        parts.record_sums(rec, outputs[2], Some(outputs[1]))?;
        record_apply(
            rec,
            dy,
            outputs[0],
            ChannelTerms {
                su: Some(scale.whole(gpu)?),
                ..Default::default()
            },
        )
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        4 * inputs[0].numel() as u64
    }
}

/// Per-channel sum over all leading dimensions: [..., C] → [C] (bias gradients).
#[derive(Clone, Copy, Debug)]
pub struct ChannelSum;

impl Op for ChannelSum {
    fn name(&self) -> &'static str {
        "channel_sum"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        Ok(vec![Shape::new(&[channels(self.name(), inputs[0])?])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let c = rows_channels(&inputs[0].shape).1 as usize;
        let mut s = vec![0.0; c];
        for (i, v) in inputs[0].data.iter().enumerate() {
            s[i % c] += v;
        }
        Ok(vec![vector(s)])
    }
    fn scratch(&self, gpu: &Gpu, inputs: &[&Shape]) -> Result<Vec<ScratchNeed>> {
        Ok(vec![Partials::need(gpu, inputs[0], 1)?])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let parts = Partials::new(rec.gpu(), &inputs[0].shape, 1)?;
        parts.record(rec, inputs[0], Reduce::Sum)?;
        parts.record_sums(rec, outputs[0], None)
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        inputs[0].numel() as u64
    }
}

/// Folds inference batch norm into a per-channel affine:
/// scale = γ/√(var + ε), shift = β − mean·scale, so that
/// BN(x) = x·scale + shift (for `ChannelAffine` or a convolution epilogue).
pub fn fold_batchnorm(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let c = gamma.len();
    if [beta.len(), mean.len(), var.len()] != [c; 3] {
        return Err(Error::shape(
            "fold_batchnorm",
            format!(
                "gamma, beta, mean, var have lengths {c}, {}, {}, {}",
                beta.len(),
                mean.len(),
                var.len()
            ),
        ));
    }
    expect_eps("fold_batchnorm", eps)?;
    let scale: Vec<f64> = gamma
        .iter()
        .zip(var)
        .map(|(&g, &v)| g as f64 / (v as f64 + eps as f64).sqrt())
        .collect();
    let shift = beta
        .iter()
        .zip(mean)
        .zip(&scale)
        .map(|((&b, &m), s)| (b as f64 - m as f64 * s) as f32)
        .collect();
    Ok((scale.into_iter().map(|s| s as f32).collect(), shift))
}
