//! Dry-run placeholders: the files a generator writes instead of calling (and
//! paying for) a model.
//!
//! In dry-run mode the generators still write to the GCS paths the model would
//! have written to, so that downloads and every stage after them run for real.
//! That only holds if the placeholders are files a real consumer accepts: a PNG
//! any decoder reads, at the size the model would have produced, and an MP4 with
//! one video track that a parser and a player take. They are deterministic (a
//! retried job writes the same bytes, so checksums and idempotent uploads
//! behave) and distinct per prompt and sample, or per label for videos, so that
//! two outputs of one job are never mistaken for one another.

use bytes::Bytes;

/// Width and height of a placeholder image for an aspect ratio such as `"16:9"`.
///
/// The ratios Imagen accepts get Imagen's 1K output sizes; the other ratios
/// Gemini accepts get about one megapixel with the exact ratio and even sides.
/// Anything else, `None` included, is square.
pub fn png_size(aspect_ratio: Option<&str>) -> (u32, u32) {
    match aspect_ratio.map(str::trim) {
        Some("3:4") => (896, 1280),
        Some("4:3") => (1280, 896),
        Some("9:16") => (768, 1408),
        Some("16:9") => (1408, 768),
        Some("2:3") => (832, 1248),
        Some("3:2") => (1248, 832),
        Some("4:5") => (896, 1120),
        Some("5:4") => (1120, 896),
        Some("21:9") => (1540, 660),
        _ => (1024, 1024),
    }
}

/// A placeholder PNG for one sample of an image prompt, sized by
/// [`png_size`].
///
/// The picture is a soft pastel gradient with a gentle glow, its colours, angle
/// and glow drawn from a hash of the prompt and the sample number: the same
/// inputs give the same bytes, another prompt or sample another picture. Smooth
/// on purpose: it compresses to 100 to 200 KB, about a twentieth of the raw
/// pixels, and takes under 10 ms to make in a release build.
///
/// The encoder cannot fail on the fixed sizes used here (the tests encode every
/// one); if it ever did, the error is logged and the body is empty, so that the
/// download stage reports a bad image rather than a generator panicking.
pub fn png(prompt: &str, aspect_ratio: Option<&str>, sample: u32) -> Bytes {
    let (width, height) = png_size(aspect_ratio);
    let scene = Scene::new(seed(prompt, sample));
    match encode(width, height, &scene.paint(width, height)) {
        Ok(png) => png.into(),
        Err(error) => {
            tracing::error!(%error, width, height, "placeholder PNG did not encode");
            Bytes::new()
        }
    }
}

/// FNV-1a over the prompt, a separator and the sample. Spelled out rather than
/// `std`'s `DefaultHasher`, whose output may change between Rust releases, so
/// that a placeholder never changes under a toolchain upgrade. The separator is
/// `0xff`, a byte UTF-8 never contains, so no prompt can pose as another
/// prompt's sample.
fn seed(prompt: &str, sample: u32) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for byte in prompt.bytes().chain([0xff]).chain(sample.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// SplitMix64: turns one seed into as many well-spread numbers as the scene
/// needs.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..high`.
    fn between(&mut self, low: f32, high: f32) -> f32 {
        // The top 24 bits fit an f32 mantissa exactly.
        let unit = (self.next() >> 40) as f32 / (1_u32 << 24) as f32;
        low + (high - low) * unit
    }
}

/// What a placeholder image shows: a linear gradient between two pastel
/// colours, lit by a soft round glow of a third. Colours are kept as 0..255
/// plus 0.5, so that the pixel loop rounds with a plain (saturating) `as u8`.
struct Scene {
    from: [f32; 3],
    to: [f32; 3],
    glow: [f32; 3],
    /// Direction of the gradient, as a unit vector.
    cos: f32,
    sin: f32,
    /// Glow centre, as a fraction of the half width and half height from the
    /// middle, so that it stays inside the picture at every aspect ratio.
    glow_x: f32,
    glow_y: f32,
    /// `1 / radius²` of the glow, the radius in units of the longer side.
    glow_falloff: f32,
    /// How much of the glow colour shows at its centre.
    glow_strength: f32,
}

impl Scene {
    fn new(seed: u64) -> Self {
        let mut draws = Draws(seed);
        // Neighbouring hues for the gradient and a far one for the glow keep
        // the picture calm; low saturation and high lightness keep it pastel.
        let hue = draws.between(0.0, 360.0);
        let from = hsl(hue, draws.between(0.35, 0.6), draws.between(0.7, 0.8));
        let to = hsl(
            hue + draws.between(35.0, 100.0),
            draws.between(0.35, 0.6),
            draws.between(0.72, 0.84),
        );
        let glow = hsl(
            hue + draws.between(150.0, 230.0),
            draws.between(0.4, 0.65),
            draws.between(0.82, 0.9),
        );
        let angle = draws.between(0.0, std::f32::consts::TAU);
        let radius = draws.between(0.18, 0.32);
        let scaled = |colour: [f32; 3]| colour.map(|c| c * 255.0 + 0.5);
        Self {
            from: scaled(from),
            to: scaled(to),
            glow: scaled(glow),
            cos: angle.cos(),
            sin: angle.sin(),
            glow_x: draws.between(-0.6, 0.6),
            glow_y: draws.between(-0.6, 0.6),
            glow_falloff: 1.0 / (radius * radius),
            glow_strength: draws.between(0.55, 0.8),
        }
    }

    /// RGB8 pixels, row by row. Coordinates are centred on the image with the
    /// longer side spanning -0.5..0.5, so a scene looks alike at every aspect
    /// ratio. The per-column terms are computed once and the channels are
    /// spelled out, which keeps the inner loop short enough for debug builds.
    fn paint(&self, width: u32, height: u32) -> Vec<u8> {
        let scale = 1.0 / width.max(height) as f32;
        let centred = |i: u32, size: u32| (i as f32 + 0.5 - size as f32 / 2.0) * scale;
        let glow_x = self.glow_x * width as f32 * scale / 2.0;
        let glow_y = self.glow_y * height as f32 * scale / 2.0;
        let columns: Vec<(f32, f32)> = (0..width)
            .map(|x| {
                let x = centred(x, width);
                (x * self.cos, (x - glow_x) * (x - glow_x))
            })
            .collect();
        let [from_r, from_g, from_b] = self.from;
        let [span_r, span_g, span_b] = [0, 1, 2].map(|c| self.to[c] - self.from[c]);
        let [glow_r, glow_g, glow_b] = self.glow;
        let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
        for y in 0..height {
            let y = centred(y, height);
            let along_y = 0.5 + y * self.sin;
            let dy2 = (y - glow_y) * (y - glow_y);
            for &(along_x, dx2) in &columns {
                let t = smoothstep(along_x + along_y);
                let near = 1.0 / (1.0 + (dx2 + dy2) * self.glow_falloff);
                let lit = near * near * self.glow_strength;
                let (r, g, b) = (
                    from_r + span_r * t,
                    from_g + span_g * t,
                    from_b + span_b * t,
                );
                pixels.extend_from_slice(&[
                    (r + (glow_r - r) * lit) as u8,
                    (g + (glow_g - g) * lit) as u8,
                    (b + (glow_b - b) * lit) as u8,
                ]);
            }
        }
        pixels
    }
}

/// The S-curve `3t² - 2t³` on `t` clamped to 0..1: eases the gradient in and
/// out so it has no visible edge where it starts or stops.
fn smoothstep(t: f32) -> f32 {
    let t = t.clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// An HSL colour (hue in degrees, any value) as RGB in 0..1.
fn hsl(hue: f32, saturation: f32, lightness: f32) -> [f32; 3] {
    let chroma = (1.0 - (2.0 * lightness - 1.0).abs()) * saturation;
    let sector = hue.rem_euclid(360.0) / 60.0;
    let second = chroma * (1.0 - (sector % 2.0 - 1.0).abs());
    let (r, g, b) = match sector as u32 {
        0 => (chroma, second, 0.0),
        1 => (second, chroma, 0.0),
        2 => (0.0, chroma, second),
        3 => (0.0, second, chroma),
        4 => (second, 0.0, chroma),
        _ => (chroma, 0.0, second),
    };
    let lift = lightness - chroma / 2.0;
    [r + lift, g + lift, b + lift]
}

/// Encodes RGB8 pixels as a PNG. Paeth filtering turns a smooth gradient into
/// runs of near-zero bytes and the `Fast` level (the `fdeflate` path) squeezes
/// them in a few milliseconds; better levels gain little on such a picture.
fn encode(width: u32, height: u32, pixels: &[u8]) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::with_capacity(pixels.len() / 16);
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    encoder.set_filter(png::Filter::Paeth);
    encoder.add_text_chunk("Software".into(), "asmr dry-run placeholder".into())?;
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(out)
}

// The base clips, made once with ffmpeg 5.1.9 (Debian 12, libx264) and kept in
// the repository so that neither the build nor the tests need ffmpeg. Each is
// 2 s of a slowly turning lavender, peach and mint gradient at 24 fps, H.264
// High, yuv420p, no audio, `+faststart` so the layout is ftyp, moov, free, mdat.
// The bitexact flags, fixed seed and single thread make the commands
// reproducible byte for byte. From the repository root:
//
//   ffmpeg -f lavfi -i "gradients=s=320x180:r=24:d=2:n=3:c0=0xc9b8e8:c1=0xf6d5c3:c2=0xb9e0d8:x0=80:y0=45:x1=240:y1=135:speed=0.01:seed=7" \
//     -c:v libx264 -profile:v high -preset veryslow -crf 30 -pix_fmt yuv420p -threads 1 \
//     -an -map_metadata -1 -fflags +bitexact -flags:v +bitexact -movflags +faststart \
//     shared/assets/placeholder-16x9.mp4
//
//   ffmpeg -f lavfi -i "gradients=s=180x320:r=24:d=2:n=3:c0=0xc9b8e8:c1=0xf6d5c3:c2=0xb9e0d8:x0=45:y0=80:x1=135:y1=240:speed=0.01:seed=7" \
//     -c:v libx264 -profile:v high -preset veryslow -crf 30 -pix_fmt yuv420p -threads 1 \
//     -an -map_metadata -1 -fflags +bitexact -flags:v +bitexact -movflags +faststart \
//     shared/assets/placeholder-9x16.mp4
const LANDSCAPE_MP4: &[u8] = include_bytes!("../assets/placeholder-16x9.mp4");
const PORTRAIT_MP4: &[u8] = include_bytes!("../assets/placeholder-9x16.mp4");

/// What the label box says before the label, so a person reading the bytes
/// knows what the file is.
const LABEL_PREFIX: &[u8] = b"asmr dry-run placeholder: ";

/// Longest label kept, in bytes. Job ids and sample numbers are far shorter;
/// the cap keeps the box size a small `u32`.
const MAX_LABEL: usize = 4096;

/// A placeholder MP4: a 2-second, 24 fps H.264 clip, 180×320 for `"9:16"`
/// and 320×180 otherwise (`None` is 16:9, Veo's default), followed by a
/// top-level `free` box that carries `label` (for instance the job id and the
/// sample number, cut at 4 KiB).
///
/// The box goes after everything else because the sample tables point into
/// `mdat` by absolute file offset: appending moves nothing, so the clip plays
/// exactly as before, while every label gives different bytes.
pub fn mp4(label: &str, aspect_ratio: Option<&str>) -> Bytes {
    let base = match aspect_ratio.map(str::trim) {
        Some("9:16") => PORTRAIT_MP4,
        _ => LANDSCAPE_MP4,
    };
    let label = &label.as_bytes()[..label.len().min(MAX_LABEL)];
    let size = 8 + LABEL_PREFIX.len() + label.len();
    let mut out = Vec::with_capacity(base.len() + size);
    out.extend_from_slice(base);
    // Cannot truncate: `size` is at most 8 + 26 + MAX_LABEL.
    out.extend_from_slice(&(size as u32).to_be_bytes());
    out.extend_from_slice(b"free");
    out.extend_from_slice(LABEL_PREFIX);
    out.extend_from_slice(label);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a PNG to its width, height and RGB8 pixels.
    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut pixels).unwrap();
        assert_eq!(frame.color_type, png::ColorType::Rgb);
        assert_eq!(frame.bit_depth, png::BitDepth::Eight);
        pixels.truncate(frame.buffer_size());
        (frame.width, frame.height, pixels)
    }

    fn check(aspect_ratio: Option<&str>, expected: (u32, u32)) {
        assert_eq!(png_size(aspect_ratio), expected, "{aspect_ratio:?}");
        let (width, height, pixels) = decode(&png("rain on a window", aspect_ratio, 0));
        assert_eq!((width, height), expected, "{aspect_ratio:?}");
        assert_eq!(pixels.len(), width as usize * height as usize * 3);
    }

    #[test]
    fn image_has_the_model_size_for_every_aspect_ratio() {
        // Imagen's 1K sizes.
        check(Some("1:1"), (1024, 1024));
        check(Some("3:4"), (896, 1280));
        check(Some("4:3"), (1280, 896));
        check(Some("9:16"), (768, 1408));
        check(Some("16:9"), (1408, 768));
        // The other Gemini ratios.
        check(Some("2:3"), (832, 1248));
        check(Some("3:2"), (1248, 832));
        check(Some("4:5"), (896, 1120));
        check(Some("5:4"), (1120, 896));
        check(Some("21:9"), (1540, 660));
        // Anything else is square.
        check(None, (1024, 1024));
        check(Some(""), (1024, 1024));
        check(Some("7:3"), (1024, 1024));
        check(Some(" 16:9 "), (1408, 768));
    }

    #[test]
    fn gemini_only_sizes_have_the_exact_ratio_even_sides_and_about_a_megapixel() {
        for (ratio, across, down) in [
            ("2:3", 2, 3),
            ("3:2", 3, 2),
            ("4:5", 4, 5),
            ("5:4", 5, 4),
            ("21:9", 21, 9),
        ] {
            let (width, height) = png_size(Some(ratio));
            assert_eq!(width * down, height * across, "{ratio}");
            assert!(
                width % 2 == 0 && height % 2 == 0,
                "{ratio}: {width}x{height}"
            );
            let pixels = width * height;
            assert!(
                (950_000..=1_100_000).contains(&pixels),
                "{ratio}: {pixels} pixels"
            );
        }
    }

    #[test]
    fn same_prompt_and_sample_give_the_same_bytes() {
        let first = png("soft brushing sounds", Some("16:9"), 2);
        assert_eq!(first, png("soft brushing sounds", Some("16:9"), 2));
    }

    #[test]
    fn another_prompt_or_sample_gives_another_picture() {
        let (.., base) = decode(&png("crinkling paper", Some("4:3"), 0));
        let (.., other_prompt) = decode(&png("crinkling paper.", Some("4:3"), 0));
        let (.., other_sample) = decode(&png("crinkling paper", Some("4:3"), 1));
        assert_ne!(base, other_prompt);
        assert_ne!(base, other_sample);
        assert_ne!(other_prompt, other_sample);
    }

    #[test]
    fn image_is_a_smooth_gradient_neither_flat_nor_noise() {
        for (prompt, sample) in [("rain on a window", 0), ("tapping on glass", 3), ("", 0)] {
            let (width, _, pixels) = decode(&png(prompt, Some("16:9"), sample));
            let colours: std::collections::HashSet<&[u8]> = pixels.chunks_exact(3).collect();
            assert!(colours.len() > 100, "{prompt:?}: {} colours", colours.len());
            // Neighbours, across and down, differ by a level or two at most.
            let rows: Vec<&[u8]> = pixels.chunks_exact(width as usize * 3).collect();
            let mut steepest = 0;
            for pair in rows.windows(2) {
                let (row, below) = (pair[0], pair[1]);
                for i in 0..row.len() - 3 {
                    steepest = steepest
                        .max(row[i].abs_diff(row[i + 3]))
                        .max(row[i].abs_diff(below[i]));
                }
            }
            assert!(steepest <= 3, "{prompt:?}: neighbours differ by {steepest}");
        }
    }

    #[test]
    fn image_compresses_well() {
        let (width, height) = png_size(Some("16:9"));
        let raw = width as usize * height as usize * 3;
        for sample in 0..4 {
            let size = png("waves on a shore", Some("16:9"), sample).len();
            assert!(size < raw / 15, "sample {sample}: {size} of {raw} bytes");
        }
    }

    /// One ISO BMFF box: its type and its body (the bytes after the header).
    #[derive(Debug)]
    struct Mp4Box<'a> {
        kind: [u8; 4],
        offset: usize,
        body: &'a [u8],
    }

    /// Splits `data` into consecutive boxes, failing unless they tile it
    /// exactly. Handles the 64-bit and the to-the-end size forms too.
    fn boxes(data: &[u8]) -> Vec<Mp4Box<'_>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let header = &data[at..];
            assert!(header.len() >= 8, "truncated box header at {at}");
            let size = u32::from_be_bytes(header[0..4].try_into().unwrap()) as usize;
            let kind: [u8; 4] = header[4..8].try_into().unwrap();
            let (size, header_len) = match size {
                0 => (header.len(), 8),
                1 => (
                    u64::from_be_bytes(header[8..16].try_into().unwrap()) as usize,
                    16,
                ),
                size => (size, 8),
            };
            assert!(
                size >= header_len && size <= header.len(),
                "box {:?} at {at} claims {size} bytes, {} left",
                String::from_utf8_lossy(&kind),
                header.len()
            );
            out.push(Mp4Box {
                kind,
                offset: at,
                body: &header[header_len..size],
            });
            at += size;
        }
        out
    }

    fn kinds(boxes: &[Mp4Box<'_>]) -> Vec<String> {
        boxes
            .iter()
            .map(|b| String::from_utf8_lossy(&b.kind).into_owned())
            .collect()
    }

    /// The body of the only child of type `kind`.
    fn child<'a>(parent: &'a [u8], kind: &[u8; 4]) -> &'a [u8] {
        let found: Vec<_> = boxes(parent)
            .into_iter()
            .filter(|b| &b.kind == kind)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{} {:?} boxes",
            found.len(),
            String::from_utf8_lossy(kind)
        );
        found[0].body
    }

    /// Asserts that `mp4` is a well-formed MP4 with one video track whose
    /// display size has the ratio `across:down`; returns its top-level boxes.
    fn assert_well_formed_mp4(mp4: &[u8], (across, down): (u32, u32)) -> Vec<Mp4Box<'_>> {
        let top = boxes(mp4);
        let names = kinds(&top);
        assert_eq!(names[0], "ftyp", "{names:?}");
        assert!(names.contains(&"mdat".to_owned()), "{names:?}");
        let ftyp = top[0].body;
        assert!(
            [b"isom", b"mp42", b"mp41"]
                .iter()
                .any(|brand| ftyp[..4] == brand[..])
        );

        let moov = top
            .iter()
            .filter(|b| &b.kind == b"moov")
            .collect::<Vec<_>>();
        assert_eq!(moov.len(), 1, "{names:?}");
        let tracks: Vec<_> = boxes(moov[0].body)
            .into_iter()
            .filter(|b| &b.kind == b"trak")
            .collect();
        assert_eq!(tracks.len(), 1);
        let trak = tracks[0].body;

        let handler = child(child(trak, b"mdia"), b"hdlr");
        assert_eq!(&handler[8..12], b"vide", "handler type");

        // tkhd: a full box (version, flags) and, from version 1 on, 64-bit
        // times; width and height are the last two 16.16 fixed-point fields.
        let tkhd = child(trak, b"tkhd");
        let fixed = if tkhd[0] == 1 { 88 } else { 76 };
        assert_eq!(tkhd.len(), fixed + 8);
        let width = u32::from_be_bytes(tkhd[fixed..fixed + 4].try_into().unwrap()) >> 16;
        let height = u32::from_be_bytes(tkhd[fixed + 4..fixed + 8].try_into().unwrap()) >> 16;
        assert!(width > 0 && height > 0);
        assert_eq!(
            width * down,
            height * across,
            "{width}x{height} is not {across}:{down}"
        );
        top
    }

    #[test]
    fn video_is_a_well_formed_mp4_in_the_asked_orientation() {
        for (aspect_ratio, ratio) in [
            (None, (16, 9)),
            (Some("16:9"), (16, 9)),
            (Some("9:16"), (9, 16)),
            (Some(" 9:16"), (9, 16)),
            (Some("1:1"), (16, 9)),
        ] {
            let mp4 = mp4("job-1/sample-0", aspect_ratio);
            assert_well_formed_mp4(&mp4, ratio);
        }
    }

    #[test]
    fn base_clips_are_small_and_differ() {
        assert!(LANDSCAPE_MP4.len() < 100 * 1024 && PORTRAIT_MP4.len() < 100 * 1024);
        assert_ne!(LANDSCAPE_MP4, PORTRAIT_MP4);
        assert_well_formed_mp4(LANDSCAPE_MP4, (16, 9));
        assert_well_formed_mp4(PORTRAIT_MP4, (9, 16));
    }

    #[test]
    fn labels_change_the_bytes_but_not_the_structure() {
        let first = mp4("0b9f6c2e-job/0", Some("9:16"));
        let second = mp4("0b9f6c2e-job/1", Some("9:16"));
        assert_ne!(first, second);
        assert_eq!(first, mp4("0b9f6c2e-job/0", Some("9:16")));

        let first = assert_well_formed_mp4(&first, (9, 16));
        let second = assert_well_formed_mp4(&second, (9, 16));
        assert_eq!(kinds(&first), kinds(&second));
        // The label goes last, so every box the player reads, mdat included,
        // keeps its bytes and its offset (the chunk offsets point into it).
        let base = boxes(PORTRAIT_MP4);
        assert_eq!(kinds(&first)[..base.len()], kinds(&base)[..]);
        for ((a, b), original) in first.iter().zip(&second).zip(&base) {
            assert_eq!((a.offset, a.body), (original.offset, original.body));
            assert_eq!((b.offset, b.body), (original.offset, original.body));
        }
    }

    #[test]
    fn label_can_be_read_back_from_the_video() {
        for label in ["job-42/sample-3", "", "émoji 🎧 and spaces"] {
            let mp4 = mp4(label, None);
            let top = assert_well_formed_mp4(&mp4, (16, 9));
            let last = top.last().unwrap();
            assert_eq!(&last.kind, b"free");
            assert_eq!(last.body, [LABEL_PREFIX, label.as_bytes()].concat());
        }
    }

    #[test]
    fn overlong_labels_are_cut() {
        let label = "x".repeat(MAX_LABEL + 10);
        let mp4 = mp4(&label, None);
        let top = assert_well_formed_mp4(&mp4, (16, 9));
        assert_eq!(
            top.last().unwrap().body.len(),
            LABEL_PREFIX.len() + MAX_LABEL
        );
    }
}
