//! What a prompt and its parameters must look like before a job is created.

use super::invalid::ValidationError;
use super::values::{JobKind, JobParams};
use std::fmt;

/// The longest prompt accepted, in characters.
pub const MAX_PROMPT_CHARS: usize = 4_000;
/// The longest review reason accepted, in characters: a sentence or a
/// paragraph, far below what a job document can hold.
pub const MAX_REASON_CHARS: usize = 2_000;

/// Aspect ratios of the Imagen models (`:predict`).
pub const IMAGEN_ASPECT_RATIOS: &[&str] = &["1:1", "3:4", "4:3", "16:9", "9:16"];
/// Aspect ratios of the Gemini image models (`:generateContent`).
pub const GEMINI_IMAGE_ASPECT_RATIOS: &[&str] = &[
    "1:1", "3:2", "2:3", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
];
/// Aspect ratios of the Veo models.
pub const VIDEO_ASPECT_RATIOS: &[&str] = &["16:9", "9:16"];
/// Clip lengths Veo 3 accepts, in seconds.
pub const VIDEO_DURATIONS: &[u32] = &[4, 6, 8];
/// Output sizes of the image models.
pub const IMAGE_RESOLUTIONS: &[&str] = &["1K", "2K"];
/// Output sizes of the Veo models.
pub const VIDEO_RESOLUTIONS: &[&str] = &["720p", "1080p", "4k"];

/// Checks a prompt: not blank, at most [`MAX_PROMPT_CHARS`] characters, and no
/// control characters other than newline and tab.
pub fn validate_prompt(prompt: &str) -> Result<(), ValidationError> {
    if prompt.trim().is_empty() {
        return Err(ValidationError::new("prompt", "is empty"));
    }
    validate_text("prompt", prompt, MAX_PROMPT_CHARS)
}

/// A reviewer's reason as it is kept: trimmed, `None` when blank; at most
/// [`MAX_REASON_CHARS`] characters, with no control characters other than
/// newline and tab, like a prompt.
pub fn review_reason(reason: Option<String>) -> Result<Option<String>, ValidationError> {
    let Some(reason) = reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
    else {
        return Ok(None);
    };
    validate_text("reason", &reason, MAX_REASON_CHARS)?;
    Ok(Some(reason))
}

/// At most `max` characters, and no control characters other than newline
/// and tab: what a person's free text in a job must be.
fn validate_text(field: &str, text: &str, max: usize) -> Result<(), ValidationError> {
    let chars = text.chars().count();
    if chars > max {
        return Err(ValidationError::new(
            field,
            format!("is {chars} characters long; the limit is {max}"),
        ));
    }
    if let Some((position, c)) = text
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && *c != '\n' && *c != '\t')
    {
        return Err(ValidationError::new(
            field,
            format!(
                "contains the control character U+{:04X} at character {}; only newlines and tabs are allowed",
                c as u32,
                position + 1
            ),
        ));
    }
    Ok(())
}

fn one_of<T: PartialEq + fmt::Display>(
    field: &str,
    value: &T,
    accepted: &[T],
    context: &str,
) -> Result<(), ValidationError> {
    if accepted.contains(value) {
        return Ok(());
    }
    let list = accepted
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Err(ValidationError::new(
        format!("params.{field}"),
        format!("{value} is not accepted {context}; use one of {list}"),
    ))
}

fn video_only(field: &str, present: bool) -> Result<(), ValidationError> {
    if present {
        return Err(ValidationError::new(
            format!("params.{field}"),
            "applies to video jobs only",
        ));
    }
    Ok(())
}

/// Checks parameters against what the models of `kind` accept.
pub fn validate_params(kind: JobKind, params: &JobParams) -> Result<(), ValidationError> {
    if let Some(count) = params.sample_count
        && !(1..=4).contains(&count)
    {
        return Err(ValidationError::new(
            "params.sample_count",
            format!("{count} is out of range; the models return 1 to 4 samples per request"),
        ));
    }
    if let Some(prompt) = &params.negative_prompt {
        validate_prompt(prompt)
            .map_err(|e| ValidationError::new("params.negative_prompt", e.message))?;
    }
    if let Some(model) = &params.model {
        let model = model.trim();
        // The id goes into the request URL as a path segment: only what a
        // Vertex AI model id is made of.
        let well_formed = !model.is_empty()
            && model.len() <= 128
            && model
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
            && !model.contains("..");
        if !well_formed {
            return Err(ValidationError::new(
                "params.model",
                format!(
                    "{model:?} is not a model id (letters, digits, '-', '_', '.', '@'; at most 128)"
                ),
            ));
        }
        let ok = match kind {
            JobKind::Image => model.starts_with("imagen-") || model.starts_with("gemini-"),
            JobKind::Video => model.starts_with("veo-"),
        };
        if !ok {
            let expected = match kind {
                JobKind::Image => "an imagen-* or gemini-* model",
                JobKind::Video => "a veo-* model",
            };
            return Err(ValidationError::new(
                "params.model",
                format!("{model:?} is not {expected}"),
            ));
        }
    }
    match kind {
        JobKind::Image => {
            let imagen = params
                .model
                .as_deref()
                .is_some_and(|m| m.trim().starts_with("imagen-"));
            if let Some(ratio) = &params.aspect_ratio {
                let (list, context) = if imagen {
                    (IMAGEN_ASPECT_RATIOS, "by Imagen models")
                } else {
                    (GEMINI_IMAGE_ASPECT_RATIOS, "for images")
                };
                one_of("aspect_ratio", &ratio.as_str(), list, context)?;
            }
            if let Some(resolution) = &params.resolution {
                one_of(
                    "resolution",
                    &resolution.as_str(),
                    IMAGE_RESOLUTIONS,
                    "for images",
                )?;
            }
            video_only("duration_seconds", params.duration_seconds.is_some())?;
            video_only("generate_audio", params.generate_audio.is_some())?;
        }
        JobKind::Video => {
            if let Some(ratio) = &params.aspect_ratio {
                one_of(
                    "aspect_ratio",
                    &ratio.as_str(),
                    VIDEO_ASPECT_RATIOS,
                    "for videos",
                )?;
            }
            if let Some(duration) = params.duration_seconds {
                one_of("duration_seconds", &duration, VIDEO_DURATIONS, "for videos")?;
            }
            if let Some(resolution) = &params.resolution {
                one_of(
                    "resolution",
                    &resolution.as_str(),
                    VIDEO_RESOLUTIONS,
                    "for videos",
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_prompt(prompt: &str, expected: Result<(), &str>) {
        let got = validate_prompt(prompt).map_err(|e| e.to_string());
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(got), Err(want)) => {
                assert!(got.contains(want), "{prompt:?}: {got:?} lacks {want:?}")
            }
            (got, want) => panic!("{prompt:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn prompts_are_checked_with_clear_messages() {
        check_prompt("rain on a tin roof, close microphone", Ok(()));
        check_prompt("line one\n\tline two", Ok(()));
        check_prompt("", Err("prompt: is empty"));
        check_prompt(" \n\t ", Err("prompt: is empty"));
        check_prompt(&"a".repeat(4_000), Ok(()));
        check_prompt(&"é".repeat(4_000), Ok(()));
        check_prompt(
            &"a".repeat(4_001),
            Err("is 4001 characters long; the limit is 4000"),
        );
        check_prompt("bell\u{7}", Err("control character U+0007 at character 5"));
        check_prompt("carriage\r\nreturn", Err("U+000D"));
        check_prompt("nul\0", Err("U+0000"));
        check_prompt("c1 \u{85}", Err("U+0085"));
    }

    fn params(pairs: &[(&str, &str)]) -> JobParams {
        let mut params = JobParams::default();
        for (key, value) in pairs {
            params.set(key, value).unwrap();
        }
        params
    }

    fn check(kind: JobKind, pairs: &[(&str, &str)], expected: Result<(), &str>) {
        let got = validate_params(kind, &params(pairs)).map_err(|e| e.to_string());
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(got), Err(want)) => {
                assert!(got.contains(want), "{pairs:?}: {got:?} lacks {want:?}")
            }
            (got, want) => panic!("{kind} {pairs:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn image_params_follow_the_image_models() {
        use JobKind::Image;
        check(Image, &[], Ok(()));
        check(
            Image,
            &[("aspect_ratio", "16:9"), ("sample_count", "4")],
            Ok(()),
        );
        check(Image, &[("aspect_ratio", "21:9")], Ok(()));
        check(
            Image,
            &[
                ("aspect_ratio", "21:9"),
                ("model", "imagen-4.0-generate-001"),
            ],
            Err("21:9 is not accepted by Imagen models"),
        );
        check(
            Image,
            &[("aspect_ratio", "7:3")],
            Err("params.aspect_ratio: 7:3 is not accepted"),
        );
        check(Image, &[("sample_count", "0")], Err("0 is out of range"));
        check(Image, &[("sample_count", "5")], Err("5 is out of range"));
        check(
            Image,
            &[("duration_seconds", "8")],
            Err("params.duration_seconds: applies to video jobs only"),
        );
        check(
            Image,
            &[("generate_audio", "true")],
            Err("applies to video jobs only"),
        );
        check(Image, &[("resolution", "2K")], Ok(()));
        check(Image, &[("resolution", "1080p")], Err("params.resolution"));
        check(
            Image,
            &[("model", "veo-3.1-generate-001")],
            Err("is not an imagen-* or gemini-* model"),
        );
        check(
            Image,
            &[("negative_prompt", "bad\u{1b}")],
            Err("params.negative_prompt"),
        );
        for hostile in [
            "gemini-../../x",
            "gemini-x?alt=1",
            "gemini-a b",
            "gemini-x/../y",
            "gemini-%2e%2e",
            "imagen-x#frag",
        ] {
            check(Image, &[("model", hostile)], Err("is not a model id"));
        }
        check(
            Image,
            &[("model", "imagegeneration@006")],
            Err("is not an imagen-* or gemini-* model"),
        );
        check(Image, &[("model", "gemini-3-pro-image-preview")], Ok(()));
    }

    #[test]
    fn video_params_follow_veo() {
        use JobKind::Video;
        check(
            Video,
            &[("duration_seconds", "4"), ("aspect_ratio", "9:16")],
            Ok(()),
        );
        check(
            Video,
            &[("duration_seconds", "6"), ("generate_audio", "false")],
            Ok(()),
        );
        check(
            Video,
            &[
                ("duration_seconds", "8"),
                ("resolution", "1080p"),
                ("seed", "7"),
            ],
            Ok(()),
        );
        check(
            Video,
            &[("duration_seconds", "5")],
            Err("5 is not accepted for videos; use one of 4, 6, 8"),
        );
        check(
            Video,
            &[("aspect_ratio", "1:1")],
            Err("use one of 16:9, 9:16"),
        );
        check(Video, &[("resolution", "2K")], Err("params.resolution"));
        check(
            Video,
            &[("model", "gemini-2.5-flash-image")],
            Err("is not a veo-* model"),
        );
        check(Video, &[("model", "veo-3.1-fast-generate-001")], Ok(()));
    }
}
