//! The one place that knows which architectures exist. `ModelConfig` (what a
//! weight file holds) and `TrainModel` (what a run trains) name them; every
//! other question goes through [`Architecture`], which each architecture's
//! file implements. A new architecture adds its file, a variant to these two
//! enums with their arms below, and its name in `extraction_defaults`.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::contract::{
    Architecture, ExtractionDefaults, LossOptions, TrainingGraph, ValidationGraph,
};
use super::delg::{self, DelgConfig, DelgLossConfig};
use super::dolg::{self, DolgConfig, DolgLossConfig};
use super::params;
use super::{ARCH_BACKBONE, META_ARCH, META_CONFIG, META_SCORE_THRESHOLD};
use crate::error::{Error, Result};

/// A model's architecture and configuration, as a weight file records them.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    Delg(delg::DelgConfig),
    Dolg(dolg::DolgConfig),
}

impl ModelConfig {
    pub fn arch(&self) -> &'static str {
        self.name()
    }

    /// Reads the configuration from a weight file's metadata (`path` names it in errors).
    pub fn from_metadata(meta: &BTreeMap<String, String>, path: &Path) -> Result<ModelConfig> {
        let bad = |reason: String| Error::file(path, reason);
        let config = || {
            meta.get(META_CONFIG)
                .ok_or_else(|| bad(format!("has no '{META_CONFIG}' metadata")))
        };
        let parse_err =
            |e: serde_json::Error| bad(format!("bad model configuration in metadata: {e}"));
        match meta.get(META_ARCH).map(String::as_str) {
            Some("delg") => Ok(ModelConfig::Delg(
                serde_json::from_str(config()?).map_err(parse_err)?,
            )),
            Some("dolg") => Ok(ModelConfig::Dolg(
                serde_json::from_str(config()?).map_err(parse_err)?,
            )),
            Some(ARCH_BACKBONE) => Err(bad(
                "holds only a ResNet backbone, without DELG or DOLG heads: start a training run from it \
                 (`delg-gpu train --init FILE`); features need a trained model (`delg-gpu weights list`)"
                    .into(),
            )),
            Some(other) => Err(bad(format!(
                "holds a '{other}' model; delg-gpu runs 'delg' and 'dolg' models"
            ))),
            None => Err(bad(format!(
                "has no '{META_ARCH}' metadata: convert it with the tools/ scripts or `delg-gpu init-weights`"
            ))),
        }
    }

    /// The architecture and configuration entries of a weight file's metadata.
    pub fn metadata(&self) -> Result<[(String, String); 2]> {
        let json = match self {
            ModelConfig::Delg(c) => serde_json::to_string(c),
            ModelConfig::Dolg(c) => serde_json::to_string(c),
        }
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok([
            (META_ARCH.to_string(), self.arch().to_string()),
            (META_CONFIG.to_string(), json),
        ])
    }

    /// A randomly initialised weight file of this model (`params::random_weights`
    /// for its parameters) with the metadata that names the model; DELG files
    /// also record the attention threshold τ (models with local features).
    pub fn random_weights(
        &self,
        seed: u64,
        score_threshold: f32,
    ) -> Result<crate::io::weights::WeightFile> {
        let mut file = params::random_weights(&self.parameters()?.specs, seed);
        file.metadata.extend(self.metadata()?);
        if self.local_dim() > 0 {
            file.metadata
                .insert(META_SCORE_THRESHOLD.into(), score_threshold.to_string());
        }
        Ok(file)
    }

    /// The model to train on `classes` classes with the recipe's loss, as
    /// `options` override it.
    pub fn train_model(self, classes: usize, options: &LossOptions) -> Result<TrainModel> {
        Ok(match self {
            ModelConfig::Delg(model) => {
                if options.plain_arcface {
                    return Err(Error::InvalidArgument(
                        "--plain-arcface is DOLG's head option (DELG's head is plain ArcFace): add --arch dolg"
                            .into(),
                    ));
                }
                let mut loss = DelgLossConfig::paper(classes);
                loss.arcface_margin = options.margin.unwrap_or(loss.arcface_margin);
                loss.arcface_scale = options.scale.unwrap_or(loss.arcface_scale);
                loss.attention_weight = options.attention_weight;
                loss.reconstruction_weight = options.reconstruction_weight;
                TrainModel::Delg { model, loss }
            }
            ModelConfig::Dolg(model) => {
                let mut loss = DolgLossConfig::official(classes);
                loss.margin = options.margin.unwrap_or(loss.margin);
                loss.scale = options.scale.unwrap_or(loss.scale);
                loss.curricular = !options.plain_arcface;
                TrainModel::Dolg { model, loss }
            }
        })
    }
}

/// `model.local_dim()` and the like: a configuration answers as its architecture.
impl Deref for ModelConfig {
    type Target = dyn Architecture;

    fn deref(&self) -> &(dyn Architecture + 'static) {
        match self {
            ModelConfig::Delg(c) => c,
            ModelConfig::Dolg(c) => c,
        }
    }
}

/// The paper's extraction settings for an architecture named on the command
/// line or in a weight file; the defaults for names it does not know.
pub fn extraction_defaults(arch: &str) -> ExtractionDefaults {
    match arch {
        "dolg" => dolg::extraction_defaults(),
        _ => default_extraction(),
    }
}

/// What an extraction setting that nobody gave takes: DELG's recipe.
pub fn default_extraction() -> ExtractionDefaults {
    delg::extraction_defaults()
}

/// The model being trained and its loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum TrainModel {
    Delg {
        model: DelgConfig,
        loss: DelgLossConfig,
    },
    Dolg {
        model: DolgConfig,
        loss: DolgLossConfig,
    },
}

impl TrainModel {
    pub fn num_classes(&self) -> usize {
        match self {
            TrainModel::Delg { loss, .. } => loss.num_classes,
            TrainModel::Dolg { loss, .. } => loss.num_classes,
        }
    }

    pub fn model_config(&self) -> ModelConfig {
        match self {
            TrainModel::Delg { model, .. } => ModelConfig::Delg(model.clone()),
            TrainModel::Dolg { model, .. } => ModelConfig::Dolg(model.clone()),
        }
    }

    /// The trained model's answers ([`Architecture`]).
    pub fn architecture(&self) -> &dyn Architecture {
        match self {
            TrainModel::Delg { model, .. } => model,
            TrainModel::Dolg { model, .. } => model,
        }
    }

    /// The training graph for `batch` images of `size`×`size`.
    pub fn training_graph(
        &self,
        batch: usize,
        size: usize,
        bn_momentum: f32,
    ) -> Result<TrainingGraph> {
        Ok(match self {
            TrainModel::Delg { model, loss } => {
                let (graph, t, params) =
                    delg::training_graph(model, loss, batch, size, bn_momentum)?;
                TrainingGraph {
                    graph,
                    images: t.images,
                    labels: t.labels,
                    losses: vec![
                        t.total_loss,
                        t.global_loss,
                        t.attention_loss,
                        t.reconstruction_loss,
                    ],
                    cosines: t.global_cosines,
                    logits: Some(t.attention_logits),
                    attention: t.attention,
                    params,
                }
            }
            TrainModel::Dolg { model, loss } => {
                let (graph, t, params) =
                    dolg::training_graph(model, loss, batch, size, bn_momentum)?;
                TrainingGraph {
                    graph,
                    images: t.images,
                    labels: t.labels,
                    losses: vec![t.loss],
                    cosines: t.cosines,
                    logits: None,
                    attention: t.attention,
                    params,
                }
            }
        })
    }

    /// Inference-mode classifier scores for validation: cosines, then DELG's
    /// attention logits.
    pub fn validation_graph(&self, batch: usize, size: usize) -> Result<ValidationGraph> {
        Ok(match self {
            TrainModel::Delg { model, loss } => {
                let (graph, images, cosines, logits, params) =
                    delg::validation_graph(model, loss, batch, size)?;
                ValidationGraph {
                    graph,
                    images,
                    scores: vec![cosines, logits],
                    params,
                }
            }
            TrainModel::Dolg { model, loss } => {
                let (graph, images, cosines, params) =
                    dolg::validation_graph(model, loss.num_classes, batch, size)?;
                ValidationGraph {
                    graph,
                    images,
                    scores: vec![cosines],
                    params,
                }
            }
        })
    }
}
