//! Detaching a uprobe closes its perf event, and the kernel unregisters
//! the probe only after an RCU grace period: a tenth of a second or more
//! per probe, seconds for a library's dozen entry points. Done on the
//! event loop, that froze every scrape, socket and event (2.4 s measured
//! when a traced CUDA process exited, enough to fail Prometheus's scrape).
//!
//! So probes leaving are taken out of their program (`take_link`) at once,
//! which is what the rest of the daemon observes, and their links are
//! dropped here, on a thread of their own. Nothing waits for it.

use std::sync::{OnceLock, mpsc};

type Retired = Box<dyn Send>;

static REAPER: OnceLock<Option<mpsc::Sender<Retired>>> = OnceLock::new();

fn reaper() -> Option<&'static mpsc::Sender<Retired>> {
    REAPER
        .get_or_init(|| {
            let (send, receive) = mpsc::channel::<Retired>();
            std::thread::Builder::new()
                .name("gapscope-detach".into())
                .spawn(move || {
                    // Each drop is a close(2) that waits for the kernel.
                    for link in receive {
                        drop(link);
                    }
                })
                .map_err(|e| log::warn!("no detach thread ({e}); probes detach inline"))
                .ok()
                .map(|_| send)
        })
        .as_ref()
}

/// Drops `link` off the event loop (inline if the thread could not start).
/// An `Err` (a link id the program no longer knows) has nothing to drop.
pub(crate) fn retire<L: Send + 'static, E>(link: Result<L, E>) {
    let Ok(link) = link else {
        return;
    };
    match reaper() {
        Some(send) => {
            if let Err(mpsc::SendError(link)) = send.send(Box::new(link)) {
                drop(link);
            }
        }
        None => drop(link),
    }
}
