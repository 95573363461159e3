//! Range checks for numeric flags, run by clap at parse time, so NaN, 0, a
//! negative value or an absurd size is refused with the flag's name before
//! any work starts (instead of a shape error or a wrapped buffer size later).

/// An integer flag in `MIN..=MAX`.
pub fn int_in<T: TryFrom<u64>, const MIN: u64, const MAX: u64>(s: &str) -> Result<T, String> {
    let v: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a whole number from {MIN} to {MAX}"))?;
    if !(MIN..=MAX).contains(&v) {
        return Err(format!("must be from {MIN} to {MAX}"));
    }
    T::try_from(v).map_err(|_| format!("must be from {MIN} to {MAX}"))
}

fn float_where(s: &str, ok: impl Fn(f64) -> bool, rule: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("expected {rule}"))?;
    if v.is_finite() && ok(v) {
        Ok(v)
    } else {
        Err(format!("must be {rule}"))
    }
}

/// Any finite number (thresholds that may be negative).
pub fn finite(s: &str) -> Result<f32, String> {
    float_where(s, |_| true, "a finite number").map(|v| v as f32)
}

/// A finite number above 0.
pub fn positive(s: &str) -> Result<f32, String> {
    float_where(s, |v| v > 0.0, "a finite number above 0").map(|v| v as f32)
}

/// `positive` in double precision.
pub fn positive_f64(s: &str) -> Result<f64, String> {
    float_where(s, |v| v > 0.0, "a finite number above 0")
}

/// One of `DeviceProfile::all()`, by name.
pub fn device_profile(s: &str) -> Result<crate::gpu::DeviceProfile, String> {
    crate::gpu::DeviceProfile::named(s).map_err(|e| e.to_string())
}

/// A finite number, 0 or above.
pub fn non_negative(s: &str) -> Result<f32, String> {
    float_where(s, |v| v >= 0.0, "a finite number, 0 or above").map(|v| v as f32)
}

/// A fraction in [0, 1).
pub fn fraction(s: &str) -> Result<f64, String> {
    float_where(s, |v| (0.0..1.0).contains(&v), "a number in [0, 1)")
}

/// `fraction` for f32 settings (momentum).
pub fn fraction_f32(s: &str) -> Result<f32, String> {
    fraction(s).map(|v| v as f32)
}

/// An angle margin in radians below π/2 (ArcFace's cos(θ + m) must stay monotonic).
pub fn margin(s: &str) -> Result<f32, String> {
    float_where(
        s,
        |v| (0.0..std::f64::consts::FRAC_PI_2).contains(&v),
        "an angle in radians in [0, π/2)",
    )
    .map(|v| v as f32)
}

/// A pyramid scale: the network runs on the image resized by it, so beyond
/// 8 (64 times the pixels) no device holds the activations.
pub fn pyramid_scale(s: &str) -> Result<f64, String> {
    float_where(s, |v| v > 0.0 && v <= 8.0, "a scale above 0 and at most 8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_numbers_are_refused_with_the_rule() {
        assert_eq!(int_in::<usize, 1, 10>("3"), Ok(3));
        for bad in ["0", "-1", "11", "1e3", "x", ""] {
            let e = int_in::<usize, 1, 10>(bad).unwrap_err();
            assert!(e.contains("from 1 to 10"), "{bad}: {e}");
        }
        assert!(int_in::<u8, 0, 1000>("300").is_err(), "wider than the type");
        for bad in ["nan", "NaN", "inf", "-inf", "1e999"] {
            assert!(finite(bad).is_err(), "{bad}");
        }
        assert_eq!(finite("-0.5"), Ok(-0.5));
        assert!(positive("0").is_err() && positive("-1").is_err());
        assert!(non_negative("0").is_ok() && non_negative("-0.1").is_err());
        assert!(fraction("1").is_err() && fraction("0.2").is_ok());
        assert!(margin("1.6").is_err() && margin("0.1").is_ok());
        assert!(pyramid_scale("1e9").is_err() && pyramid_scale("0").is_err());
        assert_eq!(pyramid_scale("1.5"), Ok(1.5));
    }
}
