//! The controller's metrics, registered on the process's registry next to the common ones
//! (`ls_token_refresher_controller_*`). Per-object series carry only `namespace` and `name` of the
//! token resource (bounded by the number of resources, as cert-manager does for certificates) and
//! are removed with the resource; counters by reason carry no per-object label.

use prometheus::{GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use super::guard::Refusal;
use crate::metrics::Metrics;

const NS: &str = "ls_token_refresher_controller";

/// Every refusal reason, for pre-registering the counter's series at zero.
const REFUSALS: [&str; 6] = [
    "invalid_spec",
    "connection_not_found",
    "connection_not_allowed",
    "connection_invalid",
    "pat_secret_unavailable",
    "target_not_owned",
];

/// The controller's metrics.
pub struct ControllerMetrics {
    /// Expiry (unix seconds) of the token in each resource's target Secret.
    pub token_expiration: GaugeVec,
    /// 1 while a resource's Ready condition is True.
    pub token_ready: IntGaugeVec,
    /// Resources refused before any Label Studio call, by reason.
    pub refusals_total: IntCounterVec,
    /// Duration of one reconcile (including a refresh when one is due).
    pub reconcile_duration_seconds: Histogram,
    /// Refreshes waiting for an exchange slot (the concurrency cap).
    pub exchange_queue_depth: IntGauge,
    /// Token resources known.
    pub token_resources: IntGauge,
    /// Target Secret writes by result.
    pub secret_writes_total: IntCounterVec,
    /// Status patches by result.
    pub status_writes_total: IntCounterVec,
}

impl ControllerMetrics {
    /// Creates the metrics on `metrics`' registry.
    pub fn new(metrics: &Metrics) -> Self {
        let opts = |name: &str, help: &str| Opts::new(format!("{NS}_{name}"), help);
        let token_expiration = GaugeVec::new(
            opts(
                "token_expiration_timestamp_seconds",
                "Expiry (unix seconds) of the access token in a LabelStudioToken's target Secret.",
            ),
            &["namespace", "name"],
        )
        .unwrap();
        let token_ready = IntGaugeVec::new(
            opts(
                "token_ready",
                "1 while a LabelStudioToken's Ready condition is True.",
            ),
            &["namespace", "name"],
        )
        .unwrap();
        let refusals_total = IntCounterVec::new(
            opts(
                "refusals_total",
                "Token resources refused before any Label Studio call, by reason (closed set).",
            ),
            &["reason"],
        )
        .unwrap();
        let reconcile_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                format!("{NS}_reconcile_duration_seconds"),
                "Duration of one reconcile, including a refresh when one was due.",
            )
            // Most reconciles decide "not due" from caches in microseconds; a refresh takes ~20 ms locally.
            .buckets(vec![
                0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
            ]),
        )
        .unwrap();
        let exchange_queue_depth = IntGauge::with_opts(opts(
            "exchange_queue_depth",
            "Refreshes waiting for an exchange slot (--max-concurrent-exchanges).",
        ))
        .unwrap();
        let token_resources = IntGauge::with_opts(opts(
            "token_resources",
            "LabelStudioToken resources the controller knows.",
        ))
        .unwrap();
        let secret_writes_total = IntCounterVec::new(
            opts("secret_writes_total", "Target Secret writes by result."),
            &["result"],
        )
        .unwrap();
        let status_writes_total = IntCounterVec::new(
            opts("status_writes_total", "Status patches by result."),
            &["result"],
        )
        .unwrap();
        for r in REFUSALS {
            refusals_total.with_label_values(&[r]);
        }
        for r in ["ok", "error"] {
            secret_writes_total.with_label_values(&[r]);
            status_writes_total.with_label_values(&[r]);
        }
        let reg = metrics.registry();
        for c in [
            Box::new(token_expiration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(token_ready.clone()),
            Box::new(refusals_total.clone()),
            Box::new(reconcile_duration_seconds.clone()),
            Box::new(exchange_queue_depth.clone()),
            Box::new(token_resources.clone()),
            Box::new(secret_writes_total.clone()),
            Box::new(status_writes_total.clone()),
        ] {
            reg.register(c).expect("controller metric names are unique");
        }
        ControllerMetrics {
            token_expiration,
            token_ready,
            refusals_total,
            reconcile_duration_seconds,
            exchange_queue_depth,
            token_resources,
            secret_writes_total,
            status_writes_total,
        }
    }

    /// Counts a refusal.
    pub fn refused(&self, r: Refusal) {
        self.refusals_total.with_label_values(&[r.reason()]).inc();
    }

    /// Drops a deleted resource's series.
    pub fn forget(&self, namespace: &str, name: &str) {
        let _ = self
            .token_expiration
            .remove_label_values(&[namespace, name]);
        let _ = self.token_ready.remove_label_values(&[namespace, name]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_list_is_complete() {
        for r in [
            Refusal::InvalidSpec(""),
            Refusal::ConnectionNotFound,
            Refusal::ConnectionNotAllowed,
            Refusal::ConnectionInvalid(""),
            Refusal::PatSecretUnavailable,
            Refusal::TargetNotOwned,
        ] {
            assert!(REFUSALS.contains(&r.reason()), "{}", r.reason());
        }
    }
}
