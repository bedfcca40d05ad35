//! The `image` column's format: 8-bit RGB PNG, encoded with pinned settings (the same pixels
//! always give the same bytes) and decoded from any PNG colour type.

/// An 8-bit RGB image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Row-major RGB bytes, `width * height * 3` of them.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Encodes as PNG with fixed settings (fast deflate, Sub filter).
    pub fn to_png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut out, self.width, self.height);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            encoder.set_compression(png::Compression::Fast);
            encoder.set_filter(png::Filter::Sub);
            let mut writer = encoder.write_header().expect("in-memory PNG header");
            writer
                .write_image_data(&self.pixels)
                .expect("in-memory PNG data");
        }
        out
    }

    /// Decodes any PNG (palette, grey, alpha and 16-bit images are converted to 8-bit RGB).
    pub fn from_png(bytes: &[u8]) -> Result<Self, String> {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder
            .read_info()
            .map_err(|e| format!("unreadable PNG: {e}"))?;
        let mut buf = vec![0; reader.output_buffer_size().ok_or("PNG too large")?];
        let info = reader
            .next_frame(&mut buf)
            .map_err(|e| format!("unreadable PNG: {e}"))?;
        buf.truncate(info.buffer_size());
        let pixels = match info.color_type {
            png::ColorType::Rgb => buf,
            png::ColorType::Rgba => buf.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
            png::ColorType::Grayscale => buf.iter().flat_map(|&g| [g, g, g]).collect(),
            png::ColorType::GrayscaleAlpha => {
                buf.chunks(2).flat_map(|p| [p[0], p[0], p[0]]).collect()
            }
            png::ColorType::Indexed => return Err("indexed PNG was not expanded".into()),
        };
        Ok(Self {
            width: info.width,
            height: info.height,
            pixels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_converts_grey() {
        let image = RgbImage {
            width: 2,
            height: 1,
            pixels: vec![1, 2, 3, 4, 5, 6],
        };
        let png = image.to_png();
        assert_eq!(png, image.to_png(), "pinned settings give identical bytes");
        assert_eq!(RgbImage::from_png(&png).unwrap(), image);
        let mut grey = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut grey, 1, 1);
            encoder.set_color(png::ColorType::Grayscale);
            encoder
                .write_header()
                .unwrap()
                .write_image_data(&[7])
                .unwrap();
        }
        assert_eq!(RgbImage::from_png(&grey).unwrap().pixels, [7, 7, 7]);
    }
}
