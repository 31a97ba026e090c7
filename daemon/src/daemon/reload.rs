//! SIGHUP (`systemctl reload gapscoped`): the configuration file read
//! again.
//!
//! A file that cannot be read or does not check keeps the running
//! configuration; the log says why and
//! `gapscope_config_last_reload_successful` turns 0. From a good file the
//! services apply at once: a service whose matcher changed, or that is
//! gone from the file, has its processes untraced; new services are added
//! after the others; then every process is matched again. A removed
//! service's series leave `/metrics` at once (Prometheus marks them
//! stale); its id is kept until a restart, so one added back by name gets
//! its id, and its counters, again.
//!
//! The web config (`[daemon] web_config` and the files it names: users,
//! headers, certificate, key, client CA) is read again on every reload and
//! applies at once (`web::serve`): the next request meets the new users,
//! the next handshake the renewed certificate; no restart needed.
//! A web config that does not load, that would weaken the endpoints'
//! protection (basic auth off, client certificates less strict, TLS 1.2
//! again) or switch TLS on or off, fails the reload as a bad file does. The other sections
//! need a restart: the log names each one that changed.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{
            AtomicBool, AtomicU64,
            Ordering::{Relaxed, Release},
        },
    },
};

use crate::{
    config::{Config, ServiceConfig},
    state::DaemonState,
    web::{self, serve::Front},
};

/// What reloads came to, for `/metrics`.
#[derive(Debug)]
pub struct ReloadStats {
    pub successes: AtomicU64,
    pub failures: AtomicU64,
    pub last_ok: AtomicBool,
    /// When the configuration last loaded (start or reload), Unix seconds.
    pub last_success_unix_s: AtomicU64,
}

impl Default for ReloadStats {
    fn default() -> Self {
        ReloadStats {
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_ok: AtomicBool::new(true),
            last_success_unix_s: AtomicU64::new(unix_s()),
        }
    }
}

fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The file, and the running configuration's sections other than the
/// services (as text, to tell which changed).
pub(super) struct Reloader {
    path: PathBuf,
    sections: BTreeMap<&'static str, String>,
    /// What protects the endpoints now (a reload may not weaken it).
    protection: web::Protection,
    limits: web::serve::Limits,
}

/// What a reload does not apply, as text to tell which changed. The web
/// config's path is left out of `[daemon]`: it applies.
fn sections(c: &Config) -> BTreeMap<&'static str, String> {
    let d = &c.daemon;
    BTreeMap::from([
        (
            "daemon",
            format!(
                "{:?} {:?} {:?} {:?} {:?}",
                d.listen, d.rescan_interval, d.bpf_stats, d.drop_capabilities, d.http
            ),
        ),
        ("python", format!("{:?}", c.python)),
        ("timeline", format!("{:?}", c.timeline)),
        ("explain", format!("{:?}", c.explain)),
        ("cuda", format!("{:?}", c.cuda)),
        ("nvml", format!("{:?}", c.nvml)),
        ("inject", format!("{:?}", c.inject)),
    ])
}

/// A reloaded service table: the running ids kept (changed in place or
/// retired), new services after them, and the ids whose processes must
/// be matched again.
#[derive(Debug)]
struct Merged {
    services: Vec<ServiceConfig>,
    untrace: Vec<u32>,
    added: Vec<String>,
    changed: Vec<String>,
    retired: Vec<String>,
}

fn merge(running: &[ServiceConfig], file: Vec<ServiceConfig>) -> Result<Merged, String> {
    let mut file: Vec<Option<ServiceConfig>> = file.into_iter().map(Some).collect();
    let mut m = Merged {
        services: Vec::new(),
        untrace: Vec::new(),
        added: Vec::new(),
        changed: Vec::new(),
        retired: Vec::new(),
    };
    for (id, old) in running.iter().enumerate() {
        let id = id as u32;
        let new = file
            .iter_mut()
            .find(|s| s.as_ref().is_some_and(|s| s.name == old.name))
            .and_then(Option::take);
        let same = |new: &ServiceConfig| {
            format!("{:?}{}", new.matcher, new.follow_children)
                == format!("{:?}{}", old.matcher, old.follow_children)
        };
        match new {
            Some(new) if !old.retired && same(&new) => m.services.push(new),
            Some(new) => {
                m.changed.push(new.name.clone());
                m.untrace.push(id);
                m.services.push(new);
            }
            None => {
                if !old.retired {
                    m.retired.push(old.name.clone());
                    m.untrace.push(id);
                }
                m.services.push(ServiceConfig {
                    name: old.name.clone(),
                    matcher: Default::default(),
                    follow_children: false,
                    retired: true,
                });
            }
        }
    }
    for new in file.into_iter().flatten() {
        m.added.push(new.name.clone());
        m.services.push(new);
    }
    let max = gapscope_ebpf_common::MAX_SERVICES as usize;
    if m.services.len() > max {
        return Err(format!(
            "{} services with those gapscoped keeps for removed ones, more than the {max} supported; restart gapscoped to drop the removed ones",
            m.services.len()
        ));
    }
    Ok(m)
}

impl Reloader {
    pub(super) fn new(path: PathBuf, config: &Config) -> Self {
        Reloader {
            path,
            sections: sections(config),
            protection: web::Protection::default(),
            limits: config.daemon.http,
        }
    }

    /// The protection the server started with (`start`).
    pub(super) fn protected_by(self, protection: web::Protection) -> Self {
        Reloader { protection, ..self }
    }

    /// Reads the file again and applies what can be applied now.
    pub(super) fn reload(
        &mut self,
        state: &Arc<DaemonState>,
        front: &tokio::sync::watch::Sender<Front>,
    ) {
        let stats = &state.reloads;
        let fail = |why: String| {
            stats.last_ok.store(false, Relaxed);
            stats.failures.fetch_add(1, Release);
            log::warn!("SIGHUP: {why}; keeping the running configuration");
        };
        let config = match Config::load(&self.path) {
            Ok(c) => c,
            Err(e) => return fail(e.to_string()),
        };
        let web = match web::Prepared::load(config.daemon.web_config.as_deref()) {
            Ok(w) => w,
            Err(e) => return fail(e.to_string()),
        };
        // A reload never weakens what protects the endpoints, nor turns
        // TLS on (clients would need to change): those take a restart,
        // which an administrator asks for on purpose.
        let protection = web::Prepared::protection(web.as_ref());
        let lost = protection.weaker_than(&self.protection);
        if !lost.is_empty() {
            return fail(format!(
                "{}: the web config would change {}; a reload never weakens the endpoints' protection or switches TLS: restart gapscoped to apply it (systemctl restart gapscoped)",
                self.path.display(),
                lost.join(", ")
            ));
        }
        let new_sections = sections(&config);
        let running = state.services.all();
        let merged = match merge(&running, config.services) {
            Ok(m) => m,
            Err(why) => return fail(format!("{}: {why}", self.path.display())),
        };
        let router = web::serve::secure(
            crate::http::router(state.clone()),
            web.as_ref().map(|w| &w.config),
            self.limits,
        );
        front.send_replace(Front::new(
            router,
            web.as_ref().and_then(|w| w.tls.clone()),
            protection.client_auth > 0,
        ));
        self.protection = protection;
        log::info!(
            "SIGHUP: web config read again: {}",
            web.as_ref().map_or(
                "none (plain HTTP, no authentication)".to_string(),
                web::Prepared::describe
            )
        );
        let services: Arc<[ServiceConfig]> = merged.services.into();
        state.services.set(services.clone());
        {
            let mut targets = state
                .targets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            targets.set_services(services, &merged.untrace);
            targets.rescan();
        }
        let restart: Vec<&str> = new_sections
            .iter()
            .filter(|(k, v)| self.sections.get(*k) != Some(*v))
            .map(|(k, _)| *k)
            .collect();
        // Last: a scrape that counts this reload sees what it applied
        // (`metrics::reloads`).
        stats.last_ok.store(true, Relaxed);
        stats.last_success_unix_s.store(unix_s(), Relaxed);
        stats.successes.fetch_add(1, Release);
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        log::info!(
            "SIGHUP: reloaded {}: services added: {}; changed (processes matched again): {}; removed (untraced, series dropped): {}",
            self.path.display(),
            list(&merged.added),
            list(&merged.changed),
            list(&merged.retired)
        );
        if !restart.is_empty() {
            log::warn!(
                "SIGHUP: [{}] changed in {}: only [[service]] and the web config apply on reload; restart gapscoped to apply the rest (systemctl restart gapscoped)",
                restart.join("], ["),
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, cmdline: &str) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            matcher: crate::config::Matcher {
                cmdline: Some(regex::Regex::new(cmdline).unwrap()),
                ..Default::default()
            },
            follow_children: true,
            retired: false,
        }
    }

    #[test]
    fn ids_keep_their_names_and_new_services_come_after() {
        let running = [service("a", "x"), service("b", "y"), service("c", "z")];
        let m = merge(
            &running,
            vec![service("d", "w"), service("c", "z2"), service("a", "x")],
        )
        .unwrap();
        let names: Vec<&str> = m.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert!(m.services[1].retired && !m.services[0].retired);
        assert_eq!(m.added, ["d"]);
        assert_eq!(m.changed, ["c"]);
        assert_eq!(m.retired, ["b"]);
        assert_eq!(m.untrace, [1, 2]);
        // Back again: the retired service comes back under its old id.
        let again = merge(&m.services, vec![service("b", "y")]).unwrap();
        assert!(!again.services[1].retired);
        assert_eq!(again.changed, ["b"]);
        assert_eq!(again.retired, ["a", "c", "d"]);
    }

    #[test]
    fn more_services_than_the_programs_hold_is_refused() {
        let running: Vec<ServiceConfig> = (0..60).map(|i| service(&format!("s{i}"), "x")).collect();
        let file: Vec<ServiceConfig> = (0..10).map(|i| service(&format!("t{i}"), "x")).collect();
        let e = merge(&running, file).unwrap_err();
        assert!(e.contains("70 services") && e.contains("restart"), "{e}");
    }
}
