//! Shapes and host-side tensors.
//!
//! Memory layout, everywhere: dense row-major. 4-D activations are NHWC
//! (channels innermost), so a 1×1 convolution is a plain GEMM over N·H·W rows
//! and the K dimension of an implicit-GEMM convolution (kh, kw, c) reads
//! contiguous channels. Convolution weights on the device are HWIO
//! ([kh, kw, c_in, c_out]); the weight loaders convert PyTorch's OIHW.

use std::fmt;

use crate::error::{Error, Result};

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    pub fn new(dims: &[usize]) -> Self {
        Shape(dims.to_vec())
    }
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    pub fn bytes(&self) -> u64 {
        self.numel() as u64 * 4
    }
    /// The four NHWC dimensions, or a shape error naming `op`.
    pub fn nhwc(&self, op: &str) -> Result<[usize; 4]> {
        match self.0.as_slice() {
            &[n, h, w, c] => Ok([n, h, w, c]),
            _ => Err(Error::shape(
                op,
                format!("expected an NHWC tensor, got {self:?}"),
            )),
        }
    }
    /// (rows, cols) of a matrix-shaped tensor: the last dimension is columns.
    pub fn matrix(&self, op: &str) -> Result<(usize, usize)> {
        match self.0.split_last() {
            Some((&c, rest)) if !rest.is_empty() => Ok((rest.iter().product(), c)),
            _ => Err(Error::shape(
                op,
                format!("expected at least 2 dimensions, got {self:?}"),
            )),
        }
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.0.iter().map(|d| d.to_string()).collect();
        write!(f, "[{}]", dims.join("×"))
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}

/// A dense host tensor. `HostTensor` (f32) crosses to and from the device;
/// `RefTensor` (f64) is what the CPU references compute in, so gradient checks
/// by finite differences are not limited by f32 rounding.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    pub shape: Shape,
    pub data: Vec<T>,
}

pub type HostTensor = Tensor<f32>;
pub type RefTensor = Tensor<f64>;

impl<T: Copy + Default> Tensor<T> {
    pub fn new(shape: impl Into<Shape>, data: Vec<T>) -> Result<Self> {
        let shape = shape.into();
        if shape.numel() != data.len() {
            return Err(Error::shape(
                "tensor",
                format!(
                    "shape {shape:?} needs {} values, got {}",
                    shape.numel(),
                    data.len()
                ),
            ));
        }
        Ok(Tensor { shape, data })
    }
    pub fn zeros(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let n = shape.numel();
        Tensor {
            shape,
            data: vec![T::default(); n],
        }
    }
}

impl HostTensor {
    pub fn to_ref(&self) -> RefTensor {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&v| v as f64).collect(),
        }
    }
}

impl RefTensor {
    pub fn to_host(&self) -> HostTensor {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&v| v as f32).collect(),
        }
    }
}

/// A small deterministic generator for tests, fixtures and initialisation
/// (SplitMix64): reproducible across platforms without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn tensor(&mut self, shape: impl Into<Shape>, lo: f64, hi: f64) -> HostTensor {
        let shape = shape.into();
        let data = (0..shape.numel())
            .map(|_| self.range(lo, hi) as f32)
            .collect();
        Tensor { shape, data }
    }
}
