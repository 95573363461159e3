//! The jobs users run: benchmarks now; extraction, training, search and
//! evaluation build on the same engine.

pub mod bench;
pub mod collection;
pub mod dataset;
pub mod demo;
pub mod eval;
pub mod extract;
pub mod local_match;
pub mod pair;
pub mod search;
pub mod train;
