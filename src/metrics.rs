//! Prometheus metrics, all in one [`Metrics`] struct on an owned registry (no global state), named
//! `ls_token_refresher_*` with units in the names and absolute `_timestamp_seconds` gauges in the
//! style of cert-manager, so alerts can say "expires in < 60 s" without knowing our schedule.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::reason::Reason;

/// Namespace prefix of every metric.
const NS: &str = "ls_token_refresher";

/// Every metric the program exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Refresh attempts by `result` (success|failure).
    pub refresh_total: IntCounterVec,
    /// Failed refresh attempts by closed-set `reason`.
    pub refresh_errors_total: IntCounterVec,
    /// Duration of a whole refresh attempt (exchange + validation + publish).
    pub refresh_duration_seconds: Histogram,
    /// `exp` of the token currently published (0 while none; absent for legacy tokens).
    pub token_expiration_timestamp_seconds: Gauge,
    /// When the next refresh (or retry) is planned.
    pub next_refresh_timestamp_seconds: Gauge,
    /// When the last refresh succeeded.
    pub last_success_timestamp_seconds: Gauge,
    /// `exp` of the PAT in use (0 when unknown or for legacy tokens).
    pub pat_expiration_timestamp_seconds: Gauge,
    /// 1 while a valid, unexpired token is published to every sink.
    pub token_valid: IntGauge,
    /// Failed writes by `sink` (file|secret).
    pub sink_write_errors_total: IntCounterVec,
    /// Outbound HTTP calls to Label Studio by `endpoint` and `code` class (2xx…5xx, error).
    pub http_requests_total: IntCounterVec,
    /// Kubernetes API calls by `operation` and `result` (ok|error).
    pub kube_requests_total: IntCounterVec,
    /// PAT source reloads by `source` (value|file|secret) and `result` (changed|unavailable).
    pub source_reloads_total: IntCounterVec,
    /// Requests answered by the auth proxy, by status class.
    pub proxy_requests_total: IntCounterVec,
    /// Requests the proxy could not forward, by closed-set reason.
    pub proxy_upstream_errors_total: IntCounterVec,
    /// Time the proxy itself adds to a request (before forwarding and after the answer's head).
    pub proxy_added_latency_seconds: Histogram,
    /// Open client connections to the proxy.
    pub proxy_connections: IntGauge,
    /// Requests the proxy has in flight to Label Studio (each holding one of
    /// `--proxy-upstream-connections`).
    pub proxy_upstream_in_flight: IntGauge,
    /// Requests waiting for one of `--proxy-upstream-connections`.
    pub proxy_upstream_queued: IntGauge,
    /// Requests answered by the auth gate, by closed-set `outcome`.
    pub gate_requests_total: IntCounterVec,
    /// The gate's credential verifications with Label Studio, by `result`.
    pub gate_verifications_total: IntCounterVec,
    /// Verdicts the gate holds in its cache.
    pub gate_cache_entries: IntGauge,
    /// Open client connections to the gate.
    pub gate_connections: IntGauge,
    /// Label Studio's clock minus ours, as last measured (seconds; 0 within the tolerance).
    pub clock_offset_seconds: Gauge,
    /// 1 for the running version.
    pub build_info: IntGaugeVec,
    /// 1 while this replica holds the leader-election Lease (with margin left), else 0.
    pub leader: IntGauge,
    /// Leadership changes of this replica by `direction` (acquired|lost).
    pub leader_transitions_total: IntCounterVec,
    /// Secret writes the sink declined by `reason` (not_leader|newer_published).
    pub secret_writes_skipped_total: IntCounterVec,
    /// PAT rotations by closed-set `result` (rotated|recovered|failed|refused).
    pub pat_rotations_total: IntCounterVec,
    /// `iat` of the PAT in use (0 when unknown or a legacy token).
    pub pat_issued_timestamp_seconds: Gauge,
}

impl Metrics {
    /// Creates and registers every metric on a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(format!("{NS}_{name}"), help);
        let refresh_total = IntCounterVec::new(
            opts("refresh_total", "Refresh attempts by result."),
            &["result"],
        )
        .unwrap();
        let refresh_errors_total = IntCounterVec::new(
            opts(
                "refresh_errors_total",
                "Failed refresh attempts by reason (closed set).",
            ),
            &["reason"],
        )
        .unwrap();
        let refresh_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                format!("{NS}_refresh_duration_seconds"),
                "Duration of a refresh attempt: exchange, validation and publish.",
            )
            // A local exchange takes ~20 ms; the tail covers slow networks up to the default 10 s timeout.
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )
        .unwrap();
        let gauge = |name: &str, help: &str| Gauge::with_opts(opts(name, help)).unwrap();
        let token_expiration_timestamp_seconds = gauge(
            "token_expiration_timestamp_seconds",
            "Expiry (unix seconds) of the access token currently published; 0 when none.",
        );
        let next_refresh_timestamp_seconds = gauge(
            "next_refresh_timestamp_seconds",
            "When the next refresh or retry is planned (unix seconds).",
        );
        let last_success_timestamp_seconds = gauge(
            "last_success_timestamp_seconds",
            "When the last refresh succeeded (unix seconds).",
        );
        let pat_expiration_timestamp_seconds = gauge(
            "pat_expiration_timestamp_seconds",
            "Expiry (unix seconds) of the PAT in use; 0 when unknown or a legacy token.",
        );
        let token_valid = IntGauge::with_opts(opts(
            "token_valid",
            "1 while a valid, unexpired token is published to every configured sink.",
        ))
        .unwrap();
        let sink_write_errors_total = IntCounterVec::new(
            opts("sink_write_errors_total", "Failed writes by sink."),
            &["sink"],
        )
        .unwrap();
        let http_requests_total = IntCounterVec::new(
            opts(
                "http_requests_total",
                "HTTP requests to Label Studio by endpoint and status class.",
            ),
            &["endpoint", "code"],
        )
        .unwrap();
        let kube_requests_total = IntCounterVec::new(
            opts(
                "kube_requests_total",
                "Kubernetes API calls by operation and result.",
            ),
            &["operation", "result"],
        )
        .unwrap();
        let source_reloads_total = IntCounterVec::new(
            opts(
                "source_reloads_total",
                "PAT source reloads by source and result.",
            ),
            &["source", "result"],
        )
        .unwrap();
        let proxy_requests_total = IntCounterVec::new(
            opts(
                "proxy_requests_total",
                "Requests answered by the auth proxy, by status class.",
            ),
            &["code"],
        )
        .unwrap();
        let proxy_upstream_errors_total = IntCounterVec::new(
            opts(
                "proxy_upstream_errors_total",
                "Requests the auth proxy could not forward, by reason (closed set).",
            ),
            &["reason"],
        )
        .unwrap();
        let proxy_added_latency_seconds = Histogram::with_opts(
            HistogramOpts::new(
                format!("{NS}_proxy_added_latency_seconds"),
                "Time the auth proxy adds to a request: before forwarding and after the answer's head.",
            )
            // Tens of microseconds when all is well; the tail shows a starved process.
            .buckets(vec![
                0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
            ]),
        )
        .unwrap();
        let proxy_connections = IntGauge::with_opts(opts(
            "proxy_connections",
            "Open client connections to the auth proxy.",
        ))
        .unwrap();
        let proxy_upstream_in_flight = IntGauge::with_opts(opts(
            "proxy_upstream_in_flight",
            "Requests the auth proxy has in flight to Label Studio (at most --proxy-upstream-connections).",
        ))
        .unwrap();
        let proxy_upstream_queued = IntGauge::with_opts(opts(
            "proxy_upstream_queued",
            "Requests waiting for one of the auth proxy's --proxy-upstream-connections.",
        ))
        .unwrap();
        let gate_requests_total = IntCounterVec::new(
            opts(
                "gate_requests_total",
                "Requests answered by the auth gate, by outcome (closed set).",
            ),
            &["outcome"],
        )
        .unwrap();
        let gate_verifications_total = IntCounterVec::new(
            opts(
                "gate_verifications_total",
                "Credential verifications by the auth gate, by result (admitted|refused|unavailable|limited; limited made no call).",
            ),
            &["result"],
        )
        .unwrap();
        let gate_cache_entries = IntGauge::with_opts(opts(
            "gate_cache_entries",
            "Verdicts held in the auth gate's cache.",
        ))
        .unwrap();
        let gate_connections = IntGauge::with_opts(opts(
            "gate_connections",
            "Open client connections to the auth gate.",
        ))
        .unwrap();
        let clock_offset_seconds = gauge(
            "clock_offset_seconds",
            "Label Studio's clock minus this host's, measured from token iat and Date headers.",
        );
        let build_info = IntGaugeVec::new(
            opts("build_info", "Build information; always 1."),
            &["version"],
        )
        .unwrap();
        let leader = IntGauge::with_opts(opts(
            "leader",
            "1 while this replica holds the leader-election Lease with margin left (always 1 without election).",
        ))
        .unwrap();
        let leader_transitions_total = IntCounterVec::new(
            opts(
                "leader_transitions_total",
                "Leadership changes of this replica by direction (acquired|lost).",
            ),
            &["direction"],
        )
        .unwrap();
        let secret_writes_skipped_total = IntCounterVec::new(
            opts(
                "secret_writes_skipped_total",
                "Target-Secret writes declined by reason: not_leader (fenced) or newer_published (the Secret holds a token expiring later).",
            ),
            &["reason"],
        )
        .unwrap();
        let pat_rotations_total = IntCounterVec::new(
            opts(
                "pat_rotations_total",
                "PAT rotations by result: rotated, recovered (a lost rotation repaired), failed, refused (write-back not possible).",
            ),
            &["result"],
        )
        .unwrap();
        let pat_issued_timestamp_seconds = gauge(
            "pat_issued_timestamp_seconds",
            "Issue time (unix seconds, the iat claim) of the PAT in use; 0 when unknown or a legacy token.",
        );

        for c in [
            Box::new(refresh_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refresh_errors_total.clone()),
            Box::new(refresh_duration_seconds.clone()),
            Box::new(token_expiration_timestamp_seconds.clone()),
            Box::new(next_refresh_timestamp_seconds.clone()),
            Box::new(last_success_timestamp_seconds.clone()),
            Box::new(pat_expiration_timestamp_seconds.clone()),
            Box::new(token_valid.clone()),
            Box::new(sink_write_errors_total.clone()),
            Box::new(http_requests_total.clone()),
            Box::new(kube_requests_total.clone()),
            Box::new(source_reloads_total.clone()),
            Box::new(clock_offset_seconds.clone()),
            Box::new(proxy_requests_total.clone()),
            Box::new(proxy_upstream_errors_total.clone()),
            Box::new(proxy_added_latency_seconds.clone()),
            Box::new(proxy_connections.clone()),
            Box::new(proxy_upstream_in_flight.clone()),
            Box::new(proxy_upstream_queued.clone()),
            Box::new(gate_requests_total.clone()),
            Box::new(gate_verifications_total.clone()),
            Box::new(gate_cache_entries.clone()),
            Box::new(gate_connections.clone()),
            Box::new(build_info.clone()),
            Box::new(leader.clone()),
            Box::new(leader_transitions_total.clone()),
            Box::new(secret_writes_skipped_total.clone()),
            Box::new(pat_rotations_total.clone()),
            Box::new(pat_issued_timestamp_seconds.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }

        // Series exist from the start at 0, so `rate()` and `increase()` work in alerts before the first failure.
        for r in ["success", "failure"] {
            refresh_total.with_label_values(&[r]);
        }
        for r in Reason::ALL {
            refresh_errors_total.with_label_values(&[r.as_str()]);
        }
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Without election this process is the only writer: it leads.
        leader.set(1);
        for d in ["acquired", "lost"] {
            leader_transitions_total.with_label_values(&[d]);
        }
        for r in ["not_leader", "newer_published"] {
            secret_writes_skipped_total.with_label_values(&[r]);
        }

        Metrics {
            registry,
            refresh_total,
            refresh_errors_total,
            refresh_duration_seconds,
            token_expiration_timestamp_seconds,
            next_refresh_timestamp_seconds,
            last_success_timestamp_seconds,
            pat_expiration_timestamp_seconds,
            token_valid,
            sink_write_errors_total,
            http_requests_total,
            kube_requests_total,
            source_reloads_total,
            clock_offset_seconds,
            proxy_requests_total,
            proxy_upstream_errors_total,
            proxy_added_latency_seconds,
            proxy_connections,
            proxy_upstream_in_flight,
            proxy_upstream_queued,
            gate_requests_total,
            gate_verifications_total,
            gate_cache_entries,
            gate_connections,
            build_info,
            leader,
            leader_transitions_total,
            secret_writes_skipped_total,
            pat_rotations_total,
            pat_issued_timestamp_seconds,
        }
    }

    /// Rotation results, a closed set (see the rotation module).
    pub const ROTATION_RESULTS: [&'static str; 4] = ["rotated", "recovered", "failed", "refused"];

    /// Pre-creates the rotation series (only with rotation configured).
    pub fn register_rotation(&self) {
        for r in Self::ROTATION_RESULTS {
            self.pat_rotations_total.with_label_values(&[r]);
        }
    }

    /// Pre-creates the per-sink error series for the configured sinks.
    pub fn register_sink(&self, sink: &'static str) {
        self.sink_write_errors_total.with_label_values(&[sink]);
    }

    /// Counts a failed attempt.
    pub fn record_failure(&self, reason: Reason) {
        self.refresh_total.with_label_values(&["failure"]).inc();
        self.refresh_errors_total
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Pre-creates the proxy's series (only when the proxy runs, so other modes export none).
    pub fn register_proxy(&self) {
        for code in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            self.proxy_requests_total.with_label_values(&[code]);
        }
        for reason in [Reason::Network, Reason::Timeout, Reason::Tls] {
            self.proxy_upstream_errors_total
                .with_label_values(&[reason.as_str()]);
        }
    }

    /// Pre-creates the gate's series for its closed set of `outcomes` (only when the gate runs).
    pub fn register_gate(&self, outcomes: &[&'static str]) {
        for &outcome in outcomes {
            self.gate_requests_total.with_label_values(&[outcome]);
        }
        for result in ["admitted", "refused", "unavailable", "limited"] {
            self.gate_verifications_total.with_label_values(&[result]);
        }
    }

    /// Counts a Kubernetes API call.
    pub fn kube_call(&self, operation: &'static str, ok: bool) {
        self.kube_requests_total
            .with_label_values(&[operation, if ok { "ok" } else { "error" }])
            .inc();
    }

    /// The registry, for metrics of one mode registered next to these (the controller's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(8 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_contract_names() {
        let m = Metrics::new();
        m.record_failure(Reason::Timeout);
        m.register_sink("file");
        let text = m.render();
        for name in [
            "ls_token_refresher_refresh_total{result=\"failure\"} 1",
            "ls_token_refresher_refresh_errors_total{reason=\"timeout\"} 1",
            "ls_token_refresher_refresh_errors_total{reason=\"revoked_pat\"} 0",
            "ls_token_refresher_refresh_duration_seconds_bucket",
            "ls_token_refresher_token_expiration_timestamp_seconds 0",
            "ls_token_refresher_next_refresh_timestamp_seconds",
            "ls_token_refresher_last_success_timestamp_seconds",
            "ls_token_refresher_pat_expiration_timestamp_seconds",
            "ls_token_refresher_token_valid 0",
            "ls_token_refresher_sink_write_errors_total{sink=\"file\"} 0",
            "ls_token_refresher_clock_offset_seconds 0",
            "ls_token_refresher_build_info{version=",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
