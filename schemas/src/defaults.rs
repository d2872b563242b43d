//! Default values of the domain's configurable settings (docs/domain.md), in one
//! place: the workers apply them, the load generators aim at them.

/// Currencies the payment worker accepts.
pub const SUPPORTED_CURRENCIES: &[&str] = &["EUR", "USD", "GBP"];

/// Token prefix the payment gateway declines.
pub const DECLINED_TOKEN_PREFIX: &str = "tok_declined";

/// A customer's authorized total within [`SPEND_WINDOW_MS`] may not exceed this (minor units).
pub const SPEND_LIMIT_MINOR: i64 = 1_000_000;

/// The spend window, in event time: (occurred_at − 1 h, occurred_at].
pub const SPEND_WINDOW_MS: i64 = 3_600_000;

/// Terms that get a listing's description declined (case-insensitive substring match).
pub const MODERATED_TERMS: &[&str] =
    &["guaranteed return", "cash only", "no questions asked", "wire transfer only", "scam"];

/// Patterns that get a listing's image declined (case-insensitive substring of the image URL).
pub const MODERATED_IMAGE_PATTERNS: &[&str] = &["/nsfw/", "watermark", ".exe", "stock-photo-unlicensed"];
