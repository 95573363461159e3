//! Files in and out: images, NumPy arrays, weights, feature sets, ground
//! truth and challenge files.

pub mod draw;
pub mod features;
pub mod gldv2;
pub mod groundtruth;
pub mod images;
pub mod npy;
pub mod tf_checkpoint;
pub mod torch_checkpoint;
pub mod user_dirs;
pub mod weights;
