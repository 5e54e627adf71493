//! Encoded images (PNG, JPEG, PPM) to the model's RGB8 input size.

use std::io::Cursor;

use crate::{Error, Result};

/// Largest accepted width or height of an encoded image.
pub const MAX_IMAGE_SIDE: u32 = 8192;

/// Largest allocation one decode may make: an image's header cannot make a decoder
/// allocate more, whatever size it claims.
pub const MAX_DECODE_BYTES: u64 = 512 << 20;

/// Decodes `bytes` (format detected from the content) and resizes the image to
/// `width x height` RGB8 (interleaved, row-major) with a triangle filter.
pub fn decode_rgb8(bytes: &[u8], width: usize, height: usize) -> Result<Vec<u8>> {
    let img = decode(bytes)?;
    let (w, h) = (u32::try_from(width), u32::try_from(height));
    let (Ok(w), Ok(h)) = (w, h) else { return Err(Error::Input(format!("bad target size {width}x{height}"))) };
    let img = if img.dimensions() == (w, h) {
        img
    } else {
        image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle)
    };
    Ok(img.into_raw())
}

/// Decodes `bytes` (PNG, JPEG or PPM, detected from the content) to RGB8 at its own
/// size, within [`MAX_IMAGE_SIDE`] and [`MAX_DECODE_BYTES`]. The one decoder of the
/// project's image inputs (the SDK, the server, the trainer's dataset import).
pub fn decode(bytes: &[u8]) -> Result<image::RgbImage> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Image(format!("cannot read the data: {e}")))?;
    if reader.format().is_none() {
        return Err(Error::Image("unknown format (PNG, JPEG and PPM are supported)".into()));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    Ok(reader.decode().map_err(|e| Error::Image(e.to_string()))?.into_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_resizes_png_and_rejects_garbage() {
        let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 7]));
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        let px = decode_rgb8(&png, 32, 32).unwrap();
        assert_eq!(px.len(), 32 * 32 * 3);
        assert!(px.chunks(3).all(|p| p[2] == 7));
        assert!(matches!(decode_rgb8(b"not an image at all", 32, 32), Err(Error::Image(_))));
        assert!(matches!(decode_rgb8(&png[..png.len() / 2], 32, 32), Err(Error::Image(_))));
    }
}
