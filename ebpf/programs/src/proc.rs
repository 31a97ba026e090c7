//! Following processes: a traced process's children are traced from their
//! first instruction (added here, in the kernel); execs are reported so user
//! space can match new processes against the configuration; exits clean up
//! so dead tgids and threads leave the maps.

use aya_ebpf::{EbpfContext, macros::tracepoint, programs::TracePointContext};
use gapscope_ebpf_common::{
    NO_SERVICE, ProcEvent, counter, proc_event,
    tp_offsets::{NEWTASK_CLONE_FLAGS, NEWTASK_PID},
};

use crate::maps::{
    PROC_EVENTS, TARGETS, THREADS, bump, bump_kernel_generation, current_ids, service_of,
};

const CLONE_THREAD: u64 = 0x0001_0000;

/// `task_newtask` rather than `sched_process_fork`: it carries the clone
/// flags, so a new thread (same tgid, nothing to add) is told apart from a
/// new process.
#[tracepoint(category = "task", name = "task_newtask")]
pub fn gs_task_newtask(ctx: TracePointContext) -> i32 {
    let (parent_tgid, _) = current_ids();
    let Some(service) = service_of(parent_tgid) else {
        return 0;
    };
    // SAFETY: direct reads of the tracepoint record at format offsets.
    let (child, flags) = unsafe {
        let base = ctx.as_ptr() as *const u8;
        (
            *(base.add(NEWTASK_PID) as *const i32) as u32,
            *(base.add(NEWTASK_CLONE_FLAGS) as *const u64),
        )
    };
    if flags & CLONE_THREAD != 0 {
        // A new thread of a traced process: nothing to add, but its kernel
        // stack may be a dead thread's that a CPU still remembers.
        bump_kernel_generation();
        return 0;
    }
    if TARGETS.insert(&child, &service, 0).is_err() {
        bump(counter::TARGETS_DROPPED, 1);
    }
    bump_kernel_generation();
    send(proc_event::FORK, child, parent_tgid, service);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn gs_process_exec(_ctx: TracePointContext) -> i32 {
    // After exec the caller is its process's only thread, and its tid is
    // the tgid.
    let (tgid, _) = current_ids();
    let service = service_of(tgid).unwrap_or(NO_SERVICE);
    send(proc_event::EXEC, tgid, 0, service);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn gs_process_exit(_ctx: TracePointContext) -> i32 {
    let (tgid, tid) = current_ids();
    // Threads of untraced processes have no entry; deleting costs one lookup.
    let _ = THREADS.remove(&tid);
    let Some(service) = service_of(tgid) else {
        return 0;
    };
    if tid == tgid {
        let _ = TARGETS.remove(&tgid);
    }
    // The thread's kernel stack (and so its pt_regs address) will be
    // reused; no CPU may keep believing that address is traced.
    bump_kernel_generation();
    if tid != tgid {
        return 0;
    }
    send(proc_event::EXIT, tgid, 0, service);
    0
}

#[inline(always)]
fn send(kind: u32, tgid: u32, parent_tgid: u32, service: u32) {
    match PROC_EVENTS.reserve::<ProcEvent>(0) {
        Some(mut entry) => {
            entry.write(ProcEvent {
                kind,
                tgid,
                parent_tgid,
                service,
            });
            entry.submit(0);
            bump(counter::PROC_EVENTS, 1);
        }
        None => bump(counter::PROC_EVENTS_DROPPED, 1),
    }
}
