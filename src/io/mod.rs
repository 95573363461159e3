//! Files in and out: images, NumPy arrays, weights.

pub mod features;
pub mod images;
pub mod npy;
pub mod weights;
