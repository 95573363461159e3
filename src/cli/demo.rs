//! `demo`: the whole pipeline on generated images.

use std::path::PathBuf;

use clap::Args;

use super::checks;
use super::groups::ModelArgs;
use crate::error::Result;
use crate::gpu::GpuOptions;
use crate::jobs::demo;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Folder for the generated images, features and results.
    #[arg(long, default_value = "delg-demo")]
    pub out: PathBuf,
    /// Weights to use, a file or a fetched model's name (default: a tiny
    /// model initialised from a fixed seed).
    #[arg(long, value_parser = super::weights::weights_path)]
    pub weights: Option<PathBuf>,
    /// Generated scenes, four views each.
    #[arg(long, value_parser = checks::int_in::<u32, 1, 10_000>, default_value_t = 4)]
    pub scenes: u32,
    /// Side of the generated images in pixels.
    #[arg(long, value_parser = checks::int_in::<u32, 32, 4096>, default_value_t = 256)]
    pub size: u32,
    /// Only write a generated scene, a warped copy and their homography
    /// (inputs for `match`), instead of running the pipeline.
    #[arg(long)]
    pub pair: bool,
}

pub(super) fn run(opts: &GpuOptions, a: &DemoArgs) -> Result<()> {
    if a.pair {
        let p = demo::write_pair(&a.out, a.size)?;
        println!(
            "wrote {}, {} and the true homography {}; try:\n  delg-gpu match {} {} --weights W --out pair.png --gt-homography {}",
            p.scene.display(),
            p.warped.display(),
            p.homography.display(),
            p.scene.display(),
            p.warped.display(),
            p.homography.display()
        );
        return Ok(());
    }
    demo::write_dataset(&a.out, a.scenes, a.size)?;
    let weights = match &a.weights {
        Some(w) => w.clone(),
        None => {
            let w = a.out.join("tiny-seed0.safetensors");
            super::init::write_random(&ModelArgs::tiny_delg().model_config()?, 0, 0.0, &w)?;
            w
        }
    };
    println!(
        "{} images of {} scenes in {}",
        a.scenes * 4,
        a.scenes,
        a.out.join("jpg").display()
    );
    let gpu = super::open_gpu(opts)?;
    crate::jobs::eval::print_report(&demo::evaluate_dataset(&gpu, &a.out, weights)?);
    Ok(())
}
