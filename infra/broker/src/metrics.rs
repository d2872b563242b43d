//! The broker's Prometheus metrics, served at `/metrics`.

use std::time::Instant;

use kafka_protocol::messages::ApiKey;
use prometheus::{
    register_histogram_vec_with_registry, register_int_counter_vec_with_registry, register_int_counter_with_registry,
    register_int_gauge_vec_with_registry, register_int_gauge_with_registry, Encoder, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Registry, TextEncoder,
};

use crate::State;

/// Every metric the broker exports (names: `keyflow_broker_*`).
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pub connections: IntGauge,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub bytes_fetched: IntCounter,
    pub records_in: IntCounter,
    pub compacted_records: IntCounter,
    partition_bytes: IntGaugeVec,
    partition_end: IntGaugeVec,
    groups: IntGaugeVec,
    group_members: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        Metrics {
            requests: register_int_counter_vec_with_registry!(
                "keyflow_broker_requests_total",
                "Requests answered, by API.",
                &["api"],
                r
            )
            .unwrap(),
            latency: register_histogram_vec_with_registry!(
                "keyflow_broker_request_seconds",
                "Time from a request's arrival to its response (a Fetch includes its long-poll wait), by API.",
                &["api"],
                vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
                r
            )
            .unwrap(),
            connections: register_int_gauge_with_registry!("keyflow_broker_connections", "Open client connections.", r)
                .unwrap(),
            bytes_in: register_int_counter_with_registry!(
                "keyflow_broker_bytes_in_total",
                "Request bytes received.",
                r
            )
            .unwrap(),
            bytes_out: register_int_counter_with_registry!("keyflow_broker_bytes_out_total", "Response bytes sent.", r)
                .unwrap(),
            bytes_fetched: register_int_counter_with_registry!(
                "keyflow_broker_fetched_bytes_total",
                "Record bytes returned by Fetch.",
                r
            )
            .unwrap(),
            records_in: register_int_counter_with_registry!(
                "keyflow_broker_records_in_total",
                "Records appended by Produce.",
                r
            )
            .unwrap(),
            compacted_records: register_int_counter_with_registry!(
                "keyflow_broker_compacted_records_total",
                "Records removed by log compaction.",
                r
            )
            .unwrap(),
            partition_bytes: register_int_gauge_vec_with_registry!(
                "keyflow_broker_partition_bytes",
                "Bytes of a partition's log on disk.",
                &["topic", "partition"],
                r
            )
            .unwrap(),
            partition_end: register_int_gauge_vec_with_registry!(
                "keyflow_broker_partition_end_offset",
                "A partition's end offset (high watermark).",
                &["topic", "partition"],
                r
            )
            .unwrap(),
            groups: register_int_gauge_vec_with_registry!(
                "keyflow_broker_groups",
                "Consumer groups, by state.",
                &["state"],
                r
            )
            .unwrap(),
            group_members: register_int_gauge_vec_with_registry!(
                "keyflow_broker_group_members",
                "Members of consumer groups, by the group's state.",
                &["state"],
                r
            )
            .unwrap(),
            registry: r,
        }
    }

    pub fn observe(&self, api: ApiKey, started: Instant) {
        let name = format!("{api:?}");
        self.requests.with_label_values(&[&name]).inc();
        self.latency.with_label_values(&[&name]).observe(started.elapsed().as_secs_f64());
    }

    /// The text exposition, with partition and group gauges read now.
    pub fn render(&self, st: &State) -> String {
        self.partition_bytes.reset();
        self.partition_end.reset();
        for t in st.topics.all() {
            for p in &t.partitions {
                let labels = [t.name.as_str(), &p.index.to_string()];
                self.partition_bytes.with_label_values(&labels).set(p.size() as i64);
                self.partition_end.with_label_values(&labels).set(p.bounds().1);
            }
        }
        for (state, groups, members) in st.groups.phase_counts() {
            self.groups.with_label_values(&[state]).set(groups as i64);
            self.group_members.with_label_values(&[state]).set(members as i64);
        }
        let mut out = vec![];
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
