//! Counters and delivery latencies of a producer run, its Prometheus view,
//! and the final summary.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use keyflow_schemas::metrics as names;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use serde::Serialize;

/// Live counters, shared by the send loop and the delivery tracker.
pub struct Stats {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub failed: AtomicU64,
    pub duplicates: AtomicU64,
    pub queue_full: AtomicU64,
    pub registry_retries: AtomicU64,
    by_type: Mutex<BTreeMap<String, u64>>,
    by_category: Mutex<BTreeMap<String, u64>>,
    latencies_us: Mutex<Vec<u32>>,
    /// Events sent in each second since `started`.
    per_second: Mutex<Vec<u64>>,
    started: std::time::Instant,
    prom: Prom,
}

struct Prom {
    registry: Registry,
    sent: IntCounterVec,
    acked: IntCounterVec,
    failed: IntCounterVec,
    duplicates: IntCounter,
    queue_full: IntCounter,
    registry_retries: IntCounter,
    latency: Histogram,
}

impl Prom {
    fn new() -> Self {
        let registry = Registry::new();
        let labels = &["topic", "type"];
        // Metric names and label sets are static and valid; registering them cannot fail.
        let vec = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let one = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let sent = vec(names::PRODUCER_SENT, "Events handed to the Kafka client.");
        let acked = vec(names::PRODUCER_ACKED, "Events acknowledged by the broker.");
        let failed = vec(names::PRODUCER_FAILED, "Events whose delivery failed after retries.");
        let duplicates = one(names::PRODUCER_DUPLICATES, "Re-sent facts injected on purpose.");
        let queue_full = one(names::PRODUCER_QUEUE_FULL, "Waits because the local producer queue was full.");
        let registry_retries = one(names::PRODUCER_REGISTRY_RETRIES, "Retries of transient schema registry failures.");
        let latency = Histogram::with_opts(
            HistogramOpts::new(names::PRODUCER_DELIVERY_SECONDS, "Send to broker acknowledgement latency.")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )
        .expect("valid metric");
        registry.register(Box::new(latency.clone())).expect("unique metric");
        Self { registry, sent, acked, failed, duplicates, queue_full, registry_retries, latency }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            registry_retries: AtomicU64::new(0),
            by_type: Mutex::default(),
            by_category: Mutex::default(),
            latencies_us: Mutex::default(),
            per_second: Mutex::default(),
            started: std::time::Instant::now(),
            prom: Prom::new(),
        }
    }
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
    *map.lock().unwrap_or_else(|p| p.into_inner()).entry(key.to_string()).or_default() += 1;
}

impl Stats {
    pub fn on_sent(&self, topic: &str, record: &str, category: &str, duplicate: bool) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.prom.sent.with_label_values(&[topic, record]).inc();
        // Acked and failed series exist from the first send (at zero), so a
        // rate() over them, and the alert on failures, sees them at once.
        self.prom.acked.with_label_values(&[topic, record]);
        self.prom.failed.with_label_values(&[topic, record]);
        bump(&self.by_type, record);
        bump(&self.by_category, category);
        let sec = self.started.elapsed().as_secs() as usize;
        let mut per_second = self.per_second.lock().unwrap_or_else(|p| p.into_inner());
        if per_second.len() <= sec {
            per_second.resize(sec + 1, 0);
        }
        per_second[sec] += 1;
        drop(per_second);
        if duplicate {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            self.prom.duplicates.inc();
        }
    }

    pub fn on_acked(&self, topic: &str, record: &str, latency: Duration) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        self.prom.acked.with_label_values(&[topic, record]).inc();
        self.prom.latency.observe(latency.as_secs_f64());
        let us = latency.as_micros().min(u32::MAX as u128) as u32;
        self.latencies_us.lock().unwrap_or_else(|p| p.into_inner()).push(us);
    }

    pub fn on_failed(&self, topic: &str, record: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.prom.failed.with_label_values(&[topic, record]).inc();
    }

    pub fn on_queue_full(&self) {
        self.queue_full.fetch_add(1, Ordering::Relaxed);
        self.prom.queue_full.inc();
    }

    pub fn on_registry_retry(&self) {
        self.registry_retries.fetch_add(1, Ordering::Relaxed);
        self.prom.registry_retries.inc();
    }

    /// The Prometheus registry holding this run's metrics.
    pub fn registry(&self) -> &Registry {
        &self.prom.registry
    }

    /// The final summary.
    pub fn summary(&self, run: RunInfo, elapsed: Duration, drained: Duration) -> Summary {
        let mut lat = self.latencies_us.lock().unwrap_or_else(|p| p.into_inner()).clone();
        lat.sort_unstable();
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let idx = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
            lat[idx] as f64 / 1000.0
        };
        let sent = self.sent.load(Ordering::Relaxed);
        let pacing = run.target_rate.and_then(|target| {
            let per_second = self.per_second.lock().unwrap_or_else(|p| p.into_inner());
            pacing(&per_second, target)
        });
        Summary {
            pacing,
            run,
            elapsed_s: elapsed.as_secs_f64(),
            sent,
            acknowledged: self.acked.load(Ordering::Relaxed),
            drained_s: drained.as_secs_f64(),
            acked_rate: self.acked.load(Ordering::Relaxed) as f64 / drained.as_secs_f64().max(1e-9),
            failed: self.failed.load(Ordering::Relaxed),
            duplicates_injected: self.duplicates.load(Ordering::Relaxed),
            achieved_rate: if elapsed.as_secs_f64() > 0.0 { sent as f64 / elapsed.as_secs_f64() } else { 0.0 },
            latency_ms: Latency { p50: pct(0.50), p99: pct(0.99), max: lat.last().map_or(0.0, |v| *v as f64 / 1000.0) },
            queue_full_waits: self.queue_full.load(Ordering::Relaxed),
            registry_retries: self.registry_retries.load(Ordering::Relaxed),
            by_type: self.by_type.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            by_category: self.by_category.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// How steadily the target rate was held.
#[derive(Debug, Clone, Serialize)]
pub struct Pacing {
    pub target_rate: f64,
    /// Lowest and highest rate over any full 10 s window.
    pub min_10s_rate: f64,
    pub max_10s_rate: f64,
    /// Largest deviation of a 10 s window from the target, in percent.
    pub worst_deviation_pct: f64,
}

/// The 10 s window rates of a run (whole seconds only; the last, partial
/// second is left out). `None` when the run was shorter than 11 s.
pub fn pacing(per_second: &[u64], target: f64) -> Option<Pacing> {
    let full = per_second.len().checked_sub(1)?;
    if full < 10 {
        return None;
    }
    let rates: Vec<f64> = per_second[..full].windows(10).map(|w| w.iter().sum::<u64>() as f64 / 10.0).collect();
    let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rates.iter().copied().fold(0.0, f64::max);
    let worst = rates.iter().map(|r| (r - target).abs() / target * 100.0).fold(0.0, f64::max);
    Some(Pacing { target_rate: target, min_10s_rate: min, max_10s_rate: max, worst_deviation_pct: worst })
}

/// How the run was configured (echoed in the summary so it can be repeated).
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub command: String,
    pub seed: u64,
    pub start_time_ms: i64,
    pub target_rate: Option<f64>,
    pub brokers: String,
    pub interrupted: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// The end-of-run summary (`--summary-json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub run: RunInfo,
    /// Present for paced runs of at least 11 s.
    pub pacing: Option<Pacing>,
    /// Seconds of generation (sending).
    pub elapsed_s: f64,
    /// Seconds until the last in-flight event was acknowledged or failed.
    pub drained_s: f64,
    /// Acknowledged events per second of `drained_s`: the throughput the broker took.
    pub acked_rate: f64,
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub duplicates_injected: u64,
    pub achieved_rate: f64,
    pub latency_ms: Latency,
    pub queue_full_waits: u64,
    pub registry_retries: u64,
    pub by_type: BTreeMap<String, u64>,
    pub by_category: BTreeMap<String, u64>,
}

impl Summary {
    /// A human-readable block.
    pub fn render(&self) -> String {
        let mut s = format!(
            "producer {}: sent {}, acknowledged {}, failed {}, duplicates injected {}\n\
             achieved {:.1} events/s{} over {:.1} s ({:.1} acknowledged/s until drained); delivery latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
            self.run.command,
            self.sent,
            self.acknowledged,
            self.failed,
            self.duplicates_injected,
            self.achieved_rate,
            self.run.target_rate.map(|r| format!(" (target {r})")).unwrap_or_default(),
            self.elapsed_s,
            self.acked_rate,
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.latency_ms.max,
        );
        if let Some(p) = &self.pacing {
            s += &format!(
                "  pacing: 10 s windows between {:.1} and {:.1} events/s (target {}, worst deviation {:.2}%){}\n",
                p.min_10s_rate,
                p.max_10s_rate,
                p.target_rate,
                p.worst_deviation_pct,
                if p.worst_deviation_pct > 2.0 { " — the broker or this machine did not keep up" } else { "" }
            );
        }
        let types: Vec<String> = self.by_type.iter().map(|(k, v)| format!("{k} {v}")).collect();
        s += &format!("  by type: {}\n", types.join(", "));
        let cats: Vec<String> = self.by_category.iter().map(|(k, v)| format!("{k} {v}")).collect();
        s += &format!("  by mix category: {}\n", cats.join(", "));
        s += &format!(
            "  seed {} (repeat with --seed {} --start-time {})\n",
            self.run.seed, self.run.seed, self.run.start_time_ms
        );
        if self.queue_full_waits + self.registry_retries > 0 {
            s += &format!("  queue-full waits {}, registry retries {}\n", self.queue_full_waits, self.registry_retries);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_reports_the_worst_full_ten_second_window() {
        let mut secs = vec![100u64; 12];
        secs[3] = 50; // one slow second drags every window that holds it
        secs.push(7); // the partial last second is ignored
        let p = pacing(&secs, 100.0).unwrap();
        assert_eq!(p.min_10s_rate, 95.0);
        assert_eq!(p.max_10s_rate, 95.0);
        assert!((p.worst_deviation_pct - 5.0).abs() < 1e-9);
        assert!(pacing(&[100; 10], 100.0).is_none(), "too short to judge");
    }
}
