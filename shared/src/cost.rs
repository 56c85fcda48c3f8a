//! What a paid model call costs: the list prices of the models asmr calls,
//! the estimate of one job, and amounts of money.
//!
//! Amounts are whole micro-dollars (`u64`, 1 USD = 1 000 000), so that adding
//! thousands of reservations never drifts the way floating point would. The
//! table is an estimate for the cost guard (a daily budget), not an invoice:
//! Google's bill is the truth, and `MODEL_PRICES` corrects the table when
//! Google's prices move.

use crate::domain::job::Job;
use crate::domain::values::{JobKind, JobParams};
use crate::vertex::{DEFAULT_IMAGE_MODEL, DEFAULT_VIDEO_MODEL};
use std::fmt;

/// Micro-dollars in one US dollar.
pub const MICROS_PER_USD: u64 = 1_000_000;

/// Seconds a Veo clip lasts when the job does not say (Veo 3's default, and
/// its longest).
pub const DEFAULT_VIDEO_SECONDS: u32 = 8;

/// The price of one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Price {
    /// Micro-dollars per generated image.
    PerImage(u64),
    /// Micro-dollars per second of generated video.
    PerSecond {
        /// With a sound track (`generate_audio`).
        with_audio: u64,
        /// Without a sound track.
        without_audio: u64,
    },
}

impl Price {
    /// The kind of job this price is for.
    pub fn kind(self) -> JobKind {
        match self {
            Price::PerImage(_) => JobKind::Image,
            Price::PerSecond { .. } => JobKind::Video,
        }
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Price::PerImage(micros) => write!(f, "{} per image", format_usd(*micros)),
            Price::PerSecond {
                with_audio,
                without_audio,
            } => write!(
                f,
                "{} per second with audio, {} without",
                format_usd(*with_audio),
                format_usd(*without_audio)
            ),
        }
    }
}

/// How a model id found its price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matched {
    /// An entry naming the model, or a family (`veo-3.1-fast-*`) it belongs to.
    Entry(String),
    /// No entry fits: the highest price of the kind, so that an unknown
    /// model can never slip under the budget.
    Fallback,
}

/// What one job is expected to cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// Micro-dollars.
    pub micros: u64,
    /// The price used.
    pub price: Price,
    /// Where that price came from.
    pub matched: Matched,
}

/// Prices per model id or family. Entries ending in `*` match every id that
/// starts with what comes before it. An entry set by `MODEL_PRICES` beats a
/// list price; among equals an exact id beats a family, and a longer family
/// beats a shorter one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceTable {
    entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    pattern: String,
    price: Price,
    /// Set by `MODEL_PRICES` rather than taken from the list.
    custom: bool,
}

const fn usd_per_image(micros: u64) -> Price {
    Price::PerImage(micros)
}

const fn usd_per_second(with_audio: u64, without_audio: u64) -> Price {
    Price::PerSecond {
        with_audio,
        without_audio,
    }
}

/// The defaults, in micro-dollars, as published for 2025–2026. Google's
/// pages move; each number says where it was read, and `MODEL_PRICES`
/// overrides any of them.
const LIST_PRICES: &[(&str, Price)] = &[
    // Imagen 4 Fast / Standard / Ultra: $0.02 / $0.04 / $0.06 per image
    // (Gemini API and Vertex AI pricing pages, as summarised at
    // https://searchroost.com/blog/imagen-family, checked March 2026, and
    // https://blog.laozhang.ai/en/posts/cheap-gemini-image-api, February 2026).
    ("imagen-4.0-fast-generate-*", usd_per_image(20_000)),
    ("imagen-4.0-generate-*", usd_per_image(40_000)),
    ("imagen-4.0-ultra-generate-*", usd_per_image(60_000)),
    // Imagen 3 was priced like Imagen 4 (Fast $0.02, Standard $0.04); the
    // capability (editing) model is taken at the Standard price.
    ("imagen-3.0-fast-generate-*", usd_per_image(20_000)),
    ("imagen-3.0-generate-*", usd_per_image(40_000)),
    ("imagen-3.0-capability-*", usd_per_image(40_000)),
    // Gemini 2.5 Flash Image: $30 per million output tokens, 1290 tokens per
    // image = $0.039 per image (same laozhang.ai page; the token price from
    // https://docs.dev.xavier.icvr.xyz/models/google/gemini-2.5-flash.html).
    ("gemini-2.5-flash-image*", usd_per_image(39_000)),
    // Gemini 3 Pro Image: $0.134 per 1K/2K image ($0.24 at 4K; same page).
    ("gemini-3-pro-image*", usd_per_image(134_000)),
    // Veo 3 and 3.1: $0.40 per second with audio (the September 2025 cut from
    // $0.75, https://ieagreen.org.uk/googles-veo-3-goes-vertical-ai-video-takes-a-social-media-friendly-turn);
    // silent output at half that, $0.20 ("enabling generate_audio doubles
    // the unit price", https://docs.qingbo.dev/en/api-reference/video/veo).
    // 4K output of 3.1 costs $0.60 per second
    // (https://reapi.ai/ru/blog/cheapest-veo-3-1-api-2026); override the
    // entry for 4K batches.
    ("veo-3.1-generate-*", usd_per_second(400_000, 200_000)),
    ("veo-3.0-generate-*", usd_per_second(400_000, 200_000)),
    // Veo 3 and 3.1 Fast: $0.15 per second with audio (same ieagreen.org.uk
    // page), $0.10 silent (https://theplanettools.ai/blog/veo-3-1-lite-vs-fast-vs-full-comparison-2026,
    // April 2026).
    ("veo-3.1-fast-generate-*", usd_per_second(150_000, 100_000)),
    ("veo-3.0-fast-generate-*", usd_per_second(150_000, 100_000)),
    // Veo 3.1 Lite (2026): $0.05 per second at 720p, $0.08 at 1080p (same
    // theplanettools.ai page); the 1080p price, with or without audio.
    ("veo-3.1-lite-generate-*", usd_per_second(80_000, 80_000)),
    // Veo 2 (no audio): $0.50 per second, the rate widely quoted for its 2025
    // launch; no current Google page confirming it could be read. Veo 2
    // retires on June 30 2026: override it if you still use it.
    ("veo-2.0-generate-*", usd_per_second(500_000, 500_000)),
];

impl Default for PriceTable {
    fn default() -> Self {
        Self {
            entries: LIST_PRICES
                .iter()
                .map(|(pattern, price)| Entry {
                    pattern: pattern.to_string(),
                    price: *price,
                    custom: false,
                })
                .collect(),
        }
    }
}

impl PriceTable {
    /// The published list prices (see the comments in the source).
    pub fn list_prices() -> Self {
        Self::default()
    }

    /// The table with the entries of `text` added, replacing entries with the
    /// same id or family; they take precedence over every list price. `text` is `MODEL_PRICES`: comma-separated
    /// `MODEL=USD` pairs. A model whose id starts with `veo` is priced per
    /// second of video, `WITH_AUDIO/WITHOUT_AUDIO` or one price for both;
    /// any other model per image. An id may end in `*` to name a family:
    /// `imagen-4.0-generate-001=0.04, veo-3.1-fast-*=0.15/0.10`.
    pub fn with_overrides(mut self, text: &str) -> Result<Self, String> {
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (pattern, value) = entry
                .split_once('=')
                .map(|(p, v)| (p.trim(), v.trim()))
                .ok_or_else(|| format!("{entry:?} is not MODEL=USD"))?;
            if pattern.is_empty() || pattern.contains(char::is_whitespace) {
                return Err(format!("{entry:?} does not name a model"));
            }
            let price = if pattern.starts_with("veo") {
                let (with_audio, without_audio) = match value.split_once('/') {
                    Some((with, without)) => (parse_usd(with)?, parse_usd(without)?),
                    None => {
                        let both = parse_usd(value)?;
                        (both, both)
                    }
                };
                usd_per_second(with_audio, without_audio)
            } else {
                if value.contains('/') {
                    return Err(format!(
                        "{entry:?}: only video (veo-*) models take WITH_AUDIO/WITHOUT_AUDIO"
                    ));
                }
                usd_per_image(parse_usd(value)?)
            };
            let entry = Entry {
                pattern: pattern.to_string(),
                price,
                custom: true,
            };
            match self.entries.iter_mut().find(|e| e.pattern == pattern) {
                Some(existing) => *existing = entry,
                None => self.entries.push(entry),
            }
        }
        Ok(self)
    }

    /// Every entry, in table order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, Price)> {
        self.entries.iter().map(|e| (e.pattern.as_str(), e.price))
    }

    /// The price of `model` for a job of `kind`: the best entry that matches
    /// (custom before listed, exact before family, longer family first),
    /// else the highest price of the kind.
    pub fn lookup(&self, kind: JobKind, model: &str) -> (Price, Matched) {
        let model = model.trim();
        let best = self
            .entries
            .iter()
            .filter(|e| e.price.kind() == kind)
            .filter_map(|e| {
                let specificity = if e.pattern == model {
                    usize::MAX
                } else {
                    let prefix = e.pattern.strip_suffix('*')?;
                    model.starts_with(prefix).then_some(prefix.len())?
                };
                Some(((e.custom, specificity), e))
            })
            .max_by_key(|(rank, _)| *rank);
        match best {
            Some((_, e)) => (e.price, Matched::Entry(e.pattern.clone())),
            None => (self.highest(kind), Matched::Fallback),
        }
    }

    /// The most expensive price of `kind`, each rate taken separately.
    fn highest(&self, kind: JobKind) -> Price {
        let prices = self.entries.iter().map(|e| e.price);
        match kind {
            JobKind::Image => usd_per_image(
                prices
                    .filter_map(|p| match p {
                        Price::PerImage(micros) => Some(micros),
                        Price::PerSecond { .. } => None,
                    })
                    .max()
                    .unwrap_or(0),
            ),
            JobKind::Video => {
                let (with, without) = prices
                    .filter_map(|p| match p {
                        Price::PerSecond {
                            with_audio,
                            without_audio,
                        } => Some((with_audio, without_audio)),
                        Price::PerImage(_) => None,
                    })
                    .fold((0, 0), |(a, b), (w, wo)| (a.max(w), b.max(wo)));
                usd_per_second(with, without)
            }
        }
    }

    /// What a job of `kind` with `params` costs on `model`: images times the
    /// price per image; seconds (8 unless set) times the price per second
    /// (with audio unless `generate_audio` is false) times the samples.
    pub fn estimate(&self, kind: JobKind, model: &str, params: &JobParams) -> Estimate {
        let (price, matched) = self.lookup(kind, model);
        let samples = u64::from(params.sample_count.unwrap_or(1).max(1));
        let micros = match price {
            Price::PerImage(per_image) => per_image.saturating_mul(samples),
            Price::PerSecond {
                with_audio,
                without_audio,
            } => {
                let per_second = if params.generate_audio == Some(false) {
                    without_audio
                } else {
                    with_audio
                };
                let seconds = u64::from(params.duration_seconds.unwrap_or(DEFAULT_VIDEO_SECONDS));
                per_second.saturating_mul(seconds).saturating_mul(samples)
            }
        };
        Estimate {
            micros,
            price,
            matched,
        }
    }
}

/// Reads an amount of US dollars (`12`, `0.5`, `0.039`, `$3.20`) as
/// micro-dollars, exactly: at most six decimals, never negative.
pub fn parse_usd(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits = trimmed.strip_prefix('$').unwrap_or(trimmed);
    let bad = || format!("{text:?} is not an amount of US dollars (like 25 or 0.04)");
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    if fraction.len() > 6 {
        return Err(format!(
            "{text:?} has more than six decimals (a millionth of a dollar is the smallest amount)"
        ));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let fraction: u64 = format!("{fraction:0<6}").parse().map_err(|_| bad())?;
    whole
        .checked_mul(MICROS_PER_USD)
        .and_then(|w| w.checked_add(fraction))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Micro-dollars as `$12.00`, `$0.039`, `$0.000001`: at least cents, and
/// every digit that is not zero.
pub fn format_usd(micros: u64) -> String {
    let fraction = format!("{:06}", micros % MICROS_PER_USD);
    let fraction = fraction.trim_end_matches('0');
    let fraction = format!("{fraction:0<2}");
    format!("${}.{fraction}", micros / MICROS_PER_USD)
}

/// Micro-dollars as a JSON-friendly number of dollars (nearest `f64`).
pub fn usd(micros: u64) -> f64 {
    // Exact for any amount below 2^53 micro-dollars (nine billion dollars).
    micros as f64 / MICROS_PER_USD as f64
}

/// The cost guard of a generator: what models cost, and the daily budget.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CostGuard {
    /// List prices, with MODEL_PRICES over them.
    pub prices: PriceTable,
    /// BUDGET_USD_PER_DAY in micro-dollars; `None`: no limit (spending is
    /// still recorded, for `asmr stats`).
    pub budget_micros: Option<u64>,
}

/// The model `job` runs on: the one its generator recorded when it
/// claimed it, else the job's own `model` parameter, else the default model
/// of its kind. The one rule every view (manifest, contact sheet,
/// previews) prices a job by.
pub fn model_of(job: &Job) -> String {
    job.model()
        .or(job.params().model.as_deref())
        .unwrap_or(match job.kind() {
            JobKind::Image => DEFAULT_IMAGE_MODEL,
            JobKind::Video => DEFAULT_VIDEO_MODEL,
        })
        .to_string()
}

/// What `job` costs at `prices` on the model it runs on ([`model_of`]).
pub fn job_cost(job: &Job, prices: &PriceTable) -> Estimate {
    prices.estimate(job.kind(), &model_of(job), job.params())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> JobParams {
        let mut params = JobParams::default();
        for (key, value) in pairs {
            params.set(key, value).unwrap();
        }
        params
    }

    fn check_usd(text: &str, expected: Result<u64, &str>) {
        match (parse_usd(text), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn dollar_amounts_read_exactly() {
        check_usd("12", Ok(12_000_000));
        check_usd("0.5", Ok(500_000));
        check_usd(".5", Ok(500_000));
        check_usd("3.", Ok(3_000_000));
        check_usd("0.039", Ok(39_000));
        check_usd(" $3.20 ", Ok(3_200_000));
        check_usd("0.000001", Ok(1));
        check_usd("0", Ok(0));
        check_usd("0.0000001", Err("more than six decimals"));
        check_usd("-1", Err("is not an amount"));
        check_usd("1e3", Err("is not an amount"));
        check_usd("", Err("is not an amount"));
        check_usd(".", Err("is not an amount"));
        check_usd("ten", Err("is not an amount"));
        check_usd("99999999999999999999", Err("is not an amount"));
        check_usd("18446744073710", Err("too large"));
    }

    #[test]
    fn amounts_print_with_cents_and_every_significant_digit() {
        for (micros, text) in [
            (0, "$0.00"),
            (12_000_000, "$12.00"),
            (39_000, "$0.039"),
            (3_200_000, "$3.20"),
            (1, "$0.000001"),
            (1_234_567, "$1.234567"),
        ] {
            assert_eq!(format_usd(micros), text);
            assert_eq!(parse_usd(text).unwrap(), micros, "round trip of {text}");
        }
        assert_eq!(usd(120_000).to_string(), "0.12");
    }

    fn check_lookup(kind: JobKind, model: &str, price: Price, matched: Option<&str>) {
        let table = PriceTable::list_prices();
        let want = match matched {
            Some(pattern) => Matched::Entry(pattern.into()),
            None => Matched::Fallback,
        };
        assert_eq!(table.lookup(kind, model), (price, want), "{model}");
    }

    #[test]
    fn models_find_their_family_and_unknown_ones_the_highest_price() {
        use JobKind::{Image, Video};
        check_lookup(
            Image,
            "imagen-4.0-generate-001",
            usd_per_image(40_000),
            Some("imagen-4.0-generate-*"),
        );
        check_lookup(
            Image,
            "imagen-4.0-fast-generate-001",
            usd_per_image(20_000),
            Some("imagen-4.0-fast-generate-*"),
        );
        check_lookup(
            Image,
            "gemini-2.5-flash-image",
            usd_per_image(39_000),
            Some("gemini-2.5-flash-image*"),
        );
        check_lookup(
            Image,
            "gemini-2.5-flash-image-preview",
            usd_per_image(39_000),
            Some("gemini-2.5-flash-image*"),
        );
        check_lookup(
            Video,
            "veo-3.1-fast-generate-preview",
            usd_per_second(150_000, 100_000),
            Some("veo-3.1-fast-generate-*"),
        );
        check_lookup(
            Video,
            "veo-3.1-generate-001",
            usd_per_second(400_000, 200_000),
            Some("veo-3.1-generate-*"),
        );
        // Unknown: the most expensive of the kind, never free.
        check_lookup(Image, "gemini-9-image", usd_per_image(134_000), None);
        check_lookup(
            Video,
            "veo-9-generate-001",
            usd_per_second(500_000, 500_000),
            None,
        );
        // A model of the other kind is unknown for this kind.
        check_lookup(Image, "veo-3.1-generate-001", usd_per_image(134_000), None);
    }

    #[test]
    fn estimates_multiply_samples_seconds_and_the_audio_rate() {
        let table = PriceTable::list_prices();
        let check = |kind, model: &str, pairs: &[(&str, &str)], micros: u64| {
            assert_eq!(
                table.estimate(kind, model, &params(pairs)).micros,
                micros,
                "{model} {pairs:?}"
            );
        };
        check(JobKind::Image, "imagen-4.0-generate-001", &[], 40_000);
        check(
            JobKind::Image,
            "imagen-4.0-generate-001",
            &[("sample_count", "4")],
            160_000,
        );
        check(
            JobKind::Image,
            "gemini-2.5-flash-image",
            &[("sample_count", "3")],
            117_000,
        );
        // 8 s with audio unless told otherwise: $3.20.
        check(JobKind::Video, "veo-3.1-generate-001", &[], 3_200_000);
        check(
            JobKind::Video,
            "veo-3.1-generate-001",
            &[("generate_audio", "false"), ("duration_seconds", "4")],
            800_000,
        );
        check(
            JobKind::Video,
            "veo-3.1-fast-generate-001",
            &[("duration_seconds", "6"), ("sample_count", "2")],
            1_800_000,
        );
    }

    #[test]
    fn overrides_replace_or_add_entries_and_say_what_is_wrong() {
        let table = PriceTable::list_prices()
            .with_overrides(
                " imagen-4.0-generate-* = 0.05, veo-3.1-fast-*=0.2/0.12,my-image-model=1, veo-x=0.3 ,",
            )
            .unwrap();
        assert_eq!(
            table.lookup(JobKind::Image, "imagen-4.0-generate-001").0,
            usd_per_image(50_000)
        );
        // A custom family beats a longer listed one.
        assert_eq!(
            table.lookup(JobKind::Video, "veo-3.1-fast-generate-001").0,
            usd_per_second(200_000, 120_000)
        );
        assert_eq!(
            table.lookup(JobKind::Video, "veo-3.1-fast-other").0,
            usd_per_second(200_000, 120_000)
        );
        assert_eq!(
            table.lookup(JobKind::Image, "my-image-model"),
            (
                usd_per_image(1_000_000),
                Matched::Entry("my-image-model".into())
            )
        );
        assert_eq!(
            table.lookup(JobKind::Video, "veo-x").0,
            usd_per_second(300_000, 300_000)
        );
        assert_eq!(
            PriceTable::list_prices().with_overrides("").unwrap(),
            PriceTable::list_prices()
        );
        for (text, error) in [
            ("imagen-4.0-generate-001", "is not MODEL=USD"),
            ("=0.04", "does not name a model"),
            ("imagen-4.0-generate-001=0.04/0.02", "only video"),
            ("veo-3.1-generate-001=cheap", "is not an amount"),
            ("veo-3.1-generate-001=0.4/", "is not an amount"),
        ] {
            let got = PriceTable::list_prices().with_overrides(text).unwrap_err();
            assert!(got.contains(error), "{text}: {got}");
        }
    }

    #[test]
    fn every_list_price_is_a_price_of_its_models_kind() {
        for (pattern, price) in PriceTable::list_prices().entries() {
            let kind = if pattern.starts_with("veo") {
                JobKind::Video
            } else {
                JobKind::Image
            };
            assert_eq!(price.kind(), kind, "{pattern}");
            assert!(!price.to_string().is_empty());
        }
    }
}
