//! Matches two images: local features, nearest neighbours under DELG's
//! distance threshold, RANSAC; prints the inliers and the fitted transform
//! (A's (x, y) pixels onto B's).
//!
//!     cargo run --release --example match_pair -- A B [WEIGHTS]
//!
//! Without arguments it generates a scene and a warped copy of it and uses a
//! tiny random model.

mod common;

use std::path::PathBuf;

use delg_gpu::{match_features, Extractor, Gpu, GpuOptions, MatchParams, RansacParams};

fn main() {
    common::main(run)
}

fn run(args: &[String]) -> delg_gpu::Result<()> {
    let (a, b) = match args {
        [a, b, ..] => (PathBuf::from(a), PathBuf::from(b)),
        [] => {
            let pair = delg_gpu::write_pair(&common::scratch("match")?, 128)?;
            (pair.scene, pair.warped)
        }
        _ => {
            eprintln!("usage: match_pair [A B [WEIGHTS]]");
            std::process::exit(2);
        }
    };
    let gpu = Gpu::new(&GpuOptions::default())?;
    let model = common::model(args.get(2))?;
    let mut extractor = Extractor::new(&gpu, &model)?;
    let fa = extractor.extract_file(&a)?;
    let fb = extractor.extract_file(&b)?;
    let verified = match_features(&fa, &fb, &MatchParams::default(), &RansacParams::default())?;
    println!("A: {} ({} local features)", fa.id, fa.num_local());
    println!("B: {} ({} local features)", fb.id, fb.num_local());
    println!(
        "putative matches: {}, inliers: {}",
        verified.matches.len(),
        verified.inliers
    );
    match verified.transform {
        Some(t) => {
            println!("transform A -> B (x, y):");
            for row in t.0 {
                println!("  {:>12.5} {:>12.5} {:>12.5}", row[0], row[1], row[2]);
            }
        }
        None => println!("no transform: too few consistent matches"),
    }
    Ok(())
}
