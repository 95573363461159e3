//! Files in and out: images, NumPy arrays, weights, ground truth.

pub mod groundtruth;
pub mod images;
pub mod npy;
pub mod weights;
