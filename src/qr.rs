//! QR codes as PNG data URLs, for clients that cannot render the raw string themselves.

use base64::Engine as _;
use qrcode::{Color, QrCode};

const SCALE: usize = 6;
const QUIET: usize = 4;

/// "data:image/png;base64,…" of `data` as a QR code (6 px per module, 4-module quiet zone).
pub fn png_data_url(data: &str) -> String {
    match png(data) {
        Some(bytes) => format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
        None => String::new(),
    }
}

pub fn png(data: &str) -> Option<Vec<u8>> {
    let code = QrCode::new(data.as_bytes()).ok()?;
    let w = code.width();
    let colors = code.to_colors();
    let side = (w + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, c) in colors.iter().enumerate() {
        if *c == Color::Dark {
            let (x, y) = (i % w + QUIET, i / w + QUIET);
            for dy in 0..SCALE {
                let row = (y * SCALE + dy) * side;
                pixels[row + x * SCALE..row + x * SCALE + SCALE].fill(0);
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, side as u32, side as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().ok()?;
        writer.write_image_data(&pixels).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_a_png() {
        let url = super::png_data_url("2@abc,def,ghi,jkl");
        assert!(url.starts_with("data:image/png;base64,iVBORw0KGgo"));
        let bytes = super::png("hello").unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let reader = decoder.read_info().unwrap();
        assert_eq!(reader.info().width, (21 + 8) * 6);
    }
}
