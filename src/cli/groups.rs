//! Argument groups that several commands flatten in: the model, the
//! extraction settings, descriptor matching and RANSAC, re-ranking.

use clap::Args;

use super::checks;
use crate::error::{Error, Result};

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Architecture: delg or dolg (DOLG always uses the torchvision layout).
    #[arg(long, default_value = "delg")]
    pub arch: String,
    /// Backbone depth: 50, 101, or "tiny" (one block per stage) for tests.
    #[arg(long, default_value = "50")]
    pub depth: String,
    /// delg (the official TF layout) or torchvision.
    #[arg(long, default_value = "delg")]
    pub layout: String,
    /// Stem width (default: 64, the standard ResNets'; 8 with --depth tiny).
    #[arg(long, value_parser = checks::int_in::<usize, 1, 4096>)]
    pub width: Option<usize>,
    /// DELG: size of the global descriptor (default: the backbone's output
    /// channels, 2048 for ResNet-50 and -101).
    #[arg(long, value_parser = checks::int_in::<usize, 1, 65_536>)]
    pub global_dim: Option<usize>,
    /// DELG: channels of the attention head's hidden layer (default: 512; 16 with --depth tiny).
    #[arg(long, value_parser = checks::int_in::<usize, 1, 65_536>)]
    pub attention_dim: Option<usize>,
    /// DELG: size of the local descriptors, the autoencoder's bottleneck
    /// (default: 128; 16 with --depth tiny).
    #[arg(long, value_parser = checks::int_in::<usize, 1, 65_536>)]
    pub local_dim: Option<usize>,
    /// DOLG: add the multi-atrous block in front of the local branch.
    #[arg(long)]
    pub multi_atrous: bool,
    /// DOLG: dilation rates of the multi-atrous block (3,6,9 as the paper's re-implementations).
    #[arg(long, value_parser = checks::int_in::<usize, 1, 256>, value_delimiter = ',', default_value = "6,12,18")]
    pub dilations: Vec<usize>,
    /// DOLG: size of the final descriptor (default: 512).
    #[arg(long, value_parser = checks::int_in::<usize, 1, 65_536>)]
    pub output_dim: Option<usize>,
}

impl ModelArgs {
    /// `--depth tiny` with every other flag at its default: the demo's model.
    pub fn tiny_delg() -> ModelArgs {
        ModelArgs {
            arch: "delg".into(),
            depth: "tiny".into(),
            layout: "delg".into(),
            width: None,
            global_dim: None,
            attention_dim: None,
            local_dim: None,
            multi_atrous: false,
            dilations: vec![6, 12, 18],
            output_dim: None,
        }
    }

    /// The model these flags describe.
    pub fn model_config(&self) -> Result<crate::model::ModelConfig> {
        use crate::model::dolg::{DolgConfig, MultiAtrous};
        use crate::model::ModelConfig;
        match self.arch.as_str() {
            "delg" => Ok(ModelConfig::Delg(self.config()?)),
            "dolg" => {
                let delg = self.config()?;
                let mut model = DolgConfig::new(delg.backbone);
                model.output_dim = self.output_dim.unwrap_or(model.output_dim);
                if self.multi_atrous {
                    model.multi_atrous = Some(MultiAtrous {
                        dilations: self.dilations.clone(),
                        branch_dim: if self.depth == "tiny" { 16 } else { 512 },
                    });
                }
                model.validate()?;
                Ok(ModelConfig::Dolg(model))
            }
            other => Err(Error::InvalidArgument(format!(
                "--arch '{other}': use delg or dolg"
            ))),
        }
    }

    /// The DELG configuration of these flags (DOLG takes its backbone from it).
    pub fn config(&self) -> Result<crate::model::delg::DelgConfig> {
        use crate::model::delg::DelgConfig;
        use crate::model::resnet::{Layout, ResNetConfig};
        let layout = match self.layout.as_str() {
            "delg" => Layout::Delg,
            "torchvision" => Layout::Torchvision,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "--layout '{other}': use delg or torchvision"
                )))
            }
        };
        let mut backbone = match self.depth.as_str() {
            "50" => ResNetConfig::resnet50(layout),
            "101" => ResNetConfig::resnet101(layout),
            "tiny" => ResNetConfig {
                blocks: [1, 1, 1, 1],
                width: 8,
                ..ResNetConfig::resnet50(layout)
            },
            other => {
                return Err(Error::InvalidArgument(format!(
                    "--depth '{other}': use 50, 101 or tiny"
                )))
            }
        };
        if let Some(w) = self.width {
            backbone.width = w;
        }
        let mut model = DelgConfig::new(backbone);
        if self.depth == "tiny" {
            model.attention_dim = 16;
            model.local_dim = 16;
        }
        model.global_dim = self.global_dim.unwrap_or(model.backbone.d_channels());
        model.attention_dim = self.attention_dim.unwrap_or(model.attention_dim);
        model.local_dim = self.local_dim.unwrap_or(model.local_dim);
        Ok(model)
    }
}

#[derive(Args, Debug)]
pub struct RerankArgs {
    /// Re-rank the shortlist by local-feature matching and RANSAC (DELG's second stage).
    #[arg(long)]
    pub rerank: bool,
    /// Shortlist length for re-ranking.
    #[arg(long, value_parser = checks::int_in::<usize, 1, 100_000>, default_value_t = 100)]
    pub shortlist: usize,
    #[command(flatten)]
    pub verify: VerifyArgs,
    /// Match sign-binarised descriptors by Hamming distance below this many bits
    /// (DELG's binarised variant), instead of float descriptors by L2
    /// (default: float descriptors).
    #[arg(long, value_parser = checks::int_in::<u32, 0, 4096>)]
    pub hamming: Option<u32>,
    /// RANSAC with a homography instead of an affine model.
    #[arg(long)]
    pub homography: bool,
    /// Where descriptor nearest neighbours are computed: auto (the faster
    /// for this adapter, as measured), cpu or gpu.
    #[arg(long, default_value = "auto")]
    pub match_on: String,
}

/// Descriptor matching and RANSAC settings shared by re-ranking and `match`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Descriptor distance threshold (or ratio with --ratio-test).
    #[arg(long, value_parser = checks::positive, default_value_t = 1.0)]
    pub match_threshold: f32,
    /// Lowe's ratio test instead of an absolute distance threshold.
    #[arg(long)]
    pub ratio_test: bool,
    /// RANSAC inlier threshold in pixels.
    #[arg(long, value_parser = checks::positive_f64, default_value_t = 20.0)]
    pub residual_threshold: f64,
    /// RANSAC iterations per verified image.
    #[arg(long, value_parser = checks::int_in::<usize, 1, 10_000_000>, default_value_t = 1000)]
    pub ransac_trials: usize,
}

impl VerifyArgs {
    pub(super) fn matching(&self) -> crate::retrieval::matching::MatchParams {
        crate::retrieval::matching::MatchParams {
            threshold: self.match_threshold,
            ratio_test: self.ratio_test,
        }
    }

    /// DELG's RANSAC for `homography` false, else the homography variant,
    /// with these flags' threshold and trials.
    pub(super) fn ransac(&self, homography: bool) -> crate::retrieval::ransac::RansacParams {
        use crate::retrieval::ransac::RansacParams;
        let base = if homography {
            RansacParams::homography()
        } else {
            RansacParams::default()
        };
        RansacParams {
            residual_threshold: self.residual_threshold,
            max_trials: self.ransac_trials,
            ..base
        }
    }
}

impl RerankArgs {
    pub fn params(&self) -> Result<Option<crate::jobs::search::RerankParams>> {
        let match_on = crate::jobs::local_match::MatchOn::parse(&self.match_on)?;
        Ok(self.rerank.then(|| {
            let mut matching = self.verify.matching();
            if let Some(h) = self.hamming {
                matching.threshold = h as f32;
            }
            crate::jobs::search::RerankParams {
                shortlist: self.shortlist,
                matching,
                ransac: self.verify.ransac(self.homography),
                binary: self.hamming.is_some(),
                match_on,
            }
        }))
    }
}

/// Extraction settings every extracting command can override; the defaults
/// are the paper's for the model in the weights.
#[derive(Args, Debug)]
pub struct ExtractFlags {
    /// Largest image side after the initial resize; 0 keeps the original size
    /// (default: 1024 for DELG, the original size for DOLG).
    #[arg(long, value_parser = checks::int_in::<u32, 0, 65_535>)]
    pub max_image_size: Option<u32>,
    /// Attention threshold τ (default: the value stored with the weights).
    #[arg(long, value_parser = checks::finite)]
    pub score_threshold: Option<f32>,
    /// Local features kept per image, best attention first (default: 1000
    /// for DELG; DOLG has no local features).
    #[arg(long, value_parser = checks::int_in::<usize, 1, 1_000_000>)]
    pub max_features: Option<usize>,
    /// Pyramid scales, comma-separated (default: 0.25,0.3536,0.5,0.7071,1,1.4142,2
    /// for DELG, 0.3535,0.5,0.7071,1,1.4142 for DOLG).
    #[arg(long, value_parser = checks::pyramid_scale, value_delimiter = ',')]
    pub scales: Option<Vec<f64>>,
    /// Indices into --scales of the scales whose global descriptors are
    /// aggregated, comma-separated (default: 3,4,5 for DELG, all for DOLG;
    /// the middle one when --scales is given).
    #[arg(long, value_delimiter = ',')]
    pub global_scales: Option<Vec<usize>>,
    /// Images with more pixels are reported and skipped before decoding
    /// (forged headers and decompression bombs); default 100 megapixels.
    #[arg(long, value_parser = MAX_PIXELS)]
    pub max_pixels: Option<u64>,
    /// How the backbone stores its weights and activations: f32 (default),
    /// or f16 (less memory; sums still in f32) on adapters with SHADER_F16.
    #[arg(long, value_parser = ["f32", "f16"])]
    pub precision: Option<String>,
}

/// `--max-pixels`: 1 pixel to 1 terapixel.
pub(super) const MAX_PIXELS: fn(&str) -> Result<u64, String> =
    checks::int_in::<u64, 1, 1_000_000_000_000>;

impl ExtractFlags {
    /// Overrides `cfg` with the flags given, then validates it.
    pub fn apply(&self, cfg: &mut crate::jobs::extract::ExtractConfig) -> Result<()> {
        if let Some(m) = self.max_image_size {
            cfg.max_image_size = (m > 0).then_some(m);
        }
        if self.score_threshold.is_some() {
            cfg.score_threshold = self.score_threshold;
        }
        if let Some(m) = self.max_features {
            cfg.max_features = m;
        }
        if let Some(s) = &self.scales {
            cfg.scales = s.clone();
            if self.global_scales.is_none() {
                // New scales invalidate the default indices: the middle one
                // (scale 1 in a symmetric pyramid) unless told otherwise.
                cfg.global_scales = vec![s.len() / 2];
            }
        }
        if let Some(g) = &self.global_scales {
            cfg.global_scales = g.clone();
        }
        if let Some(m) = self.max_pixels {
            cfg.max_pixels = m;
        }
        if let Some(p) = &self.precision {
            cfg.precision = p.parse()?;
        }
        cfg.validate()
    }
}
