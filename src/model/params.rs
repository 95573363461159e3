//! From a weight file (PyTorch layouts and names) to the device parameters a
//! graph uses: convolution weights transposed OIHW → HWIO, batch norms folded
//! into their convolutions for inference, constants filled from the model
//! configuration, and random initialisation for new models.

use std::collections::BTreeMap;
use std::path::Path;

// Re-exported where integration tests have always found them.
pub use super::builder::{hwio_to_oihw, oihw_to_hwio};
use super::builder::{ModelParams, ParamSpec, Role};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::exec::ParamStore;
use crate::io::weights::WeightFile;
use crate::ops::batchnorm::fold_batchnorm;
use crate::tensor::{HostTensor, Rng, Shape, Tensor};

/// Tensors a training run writes that extraction does not read.
pub const TRAINING_ONLY: &[&str] = &[
    "autoencoder.decoder.",
    "arcface.",
    "attention_classifier.",
    "desc_cls.",
    "optimizer.",
];

fn get<'a>(
    tensors: &'a BTreeMap<String, HostTensor>,
    name: &str,
    path: &Path,
) -> Result<&'a HostTensor> {
    tensors.get(name).ok_or_else(|| Error::File {
        path: path.to_path_buf(),
        reason: format!("missing '{name}'"),
    })
}

/// Uploads the parameters a model graph reads from `file` (checked first,
/// every problem named at once), folds its batch norms with `bn_eps`, and
/// adds `constants` from the configuration (e.g. DELG's fixed GeM p).
pub fn load_params(
    gpu: &Gpu,
    path: &Path,
    file: &WeightFile,
    model: &ModelParams,
    bn_eps: f32,
    constants: &[(String, HostTensor)],
) -> Result<ParamStore> {
    let expected: Vec<(String, Shape)> = model
        .specs
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone()))
        .collect();
    file.check(path, &expected, TRAINING_ONLY)?;
    let mut store = ParamStore::default();
    for s in &model.specs {
        let t = get(&file.tensors, &s.name, path)?;
        store.insert_as(gpu, &s.name, &s.role.to_device(t)?, s.precision)?;
    }
    for (conv, bn, has_bias) in &model.folds {
        let p = |suffix: &str| {
            get(&file.tensors, &format!("{bn}.{suffix}"), path).map(|t| t.data.as_slice())
        };
        let (scale, mut shift) = fold_batchnorm(
            p("weight")?,
            p("bias")?,
            p("running_mean")?,
            p("running_var")?,
            bn_eps,
        )?;
        if *has_bias {
            // conv + b then BN: the bias passes through the same scale.
            let b = get(&file.tensors, &format!("{conv}.bias"), path)?;
            shift
                .iter_mut()
                .zip(scale.iter().zip(&b.data))
                .for_each(|(sh, (sc, bv))| *sh += sc * bv);
        }
        let c = scale.len();
        store.insert(gpu, &format!("{bn}.fold_scale"), &Tensor::new([c], scale)?)?;
        store.insert(gpu, &format!("{bn}.fold_shift"), &Tensor::new([c], shift)?)?;
    }
    for (name, value) in constants {
        store.insert(gpu, name, value)?;
    }
    Ok(store)
}

/// A randomly initialised weight file for `specs`: He-normal convolutions
/// (fan-out, as torchvision), Glorot-uniform head convolutions, linear and
/// class weights (Keras's default), zero biases, identity batch norms.
pub fn random_weights(specs: &[ParamSpec], seed: u64) -> WeightFile {
    let mut rng = Rng::new(seed);
    let mut file = WeightFile::default();
    for s in specs {
        let dims = s.shape.dims();
        let n = s.shape.numel();
        let data: Vec<f32> = match s.role {
            Role::ConvWeight => {
                let fan_out = dims[0] * dims[2..].iter().product::<usize>();
                let std = (2.0 / fan_out as f64).sqrt();
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            }
            Role::HeadConvWeight => {
                let field = dims[2..].iter().product::<usize>();
                let (fan_out, fan_in) = (dims[0] * field, dims[1] * field);
                let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
                (0..n).map(|_| rng.range(-limit, limit) as f32).collect()
            }
            Role::LinearWeight | Role::Other => {
                let (fan_out, fan_in) = (dims[0], dims[1..].iter().product::<usize>());
                let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
                (0..n).map(|_| rng.range(-limit, limit) as f32).collect()
            }
            Role::Bias | Role::BnBias | Role::BnMean | Role::CurricularState => vec![0.0; n],
            Role::BnWeight | Role::BnVar => vec![1.0; n],
            Role::GemPower => vec![3.0; n],
        };
        file.tensors.insert(
            s.name.clone(),
            Tensor {
                shape: s.shape.clone(),
                data,
            },
        );
    }
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oihw_transpose_moves_every_element() {
        let t = Tensor::new([2, 3, 1, 2], (0..12).map(|v| v as f32).collect()).unwrap();
        let h = oihw_to_hwio(&t).unwrap();
        assert_eq!(h.shape, Shape::new(&[1, 2, 3, 2]));
        // w[o=1, i=2, y=0, x=1] = ((1·3+2)·1+0)·2+1 = 11 lands at [0, 1, 2, 1].
        assert_eq!(h.data[(3 + 2) * 2 + 1], 11.0);
        assert_eq!(
            hwio_to_oihw(&h).unwrap(),
            t,
            "the two transposes are inverses"
        );
    }
}
