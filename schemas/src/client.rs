//! Client settings shared by every binary, following Kafka conventions:
//! `-b/--brokers` (`KAFKA_BROKERS`), `-X key=value` librdkafka pass-through
//! (as kcat does), `--registry` (`SCHEMA_REGISTRY_URL`) and registry basic
//! auth (`SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO`, `user:password`).
//!
//! Precedence: flags, then environment variables, then defaults; `-X`
//! settings override the defaults this module sets. SASL/SSL are plain
//! librdkafka settings (`-X security.protocol=SASL_SSL -X sasl.mechanism=…`);
//! secrets are never logged ([`KafkaArgs::redacted`]).

use std::time::Duration;

use crate::codec::RegistryConfig;

/// Largest record our clients will produce or accept. The embedded broker
/// accepts larger records and then stalls the partition silently (fetches
/// are capped at 5 MiB), so this stays well below that.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The partitioner of every producer in the project (matches the Java client).
pub const PARTITIONER: &str = "murmur2_random";

/// Kafka connection flags.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma-separated.
    #[arg(short = 'b', long = "brokers", env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,

    /// librdkafka setting `key=value`, repeatable (e.g. `-X security.protocol=SASL_SSL`).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub props: Vec<(String, String)>,

    /// librdkafka settings file, one `key=value` per line, `#` comments (as
    /// kcat's `-F`): where SASL/SSL credentials live in a deployment. `-X` wins.
    #[arg(short = 'F', long = "config-file", env = "KAFKA_CONFIG_FILE", value_name = "PATH", value_parser = ConfigFile::read)]
    pub config_file: Option<ConfigFile>,
}

/// A librdkafka properties file, read when the flags are parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFile {
    pub path: std::path::PathBuf,
    pub props: Vec<(String, String)>,
}

impl ConfigFile {
    /// Reads `path`; the error names the setting, the file and the line.
    pub fn read(path: &str) -> Result<Self, String> {
        let what = format!("--config-file (KAFKA_CONFIG_FILE) {path}");
        let text = std::fs::read_to_string(path).map_err(|e| format!("{what}: {e}"))?;
        Self::parse(path, &text)
    }

    fn parse(path: &str, text: &str) -> Result<Self, String> {
        let mut props = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let kv = parse_kv(line)
                .map_err(|_| format!("--config-file (KAFKA_CONFIG_FILE) {path} line {}: expected key=value", i + 1))?;
            props.push(kv);
        }
        Ok(ConfigFile { path: path.into(), props })
    }
}

/// Schema registry flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Schema registry URL.
    #[arg(long = "registry", env = "SCHEMA_REGISTRY_URL", default_value = "http://localhost:8081")]
    pub registry: String,

    /// Registry basic auth as `user:password`.
    #[arg(long = "registry-auth", env = "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", hide_env_values = true)]
    pub registry_auth: Option<String>,
}

/// Parses one `-X key=value`.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("-X expects key=value, got '{s}'")),
    }
}

/// Keys whose values must never be printed.
fn secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "key.pem", "sasl.jaas"].iter().any(|s| k.contains(s))
}

impl KafkaArgs {
    /// Brokers only, every other setting at its default.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaArgs { brokers: brokers.into(), props: Vec::new(), config_file: None }
    }

    /// The librdkafka overrides in the order they apply: the config file's, then `-X`.
    fn overrides(&self) -> impl Iterator<Item = &(String, String)> {
        self.config_file.iter().flat_map(|f| f.props.iter()).chain(self.props.iter())
    }

    /// Checks the settings this project cares about; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("--brokers (KAFKA_BROKERS) is empty: give host:port[,host:port…]".into());
        }
        for b in self.brokers.split(',') {
            let b = b.trim();
            let port = b.rsplit_once(':').map(|(_, p)| p);
            if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
                return Err(format!("--brokers (KAFKA_BROKERS): '{b}' is not host:port"));
            }
        }
        for (k, v) in self.overrides() {
            if k == "message.max.bytes" {
                match v.parse::<usize>() {
                    Ok(n) if n <= MAX_MESSAGE_BYTES => {}
                    _ => {
                        return Err(format!(
                            "-X message.max.bytes={v}: must be a number ≤ {MAX_MESSAGE_BYTES} \
                             (larger records stall partitions on the embedded broker)"
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// librdkafka settings: project defaults, then the config file's, then `-X`.
    pub fn settings(&self, defaults: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = vec![
            ("bootstrap.servers".into(), self.brokers.clone()),
            ("message.max.bytes".into(), (1024 * 1024).to_string()),
        ];
        out.extend(defaults.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        for (k, v) in self.overrides() {
            out.retain(|(ok, _)| ok != k);
            out.push((k.clone(), v.clone()));
        }
        out
    }

    /// The flags that give another process the same settings.
    pub fn to_flags(&self) -> Vec<String> {
        let mut flags = vec!["-b".to_string(), self.brokers.clone()];
        if let Some(f) = &self.config_file {
            flags.extend(["-F".to_string(), f.path.display().to_string()]);
        }
        flags.extend(self.props.iter().flat_map(|(k, v)| ["-X".to_string(), format!("{k}={v}")]));
        flags
    }

    /// The overrides (config file and `-X`) with secrets masked, for logs.
    pub fn redacted(&self) -> Vec<String> {
        self.overrides().map(|(k, v)| if secret(k) { format!("{k}=***") } else { format!("{k}={v}") }).collect()
    }
}

impl RegistryArgs {
    /// The registry configuration; the error names the setting.
    pub fn config(&self) -> Result<RegistryConfig, String> {
        let url = self.registry.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("--registry (SCHEMA_REGISTRY_URL): '{url}' is not an http(s) URL"));
        }
        let mut cfg = RegistryConfig::new(url);
        if let Some(auth) = &self.registry_auth {
            let (u, p) = auth
                .split_once(':')
                .ok_or("--registry-auth (SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO): expected user:password".to_string())?;
            cfg.basic_auth = Some((u.to_string(), p.to_string()));
        }
        cfg.timeout = Duration::from_secs(10);
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(brokers: &str, props: &[(&str, &str)]) -> KafkaArgs {
        KafkaArgs {
            props: props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..KafkaArgs::new(brokers)
        }
    }

    #[test]
    fn config_file_applies_before_x_and_bad_lines_name_file_and_line() {
        let text = "# SASL\nsecurity.protocol=SASL_SSL\n\nsasl.password = s3cret\nacks=1\n";
        let mut a = args("h:1", &[("acks", "all")]);
        a.config_file = Some(ConfigFile::parse("client.properties", text).unwrap());
        let s = a.settings(&[("acks", "0")]);
        assert!(s.contains(&("security.protocol".into(), "SASL_SSL".into())));
        assert_eq!(s.iter().filter(|(k, _)| k == "acks").collect::<Vec<_>>(), vec![&("acks".into(), "all".into())]);
        assert!(a.redacted().contains(&"sasl.password=***".to_string()));
        assert_eq!(a.to_flags(), ["-b", "h:1", "-F", "client.properties", "-X", "acks=all"]);
        let e = ConfigFile::parse("client.properties", "acks=1\noops\n").unwrap_err();
        assert!(e.contains("KAFKA_CONFIG_FILE") && e.contains("client.properties line 2"), "{e}");
        let e = ConfigFile::read("/nonexistent/client.properties").unwrap_err();
        assert!(e.contains("--config-file") && e.contains("/nonexistent/client.properties"), "{e}");
        a.config_file = Some(ConfigFile::parse("f", "message.max.bytes=99999999").unwrap());
        assert!(a.validate().unwrap_err().contains("message.max.bytes"));
    }

    #[test]
    fn x_overrides_defaults_and_bad_values_name_the_setting() {
        let a = args("localhost:9092", &[("acks", "1")]);
        let s = a.settings(&[("acks", "all")]);
        assert_eq!(s.iter().filter(|(k, _)| k == "acks").collect::<Vec<_>>(), vec![&("acks".into(), "1".into())]);
        assert!(parse_kv("novalue").unwrap_err().contains("key=value"));
        let e = args("localhost:9092", &[("message.max.bytes", "9000000")]).validate().unwrap_err();
        assert!(e.contains("message.max.bytes"), "{e}");
        let e = args("localhost", &[]).validate().unwrap_err();
        assert!(e.contains("--brokers") && e.contains("host:port"), "{e}");
    }

    #[test]
    fn secrets_are_redacted() {
        let a = args("h:1", &[("sasl.password", "hunter2"), ("sasl.username", "me")]);
        assert_eq!(a.redacted(), vec!["sasl.password=***", "sasl.username=me"]);
    }

    #[test]
    fn registry_url_and_auth_are_checked() {
        let r = RegistryArgs { registry: "localhost:8081".into(), registry_auth: None };
        assert!(r.config().unwrap_err().contains("SCHEMA_REGISTRY_URL"));
        let r = RegistryArgs { registry: "http://r:8081/".into(), registry_auth: Some("u:p".into()) };
        let c = r.config().unwrap();
        assert_eq!(c.url, "http://r:8081");
        assert_eq!(c.basic_auth, Some(("u".into(), "p".into())));
    }
}

/// Parses a duration such as `30s`, `5m`, `1h`, `250ms` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num.parse().map_err(|_| format!("'{s}' is not a duration like 30s, 5m, 1h or 250ms"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        "d" => v * 86_400.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s, m, h or d)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("'{s}' is not a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_bad_ones_say_why() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("unit"));
        assert!(parse_duration("soon").unwrap_err().contains("duration"));
    }
}
