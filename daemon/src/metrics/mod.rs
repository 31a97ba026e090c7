//! `/metrics`: every scrape reads the kernel maps and renders the Prometheus
//! text format. Each source is timed, like node_exporter's collectors, and
//! the times are part of the same scrape.

mod family;
mod kernel;
mod python;
mod selfmon;
mod timeline;

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use prometheus::{Encoder, TextEncoder, proto::MetricFamily};

use crate::{
    annotations::Annotations, bpf::KernelMaps, bpf::Probes, config::ServiceConfig,
    discovery::Targets, timeline::Timeline,
};
pub use family::{Family, merged};

/// Everything a scrape reads.
pub struct Exporter {
    pub services: Arc<[ServiceConfig]>,
    pub maps: KernelMaps,
    pub probes: Arc<Mutex<Probes>>,
    pub targets: Arc<Mutex<Targets>>,
    pub timeline: Arc<Mutex<Timeline>>,
    pub annotations: Mutex<Annotations>,
}

type Source = fn(&Exporter) -> Vec<Family>;

/// The sources, by the `collector` label their scrape time is reported under.
const SOURCES: &[(&str, Source)] = &[
    ("kernel", kernel::collect),
    ("python", python::collect),
    ("timeline", timeline::collect),
    ("self", selfmon::collect),
];

impl Exporter {
    /// Renders one scrape in the Prometheus text format (0.0.4).
    pub fn render(&self) -> String {
        let mut families: Vec<MetricFamily> = Vec::new();
        let mut durations = Family::gauge(
            "gapscope_scrape_collector_duration_seconds",
            "Time this scrape spent reading each collector's data.",
        );
        for (name, source) in SOURCES {
            let start = Instant::now();
            families.extend(source(self).into_iter().filter_map(Family::build));
            durations.add_gauge(&[("collector", name)], start.elapsed().as_secs_f64());
        }
        families.extend(durations.build());
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            log::error!("encoding metrics failed: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    pub fn service_name(&self, id: u32) -> Option<&str> {
        self.services.get(id as usize).map(|s| s.name.as_str())
    }
}
