//! Models as graphs: ResNet backbones, the DELG and DOLG heads, their
//! parameters, and the extractor that runs either over an image pyramid.

pub mod delg;
pub mod dolg;
pub mod params;
pub mod resnet;

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

/// Metadata keys of a delg-gpu weight file.
pub const META_ARCH: &str = "delg_gpu.arch";
pub const META_CONFIG: &str = "delg_gpu.config";
pub const META_SCORE_THRESHOLD: &str = "delg_gpu.score_threshold";

/// A model's architecture and configuration, as a weight file records them.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    Delg(delg::DelgConfig),
    Dolg(dolg::DolgConfig),
}

impl ModelConfig {
    pub fn arch(&self) -> &'static str {
        match self {
            ModelConfig::Delg(_) => "delg",
            ModelConfig::Dolg(_) => "dolg",
        }
    }

    /// Reads the configuration from a weight file's metadata (`path` names it in errors).
    pub fn from_metadata(meta: &BTreeMap<String, String>, path: &Path) -> Result<ModelConfig> {
        let bad = |reason: String| Error::File {
            path: path.to_path_buf(),
            reason,
        };
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
    /// also record the attention threshold τ.
    pub fn random_weights(
        &self,
        seed: u64,
        score_threshold: f32,
    ) -> Result<crate::io::weights::WeightFile> {
        // Any image size lists the parameters; 64×64 is the smallest cheap one.
        let params = match self {
            ModelConfig::Delg(cfg) => delg::inference_graph(cfg, 64, 64)?.3,
            ModelConfig::Dolg(cfg) => dolg::inference_graph(cfg, 1, 64, 64)?.3,
        };
        let mut file = params::random_weights(&params.specs, seed);
        file.metadata.extend(self.metadata()?);
        if let ModelConfig::Delg(_) = self {
            file.metadata
                .insert(META_SCORE_THRESHOLD.into(), score_threshold.to_string());
        }
        Ok(file)
    }

    /// The ResNet backbone under either head.
    pub fn backbone(&self) -> &resnet::ResNetConfig {
        match self {
            ModelConfig::Delg(m) => &m.backbone,
            ModelConfig::Dolg(m) => &m.backbone,
        }
    }
}
