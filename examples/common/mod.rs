//! What the examples share: the model they run and a scratch folder for the
//! inputs they generate when given no paths.

use std::path::{Path, PathBuf};

use delg_gpu::{Model, Result};

/// Runs an example's `run` on its command-line arguments; an error is one
/// line on stderr and exit status 1.
pub fn main(run: fn(&[String]) -> Result<()>) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The weight file given on the command line, else a tiny random model
/// (meaningless features, but it runs in seconds anywhere).
pub fn model(weights: Option<&String>) -> Result<Model> {
    match weights {
        Some(path) => Model::load(Path::new(path)),
        None => {
            println!("no weights given: using a tiny random model (features are meaningless)");
            Model::tiny_random(0)
        }
    }
}

/// A fresh folder under the system's temporary folder.
pub fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("delg-example-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| delg_gpu::Error::io(&dir, e))?;
    println!("working folder: {}", dir.display());
    Ok(dir)
}

/// Saves a generated image as PNG.
// Not every example generates single images (match_pair writes a pair).
#[allow(dead_code)]
pub fn save(image: &delg_gpu::RgbImage, path: &Path) -> Result<()> {
    image
        .save(path)
        .map_err(|e| delg_gpu::Error::file(path, e.to_string()))
}
