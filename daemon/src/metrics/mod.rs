//! `/metrics`: every scrape reads the kernel maps and renders the Prometheus
//! text format. Each source is timed, like node_exporter's collectors, and
//! the times are part of the same scrape.

mod cuda;
mod cupti;
mod explain;
mod family;
mod kernel;
mod nvml;
mod process;
mod python;
mod reloads;
mod selfmon;
mod timeline;

use std::time::Instant;

use prometheus::{Encoder as _, TextEncoder, proto::MetricFamily};

use crate::state::DaemonState;
pub use family::{Family, log2_buckets, merged};

type Source = fn(&DaemonState) -> Vec<Family>;

/// The sources, by the `collector` label their scrape time is reported under.
const SOURCES: &[(&str, Source)] = &[
    // First: the services every other source reads are those of the
    // reloads it counts, or later ones.
    ("config", reloads::collect),
    ("kernel", kernel::collect),
    ("python", python::collect),
    ("timeline", timeline::collect),
    ("cuda", cuda::collect),
    ("nvml", nvml::collect),
    ("deep", cupti::collect),
    ("explain", explain::collect),
    ("self", selfmon::collect),
    ("process", process::collect),
];

/// Families in the Prometheus text format (0.0.4); empty ones are left
/// out (the format has no way to write them).
pub fn encode(families: Vec<Family>) -> String {
    let built: Vec<MetricFamily> = families.into_iter().filter_map(Family::build).collect();
    encode_families(&built)
}

fn encode_families(families: &[MetricFamily]) -> String {
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(families, &mut out) {
        log::error!("encoding metrics failed: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Renders one scrape of the daemon's state in the Prometheus text format
/// (0.0.4), each source timed.
pub fn render(state: &DaemonState) -> String {
    crate::explain::feed::catch_up(state);
    let mut families: Vec<MetricFamily> = Vec::new();
    let mut durations = Family::gauge(
        "gapscope_scrape_collector_duration_seconds",
        "Time this scrape spent reading each collector's data.",
    );
    for (name, source) in SOURCES {
        let start = Instant::now();
        families.extend(source(state).into_iter().filter_map(Family::build));
        durations.add_gauge(&[("collector", name)], start.elapsed().as_secs_f64());
    }
    families.extend(durations.build());
    encode_families(&families)
}

/// The counters a windowed explain report differences, as they are now
/// (`explain::snapshot`): read from the same maps and trackers as a
/// scrape, typed rather than rendered.
pub fn snapshot_counters(state: &DaemonState) -> Vec<(crate::explain::snapshot::Key, f64)> {
    let mut out = Vec::new();
    kernel::counters(state, &mut out);
    python::counters(state, &mut out);
    cuda::counters(state, &mut out);
    cupti::counters(state, &mut out);
    out
}
