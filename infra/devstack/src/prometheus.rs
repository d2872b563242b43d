//! A local Prometheus server scraping processes on this machine, for
//! `devstack demo --prometheus` and the observability tests: the project's
//! alert rules (infra/prometheus/rules, compiled in), file-based targets that
//! follow processes as they start, and a small client for its HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use tokio::process::{Child, Command};

/// The project's recording and alert rules (infra/prometheus/rules/keyflow.yml).
pub const RULES: &str = include_str!("../../prometheus/rules/keyflow.yml");

/// Scrape job of the workers (the rules and dashboards select on it).
pub const WORKERS_JOB: &str = "keyflow-workers";
/// Scrape job of the load generators.
pub const PRODUCERS_JOB: &str = "keyflow-producers";

/// The `prometheus` binary: `$PROMETHEUS_BIN`, else `prometheus` on PATH.
pub fn locate() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("PROMETHEUS_BIN") {
        return Ok(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join("prometheus")).find(|p| p.is_file()))
        .context("no `prometheus` binary on PATH (Debian/Ubuntu: apt install prometheus; or set PROMETHEUS_BIN)")
}

/// The configuration: every job reads its targets from `<job>.json` in `dir`.
fn config(scrape_interval: Duration) -> String {
    let secs = scrape_interval.as_secs().max(1);
    let mut s = format!(
        "# Written by keyflow for a local Prometheus.\nglobal:\n  scrape_interval: {secs}s\n  evaluation_interval: {secs}s\n\
         rule_files:\n  - rules.yml\nscrape_configs:\n"
    );
    for job in [WORKERS_JOB, PRODUCERS_JOB] {
        s.push_str(&format!(
            "  - job_name: {job}\n    file_sd_configs:\n      - files: [{job}.json]\n        refresh_interval: {secs}s\n"
        ));
    }
    s
}

/// A running Prometheus (killed when dropped).
pub struct LocalPrometheus {
    child: Child,
    dir: PathBuf,
    pub url: String,
    http: reqwest::Client,
}

impl LocalPrometheus {
    /// Starts Prometheus on a free localhost port with its data in `dir`,
    /// and waits until it is ready.
    pub async fn start(dir: &Path, scrape_interval: Duration) -> anyhow::Result<LocalPrometheus> {
        let bin = locate()?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("prometheus.yml"), config(scrape_interval))?;
        std::fs::write(dir.join("rules.yml"), RULES)?;
        for job in [WORKERS_JOB, PRODUCERS_JOB] {
            write_targets(dir, job, &[])?;
        }
        let port = crate::pipeline::free_port()?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut prom = LocalPrometheus {
            child,
            dir: dir.to_path_buf(),
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = prom.child.try_wait()? {
                anyhow::bail!("prometheus exited ({status}); see {}", dir.join("prometheus.log").display());
            }
            let ready = prom.http.get(format!("{}/-/ready", prom.url)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(prom);
            }
            anyhow::ensure!(Instant::now() < deadline, "prometheus was not ready within 60 s");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Makes `job` scrape exactly `targets` (Prometheus picks the change up
    /// within its refresh interval).
    pub fn set_targets(&self, job: &str, targets: &[SocketAddr]) -> anyhow::Result<()> {
        write_targets(&self.dir, job, targets)
    }

    /// `GET /api/v1/<path>` with query parameters; the `data` of a success.
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> anyhow::Result<Value> {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/{path}", self.url), params)?;
        let r = self.http.get(url).send().await?;
        let v: Value = r.json().await?;
        anyhow::ensure!(v["status"] == "success", "prometheus {path} {params:?}: {}", v);
        Ok(v["data"].clone())
    }

    /// An instant query's samples as (labels, value).
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<(Value, f64)>> {
        let data = self.api("query", &[("query", expr)]).await?;
        let samples = data["result"].as_array().cloned().unwrap_or_default();
        Ok(samples
            .into_iter()
            .map(|s| {
                let v = s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                (s["metric"].clone(), v)
            })
            .collect())
    }
}

/// Writes a file_sd targets file atomically (Prometheus must never read half of one).
fn write_targets(dir: &Path, job: &str, targets: &[SocketAddr]) -> anyhow::Result<()> {
    let list: Vec<String> = targets.iter().map(ToString::to_string).collect();
    let tmp = dir.join(format!(".{job}.json.tmp"));
    std::fs::write(&tmp, serde_json::to_string(&serde_json::json!([{ "targets": list }]))?)?;
    std::fs::rename(&tmp, dir.join(format!("{job}.json")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_config_reads_each_jobs_targets_and_the_rules() {
        let c = config(Duration::from_secs(2));
        assert!(c.contains("scrape_interval: 2s") && c.contains("- rules.yml"), "{c}");
        for job in [WORKERS_JOB, PRODUCERS_JOB] {
            assert!(c.contains(&format!("job_name: {job}")) && c.contains(&format!("[{job}.json]")), "{c}");
        }
        // The compose stack's config uses the same job names.
        let compose = include_str!("../../prometheus/prometheus.yml");
        assert!(compose.contains(&format!("job_name: {WORKERS_JOB}")));
        assert!(compose.contains(&format!("job_name: {PRODUCERS_JOB}")));
    }
}
