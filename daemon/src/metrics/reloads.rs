//! Configuration reloads (SIGHUP): how many, whether the last applied,
//! when the configuration last loaded.
//!
//! Read first in a scrape (`SOURCES`), and the counts with `Acquire`
//! against the reload's `Release`: a scrape that counts a reload shows the
//! services that reload applied (a service added back has its series),
//! though the sources read after it may already show a later one.

use std::sync::atomic::Ordering::{Acquire, Relaxed};

use super::Family;
use crate::state::DaemonState;

/// Configuration reloads (SIGHUP), named as Prometheus names its own.
pub(super) fn collect(state: &DaemonState) -> Vec<Family> {
    let stats = &state.reloads;
    let (successes, failures) = (stats.successes.load(Acquire), stats.failures.load(Acquire));
    let mut ok = Family::gauge(
        "gapscope_config_last_reload_successful",
        "1 when the last reload (SIGHUP) applied the file, 0 when the file was refused and the running configuration kept.",
    );
    ok.add_gauge(
        &[],
        if stats.last_ok.load(Relaxed) {
            1.0
        } else {
            0.0
        },
    );
    let mut at = Family::gauge(
        "gapscope_config_last_reload_success_timestamp_seconds",
        "When the configuration last loaded (start or reload), Unix seconds.",
    );
    at.add_gauge(&[], stats.last_success_unix_s.load(Relaxed) as f64);
    let mut total = Family::counter(
        "gapscope_config_reloads_total",
        "Configuration reloads (SIGHUP) by result: success or failure.",
    );
    total.add_counter(&[("result", "success")], successes as f64);
    total.add_counter(&[("result", "failure")], failures as f64);
    vec![ok, at, total]
}
