//! `match`: two images, their correspondences and a picture of them.

use std::path::PathBuf;

use clap::Args;

use super::checks;
use super::groups::{ExtractFlags, VerifyArgs};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuOptions};

#[derive(Args, Debug)]
pub struct MatchArgs {
    /// First image (DELG's database side: the transform maps A onto B).
    pub a: PathBuf,
    /// Second image (DELG's query side).
    pub b: PathBuf,
    /// Model weights: safetensors written by delg-gpu or its converters, or
    /// the name of a model fetched with `delg-gpu weights get` (default: the
    /// model set by `delg-gpu weights default`).
    #[arg(long, value_parser = super::weights::weights_path)]
    pub weights: Option<PathBuf>,
    /// Write the picture here (PNG). No default: give --out, --json or both.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the matches and the transform as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also draw outlier matches, faint.
    #[arg(long)]
    pub dim_outliers: bool,
    /// Draw lines for at most this many inliers (dots for all), for dense
    /// matches (default: a line for every inlier).
    #[arg(long, value_parser = checks::int_in::<usize, 0, 10_000_000>)]
    pub max_lines: Option<usize>,
    /// RANSAC model: affine (DELG's) or homography.
    #[arg(long, default_value = "affine")]
    pub model: String,
    /// A true A→B homography (nine numbers, Oxford "H1to2p" form): report the
    /// corner error (default: none).
    #[arg(long)]
    pub gt_homography: Option<PathBuf>,
    #[command(flatten)]
    pub verify: VerifyArgs,
    #[command(flatten)]
    pub settings: ExtractFlags,
}

pub(super) fn run(opts: &GpuOptions, a: &MatchArgs) -> Result<()> {
    use crate::jobs::pair;
    if a.out.is_none() && !a.json {
        return Err(Error::InvalidArgument(
            "match: give --out pair.png, --json, or both".into(),
        ));
    }
    let ransac = match a.model.as_str() {
        "affine" => a.verify.ransac(false),
        "homography" => a.verify.ransac(true),
        other => {
            return Err(Error::InvalidArgument(format!(
                "--model '{other}': use affine or homography"
            )))
        }
    };
    let mut extract = crate::jobs::extract::ExtractConfig::default();
    a.settings.apply(&mut extract)?;
    // Read the ground truth before the slow extraction, so a typo fails fast.
    let truth = a
        .gt_homography
        .as_deref()
        .map(pair::read_homography)
        .transpose()?;
    let job = pair::PairJob {
        a: a.a.clone(),
        b: a.b.clone(),
        weights: super::weights::weights_or_default(a.weights.as_deref())?,
        extract,
        matching: a.verify.matching(),
        ransac,
    };
    let gpu = Gpu::new(opts)?;
    let r = pair::match_pair(&gpu, &job)?;
    let caption = pair::caption(&r, truth.as_ref());
    if let Some(out) = &a.out {
        let render = pair::RenderOptions {
            dim_outliers: a.dim_outliers,
            max_lines: a.max_lines,
            ..Default::default()
        };
        pair::write_picture(&r, &caption, &render, job.extract.max_pixels, out)?;
    }
    if a.json {
        println!("{}", pair::to_json(&r, truth.as_ref()));
    } else {
        for l in &caption {
            println!("{l}");
        }
        if let Some(out) = &a.out {
            println!("picture: {}", out.display());
        }
    }
    Ok(())
}
