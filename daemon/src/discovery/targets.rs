//! Keeps the kernel's tgid → service map in step with the processes that
//! exist: a full /proc scan at start and every `rescan_interval`, plus the
//! exec events the kernel sends, so a new server process is traced within
//! milliseconds and in the worst case within one rescan.
//!
//! Children of traced processes are added by the kernel itself at fork
//! (`task_newtask`), and exited processes are removed there too; the rescan
//! only repairs what events missed (a full ring buffer, a leader thread that
//! exited before its process).
//!
//! A process's service outlives it for `DEPARTED_GRACE`: what it sent
//! just before exiting (the injection agent's final flush) is read after
//! the kernel has dropped it, and still belongs to its service.

use std::{
    collections::HashMap as StdHashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, MapData};
use gapscope_ebpf_common::{NO_SERVICE, ProcEvent, proc_event};

use super::procfs::{self, ProcessInfo};
use crate::{
    config::ServiceConfig,
    cuda::CudaTracker,
    python::{GilTracker, serialization::SerializationTracker},
};

pub struct Targets {
    map: HashMap<MapData, u32, u32>,
    /// The programs' `USER_GENERATION`, bumped after every change to `map`
    /// so the kernel's per-CPU lookup caches forget what they knew.
    generation: Array<MapData, u64>,
    services: Arc<[ServiceConfig]>,
    /// Never trace the daemon itself.
    own_tgid: u32,
    /// The GILs of the traced Python processes.
    pub gil: GilTracker,
    /// Their serialization calls.
    pub serialization: SerializationTracker,
    /// The CUDA calls of every traced process (None: `[cuda] enabled =
    /// false`).
    pub cuda: Option<CudaTracker>,
    /// Traced processes that exited, with their service and when.
    departed: StdHashMap<u32, (u32, Instant)>,
    /// Per service id: processes that started being traced (matched, or
    /// followed from a traced parent at fork).
    started: Vec<u64>,
}

/// How long an exited process's service is remembered.
const DEPARTED_GRACE: Duration = Duration::from_secs(30);

impl Targets {
    pub fn new(
        map: HashMap<MapData, u32, u32>,
        generation: Array<MapData, u64>,
        gil: GilTracker,
        serialization: SerializationTracker,
        cuda: Option<CudaTracker>,
        services: Arc<[ServiceConfig]>,
    ) -> Self {
        Self {
            map,
            generation,
            gil,
            serialization,
            cuda,
            own_tgid: std::process::id(),
            departed: StdHashMap::new(),
            started: vec![0; services.len()],
            services,
        }
    }

    /// The service a process matches, by configuration order.
    fn match_service(&self, p: &ProcessInfo) -> Option<u32> {
        if p.tgid == self.own_tgid {
            return None;
        }
        self.services
            .iter()
            .position(|s| !s.retired && s.matcher.matches(p))
            .map(|i| i as u32)
    }

    /// Takes a reloaded service table (ids kept, new services at the end)
    /// and untraces every process of the services in `untrace` (changed
    /// or retired); the caller rescans.
    pub fn set_services(&mut self, services: Arc<[ServiceConfig]>, untrace: &[u32]) {
        self.started.resize(services.len(), 0);
        self.services = services;
        let gone: Vec<u32> = self
            .traced()
            .into_iter()
            .filter(|(_, service)| untrace.contains(service))
            .map(|(tgid, _)| tgid)
            .collect();
        for tgid in gone {
            self.remove(tgid);
        }
    }

    /// The current contents of the kernel map.
    pub fn traced(&self) -> StdHashMap<u32, u32> {
        self.map.iter().filter_map(Result::ok).collect()
    }

    /// The service tracing `tgid`, or that traced it until it exited
    /// within `DEPARTED_GRACE` (one map lookup, then one hash lookup).
    pub fn service_of(&self, tgid: u32) -> Option<u32> {
        self.map
            .get(&tgid, 0)
            .ok()
            .or_else(|| self.departed.get(&tgid).map(|(service, _)| *service))
    }

    fn depart(&mut self, tgid: u32, service: u32) {
        if service != NO_SERVICE {
            self.departed.insert(tgid, (service, Instant::now()));
        }
    }

    /// Processes that started being traced, per service id, since start.
    pub fn started(&self) -> &[u64] {
        &self.started
    }

    fn count_start(&mut self, service: u32) {
        if let Some(n) = self.started.get_mut(service as usize) {
            *n += 1;
        }
    }

    /// Processes traced per service id.
    pub fn counts(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.services.len()];
        for (_, service) in self.traced() {
            if let Some(c) = counts.get_mut(service as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// Forgets what was found in a process's memory image: its GIL and
    /// the libraries it shares probes on.
    fn untrack_image(&mut self, tgid: u32) {
        self.gil.detach(tgid);
        self.serialization.forget(tgid);
        if let Some(cuda) = &mut self.cuda {
            cuda.forget(tgid);
        }
    }

    /// Invalidates the kernel's lookup caches after a change to the map.
    fn changed(&mut self) {
        let next = self.generation.get(&0, 0).unwrap_or(0).wrapping_add(1);
        if let Err(e) = self.generation.set(0, next, 0) {
            log::warn!("cannot bump the targets generation: {e}");
        }
    }

    fn add(&mut self, tgid: u32, service: u32) {
        // A rescan may have added it before its exec event came: count a
        // process once.
        let new = self.map.get(&tgid, 0).is_err();
        let inserted = self.map.insert(tgid, service, 0);
        self.changed();
        match inserted {
            Ok(()) => {
                log::info!(
                    "tracing pid {tgid} as service {}",
                    self.services[service as usize].name
                );
                if new {
                    self.count_start(service);
                }
                self.gil.attach(tgid, service);
            }
            Err(e) => log::warn!("cannot trace pid {tgid}: {e}"),
        }
    }

    fn remove(&mut self, tgid: u32) {
        // Already gone (the kernel removed it at exit) is fine.
        if let Ok(service) = self.map.get(&tgid, 0)
            && !procfs::is_alive(tgid)
        {
            self.depart(tgid, service);
        }
        if self.map.remove(&tgid).is_ok() {
            self.changed();
        }
        self.untrack_image(tgid);
    }

    /// Matches every process in /proc and drops entries of dead ones.
    pub fn rescan(&mut self) {
        let traced = self.traced();
        for tgid in procfs::all_tgids() {
            if let Some(service) = traced.get(&tgid) {
                // Followed into the service by the kernel, or an
                // interpreter loaded late: look for its GIL once.
                if !self.gil.knows(tgid) {
                    self.gil.attach(tgid, *service);
                }
                continue;
            }
            if let Some(p) = ProcessInfo::read(tgid)
                && let Some(service) = self.match_service(&p)
            {
                self.add(tgid, service);
            }
        }
        for tgid in traced.keys() {
            if !procfs::is_alive(*tgid) {
                log::debug!("pid {tgid} is gone; untracing");
                self.remove(*tgid);
            }
        }
    }

    /// Once a second: keeps the serialization and CUDA launch probes
    /// within their budgets, given the calls the kernel has counted so far,
    /// then looks at the traced processes' mappings, attaching probes that
    /// resumed and probes for libraries loaded since (codec modules and
    /// CUDA both load lazily).
    pub fn every_second(&mut self) {
        self.departed
            .retain(|_, (_, at)| at.elapsed() < DEPARTED_GRACE);
        self.serialization.enforce_budget();
        for (tgid, service, interpreter) in self.gil.python_processes() {
            self.serialization.scan(tgid, service, &interpreter);
        }
        if let Some(cuda) = &mut self.cuda {
            cuda.tick();
            for (tgid, service) in self.map.iter().filter_map(Result::ok) {
                cuda.scan(tgid, service);
            }
        }
    }

    /// Ten times a second (a hundred while `trips_soon`): pauses new
    /// serialization probes that are already over their budget. (The CUDA launch probes keep whole
    /// seconds: their estimate of unprobed seconds extrapolates from the
    /// last whole second attached.)
    pub fn every_tenth(&mut self) {
        self.serialization.trip_early();
    }

    /// Whether `every_tenth` is wanted every hundredth of a second now: a
    /// serialization probe attached in the last second, not yet judged (a
    /// restarted daemon's probes on a busy service, most of all).
    pub fn trips_soon(&self) -> bool {
        self.serialization.trips_soon()
    }

    /// Acts on one event from the kernel.
    pub fn on_event(&mut self, ev: &ProcEvent) {
        match ev.kind {
            proc_event::EXEC if ev.service == NO_SERVICE => {
                if let Some(p) = ProcessInfo::read(ev.tgid)
                    && let Some(service) = self.match_service(&p)
                {
                    self.add(ev.tgid, service);
                }
            }
            proc_event::EXEC => {
                // A new program image: a new interpreter, or none.
                self.untrack_image(ev.tgid);
                self.gil.attach(ev.tgid, ev.service);
            }
            proc_event::FORK => {
                let follow = self
                    .services
                    .get(ev.service as usize)
                    .is_some_and(|s| s.follow_children);
                if !follow {
                    // The kernel adds every child; this service wants only
                    // processes that match it themselves.
                    let matches = ProcessInfo::read(ev.tgid)
                        .and_then(|p| self.match_service(&p))
                        .is_some_and(|s| s == ev.service);
                    if !matches {
                        self.remove(ev.tgid);
                    }
                } else {
                    log::debug!("following fork {} -> {}", ev.parent_tgid, ev.tgid);
                    self.count_start(ev.service);
                    // The child shares its parent's memory image, GIL included.
                    self.gil.attach(ev.tgid, ev.service);
                }
            }
            proc_event::EXIT => {
                log::debug!("pid {} exited", ev.tgid);
                self.depart(ev.tgid, ev.service);
                self.untrack_image(ev.tgid);
            }
            _ => {}
        }
    }
}
