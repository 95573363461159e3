//! Extracts every image of a folder and writes a feature folder (the layout
//! `delg-gpu extract` writes: global.npy, ids.txt, local_*.npy).
//!
//!     cargo run --release --example extract_folder -- IMAGES OUT [WEIGHTS]
//!
//! Without arguments it generates four images and uses a tiny random model.

mod common;

use std::path::{Path, PathBuf};

use delg_gpu::{image_files, write_features, Extractor, FeatureSet, Gpu, GpuOptions};

fn main() {
    common::main(run)
}

fn run(args: &[String]) -> delg_gpu::Result<()> {
    let (images, out) = match args {
        [images, out, ..] => (PathBuf::from(images), PathBuf::from(out)),
        [] => {
            let dir = common::scratch("extract")?;
            for scene in 0..4 {
                let image = delg_gpu::render_scene(scene, 0, 128);
                common::save(&image, &dir.join(format!("scene{scene}.png")))?;
            }
            (dir.clone(), dir.join("features"))
        }
        _ => {
            eprintln!("usage: extract_folder [IMAGES OUT [WEIGHTS]]");
            std::process::exit(2);
        }
    };
    let gpu = Gpu::new(&GpuOptions::default())?;
    let model = common::model(args.get(2))?;
    let mut extractor = Extractor::new(&gpu, &model)?;
    let mut features = Vec::new();
    for path in image_files(&images)? {
        let mut f = extractor.extract_file(&path)?;
        // Ids relative to the folder, as `delg-gpu extract` writes them.
        f.id = relative(&path, &images);
        println!("{}: {} local features", f.id, f.num_local());
        features.push(f);
    }
    write_features(&out, &features)?;
    let set = FeatureSet::load(&out)?;
    println!(
        "wrote {} images ({}-d global, {} local features) to {}",
        set.len(),
        set.global_dim,
        set.scales.len(),
        out.display()
    );
    Ok(())
}

fn relative(path: &Path, dir: &Path) -> String {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    rel.to_string_lossy().replace('\\', "/")
}
