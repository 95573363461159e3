//! delg-gpu: DELG and DOLG image retrieval on any GPU through wgpu, with
//! hand-written WGSL kernels and a small graph scheduler.
//!
//! # Using the library
//!
//! The entry points live at the crate root:
//!
//! - [`Gpu`]: a device (`Gpu::new(&GpuOptions::default())` picks the best
//!   adapter; [`GpuOptions`] names a backend or adapter);
//! - [`Model`]: a weight file with its extraction recipe ([`ExtractConfig`]),
//!   or [`Model::tiny_random`] for trying things out (random weights give
//!   meaningless features; docs/weights.md says where trained ones come from);
//! - [`Extractor`]: images (files or [`RgbImage`]s in memory) to [`Features`]:
//!   the global descriptor and the local descriptors with their locations,
//!   scales and attention;
//! - [`image_files`]: the images of a folder, as `delg-gpu extract` finds them;
//! - [`Extractor::extract_folder`]: a folder into a feature folder, as
//!   `delg-gpu extract` does it;
//! - [`write_features`] and [`FeatureSet::load`]: feature folders, the
//!   layout `delg-gpu extract` writes and numpy reads ([`FeatureFiles`]
//!   opens one without reading it);
//! - [`search`] and [`search_reranked`]: global search on the device
//!   ([`search_global`] on bare descriptor arrays), and
//!   DELG's re-ranking by local matching, returning [`Hit`]s;
//! - [`match_features`]: two images' local features matched and verified
//!   with RANSAC ([`Verified`]: correspondences, inliers, the fitted
//!   [`Transform`]);
//! - [`render_scene`] and [`write_pair`]: the demo's generated scenes (free
//!   to redistribute, with ground truth), for trying things out and for tests.
//!
//! A tour: extract three images, store them, search, and match a pair.
//!
//! ```
//! use delg_gpu::{
//!     match_features, search, write_features, Extractor, FeatureSet, Gpu, GpuOptions,
//!     MatchParams, Model, RansacParams,
//! };
//! # fn main() -> delg_gpu::Result<()> {
//! let gpu = Gpu::new(&GpuOptions::default())?;
//! let model = Model::tiny_random(7)?; // or Model::load(Path::new("delg_r50.safetensors"))?
//! let mut extractor = Extractor::new(&gpu, &model)?;
//!
//! // Two views of one generated scene and a view of another.
//! let images = [
//!     delg_gpu::render_scene(1, 0, 128),
//!     delg_gpu::render_scene(1, 1, 128),
//!     delg_gpu::render_scene(2, 0, 128),
//! ];
//! let mut features = Vec::new();
//! for (i, image) in images.iter().enumerate() {
//!     let mut f = extractor.extract(image)?;
//!     f.id = format!("image{i}.png");
//!     let norm: f32 = f.global.iter().map(|v| v * v).sum::<f32>().sqrt();
//!     assert!((norm - 1.0).abs() < 1e-4); // global descriptors are L2-normalised
//!     assert_eq!(f.locations.len(), 2 * f.num_local()); // (y, x) per keypoint
//!     features.push(f);
//! }
//!
//! let dir = std::env::temp_dir().join(format!("delg-doc-tour-{}", std::process::id()));
//! write_features(&dir, &features)?;
//! let set = FeatureSet::load(&dir)?;
//! assert_eq!(set.ids, ["image0.png", "image1.png", "image2.png"]);
//!
//! // Each image finds itself first (cosine similarity 1).
//! let hits = search(&gpu, &set, &set, 2)?;
//! for (q, ranking) in hits.iter().enumerate() {
//!     assert_eq!(ranking[0].db, q);
//!     assert!((ranking[0].score - 1.0).abs() < 1e-3);
//! }
//!
//! // An image matched with itself: every keypoint pairs with its twin.
//! let same = match_features(&set.image(0), &set.image(0), &MatchParams::default(), &RansacParams::default())?;
//! assert!(same.matches.iter().all(|m| m.a == m.b));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

// A library build does not compile the proofs that reach into the engine
// (each kernel's shader specs and uniform layout, the CPU interpreter, ops
// kept as test vehicles for shared shaders), so it would call their only
// callers' targets dead; the `test-harness` build, which `cargo test` uses,
// compiles and runs them.
#![cfg_attr(not(feature = "test-harness"), allow(dead_code, unused_imports))]

pub mod api;
pub mod error;

// The engine's internals: `pub(crate)` in a library build, so that the
// crate root is the whole public surface; public but hidden from the docs
// with the `test-harness` feature, which the integration tests, benches and
// examples build with to reach kernels and jobs directly. (Written out, not
// by a macro: macro-declared modules cannot hold `#[macro_export]` macros
// that the crate names by path.)
#[cfg(feature = "test-harness")]
#[doc(hidden)]
pub mod gpu;
#[cfg(not(feature = "test-harness"))]
pub(crate) mod gpu;
#[cfg(feature = "test-harness")]
#[doc(hidden)]
pub mod graph;
#[cfg(not(feature = "test-harness"))]
pub(crate) mod graph;
#[cfg(feature = "test-harness")]
#[doc(hidden)]
pub mod io;
#[cfg(not(feature = "test-harness"))]
pub(crate) mod io;
#[cfg(feature = "test-harness")]
#[doc(hidden)]
pub mod jobs;
#[cfg(not(feature = "test-harness"))]
pub(crate) mod jobs;
#[cfg(feature = "test-harness")]
#[doc(hidden)]
pub mod model;
#[cfg(not(feature = "test-harness"))]
pub(crate) mod model;
#[cfg(feature = "test-harness")]
#[doc(hidden)]
pub mod ops;
#[cfg(not(feature = "test-harness"))]
pub(crate) mod ops;
#[cfg(feature = "test-harness")]
#[doc(hidden)]
pub mod retrieval;
#[cfg(not(feature = "test-harness"))]
pub(crate) mod retrieval;
#[cfg(feature = "test-harness")]
#[doc(hidden)]
pub mod tensor;
#[cfg(not(feature = "test-harness"))]
pub(crate) mod tensor;

/// The command line, for the `delg-gpu` binary (not a library interface).
#[doc(hidden)]
pub mod cli;
#[cfg(any(test, feature = "test-harness"))]
pub mod testing;

/// The version and the commit this build came from, as `delg-gpu --version`
/// prints it: "0.1.0 (commit 1a2b3c4d5e6f)".
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DELG_GIT_COMMIT"),
    ")"
);

pub use api::{
    image_files, match_features, search, search_global, search_reranked, write_features, Extractor,
    Features, Model, Verified,
};
pub use error::{Error, Result};
pub use gpu::{Gpu, GpuOptions};
pub use image::RgbImage;
pub use io::features::{FeatureFiles, FeatureSet, ImageFeatures};
pub use jobs::demo::{render_scene, write_pair, DemoPair};
pub use jobs::extract::{ExtractConfig, ExtractSummary, PixelNorm};
pub use jobs::local_match::MatchOn;
pub use jobs::pair::PairMatch;
pub use jobs::search::{Hit, RerankParams};
pub use retrieval::matching::MatchParams;
pub use retrieval::ransac::{RansacParams, Transform};
