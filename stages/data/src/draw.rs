//! Pictures of the synthetic world, drawn in pure Rust and encoded as PNG.

use mipipe_stage_schema::{ItemRng, RgbImage};

/// An RGB colour.
pub type Rgb = [u8; 3];

/// The shapes the world is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A filled disc.
    Circle,
    /// An axis-aligned square.
    Square,
    /// An upward triangle.
    Triangle,
    /// A square turned 45 degrees.
    Diamond,
    /// A five-pointed star.
    Star,
    /// A plus sign.
    Cross,
    /// A regular hexagon.
    Hexagon,
    /// An annulus.
    Ring,
}

/// Background styles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Background {
    /// One colour.
    Plain,
    /// Per-pixel noise around a colour.
    Noisy,
    /// Vertical stripes.
    Striped,
    /// A checkerboard.
    Checkered,
}

/// An RGB image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A canvas filled with a background.
    pub fn new(size: u32, background: Background, base: Rgb, rng: &mut ItemRng) -> Self {
        let mut canvas = Self {
            width: size,
            height: size,
            pixels: vec![0; (size * size * 3) as usize],
        };
        let alt = [base[0] / 2 + 64, base[1] / 2 + 64, base[2] / 2 + 64];
        let period = (size / 8).max(2);
        for y in 0..size {
            for x in 0..size {
                let colour = match background {
                    Background::Plain => base,
                    Background::Noisy => {
                        let jitter = |c: u8, r: &mut ItemRng| {
                            (c as i64 + r.range(-40, 40)).clamp(0, 255) as u8
                        };
                        [
                            jitter(base[0], rng),
                            jitter(base[1], rng),
                            jitter(base[2], rng),
                        ]
                    }
                    Background::Striped => {
                        if (x / period).is_multiple_of(2) {
                            base
                        } else {
                            alt
                        }
                    }
                    Background::Checkered => {
                        if ((x / period) + (y / period)).is_multiple_of(2) {
                            base
                        } else {
                            alt
                        }
                    }
                };
                canvas.set(x, y, colour);
            }
        }
        canvas
    }

    /// Uniform random noise: the paper's "random pixels" image of text-heavy items.
    pub fn noise(size: u32, rng: &mut ItemRng) -> Self {
        let pixels = (0..size * size * 3).map(|_| rng.below(256) as u8).collect();
        Self {
            width: size,
            height: size,
            pixels,
        }
    }

    /// A canvas from raw 8-bit RGB pixels.
    pub fn from_rgb(width: u32, height: u32, pixels: Vec<u8>) -> Result<Self, String> {
        if pixels.len() != (width as usize) * (height as usize) * 3 {
            return Err(format!(
                "{} bytes for a {width}x{height} RGB image",
                pixels.len()
            ));
        }
        Ok(Self {
            width,
            height,
            pixels,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    fn set(&mut self, x: u32, y: u32, colour: Rgb) {
        let i = ((y * self.width + x) * 3) as usize;
        self.pixels[i..i + 3].copy_from_slice(&colour);
    }

    /// The pixel at `(x, y)`.
    pub fn get(&self, x: u32, y: u32) -> Rgb {
        let i = ((y * self.width + x) * 3) as usize;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    /// Draws a filled shape centred at `(cx, cy)` with radius `r` (in pixels).
    pub fn draw(&mut self, shape: Shape, cx: f64, cy: f64, r: f64, colour: Rgb) {
        let x0 = (cx - r - 1.0).floor().max(0.0) as u32;
        let y0 = (cy - r - 1.0).floor().max(0.0) as u32;
        let x1 = ((cx + r + 1.0).ceil() as u32).min(self.width);
        let y1 = ((cy + r + 1.0).ceil() as u32).min(self.height);
        for y in y0..y1 {
            for x in x0..x1 {
                let dx = (x as f64 + 0.5 - cx) / r;
                let dy = (y as f64 + 0.5 - cy) / r;
                if inside(shape, dx, dy) {
                    self.set(x, y, colour);
                }
            }
        }
    }

    /// Fills an axis-aligned rectangle (clipped to the canvas).
    pub fn fill_rect(&mut self, x: f64, y: f64, width: f64, height: f64, colour: Rgb) {
        let x0 = x.max(0.0) as u32;
        let y0 = y.max(0.0) as u32;
        let x1 = ((x + width).ceil() as u32).min(self.width);
        let y1 = ((y + height).ceil() as u32).min(self.height);
        for py in y0..y1 {
            for px in x0..x1 {
                self.set(px, py, colour);
            }
        }
    }

    /// Encodes as an 8-bit RGB PNG with the table's pinned settings.
    pub fn to_png(&self) -> Vec<u8> {
        RgbImage {
            width: self.width,
            height: self.height,
            pixels: self.pixels.clone(),
        }
        .to_png()
    }

    /// Decodes a PNG (any colour type) into a canvas.
    pub fn from_png(bytes: &[u8]) -> Result<Self, String> {
        let image = RgbImage::from_png(bytes)?;
        Self::from_rgb(image.width, image.height, image.pixels)
    }
}

/// Whether the point `(dx, dy)`, in units of the radius from the centre, is inside the shape.
fn inside(shape: Shape, dx: f64, dy: f64) -> bool {
    let d2 = dx * dx + dy * dy;
    match shape {
        Shape::Circle => d2 <= 1.0,
        Shape::Ring => (0.45..=1.0).contains(&d2),
        Shape::Square => dx.abs() <= 0.8 && dy.abs() <= 0.8,
        Shape::Diamond => dx.abs() + dy.abs() <= 1.0,
        Shape::Cross => {
            (dx.abs() <= 0.3 && dy.abs() <= 1.0) || (dy.abs() <= 0.3 && dx.abs() <= 1.0)
        }
        Shape::Triangle => (-1.0..=0.8).contains(&dy) && dx.abs() <= (dy + 1.0) / 1.8 * 0.95,
        Shape::Hexagon => {
            let (ax, ay) = (dx.abs(), dy.abs());
            ay <= 0.866 && ax * 0.866 + ay * 0.5 <= 0.866
        }
        Shape::Star => {
            if d2 > 1.0 {
                return false;
            }
            let angle = dy.atan2(dx) + std::f64::consts::FRAC_PI_2;
            let sector = std::f64::consts::TAU / 5.0;
            let a = (angle.rem_euclid(sector) - sector / 2.0).abs() / (sector / 2.0);
            // Radius falls linearly from the point (1.0) to the notch (0.45).
            d2.sqrt() <= 0.45 + 0.55 * (1.0 - a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_and_is_deterministic() {
        let mut rng = ItemRng::new(3, &["draw"]);
        let mut canvas = Canvas::new(32, Background::Noisy, [200, 200, 200], &mut rng);
        canvas.draw(Shape::Star, 16.0, 16.0, 10.0, [255, 0, 0]);
        let png = canvas.to_png();
        assert_eq!(png, canvas.to_png());
        assert_eq!(Canvas::from_png(&png).unwrap(), canvas);
        assert_eq!(canvas.get(16, 16), [255, 0, 0]);
    }

    #[test]
    fn shapes_differ_from_each_other() {
        let shapes = [
            Shape::Circle,
            Shape::Square,
            Shape::Triangle,
            Shape::Diamond,
            Shape::Star,
            Shape::Cross,
            Shape::Hexagon,
            Shape::Ring,
        ];
        let masks: Vec<Vec<bool>> = shapes
            .iter()
            .map(|s| {
                (0..400)
                    .map(|i| {
                        inside(
                            *s,
                            (i % 20) as f64 / 10.0 - 0.95,
                            (i / 20) as f64 / 10.0 - 0.95,
                        )
                    })
                    .collect()
            })
            .collect();
        for i in 0..masks.len() {
            for j in i + 1..masks.len() {
                let differ = masks[i]
                    .iter()
                    .zip(&masks[j])
                    .filter(|(a, b)| a != b)
                    .count();
                assert!(
                    differ > 20,
                    "{:?} and {:?} look alike ({differ} px)",
                    shapes[i],
                    shapes[j]
                );
            }
        }
    }
}
