//! Minimal raster drawing for match pictures: blended lines, dots, filled
//! boxes and text in a built-in 5×7 bitmap font (no font files to ship or
//! find). Everything clips at the image border, so callers may draw
//! partly outside.

use image::{Rgb, RgbImage};

/// Glyph cell: 5 columns of ink plus 1 of spacing, 7 rows plus 2 of spacing.
pub const GLYPH_W: u32 = 6;
pub const GLYPH_H: u32 = 9;

/// 5×7 glyphs, one byte per row, top row first, bit 4 = leftmost column.
/// Lowercase letters are drawn with the uppercase glyphs.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ' ' => [0; 7],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        ';' => [0, 0x0C, 0x0C, 0, 0x0C, 0x04, 0x08],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '*' => [0, 0x04, 0x15, 0x0E, 0x15, 0x04, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '[' => [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E],
        ']' => [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '!' => [0x04, 0x04, 0x04, 0x04, 0x04, 0, 0x04],
        '\'' => [0x04, 0x04, 0x08, 0, 0, 0, 0],
        '"' => [0x0A, 0x0A, 0, 0, 0, 0, 0],
        '|' => [0x04; 7],
        // Anything else shows as '?', so a missing glyph is visible.
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04],
    }
}

/// `a` over `b` with opacity `alpha` in [0, 1].
fn blend(b: Rgb<u8>, a: Rgb<u8>, alpha: f32) -> Rgb<u8> {
    Rgb(std::array::from_fn(|c| {
        (a.0[c] as f32 * alpha + b.0[c] as f32 * (1.0 - alpha)).round() as u8
    }))
}

fn plot(img: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>, alpha: f32) {
    if x >= 0 && y >= 0 && x < img.width() as i64 && y < img.height() as i64 {
        let p = img.get_pixel_mut(x as u32, y as u32);
        *p = blend(*p, colour, alpha);
    }
}

/// Fills the rectangle [x, x + w) × [y, y + h).
pub fn fill_rect(img: &mut RgbImage, x: i64, y: i64, w: u32, h: u32, colour: Rgb<u8>, alpha: f32) {
    for yy in y..y + h as i64 {
        for xx in x..x + w as i64 {
            plot(img, xx, yy, colour, alpha);
        }
    }
}

/// A straight line `width` pixels thick (a square pen stepped along the
/// longer axis, so every pixel is blended once per step).
pub fn line(
    img: &mut RgbImage,
    from: [f64; 2],
    to: [f64; 2],
    width: u32,
    colour: Rgb<u8>,
    alpha: f32,
) {
    let (dx, dy) = (to[0] - from[0], to[1] - from[1]);
    let steps = dx.abs().max(dy.abs()).ceil().max(1.0) as i64;
    let half = (width as i64 - 1) / 2;
    let horizontal = dx.abs() >= dy.abs();
    for s in 0..=steps {
        let t = s as f64 / steps as f64;
        let (x, y) = (
            (from[0] + dx * t).round() as i64,
            (from[1] + dy * t).round() as i64,
        );
        // Thicken across the line only, so blended pixels are not revisited.
        for k in -half..=(width as i64 - 1 - half) {
            if horizontal {
                plot(img, x, y + k, colour, alpha);
            } else {
                plot(img, x + k, y, colour, alpha);
            }
        }
    }
}

/// A filled disc of radius `r` with a one-pixel dark rim, visible on any
/// background.
pub fn dot(img: &mut RgbImage, centre: [f64; 2], r: f64, colour: Rgb<u8>, alpha: f32) {
    let (cx, cy) = (centre[0].round() as i64, centre[1].round() as i64);
    let outer = r + 1.0;
    let reach = outer.ceil() as i64;
    for y in -reach..=reach {
        for x in -reach..=reach {
            let d = ((x * x + y * y) as f64).sqrt();
            if d <= r {
                plot(img, cx + x, cy + y, colour, alpha);
            } else if d <= outer {
                plot(img, cx + x, cy + y, Rgb([0, 0, 0]), alpha);
            }
        }
    }
}

/// Width in pixels of `s` at `scale` (one glyph cell per char).
pub fn text_width(s: &str, scale: u32) -> u32 {
    s.chars().count() as u32 * GLYPH_W * scale
}

/// Draws `s` with its top-left corner at (x, y), each font pixel a
/// `scale`×`scale` block.
pub fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, scale: u32, colour: Rgb<u8>) {
    let sc = scale as i64;
    for (i, c) in s.chars().enumerate() {
        let x0 = x + i as i64 * (GLYPH_W as i64) * sc;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    fill_rect(
                        img,
                        x0 + col * sc,
                        y + row as i64 * sc,
                        scale,
                        scale,
                        colour,
                        1.0,
                    );
                }
            }
        }
    }
}

/// A bright, well-separated colour for item `i` (golden-ratio hue steps).
pub fn palette(i: usize) -> Rgb<u8> {
    let h = (i as f64 * 0.618_033_988_75).fract() * 6.0;
    let x = 1.0 - (h % 2.0 - 1.0).abs();
    let (r, g, b) = match h as u32 {
        0 => (1.0, x, 0.0),
        1 => (x, 1.0, 0.0),
        2 => (0.0, 1.0, x),
        3 => (0.0, x, 1.0),
        4 => (x, 0.0, 1.0),
        _ => (1.0, 0.0, x),
    };
    // Value 1, saturation 0.85: vivid but not neon.
    let v = |c: f64| ((0.15 + 0.85 * c) * 255.0).round() as u8;
    Rgb([v(r), v(g), v(b)])
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
    const BLACK: Rgb<u8> = Rgb([0, 0, 0]);

    fn inked(img: &RgbImage) -> Vec<(u32, u32)> {
        img.enumerate_pixels()
            .filter(|(_, _, p)| **p != BLACK)
            .map(|(x, y, _)| (x, y))
            .collect()
    }

    #[test]
    fn glyphs_render_their_bitmaps_scaled() {
        let mut img = RgbImage::new(12, 18);
        text(&mut img, 0, 0, "1", 2, WHITE);
        // '1': rows 0x04,0x0C,0x04,0x04,0x04,0x04,0x0E = 1+2+1+1+1+1+3 pixels.
        assert_eq!(inked(&img).len(), 10 * 4);
        assert_eq!(*img.get_pixel(4, 0), WHITE, "column 2 of row 0, scaled");
        assert_eq!(*img.get_pixel(0, 0), BLACK);
        // Lowercase uses the uppercase glyph; unknown characters are '?'.
        let draw = |s: &str| {
            let mut i = RgbImage::new(6, 9);
            text(&mut i, 0, 0, s, 1, WHITE);
            i
        };
        assert_eq!(draw("a"), draw("A"));
        assert_eq!(draw("é"), draw("?"));
        assert_ne!(draw("0"), draw("O"), "zero and O are distinguishable");
        assert_eq!(text_width("ab c", 2), 4 * 12);
    }

    #[test]
    fn every_glyph_fits_its_five_columns() {
        for c in (' '..='~').chain(['é']) {
            assert!(glyph(c).iter().all(|&b| b < 0x20), "{c:?}");
        }
    }

    #[test]
    fn lines_connect_their_endpoints_and_clip() {
        let mut img = RgbImage::new(20, 10);
        line(&mut img, [1.0, 1.0], [18.0, 8.0], 1, WHITE, 1.0);
        let px = inked(&img);
        assert!(px.contains(&(1, 1)) && px.contains(&(18, 8)));
        // One pixel per column for a shallow line.
        assert_eq!(px.len(), 18);
        let mut thick = RgbImage::new(20, 10);
        line(&mut thick, [0.0, 5.0], [19.0, 5.0], 3, WHITE, 1.0);
        assert_eq!(inked(&thick).len(), 20 * 3);
        // Far outside: nothing drawn, no panic.
        let mut c = RgbImage::new(4, 4);
        line(&mut c, [-50.0, -50.0], [-10.0, 90.0], 2, WHITE, 1.0);
        assert!(inked(&c).is_empty());
    }

    #[test]
    fn blending_dots_and_palette() {
        let mut img = RgbImage::new(9, 9);
        dot(&mut img, [4.0, 4.0], 2.0, WHITE, 0.5);
        assert_eq!(*img.get_pixel(4, 4), Rgb([128, 128, 128]));
        assert_eq!(*img.get_pixel(0, 0), BLACK);
        let colours: std::collections::HashSet<_> = (0..12).map(palette).collect();
        assert_eq!(colours.len(), 12);
        assert!((0..12).all(|i| palette(i).0.contains(&255)));
    }
}
