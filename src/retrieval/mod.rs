//! DELG retrieval on the host: putative local-feature matching and RANSAC
//! geometric verification for re-ranking (spec §5).

pub mod matching;
pub mod ransac;
