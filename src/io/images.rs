//! Image decoding and the CPU-side resize of the extraction recipe.
//!
//! Decoding applies the EXIF orientation and converts every colour model the
//! decoders produce (grayscale, alpha, 16-bit, CMYK JPEG) to 8-bit RGB, the
//! way PIL's `convert('RGB')` does for the official extractor. The initial
//! "largest side ≤ 1024" resize reproduces PIL's BILINEAR resampling exactly
//! (triangle filter widened by the scale factor when shrinking, i.e. with
//! antialiasing, in PIL's 22-bit fixed point), since DELG's reference
//! features are computed from PIL-resized images.

use std::path::Path;

use image::{ImageDecoder, ImageReader, RgbImage};

use crate::error::{Error, Result};

/// Default `--max-pixels`: 100 megapixels, above any camera photo, far below
/// what a forged header can claim (100 000 × 100 000 is 10 gigapixels).
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// Bytes per pixel of the widest colour model a decoder produces (RGBA,
/// 32-bit float), which bounds the decoder's own output buffer.
const WIDEST_PIXEL_BYTES: u64 = 16;

/// Decodes an image file to upright 8-bit RGB, refusing (before any pixel
/// is decoded) an image of more than `max_pixels` pixels.
pub fn load_rgb(path: &Path, max_pixels: u64) -> Result<RgbImage> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::file(path, "is a folder, not an image"));
    }
    if meta.len() == 0 {
        return Err(Error::file(path, "empty file"));
    }
    check_jpeg_complete(path)?;
    let mut reader = ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    // The content decides, not the name: text saved as .png is not a PNG.
    let mut head = Vec::with_capacity(32);
    std::io::Read::read_to_end(
        &mut std::io::Read::take(
            std::fs::File::open(path).map_err(|e| Error::io(path, e))?,
            32,
        ),
        &mut head,
    )
    .map_err(|e| Error::io(path, e))?;
    if image::guess_format(&head).is_err() || reader.format().is_none() {
        return Err(Error::file(
            path,
            "content is not a recognised image format (jpg, png, webp, bmp, tiff, gif), whatever its name says",
        ));
    }
    // The crate's allocation limit covers the decoders' internal buffers
    // (PNG chunks, TIFF strips, GIF frames); the pixel check below covers
    // the output buffer, which `from_decoder` allocates without a check.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(WIDEST_PIXEL_BYTES));
    reader.limits(limits);
    let cannot_decode = |e: image::ImageError| Error::file(path, format!("cannot decode: {e}"));
    let mut decoder = reader.into_decoder().map_err(cannot_decode)?;
    let (width, height) = decoder.dimensions();
    check_pixel_count(path, width, height, max_pixels)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    // A decoder bug must cost one file, not the run.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        image::DynamicImage::from_decoder(decoder)
    }))
    .map_err(|_| Error::file(path, "cannot decode: the decoder crashed on this file"))?;
    let mut img = decoded.map_err(cannot_decode)?;
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

/// The header's size, checked before the pixel buffer is allocated.
fn check_pixel_count(path: &Path, width: u32, height: u32, max_pixels: u64) -> Result<()> {
    let pixels = width as u64 * height as u64;
    if pixels == 0 {
        return Err(Error::file(path, "image has no pixels"));
    }
    if pixels > max_pixels {
        return Err(Error::file(
            path,
            format!(
                "image is {width}×{height} ({:.1} megapixels), over the {:.1} megapixel limit: \
                 skipped without decoding; raise --max-pixels to extract it",
                pixels as f64 / 1e6,
                max_pixels as f64 / 1e6
            ),
        ));
    }
    Ok(())
}

/// A JPEG cut short (an interrupted copy or download) still decodes, with
/// the missing rows filled in; the end-of-image marker near its end is what
/// tells it apart. Trailing data after the marker is tolerated.
fn check_jpeg_complete(path: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = [0u8; 2];
    if f.read_exact(&mut head).is_err() || head != [0xFF, 0xD8] {
        return Ok(());
    }
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let tail_len = len.min(4096);
    f.seek(SeekFrom::Start(len - tail_len))
        .map_err(|e| Error::io(path, e))?;
    let mut tail = vec![0u8; tail_len as usize];
    f.read_exact(&mut tail).map_err(|e| Error::io(path, e))?;
    if tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        Ok(())
    } else {
        Err(Error::file(
            path,
            "truncated JPEG (no end-of-image marker): the file was cut short",
        ))
    }
}

/// Python's `round` (half to even), as numpy and the reference extractor round sizes.
pub fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// Output size when the largest side is capped at `max_side` (never upscaled;
/// `None` means no cap): each side times cap/largest, rounded half-to-even.
/// The cap is a float because a query crop scales it (docs/recipe.md §4.1).
pub fn capped_size(width: u32, height: u32, max_side: Option<f64>) -> (u32, u32) {
    match max_side {
        Some(m) if width.max(height) as f64 > m => {
            let s = m / width.max(height) as f64;
            let w = round_half_even(width as f64 * s).max(1.0) as u32;
            let h = round_half_even(height as f64 * s).max(1.0) as u32;
            (w, h)
        }
        _ => (width, height),
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per-output-pixel (first source index, fixed-point weights) of PIL's bilinear filter.
fn pil_bilinear_coeffs(in_size: u32, out_size: u32) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support 1.0, widened when shrinking
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) / filterscale).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&v| {
                    let v =
                        if total != 0.0 { v / total } else { v } * (1u32 << PRECISION_BITS) as f64;
                    if v < 0.0 {
                        (v - 0.5) as i32
                    } else {
                        (v + 0.5) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL `Image.resize((w, h), BILINEAR)` on an RGB image, bit for bit:
/// a horizontal pass then a vertical pass, each rounded to 8 bits.
pub fn resize_pil_bilinear(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (iw, ih) = img.dimensions();
    if (iw, ih) == (width, height) {
        return img.clone();
    }
    let src = img.as_raw();
    let half = 1i64 << (PRECISION_BITS - 1);
    let horizontal = if iw != width {
        let cx = pil_bilinear_coeffs(iw, width);
        let mut out = vec![0u8; (width * ih * 3) as usize];
        for y in 0..ih as usize {
            let row = &src[y * iw as usize * 3..(y + 1) * iw as usize * 3];
            for (x, (x0, k)) in cx.iter().enumerate() {
                for c in 0..3 {
                    let s: i64 = k
                        .iter()
                        .enumerate()
                        .map(|(i, &w)| row[(x0 + i) * 3 + c] as i64 * w as i64)
                        .sum();
                    out[(y * width as usize + x) * 3 + c] = clip8(half + s);
                }
            }
        }
        out
    } else {
        src.to_vec()
    };
    let vertical = if ih != height {
        let cy = pil_bilinear_coeffs(ih, height);
        let stride = width as usize * 3;
        let mut out = vec![0u8; stride * height as usize];
        for (y, (y0, k)) in cy.iter().enumerate() {
            for i in 0..stride {
                let s: i64 = k
                    .iter()
                    .enumerate()
                    .map(|(j, &w)| horizontal[(y0 + j) * stride + i] as i64 * w as i64)
                    .sum();
                out[y * stride + i] = clip8(half + s);
            }
        }
        out
    } else {
        horizontal
    };
    RgbImage::from_raw(width, height, vertical).expect("buffer sized for the image")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_capping_follow_the_reference() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(2.4), 2.0);
        assert_eq!(
            capped_size(640, 480, Some(1024.0)),
            (640, 480),
            "never upscaled"
        );
        assert_eq!(capped_size(2048, 1536, Some(1024.0)), (1024, 768));
        assert_eq!(capped_size(3000, 1, Some(1024.0)), (1024, 1));
        assert_eq!(capped_size(3000, 2000, None), (3000, 2000));
    }

    #[test]
    fn resize_keeps_constant_images_constant() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 10, 77]));
        for (w, h) in [(10, 5), (80, 51), (37, 11), (1, 1)] {
            let r = resize_pil_bilinear(&img, w, h);
            assert!(r.pixels().all(|p| p.0 == [200, 10, 77]), "{w}x{h}");
        }
    }

    #[test]
    fn unreadable_files_name_the_path_and_reason() {
        let dir = std::env::temp_dir().join(format!("delg-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.jpg");
        std::fs::write(&empty, b"").unwrap();
        assert!(load_rgb(&empty, DEFAULT_MAX_PIXELS)
            .unwrap_err()
            .to_string()
            .contains("empty file"));
        let junk = dir.join("junk.jpg");
        std::fs::write(&junk, b"this is not an image at all").unwrap();
        let e = load_rgb(&junk, DEFAULT_MAX_PIXELS).unwrap_err().to_string();
        assert!(e.contains("junk.jpg"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod pil_parity {
    use super::*;
    use crate::io::npy;
    use std::path::PathBuf;

    /// Fixtures from tools/make_pil_resize_fixture.py (Pillow's own resize).
    #[test]
    fn matches_pillow_bit_for_bit() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pil_resize");
        let (shape, src) = npy::read::<u8>(&dir.join("src.npy")).unwrap();
        let img = RgbImage::from_raw(shape[1] as u32, shape[0] as u32, src).unwrap();
        for (w, h) in [(23, 17), (97, 71), (61, 20), (8, 47), (1, 1)] {
            let (_, want) = npy::read::<u8>(&dir.join(format!("out_{w}x{h}.npy"))).unwrap();
            let got = resize_pil_bilinear(&img, w, h);
            let diff = got
                .as_raw()
                .iter()
                .zip(&want)
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(diff, 0, "{w}x{h}: {diff} bytes differ from Pillow");
        }
    }
}
