//! Batch normalisation in training mode: batch statistics and the
//! normalised output, the backward pass, and the running averages.

use super::*;
use crate::ops::elementwise::{Binary, BinaryKind};

const SCALE: &str = "batchnorm scale";
const BACKWARD_COEFFICIENTS: &str = "batchnorm backward coefficients";

/// Batch normalisation in training mode: y = (x − μ)/√(σ² + ε)·γ + β with the
/// batch mean μ and biased variance σ² per channel (over all leading
/// dimensions). Inputs x [..., C] (at least 2 rows), γ [C], β [C]; outputs
/// y, μ [C], σ² [C]. A ResNet's epilogue can be fused in: with `residual`
/// a fourth input r (x's shape) is added to y, with `relu` the output is
/// max(0, ·); the write of y then does the work of up to two more passes,
/// and the backward folds the ReLU's mask into its reads of dy.
#[derive(Clone, Copy, Debug)]
pub struct BatchNormTrain {
    pub eps: f32,
    pub residual: bool,
    pub relu: bool,
}

impl BatchNormTrain {
    pub fn new(eps: f32) -> Self {
        BatchNormTrain {
            eps,
            residual: false,
            relu: false,
        }
    }
    /// Adds a fourth input, the residual, to the normalised output.
    pub fn residual(self) -> Self {
        BatchNormTrain {
            residual: true,
            ..self
        }
    }
    /// Writes max(0, ·) of the (normalised + residual) output.
    pub fn relu(self) -> Self {
        BatchNormTrain { relu: true, ..self }
    }
}

impl Op for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batchnorm_train"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 3 + self.residual as usize)?;
        expect_eps(self.name(), self.eps)?;
        let c = expect_batch(self.name(), inputs[0])?;
        expect_channel_vector(self.name(), "gamma", inputs[1], c)?;
        expect_channel_vector(self.name(), "beta", inputs[2], c)?;
        if self.residual {
            expect_same(self.name(), "residual", inputs[3], inputs[0])?;
        }
        Ok(vec![inputs[0].clone(), Shape::new(&[c]), Shape::new(&[c])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let (x, gamma, beta) = (inputs[0], &inputs[1].data, &inputs[2].data);
        let (mean, var) = ref_moments(x);
        let eps = self.eps as f64;
        let y = map_channels(x, |i, c, v| {
            let mut y = (v - mean[c]) / (var[c] + eps).sqrt() * gamma[c] + beta[c];
            if self.residual {
                y += inputs[3].data[i];
            }
            if self.relu {
                y = y.max(0.0);
            }
            y
        });
        Ok(vec![y, vector(mean), vector(var)])
    }
    fn scratch(&self, gpu: &Gpu, inputs: &[&Shape]) -> Result<Vec<ScratchNeed>> {
        let c = rows_channels(inputs[0]).1;
        Ok(vec![
            Partials::need(gpu, inputs[0], 2)?,
            channel_need(SCALE, c, 1),
        ])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let (x, gamma, beta) = (inputs[0], inputs[1], inputs[2]);
        let (y, mean, var) = (outputs[0], outputs[1], outputs[2]);
        let c = rows_channels(&x.shape).1;
        let parts = Partials::new(gpu, &x.shape, 2)?;
        parts.record(rec, x, Reduce::Moments)?;
        let (scale, _) = channel_scratch(gpu, SCALE, c, 1)?;
        let windows = [
            parts.window.clone(),
            gamma.whole(gpu)?,
            mean.whole(gpu)?,
            var.whole(gpu)?,
            scale.clone(),
        ];
        let p = parts.finalize_params(1.0, self.eps);
        launch(rec, &moments_spec(), p, &windows, parts.channel_groups())?;
        let terms = ChannelTerms {
            m: Some(mean.whole(gpu)?),
            su: Some(scale),
            t: Some(beta.whole(gpu)?),
            residual: inputs.get(3).copied(),
            relu: self.relu,
            ..Default::default()
        };
        record_apply(rec, x, y, terms)
    }
    fn backward(
        &self,
        g: &mut Graph,
        inputs: &[TensorId],
        outputs: &[TensorId],
        grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        let (x, gamma) = (inputs[0], inputs[1]);
        let dy = match grads[0] {
            Some(d) => d,
            None => zeros_like(g, x)?,
        };
        // The residual's gradient is the masked dy itself, so it is
        // materialised once and read by both; without a residual the
        // mask is applied as BatchNormGrad reads dy.
        let masked = self.relu && self.residual;
        let dy = if masked {
            g.apply1(Binary::new(BinaryKind::ReluGrad), &[outputs[0], dy])?
        } else {
            dy
        };
        let mut ins = vec![x, gamma, outputs[1], outputs[2], dy];
        let stat_grads = grads[1].is_some() || grads[2].is_some();
        if stat_grads {
            for d in &grads[1..3] {
                ins.push(match *d {
                    Some(d) => d,
                    None => zeros_like(g, gamma)?,
                });
            }
        }
        let relu_mask = self.relu && !masked;
        if relu_mask {
            ins.push(outputs[0]);
        }
        let out = g.apply(
            BatchNormGrad {
                eps: self.eps,
                stat_grads,
                relu_mask,
            },
            &ins,
        )?;
        let mut in_grads: Vec<Option<TensorId>> = out.into_iter().map(Some).collect();
        if self.residual {
            in_grads.push(Some(dy));
        }
        Ok(in_grads)
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        8 * inputs[0].numel() as u64
    }
}

/// The batch-norm backward through the batch statistics. Inputs x, γ, μ, σ²,
/// dy, with `stat_grads` also dμ, dσ² (gradients reaching the mean and
/// variance outputs), and with `relu_mask` last the output of a ReLU that
/// followed the batch norm: dy is then read as dy·[mask > 0], the ReLU's
/// gradient without a pass of its own. Outputs dx, dγ, dβ.
#[derive(Clone, Copy, Debug)]
pub struct BatchNormGrad {
    pub eps: f32,
    pub stat_grads: bool,
    pub relu_mask: bool,
}

impl Op for BatchNormGrad {
    fn name(&self) -> &'static str {
        "batchnorm_grad"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        let stats = if self.stat_grads { 2 } else { 0 };
        expect_inputs(self.name(), inputs, 5 + stats + self.relu_mask as usize)?;
        expect_eps(self.name(), self.eps)?;
        let x = inputs[0];
        let c = expect_batch(self.name(), x)?;
        for (what, s) in ["gamma", "mean", "var"].iter().zip(&inputs[1..4]) {
            expect_channel_vector(self.name(), what, s, c)?;
        }
        expect_same(self.name(), "dy", inputs[4], x)?;
        for (what, s) in ["dmean", "dvar"].iter().zip(&inputs[5..5 + stats]) {
            expect_channel_vector(self.name(), what, s, c)?;
        }
        if self.relu_mask {
            expect_same(self.name(), "ReLU mask", inputs[5 + stats], x)?;
        }
        Ok(vec![x.clone(), Shape::new(&[c]), Shape::new(&[c])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let (x, gamma, mean, var) = (inputs[0], &inputs[1].data, &inputs[2].data, &inputs[3].data);
        let dy = match self.mask(inputs) {
            Some(mask) => Binary::new(BinaryKind::ReluGrad)
                .reference(&[mask, inputs[4]])?
                .remove(0),
            None => inputs[4].clone(),
        };
        let (rows, c) = rows_channels(&x.shape);
        let (n, c) = (rows as f64, c as usize);
        let inv: Vec<f64> = var
            .iter()
            .map(|v| 1.0 / (v + self.eps as f64).sqrt())
            .collect();
        let (mut s1, mut s2) = (vec![0.0; c], vec![0.0; c]);
        for (i, (&xv, &d)) in x.data.iter().zip(&dy.data).enumerate() {
            s1[i % c] += d;
            s2[i % c] += d * (xv - mean[i % c]);
        }
        let zero = vec![0.0; c];
        let (dmean, dvar) = if self.stat_grads {
            (&inputs[5].data, &inputs[6].data)
        } else {
            (&zero, &zero)
        };
        let dx = map_channels(x, |i, ch, xv| {
            let gi = gamma[ch] * inv[ch];
            let xhat = (xv - mean[ch]) * inv[ch];
            gi * (dy.data[i] - s1[ch] / n - xhat * inv[ch] * s2[ch] / n)
                + dmean[ch] / n
                + 2.0 * dvar[ch] * (xv - mean[ch]) / n
        });
        let dgamma = s2.iter().zip(&inv).map(|(s, i)| s * i).collect();
        Ok(vec![dx, vector(dgamma), vector(s1)])
    }
    fn scratch(&self, gpu: &Gpu, inputs: &[&Shape]) -> Result<Vec<ScratchNeed>> {
        let c = rows_channels(inputs[0]).1;
        Ok(vec![
            Partials::need(gpu, inputs[0], 2)?,
            channel_need(BACKWARD_COEFFICIENTS, c, 3),
        ])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let (x, gamma, mean, var, dy) = (inputs[0], inputs[1], inputs[2], inputs[3], inputs[4]);
        let mask = self.mask(inputs);
        let (dx, dgamma, dbeta) = (outputs[0], outputs[1], outputs[2]);
        let (rows, c) = rows_channels(&x.shape);
        let parts = Partials::new(gpu, &x.shape, 2)?;
        parts.record(
            rec,
            dy,
            Reduce::Dot {
                b: x,
                center: Some(mean),
                mask,
            },
        )?;
        let (coef, planes) = channel_scratch(gpu, BACKWARD_COEFFICIENTS, c, 3)?;
        let mut windows = vec![
            parts.window.clone(),
            gamma.whole(gpu)?,
            var.whole(gpu)?,
            dgamma.whole(gpu)?,
            dbeta.whole(gpu)?,
            coef,
        ];
        if self.stat_grads {
            for t in &inputs[5..7] {
                windows.push(t.whole(gpu)?);
            }
        }
        let p = parts.finalize_params(1.0 / rows as f32, self.eps);
        launch(
            rec,
            &bn_backward_spec(self.stat_grads),
            p,
            &windows,
            parts.channel_groups(),
        )?;
        let [a, k, d]: [Window; 3] = planes
            .try_into()
            .map_err(|_| Error::Internal("batchnorm_grad: coefficient planes".into()))?;
        let terms = ChannelTerms {
            m: Some(mean.whole(gpu)?),
            su: Some(k),
            v: Some((dy, a)),
            t: Some(d),
            mask,
            ..Default::default()
        };
        record_apply(rec, x, dx, terms)
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        8 * inputs[0].numel() as u64
    }
}

impl BatchNormGrad {
    /// The ReLU mask input, when there is one (always the last).
    fn mask<'a, T>(&self, inputs: &[&'a T]) -> Option<&'a T> {
        self.relu_mask.then(|| inputs[inputs.len() - 1])
    }
}

/// Updates the running statistics in place from one batch's mean and biased
/// variance: new = (1 − momentum)·running + momentum·batch (PyTorch's
/// convention), the batch variance first made unbiased (× n/(n−1)) when
/// `unbiased` (PyTorch) or kept biased (Keras). Inputs running_mean,
/// running_var (both overwritten), batch_mean, batch_var, all [C]; no outputs.
/// `count` is the number of rows the batch statistics were taken over (N·H·W).
#[derive(Clone, Copy, Debug)]
pub struct BatchNormRunningUpdate {
    pub momentum: f32,
    pub unbiased: bool,
    pub count: usize,
}

impl BatchNormRunningUpdate {
    /// PyTorch's default: momentum 0.1, unbiased running variance.
    pub fn pytorch(count: usize) -> Self {
        BatchNormRunningUpdate {
            momentum: 0.1,
            unbiased: true,
            count,
        }
    }
    /// Keras's convention: `keras_momentum` weighs the old value (0.99 in DELG's
    /// training), so the momentum here is 1 − keras_momentum; the variance stays biased.
    pub fn keras(keras_momentum: f32, count: usize) -> Self {
        BatchNormRunningUpdate {
            momentum: 1.0 - keras_momentum,
            unbiased: false,
            count,
        }
    }
    pub(super) fn var_factor(&self) -> f64 {
        if self.unbiased {
            self.count as f64 / (self.count as f64 - 1.0)
        } else {
            1.0
        }
    }
}

impl Op for BatchNormRunningUpdate {
    fn name(&self) -> &'static str {
        "batchnorm_running_update"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 4)?;
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::unsupported(
                self.name(),
                format!("momentum must be in [0, 1], got {}", self.momentum),
            ));
        }
        if self.count < 2 {
            return Err(Error::unsupported(
                self.name(),
                format!("batch statistics need a count ≥ 2, got {}", self.count),
            ));
        }
        let c = channels(self.name(), inputs[0])?;
        for (what, s) in ["running_mean", "running_var", "batch_mean", "batch_var"]
            .iter()
            .zip(inputs)
        {
            expect_channel_vector(self.name(), what, s, c)?;
        }
        Ok(vec![])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let m = self.momentum as f64;
        let f = self.var_factor();
        let mix = |run: &RefTensor, batch: &RefTensor, scale: f64| {
            vector(
                run.data
                    .iter()
                    .zip(&batch.data)
                    .map(|(r, b)| (1.0 - m) * r + m * scale * b)
                    .collect(),
            )
        };
        Ok(vec![
            mix(inputs[0], inputs[2], 1.0),
            mix(inputs[1], inputs[3], f),
        ])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        _outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let c = inputs[0].numel();
        let windows = inputs
            .iter()
            .map(|t| t.whole(gpu))
            .collect::<Result<Vec<_>>>()?;
        let p = Params {
            n: c as u32,
            c: c as u32,
            alpha: self.momentum,
            beta: self.var_factor() as f32,
            ..Default::default()
        };
        launch(rec, &running_spec(), p, &windows, c.div_ceil(WG_CHANNELS))
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        6 * inputs[0].numel() as u64
    }
    fn mutates(&self) -> &'static [usize] {
        &[0, 1]
    }
}
