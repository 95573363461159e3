//! Retrieval on the host: putative local-feature matching and RANSAC
//! geometric verification for re-ranking (docs/recipe.md §5), and the evaluation
//! metrics of rankings and recognition predictions (docs/recipe.md §7).

pub mod matching;
pub mod metrics;
pub mod ransac;
