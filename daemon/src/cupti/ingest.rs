//! GPU activity records into statistics. One `Ingest` serves every
//! connection; each connection (a process) has its own kernel names and
//! correlation table, and statistics are kept per (service, device).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
};

use gapscope_ebpf_common::{Interval, IntervalKind, Log2Hist};
use gapscope_wire::{ClockMode, Frame, Hello, Record, RecordKind, cbid, copy};

use super::{
    busy::{BusyTracker, Stretch},
    classify,
};

/// Kernel names kept per connection (names beyond it count as unnamed).
const MAX_NAMES: usize = 65_536;
/// API calls remembered while their kernel is awaited, per connection.
const MAX_CORRELATIONS: usize = 65_536;
/// Distinct kernel names kept per service for the top list.
const MAX_TOP_NAMES: usize = 4096;

/// The `direction` label of a copy.
pub fn direction(detail: u8) -> &'static str {
    match detail {
        copy::HOST_TO_DEVICE => "host_to_device",
        copy::DEVICE_TO_HOST => "device_to_host",
        copy::DEVICE_TO_DEVICE => "device_to_device",
        copy::HOST_TO_HOST => "host_to_host",
        copy::PEER_TO_PEER => "peer_to_peer",
        _ => "other",
    }
}

/// Statistics of one (service, device).
#[derive(Debug)]
pub struct DeviceStats {
    /// Kernel durations by class (the counts are the kernels).
    pub kernels: BTreeMap<&'static str, Log2Hist>,
    pub busy: BusyTracker,
    pub idle_gaps: Log2Hist,
    /// API call start to kernel start.
    pub launch_latency: Log2Hist,
    /// Copy bytes by direction.
    pub copy_bytes: BTreeMap<&'static str, u64>,
    pub memset_bytes: u64,
    pub sync_wait: Log2Hist,
    /// A busy stretch being grown for the timeline: gaps shorter than
    /// the timeline's threshold are not worth an interval boundary.
    open_stretch: Option<(u64, u64)>,
}

impl Default for DeviceStats {
    fn default() -> Self {
        Self {
            kernels: BTreeMap::new(),
            busy: BusyTracker::default(),
            idle_gaps: Log2Hist::ZERO,
            launch_latency: Log2Hist::ZERO,
            copy_bytes: BTreeMap::new(),
            memset_bytes: 0,
            sync_wait: Log2Hist::ZERO,
            open_stretch: None,
        }
    }
}

/// A kernel's name and totals, for the explain API.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KernelTotals {
    pub class: &'static str,
    pub count: u64,
    pub total_ns: u64,
}

/// One kernel the device ran, kept for traces (`recent`).
#[derive(Debug, Clone)]
pub struct KernelSpan {
    pub service: u32,
    /// The process that launched it.
    pub pid: u32,
    pub device: u8,
    pub stream: u32,
    pub correlation: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// None: the process never sent its name.
    pub name: Option<Arc<str>>,
}

/// Kernel launches awaiting their kernel kept per connection.
const MAX_IN_FLIGHT: usize = 65_536;
/// A launch whose kernel has not come this long after it was probably
/// lost (a dropped record), not running.
const IN_FLIGHT_FOR_NS: u64 = 600_000_000_000;

/// Kernels kept for traces (about 60 bytes each), the newest.
pub const MAX_RECENT_KERNELS: usize = 200_000;

/// One connected process.
#[derive(Debug, Default)]
struct Peer {
    hello: Option<Hello>,
    /// Interned name id → (class, name).
    names: HashMap<u32, (&'static str, Arc<str>)>,
    /// correlation → API call (start, calling thread), oldest first for
    /// eviction.
    api_starts: HashMap<u32, (u64, u32)>,
    api_order: VecDeque<u32>,
    /// correlation → (device, kernel start) of kernels whose API call
    /// has not arrived yet.
    kernel_starts: HashMap<u32, (u8, u64)>,
    kernel_order: VecDeque<u32>,
    /// The process numbers its threads as gapscoped does (its hello's pid
    /// is the pid gapscoped sees): its records' thread ids can be joined
    /// to the kernel's thread states. Not in a container of its own.
    same_pid_namespace: bool,
    /// The process as gapscoped sees it.
    tgid: u32,
    /// The service its records count for (once records came).
    service: Option<u32>,
    /// Kernel launches whose kernel has not been reported yet
    /// (correlation → the call's start and its likely device): work the
    /// device has or will have, whatever its finished stretches say.
    in_flight: HashMap<u32, (u64, Target)>,
    /// The devices each calling thread's kernels ran on, learnt when a
    /// kernel and its launch meet: where its next launch likely goes.
    thread_devices: HashMap<u32, ThreadDevices>,
    /// The process's CUDA devices by UUID, from its `Devices` frame.
    devices: Vec<gapscope_wire::Device>,
    /// Whether they were counted in `device_uuids` for `service`.
    devices_counted: Option<u32>,
}

/// The device a CUDA call hands work to, as far as is known before its
/// kernel is reported (API records carry no device): that of the calling
/// thread's earlier kernels when they all ran on one, else None (any of
/// the service's devices).
pub type Target = Option<u8>;

/// What a thread's kernels ran on so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ThreadDevices {
    One(u8),
    Several,
}

/// Most threads a peer remembers the devices of.
const MAX_THREAD_DEVICES: usize = 4096;

impl Peer {
    /// A kernel of `thread`'s ran on `device`.
    fn learn(&mut self, thread: u32, device: u8) {
        if thread == 0 {
            return;
        }
        if !self.thread_devices.contains_key(&thread)
            && self.thread_devices.len() >= MAX_THREAD_DEVICES
        {
            return;
        }
        let seen = self
            .thread_devices
            .entry(thread)
            .or_insert(ThreadDevices::One(device));
        if *seen != ThreadDevices::One(device) {
            *seen = ThreadDevices::Several;
        }
    }

    /// Where a call of `thread` likely hands its work.
    fn target(&self, thread: u32) -> Target {
        match self.thread_devices.get(&thread) {
            Some(ThreadDevices::One(d)) => Some(*d),
            _ => None,
        }
    }
}

/// What the ingestion has counted about itself.
#[derive(Debug, Default, Clone)]
pub struct IngestCounters {
    pub frames: BTreeMap<&'static str, u64>,
    pub records: u64,
    /// Records the senders said they dropped, and buffers.
    pub sender_dropped_records: u64,
    pub sender_dropped_buffers: u64,
    /// Records from processes no service traces.
    pub untraced_records: u64,
    /// Connections by clock mode, now.
    pub clock_modes: BTreeMap<&'static str, u64>,
}

#[derive(Default)]
pub struct Ingest {
    peers: HashMap<u64, Peer>,
    pub stats: BTreeMap<(u32, u8), DeviceStats>,
    pub top: BTreeMap<u32, HashMap<String, KernelTotals>>,
    pub counters: IngestCounters,
    /// Busy stretches for the timeline, taken by the daemon's loop.
    pub timeline: Vec<Interval>,
    /// Every settled busy stretch, unbridged, for the explainer: (service,
    /// device, stretch), taken by the daemon's loop.
    pub stretches: Vec<(u32, u8, Stretch)>,
    /// Stretches not kept because the explainer fell behind.
    pub stretches_dropped: u64,
    /// The newest kernels, in arrival order, for traces; and how many
    /// older ones were let go.
    pub recent: VecDeque<KernelSpan>,
    pub recent_evicted: u64,
    /// Threads seen calling CUDA in API records (their ids as the kernel
    /// knows them), with their latest call's end: (service, tid) → ns,
    /// taken by the daemon's loop for the explainer.
    pub api_threads: HashMap<(u32, u32), u64>,
    /// Per service and device, the newest start of a CUDA call that
    /// hands the device work (a launch or a copy, not a synchronization),
    /// once its device is known: work handed over after the device's last
    /// busy stretch means its idle gap is not open (taken by the daemon's
    /// loop).
    pub api_calls: HashMap<(u32, u8), u64>,
    /// Which GPUs, by NVML's spelling of their UUIDs, each (service, CUDA
    /// device index) row is on: what the service's connected processes
    /// said the index is, or, once none is connected, what the last of
    /// them said (their stretches may still wait for a reading). One UUID
    /// makes the row's GPU known.
    pub device_uuids: BTreeMap<(u32, u8), std::collections::BTreeSet<String>>,
    /// The same from connected processes only: how many said each UUID.
    live_uuids: BTreeMap<(u32, u8), BTreeMap<String, u32>>,
    /// Shortest idle gap that ends a timeline busy stretch.
    min_gap_ns: u64,
}

/// Most stretches waiting for the explainer.
const MAX_STRETCHES: usize = 1_000_000;
/// Most (service, thread) pairs waiting for the explainer.
const MAX_API_THREADS: usize = 65_536;

impl Ingest {
    pub fn new(min_gap_ns: u64) -> Self {
        Self {
            min_gap_ns,
            ..Self::default()
        }
    }

    /// A connection closed: forget its names and pending correlations.
    pub fn disconnect(&mut self, peer: u64) {
        let Some(p) = self.peers.remove(&peer) else {
            return;
        };
        if let Some(h) = &p.hello {
            let mode = clock_label(h.clock);
            if let Some(n) = self.counters.clock_modes.get_mut(mode) {
                *n = n.saturating_sub(1);
            }
        }
        if let Some(service) = p.devices_counted {
            self.uncount_devices(service, &p.devices);
        }
    }

    /// The devices a process said, no longer said by it.
    fn uncount_devices(&mut self, service: u32, devices: &[gapscope_wire::Device]) {
        for d in devices {
            let row = (service, d.index);
            let Some(live) = self.live_uuids.get_mut(&row) else {
                continue;
            };
            if let Some(n) = live.get_mut(&d.nvml_uuid()) {
                *n = n.saturating_sub(1);
            }
            live.retain(|_, n| *n > 0);
            if live.is_empty() {
                // Nobody connected says otherwise: the last word stays.
                self.live_uuids.remove(&row);
            } else {
                self.device_uuids
                    .insert(row, live.keys().cloned().collect());
            }
        }
    }

    /// Takes one frame from connection `peer`, from process `tgid`, which
    /// `service` traces (None: no service does).
    pub fn frame(&mut self, peer: u64, tgid: u32, service: Option<u32>, frame: Frame) {
        let kind = match &frame {
            Frame::Hello(_) => "hello",
            Frame::Records(_) => "records",
            Frame::Names(_) => "names",
            Frame::Dropped { .. } => "dropped",
            Frame::Devices(_) => "devices",
        };
        *self.counters.frames.entry(kind).or_default() += 1;
        let p = self.peers.entry(peer).or_default();
        match frame {
            Frame::Hello(h) => {
                log::info!(
                    "deep mode: pid {tgid} ({}) connected, CUDA {} CUPTI {}, clock {}{}",
                    h.agent,
                    h.cuda_version,
                    h.cupti_version,
                    clock_label(h.clock),
                    if h.clock == ClockMode::Offset {
                        format!(" (offset {} ns)", h.clock_offset_ns)
                    } else {
                        String::new()
                    }
                );
                *self
                    .counters
                    .clock_modes
                    .entry(clock_label(h.clock))
                    .or_default() += 1;
                p.same_pid_namespace = h.pid == tgid;
                p.tgid = tgid;
                p.hello = Some(h);
            }
            Frame::Names(names) => {
                for n in names {
                    if p.names.len() < MAX_NAMES || p.names.contains_key(&n.id) {
                        p.names
                            .insert(n.id, (classify::class_of(&n.text), n.text.into()));
                    }
                }
            }
            Frame::Dropped { records, buffers } => {
                self.counters.sender_dropped_records += records;
                self.counters.sender_dropped_buffers += buffers;
            }
            Frame::Devices(devices) => {
                let (old, counted) = (
                    std::mem::replace(&mut p.devices, devices),
                    p.devices_counted.take(),
                );
                if let Some(service) = counted {
                    self.uncount_devices(service, &old);
                }
            }
            Frame::Records(records) => {
                self.counters.records += records.len() as u64;
                let Some(service) = service else {
                    self.counters.untraced_records += records.len() as u64;
                    return;
                };
                for r in records {
                    self.record(peer, service, &r);
                }
            }
        }
        self.count_devices(peer, service);
    }

    /// Counts a process's devices for its service, once both are known.
    fn count_devices(&mut self, peer: u64, service: Option<u32>) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(service) = service.or(p.service) else {
            return;
        };
        if p.devices.is_empty() || p.devices_counted == Some(service) {
            return;
        }
        let before = p.devices_counted.replace(service);
        let devices = p.devices.clone();
        if let Some(old) = before {
            self.uncount_devices(old, &devices);
        }
        for d in &devices {
            let row = (service, d.index);
            let live = self.live_uuids.entry(row).or_default();
            *live.entry(d.nvml_uuid()).or_default() += 1;
            self.device_uuids
                .insert(row, live.keys().cloned().collect());
        }
    }

    fn record(&mut self, peer: u64, service: u32, r: &Record) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.service = Some(service);
        let stats = self.stats.entry((service, r.device)).or_default();
        let duration = r.end_ns - r.start_ns;
        match r.kind {
            RecordKind::Kernel => {
                let named = p.names.get(&r.name);
                let (class, name) = named.map_or(("other", "(unnamed)"), |(c, n)| (*c, &**n));
                if self.recent.len() >= MAX_RECENT_KERNELS {
                    self.recent.pop_front();
                    self.recent_evicted += 1;
                }
                self.recent.push_back(KernelSpan {
                    service,
                    pid: p.tgid,
                    device: r.device,
                    stream: r.stream,
                    correlation: r.correlation,
                    start_ns: r.start_ns,
                    end_ns: r.end_ns,
                    name: named.map(|(_, n)| n.clone()),
                });
                stats
                    .kernels
                    .entry(class)
                    .or_insert(Log2Hist::ZERO)
                    .record(duration);
                stats.busy.add(r.start_ns, r.end_ns);
                // A String only for a name not seen yet.
                let top = self.top.entry(service).or_default();
                if !top.contains_key(name) && top.len() < MAX_TOP_NAMES {
                    top.insert(
                        name.to_string(),
                        KernelTotals {
                            class,
                            ..KernelTotals::default()
                        },
                    );
                }
                if let Some(t) = top.get_mut(name) {
                    t.count += 1;
                    t.total_ns += duration;
                }
                p.in_flight.remove(&r.correlation);
                match p.api_starts.remove(&r.correlation) {
                    Some((api_start, thread)) => {
                        p.learn(thread, r.device);
                        stats
                            .launch_latency
                            .record(r.start_ns.saturating_sub(api_start));
                        let newest = self.api_calls.entry((service, r.device)).or_default();
                        *newest = (*newest).max(api_start);
                    }
                    None => remember(
                        &mut p.kernel_starts,
                        &mut p.kernel_order,
                        r.correlation,
                        (r.device, r.start_ns),
                    ),
                }
            }
            RecordKind::Memcpy => {
                *stats.copy_bytes.entry(direction(r.detail)).or_default() += r.bytes;
                stats.busy.add(r.start_ns, r.end_ns);
                // A copy's call, reported first, says where its thread
                // works too.
                if let Some((api_start, thread)) = p.api_starts.remove(&r.correlation) {
                    p.learn(thread, r.device);
                    let newest = self.api_calls.entry((service, r.device)).or_default();
                    *newest = (*newest).max(api_start);
                }
            }
            RecordKind::Memset => {
                stats.memset_bytes += r.bytes;
                stats.busy.add(r.start_ns, r.end_ns);
            }
            RecordKind::Sync => stats.sync_wait.record(duration),
            RecordKind::RuntimeApi | RecordKind::DriverApi => {
                // A thread that launches or waits for GPU work (not one
                // that only polls an event or loads a module).
                let role = cbid::role(r.kind == RecordKind::DriverApi, r.name);
                if role.is_some()
                    && r.thread != 0
                    && p.same_pid_namespace
                    && self.api_threads.len() < MAX_API_THREADS
                {
                    let last = self.api_threads.entry((service, r.thread)).or_default();
                    *last = (*last).max(r.end_ns);
                }
                // Its kernel came first: where it went is known.
                let joined = p.kernel_starts.remove(&r.correlation);
                if let Some((device, kernel_start)) = joined {
                    p.learn(r.thread, device);
                    self.stats
                        .entry((service, device))
                        .or_default()
                        .launch_latency
                        .record(kernel_start.saturating_sub(r.start_ns));
                }
                // Work handed to a device known now (its kernel's, or the
                // thread's); a launch whose device is not known yet is in
                // flight until its kernel says (a copy, until its record
                // makes the device busy).
                let target = joined.map(|(d, _)| d).or_else(|| p.target(r.thread));
                if role.is_some_and(cbid::Role::hands_work)
                    && let Some(device) = target
                {
                    let newest = self.api_calls.entry((service, device)).or_default();
                    *newest = (*newest).max(r.start_ns);
                }
                if joined.is_none() {
                    if role == Some(cbid::Role::LaunchesKernels)
                        && p.in_flight.len() < MAX_IN_FLIGHT
                    {
                        p.in_flight.insert(r.correlation, (r.start_ns, target));
                    }
                    remember(
                        &mut p.api_starts,
                        &mut p.api_order,
                        r.correlation,
                        (r.start_ns, r.thread),
                    );
                }
            }
            RecordKind::Overhead => {}
        }
    }

    /// Makes final every busy stretch before `watermark_ns`: busy time,
    /// idle gaps, and timeline intervals for stretches separated by gaps
    /// of at least the timeline threshold.
    pub fn advance(&mut self, watermark_ns: u64) {
        for ((service, device), s) in &mut self.stats {
            for stretch in s.busy.advance(watermark_ns) {
                if self.stretches.len() < MAX_STRETCHES {
                    self.stretches.push((*service, *device, stretch));
                } else {
                    self.stretches_dropped += 1;
                }
                if let Some(gap) = stretch.gap_before_ns {
                    s.idle_gaps.record(gap);
                }
                s.open_stretch = match s.open_stretch {
                    Some((start, end))
                        if stretch.start_ns.saturating_sub(end) < self.min_gap_ns =>
                    {
                        Some((start, stretch.end_ns))
                    }
                    Some((start, end)) => {
                        self.timeline
                            .push(busy_interval(*service, *device, start, end));
                        Some((stretch.start_ns, stretch.end_ns))
                    }
                    None => Some((stretch.start_ns, stretch.end_ns)),
                };
            }
            // A stretch nothing has followed for a threshold is closed.
            if let Some((start, end)) = s.open_stretch
                && watermark_ns.saturating_sub(end) >= self.min_gap_ns
            {
                self.timeline
                    .push(busy_interval(*service, *device, start, end));
                s.open_stretch = None;
            }
        }
    }

    /// Per service and likely device, the oldest kernel launch at
    /// `now_ns` whose kernel has not been reported (within
    /// `IN_FLIGHT_FOR_NS`; older ones are forgotten as lost).
    pub fn in_flight(&mut self, now_ns: u64) -> HashMap<(u32, Target), u64> {
        let mut out: HashMap<(u32, Target), u64> = HashMap::new();
        for p in self.peers.values_mut() {
            p.in_flight
                .retain(|_, (start, _)| now_ns.saturating_sub(*start) < IN_FLIGHT_FOR_NS);
            let Some(service) = p.service else { continue };
            for &(start, target) in p.in_flight.values() {
                let o = out.entry((service, target)).or_insert(start);
                *o = (*o).min(start);
            }
        }
        out
    }

    /// The top `n` kernels of a service by total time.
    pub fn top_kernels(&self, service: u32, n: usize) -> Vec<(String, KernelTotals)> {
        let mut v: Vec<(String, KernelTotals)> = self
            .top
            .get(&service)
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// Connections now.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }
}

fn busy_interval(service: u32, device: u8, start_ns: u64, end_ns: u64) -> Interval {
    Interval {
        kind: IntervalKind::GpuBusy as u32,
        detail: u32::from(device),
        service,
        tgid: 0,
        tid: 0,
        _pad: 0,
        start_ns,
        end_ns,
    }
}

pub fn clock_label(mode: ClockMode) -> &'static str {
    match mode {
        ClockMode::Callback => "callback",
        ClockMode::Offset => "offset",
    }
}

/// Remembers `value` under `key` in a bounded table, evicting the oldest.
fn remember<V>(map: &mut HashMap<u32, V>, order: &mut VecDeque<u32>, key: u32, value: V) {
    if map.len() >= MAX_CORRELATIONS {
        while let Some(old) = order.pop_front() {
            if map.remove(&old).is_some() {
                break;
            }
        }
    }
    if map.insert(key, value).is_none() {
        order.push_back(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gapscope_wire::Name;

    fn rec(kind: RecordKind, correlation: u32, name: u32, start: u64, end: u64) -> Record {
        Record {
            kind,
            device: 0,
            detail: copy::DEVICE_TO_HOST,
            stream: 1,
            correlation,
            name,
            start_ns: start,
            end_ns: end,
            bytes: 4096,
            thread: 0,
            graph: 0,
        }
    }

    fn hello() -> Frame {
        Frame::Hello(Hello {
            pid: 1,
            cuda_version: 12080,
            cupti_version: 24,
            clock: ClockMode::Callback,
            clock_offset_ns: 0,
            agent: "test".into(),
        })
    }

    #[test]
    fn a_launch_is_in_flight_until_its_kernel_is_reported() {
        let mut i = Ingest::new(1_000_000);
        i.frame(7, 100, Some(3), hello());
        // A launch (cudaLaunchKernel), a sync: only the launch waits for
        // a kernel.
        i.frame(
            7,
            100,
            Some(3),
            Frame::Records(vec![
                rec(RecordKind::RuntimeApi, 21, 211, 1_000, 1_500),
                rec(RecordKind::RuntimeApi, 22, 131, 2_000, 9_000),
            ]),
        );
        assert_eq!(i.in_flight(10_000), HashMap::from([((3, None), 1_000)]));
        i.frame(
            7,
            100,
            Some(3),
            Frame::Records(vec![rec(RecordKind::Kernel, 21, 0, 4_000, 8_000)]),
        );
        assert!(i.in_flight(10_000).is_empty());
        // One whose kernel never comes is forgotten after ten minutes.
        i.frame(
            7,
            100,
            Some(3),
            Frame::Records(vec![rec(RecordKind::DriverApi, 23, 307, 20_000, 20_500)]),
        );
        assert_eq!(i.in_flight(30_000), HashMap::from([((3, None), 20_000)]));
        assert!(i.in_flight(20_000 + IN_FLIGHT_FOR_NS).is_empty());
    }

    #[test]
    fn a_rows_gpu_is_what_its_connected_processes_say() {
        let mut i = Ingest::new(1_000_000);
        let on = |byte| {
            Frame::Devices(vec![gapscope_wire::Device {
                index: 0,
                uuid: [byte; 16],
            }])
        };
        let row = |i: &Ingest| -> Vec<String> {
            i.device_uuids[&(3, 0)]
                .iter()
                .map(|u| u[..6].to_string())
                .collect()
        };
        // A process says CUDA device 0 is GPU 0x0a…; its service is known.
        i.frame(1, 100, Some(3), hello());
        i.frame(1, 100, Some(3), on(0x0a));
        assert_eq!(row(&i), ["GPU-0a"]);
        // Restarted onto another GPU: both connected for a moment (the
        // row is ambiguous), then the old one leaves.
        i.frame(2, 200, Some(3), hello());
        i.frame(2, 200, Some(3), on(0x0b));
        assert_eq!(row(&i), ["GPU-0a", "GPU-0b"]);
        i.disconnect(1);
        assert_eq!(row(&i), ["GPU-0b"]);
        // Nobody connected: the last word stays, for stretches still
        // waiting to be priced.
        i.disconnect(2);
        assert_eq!(row(&i), ["GPU-0b"]);
        // A process that says something new about itself replaces what it
        // said before.
        i.frame(4, 400, Some(3), hello());
        i.frame(4, 400, Some(3), on(0x0c));
        i.frame(4, 400, Some(3), on(0x0d));
        assert_eq!(row(&i), ["GPU-0d"]);
    }

    #[test]
    fn a_threads_launches_go_where_its_kernels_went() {
        let mut i = Ingest::new(1_000_000);
        i.frame(7, 100, Some(3), hello());
        let on = |thread, device, rec: Record| Record {
            thread,
            device,
            ..rec
        };
        // Thread 41's first launch: its device is not known yet.
        i.frame(
            7,
            100,
            Some(3),
            Frame::Records(vec![on(
                41,
                0,
                rec(RecordKind::RuntimeApi, 1, 211, 1_000, 1_500),
            )]),
        );
        assert_eq!(i.in_flight(2_000), HashMap::from([((3, None), 1_000)]));
        assert!(i.api_calls.is_empty());
        // Its kernel ran on device 1: its next launch goes there.
        i.frame(
            7,
            100,
            Some(3),
            Frame::Records(vec![
                on(0, 1, rec(RecordKind::Kernel, 1, 0, 2_000, 3_000)),
                on(41, 0, rec(RecordKind::RuntimeApi, 2, 211, 4_000, 4_500)),
            ]),
        );
        // The first launch's kernel said device 1; the second goes there.
        assert_eq!(i.in_flight(5_000), HashMap::from([((3, Some(1)), 4_000)]));
        assert_eq!(
            i.api_calls.drain().collect::<HashMap<_, _>>(),
            HashMap::from([((3, 1), 4_000)])
        );
        // A kernel reported before its launch teaches the same; a thread
        // whose kernels ran on two devices is any device's again.
        i.frame(
            7,
            100,
            Some(3),
            Frame::Records(vec![
                on(0, 1, rec(RecordKind::Kernel, 2, 0, 5_000, 6_000)),
                on(0, 0, rec(RecordKind::Kernel, 3, 0, 6_000, 7_000)),
                on(41, 0, rec(RecordKind::RuntimeApi, 3, 211, 5_500, 5_600)),
                on(41, 0, rec(RecordKind::RuntimeApi, 4, 211, 8_000, 8_100)),
            ]),
        );
        assert_eq!(i.in_flight(9_000), HashMap::from([((3, None), 8_000)]));
    }

    #[test]
    fn kernels_copies_and_launch_latency_per_service_and_device() {
        let mut i = Ingest::new(1_000_000);
        i.frame(7, 100, Some(0), hello());
        i.frame(
            7,
            100,
            Some(0),
            Frame::Names(vec![
                Name {
                    id: 1,
                    text: "ampere_bf16_s16816gemm_bf16_128x128".into(),
                },
                Name {
                    id: 2,
                    text: "void vllm::rms_norm_kernel<c10::BFloat16>".into(),
                },
            ]),
        );
        i.frame(
            7,
            100,
            Some(0),
            Frame::Records(vec![
                // The API record first for kernel 1, after it for kernel 2.
                rec(RecordKind::RuntimeApi, 11, 211, 1_000, 1_500),
                rec(RecordKind::Kernel, 11, 1, 4_000, 10_000),
                rec(RecordKind::Kernel, 12, 2, 10_000, 12_000),
                rec(RecordKind::Memcpy, 13, 0, 20_000, 21_000),
                rec(RecordKind::Sync, 0, 0, 12_000, 20_000),
            ]),
        );
        i.frame(
            7,
            100,
            Some(0),
            Frame::Records(vec![rec(RecordKind::DriverApi, 12, 307, 9_000, 9_500)]),
        );
        i.advance(1_000_000_000);
        let s = &i.stats[&(0, 0)];
        assert_eq!(s.kernels["gemm"].count, 1);
        assert_eq!(s.kernels["gemm"].sum_ns, 6_000);
        assert_eq!(s.kernels["norm"].count, 1);
        assert_eq!(s.launch_latency.count, 2);
        assert_eq!(s.launch_latency.sum_ns, 3_000 + 1_000);
        assert_eq!(s.copy_bytes["device_to_host"], 4096);
        assert_eq!(s.sync_wait.sum_ns, 8_000);
        // [4000,12000) and [20000,21000): one gap of 8000 ns.
        assert_eq!(s.busy.busy_ns, 9_000);
        assert_eq!(s.idle_gaps.count, 1);
        assert_eq!(s.idle_gaps.sum_ns, 8_000);
        // Gaps under 1 ms do not split the timeline stretch.
        assert_eq!(i.timeline.len(), 1);
        assert_eq!(
            (i.timeline[0].start_ns, i.timeline[0].end_ns),
            (4_000, 21_000)
        );
        let top = i.top_kernels(0, 10);
        assert_eq!(top[0].0, "ampere_bf16_s16816gemm_bf16_128x128");
        assert_eq!(top[0].1.total_ns, 6_000);
    }

    #[test]
    fn records_of_untraced_processes_are_counted_not_kept() {
        let mut i = Ingest::new(1_000_000);
        i.frame(
            1,
            5,
            None,
            Frame::Records(vec![rec(RecordKind::Kernel, 1, 0, 0, 10)]),
        );
        assert!(i.stats.is_empty());
        assert_eq!(i.counters.untraced_records, 1);
    }

    #[test]
    fn correlation_tables_stay_bounded() {
        let mut i = Ingest::new(1_000_000);
        let calls: Vec<Record> = (0..MAX_CORRELATIONS as u32 + 100)
            .map(|c| rec(RecordKind::RuntimeApi, c, 211, 0, 1))
            .collect();
        i.frame(3, 1, Some(0), Frame::Records(calls));
        let p = &i.peers[&3];
        assert_eq!(p.api_starts.len(), MAX_CORRELATIONS);
        assert!(!p.api_starts.contains_key(&0), "the oldest went first");
        i.disconnect(3);
        assert_eq!(i.peers(), 0);
    }
}
