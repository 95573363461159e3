//! Models as graphs: ResNet backbones, DELG (and later DOLG) heads, and their parameters.

pub mod delg;
pub mod extractor;
pub mod params;
pub mod resnet;
