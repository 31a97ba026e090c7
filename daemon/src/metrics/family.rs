//! Building Prometheus metric families from values read at scrape time
//! (the ebpf_exporter way: maps are decoded when Prometheus asks, nothing
//! is copied in between).

use aya::maps::{MapData, PerCpuArray};
use gapscope_ebpf_common::{HIST_BUCKETS, Log2Hist, PerCpuSum};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

/// Log2 buckets below this one are folded into it: sub-microsecond
/// resolution is noise for "why is the GPU idle".
const FIRST_EXPORTED_BUCKET: usize = 9;

/// One slot of a per-CPU array, summed over the CPUs (zero when the slot
/// cannot be read).
pub fn merged<T: PerCpuSum + aya::Pod>(array: &PerCpuArray<MapData, T>, index: u32) -> T {
    let mut total = T::ZERO;
    if let Ok(per_cpu) = array.get(&index, 0) {
        for h in per_cpu.iter() {
            total.merge(h);
        }
    }
    total
}

/// A kernel log2 histogram's buckets as Prometheus writes them: (upper
/// bound in seconds, cumulative count). Bucket `i` holds durations below
/// `2^(i+1)` ns; those below `FIRST_EXPORTED_BUCKET` are folded into it,
/// and the last, open-ended, only counts towards `+Inf`.
pub fn log2_buckets(buckets: &[u64]) -> Vec<(f64, u64)> {
    let mut cumulative = 0u64;
    let mut out = Vec::with_capacity(HIST_BUCKETS);
    for (i, n) in buckets.iter().enumerate().take(HIST_BUCKETS - 1) {
        cumulative += n;
        if i >= FIRST_EXPORTED_BUCKET {
            out.push(((1u64 << (i + 1)) as f64 / 1e9, cumulative));
        }
    }
    out
}

pub struct Family(MetricFamily);

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Self {
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_string());
        mf.set_help(help.to_string());
        mf.set_field_type(kind);
        Self(mf)
    }

    pub fn counter(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::COUNTER)
    }

    pub fn gauge(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::GAUGE)
    }

    pub fn histogram(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::HISTOGRAM)
    }

    fn push(&mut self, labels: &[(&str, &str)], fill: impl FnOnce(&mut proto::Metric)) {
        let mut m = proto::Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name(k.to_string());
                    l.set_value(v.to_string());
                    l
                })
                .collect(),
        );
        fill(&mut m);
        self.0.mut_metric().push(m);
    }

    pub fn add_counter(&mut self, labels: &[(&str, &str)], value: f64) {
        self.push(labels, |m| {
            let mut c = proto::Counter::default();
            c.set_value(value);
            m.set_counter(c);
        });
    }

    pub fn add_gauge(&mut self, labels: &[(&str, &str)], value: f64) {
        self.push(labels, |m| {
            let mut g = proto::Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        });
    }

    /// A counter or a gauge sample, as the family's type says.
    pub fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        if self.0.get_field_type() == MetricType::COUNTER {
            self.add_counter(labels, value);
        } else {
            self.add_gauge(labels, value);
        }
    }

    /// Adds a kernel log2 histogram (nanoseconds) as a histogram in seconds.
    /// Bucket `i` of the kernel histogram holds durations below `2^(i+1)` ns,
    /// which becomes the `le` bound; the last kernel bucket is open-ended
    /// and only counts towards `+Inf`.
    pub fn add_log2_histogram(&mut self, labels: &[(&str, &str)], h: &Log2Hist) {
        self.push(labels, |m| {
            let mut out = proto::Histogram::default();
            out.set_sample_count(h.count);
            out.set_sample_sum(h.sum_ns as f64 / 1e9);
            let buckets = log2_buckets(&h.buckets)
                .into_iter()
                .map(|(le, cumulative)| {
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(le);
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect();
            out.set_bucket(buckets);
            m.set_histogram(out);
        });
    }

    /// The family, or None when it has no samples (the text encoder rejects
    /// empty families).
    pub fn build(self) -> Option<MetricFamily> {
        (!self.0.get_metric().is_empty()).then_some(self.0)
    }
}
