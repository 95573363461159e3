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
    /// Bytes of the tensor stored at `precision`.
    pub fn bytes_as(&self, precision: Precision) -> u64 {
        self.numel() as u64 * precision.bytes()
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

/// How a device tensor stores its elements. Arithmetic is always f32: f16
/// tensors are read into f32, accumulated in f32 and rounded once on store.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
}

impl Precision {
    pub fn bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }

    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }

    /// `v` as the f64 references see it stored at this precision: f16
    /// rounds (`f16_store` of it as f32); f32 leaves it unchanged, since the
    /// references stand for f32 storage in f64 (finite differences need that).
    pub fn round(self, v: f64) -> f64 {
        match self {
            Precision::F32 => v,
            Precision::F16 => f16_to_f32(f16_store(v as f32)) as f64,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            other => Err(Error::InvalidArgument(format!(
                "unknown precision '{other}': use f32 or f16"
            ))),
        }
    }
}

/// IEEE half-precision bits to f32 (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: value = f · 2^-24.
            let v = f as f32 * (1.0 / (1 << 24) as f32);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// f32 to IEEE half-precision bits, rounded to nearest even as GPUs store
/// f16: overflow gives ±infinity, NaN stays NaN.
pub fn f32_to_f16(v: f32) -> u16 {
    let x = v.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let exp = ((x >> 23) & 0xff) as i32;
    let man = x & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e <= 0 {
        // Subnormal (or zero): the value in units of 2^-24, rounded.
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let rounded = (m + (1 << (shift - 1)) - 1 + ((m >> shift) & 1)) >> shift;
        return sign | rounded as u16;
    }
    let rounded = man + 0xfff + ((man >> 13) & 1);
    let (e, m) = if rounded & 0x80_0000 != 0 {
        (e + 1, 0)
    } else {
        (e, rounded >> 13)
    };
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    sign | ((e as u16) << 10) | m as u16
}

/// The largest finite f16.
pub const F16_MAX: f32 = 65504.0;

/// How every f16 store rounds, on the host and in the kernels: saturated to
/// ±`F16_MAX` (WGSL leaves the conversion of larger values undefined), then
/// rounded to nearest even. NaN stays NaN, so checks still see it.
pub fn f16_store(v: f32) -> u16 {
    f32_to_f16(v.clamp(-F16_MAX, F16_MAX))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_f16_value_survives_a_round_trip_through_f32() {
        for h in 0..=u16::MAX {
            let v = f16_to_f32(h);
            if v.is_nan() {
                assert!(f16_to_f32(f32_to_f16(v)).is_nan());
            } else {
                assert_eq!(f32_to_f16(v), h, "{h:#06x} = {v}");
            }
        }
    }

    #[test]
    fn f32_to_f16_rounds_to_nearest_even_and_saturates_to_infinity() {
        // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties go to the even 1.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        // Just above the tie rounds up.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11) + 2f32.powi(-20)), 0x3c01);
        // 1 + 3·2^-11 ties between odd 0x3c01 and even 0x3c02.
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(
            f32_to_f16(65520.0),
            0x7c00,
            "the tie past the largest f16 overflows"
        );
        assert_eq!(f32_to_f16(-1e6), 0xfc00);
        // Half of the smallest subnormal ties to zero; a little more rounds up.
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0);
        assert_eq!(f32_to_f16(2f32.powi(-25) * 1.5), 1);
        assert_eq!(Precision::F16.round(0.1), 0.0999755859375);
        assert_eq!(Precision::F16.round(1e9), 65504.0, "stores saturate");
        assert!(Precision::F16.round(f64::NAN).is_nan());
    }
}
