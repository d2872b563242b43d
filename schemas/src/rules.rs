//! The business-rule settings of docs/domain.md as command-line flags, shared by
//! the workers that apply them and the verifier that recomputes them, so the
//! two can never disagree about a default.

use std::time::Duration;

use crate::client::parse_duration;
use crate::defaults;

/// Business-rule settings; each worker reads its own, `devstack verify` reads
/// the ones it recomputes.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Business rules")]
pub struct RuleArgs {
    /// payment: accepted currencies, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = defaults::SUPPORTED_CURRENCIES.iter().map(|c| c.to_string()))]
    pub currencies: Vec<String>,
    /// payment: largest authorized total per customer within --spend-window (minor units).
    #[arg(long, default_value_t = defaults::SPEND_LIMIT_MINOR)]
    pub spend_limit_minor: i64,
    /// payment: width of the spend window (event time).
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub spend_window: Duration,
    /// publication: terms that decline a description (case-insensitive), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = defaults::MODERATED_TERMS.iter().map(|c| c.to_string()))]
    pub moderated_terms: Vec<String>,
    /// publication: patterns that decline an image URL (case-insensitive), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = defaults::MODERATED_IMAGE_PATTERNS.iter().map(|c| c.to_string()))]
    pub moderated_image_patterns: Vec<String>,
}

impl Default for RuleArgs {
    fn default() -> Self {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self {
            currencies: own(defaults::SUPPORTED_CURRENCIES),
            spend_limit_minor: defaults::SPEND_LIMIT_MINOR,
            spend_window: Duration::from_millis(defaults::SPEND_WINDOW_MS as u64),
            moderated_terms: own(defaults::MODERATED_TERMS),
            moderated_image_patterns: own(defaults::MODERATED_IMAGE_PATTERNS),
        }
    }
}

impl RuleArgs {
    /// Checks the values; the error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.spend_limit_minor < 0 {
            return Err(format!("--spend-limit-minor {}: must not be negative", self.spend_limit_minor));
        }
        if self.spend_window.is_zero() {
            return Err("--spend-window must be longer than 0".into());
        }
        if let Some(c) = self.currencies.iter().find(|c| c.len() != 3 || !c.chars().all(|c| c.is_ascii_uppercase())) {
            return Err(format!("--currencies: '{c}' is not an ISO-4217 code like EUR"));
        }
        if self.moderated_terms.iter().chain(&self.moderated_image_patterns).any(|t| t.trim().is_empty()) {
            return Err("--moderated-terms / --moderated-image-patterns: empty entries would match everything".into());
        }
        Ok(())
    }

    /// The spend window in milliseconds.
    pub fn window_ms(&self) -> i64 {
        self.spend_window.as_millis() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        rules: RuleArgs,
    }

    #[test]
    fn flag_defaults_are_the_domain_defaults() {
        let parsed = Cli::parse_from(["x"]).rules;
        let d = RuleArgs::default();
        assert_eq!(parsed.currencies, d.currencies);
        assert_eq!(parsed.moderated_terms, d.moderated_terms);
        assert_eq!(parsed.window_ms(), defaults::SPEND_WINDOW_MS);
        assert_eq!(parsed.spend_limit_minor, d.spend_limit_minor);
    }

    #[test]
    fn bad_values_name_their_flag() {
        let bad = Cli::parse_from(["x", "--currencies", "EUR,euro"]).rules;
        assert!(bad.validate().unwrap_err().contains("--currencies: 'euro'"));
        let empty = Cli::parse_from(["x", "--moderated-terms", "scam,,x"]).rules;
        assert!(empty.validate().unwrap_err().contains("--moderated-terms"));
    }
}
