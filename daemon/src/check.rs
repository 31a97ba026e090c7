//! `gapscoped check`: what this host supports, and the fix for what it
//! does not. Exits non-zero when the core (syscall and scheduler tracing)
//! cannot run.

use std::path::Path;

use crate::bpf::{self, caps};

struct Item {
    name: &'static str,
    ok: bool,
    /// The core cannot run without this.
    core: bool,
    detail: String,
    fix: &'static str,
}

/// Runs every check, prints a table and returns whether the core can run.
pub fn run() -> bool {
    let mut items = vec![
        kernel(),
        btf(),
        tracefs(),
        capabilities(),
        bpf_syscall(),
        ring_buffer(),
        perf_event(),
        uprobes(),
        nvml(),
    ];
    // Loading the real programs is the check that settles everything else.
    if items.iter().all(|i| i.ok || !i.core) {
        items.push(programs());
    }
    let core_ok = items.iter().all(|i| i.ok || !i.core);
    for i in &items {
        let status = if i.ok { "OK" } else { "MISSING" };
        println!("{status:<8} {:<16} {}", i.name, i.detail);
        if !i.ok {
            let weight = if i.core { "required" } else { "optional" };
            println!("{:<8} {:<16} ({weight}) fix: {}", "", "", i.fix);
        }
    }
    if core_ok {
        println!("\ngapscoped can run on this host.");
    } else {
        println!("\ngapscoped cannot run on this host until the required items above are fixed.");
    }
    core_ok
}

/// `gapscoped check --pid PID`: what GIL tracing finds in one process.
/// Returns whether its GIL can be traced.
pub fn process(pid: u32) -> bool {
    use crate::python::{gil, interpreter::Finder, memory};
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map(|b| {
        String::from_utf8_lossy(&b)
            .replace('\0', " ")
            .trim()
            .to_string()
    });
    let Ok(cmdline) = cmdline else {
        println!("MISSING  process          no process {pid}");
        return false;
    };
    println!("pid {pid}: {cmdline}");
    cuda(pid);
    let interp = match Finder::default().find(pid) {
        Ok(i) => i,
        Err(why) => {
            println!("MISSING  interpreter      {why}");
            return false;
        }
    };
    println!(
        "OK       interpreter      CPython {}.{} in {} (_PyRuntime at {:#x})",
        interp.version.0,
        interp.version.1,
        interp.path.display(),
        interp.runtime_addr
    );
    match gil::locate(pid, &interp) {
        Ok((addr, offsets)) => {
            let mut state = [0u8; 16];
            let detail = match memory::read(pid, addr + offsets.locked, &mut state) {
                Ok(()) => format!(
                    "at {addr:#x}: locked={}, switch_number={}",
                    i32::from_ne_bytes(state[0..4].try_into().unwrap_or_default()),
                    u64::from_ne_bytes(state[8..16].try_into().unwrap_or_default())
                ),
                Err(e) => format!("at {addr:#x}, but its memory is unreadable: {e}"),
            };
            println!("OK       gil              {detail}");
            serialization(pid, &interp.path);
            true
        }
        Err(why) => {
            println!("MISSING  gil              {why}");
            false
        }
    }
}

/// Which CUDA libraries a process maps and which probed entry points
/// each exports.
fn cuda(pid: u32) {
    use crate::{
        cuda::{ENTRY_POINTS, Library},
        locate::symbol_groups,
    };
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut files: Vec<(Library, &str)> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .flat_map(|p| {
            Library::ALL
                .into_iter()
                .filter(|l| l.is(p))
                .map(move |l| (l, p))
        })
        .collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        println!(
            "-        cuda             no libcuda or libcudart mapped (yet: CUDA loads on first use)"
        );
    }
    let groups: Vec<&[&str]> = ENTRY_POINTS.iter().map(|e| e.symbols).collect();
    for (library, file) in files {
        let label = format!("cuda {}", library.api());
        let found = std::fs::read(format!("/proc/{pid}/root{file}"))
            .map_err(|e| e.to_string())
            .and_then(|data| symbol_groups(&data, &groups));
        match found {
            Ok(offsets) => {
                let names: Vec<&str> = ENTRY_POINTS
                    .iter()
                    .zip(&offsets)
                    .filter(|(e, o)| e.library == library && !o.is_empty())
                    .map(|(e, _)| e.name)
                    .collect();
                let status = if names.is_empty() { "MISSING" } else { "OK" };
                println!("{status:<8} {label:<16} {file}: {}", names.join(", "));
            }
            Err(why) => println!("MISSING  {label:<16} {file}: {why}"),
        }
    }
}

/// Which codec functions `check --pid` can find in a process.
fn serialization(pid: u32, interpreter: &std::path::Path) {
    use crate::python::serialization::{default_specs, resolve};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    for spec in default_specs() {
        let (file, module) = spec.file(&maps, interpreter);
        let label = format!("{} {}", spec.codec, spec.op);
        if !module && spec.builtin_init.is_none() {
            println!(
                "-        {label:<16} not loaded (no {}*.so mapped)",
                spec.module
            );
            continue;
        }
        let found = std::fs::read(format!("/proc/{pid}/root{file}"))
            .map_err(|e| e.to_string())
            .and_then(|data| resolve(&data, &spec.locate));
        match found {
            Ok(offsets) => println!(
                "OK       {label:<16} {file}: {} at {}",
                spec.locate,
                offsets
                    .iter()
                    .map(|o| format!("{o:#x}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(why) => {
                let fix = match spec.builtin_init {
                    Some(_) => {
                        "install the interpreter's debug symbols or use a build that keeps them"
                    }
                    None => "set a [[python.probe]] naming this release's function",
                };
                println!("MISSING  {label:<16} {file}: {why}; fix: {fix}");
            }
        }
    }
}

/// NVML: whether the GPU telemetry collector can run.
fn nvml() -> Item {
    use nvml_wrapper::Nvml;
    let (ok, detail) = match Nvml::init() {
        Ok(n) => (
            true,
            format!(
                "{} GPU(s), driver {}",
                n.device_count().unwrap_or(0),
                n.sys_driver_version().unwrap_or_default()
            ),
        ),
        Err(e) => (false, crate::nvml::collector::explain(&e)),
    };
    Item {
        name: "nvml",
        ok,
        core: false,
        detail,
        fix: "install the NVIDIA driver so nvidia-smi works; the GPU metrics and the idle check need it",
    }
}

fn kernel() -> Item {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Item {
        name: "kernel",
        ok: (major, minor) >= (5, 8),
        core: true,
        detail: format!("Linux {release} (5.8 or newer needed: BPF ring buffers)"),
        fix: "upgrade the kernel to 5.8 or newer",
    }
}

fn btf() -> Item {
    file_item(
        "btf",
        "/sys/kernel/btf/vmlinux",
        ("/sys/kernel/btf/vmlinux present", "no kernel BTF"),
        "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
    )
}

/// An optional feature the kernel shows as a file: present or not.
fn file_item(
    name: &'static str,
    path: &str,
    (present, absent): (&str, &str),
    fix: &'static str,
) -> Item {
    let ok = Path::new(path).exists();
    Item {
        name,
        ok,
        core: false,
        detail: if ok { present } else { absent }.into(),
        fix,
    }
}

fn tracefs() -> Item {
    match bpf::tracefs::find() {
        Some(p) => {
            let offsets = bpf::tracefs::verify_offsets(&p);
            Item {
                name: "tracefs",
                ok: offsets.is_ok(),
                core: true,
                detail: match offsets {
                    Ok(()) => format!(
                        "mounted at {}; tracepoint record layouts match",
                        p.display()
                    ),
                    Err(e) => format!("{e:#}"),
                },
                fix: "rebuild gapscoped for this kernel's tracepoint layouts",
            }
        }
        None => {
            let can_mount = caps::has(caps::CAP_SYS_ADMIN);
            Item {
                name: "tracefs",
                ok: can_mount,
                core: true,
                detail: if can_mount {
                    "not mounted; gapscoped mounts it at /sys/kernel/tracing when it starts".into()
                } else {
                    "not mounted, and gapscoped lacks CAP_SYS_ADMIN to mount it".into()
                },
                fix: "mount -t tracefs nodev /sys/kernel/tracing",
            }
        }
    }
}

fn capabilities() -> Item {
    let held: Vec<&str> = [
        (caps::CAP_BPF, "CAP_BPF"),
        (caps::CAP_PERFMON, "CAP_PERFMON"),
        (caps::CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (caps::CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .iter()
    .filter(|(c, _)| caps::has(*c))
    .map(|(_, n)| *n)
    .collect();
    Item {
        name: "capabilities",
        ok: caps::can_trace(),
        core: true,
        detail: if held.is_empty() {
            "none of CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_SYS_ADMIN".into()
        } else {
            format!("held: {}", held.join(", "))
        },
        fix: "run as root or grant CAP_BPF and CAP_PERFMON (and CAP_SYS_PTRACE for other users' processes)",
    }
}

/// bpf(BPF_MAP_CREATE) with the given type; Ok when the kernel accepts it.
fn create_map(map_type: u32, key: u32, value: u32, entries: u32) -> std::io::Result<()> {
    let mut attr = [0u32; 32];
    attr[0] = map_type;
    attr[1] = key;
    attr[2] = value;
    attr[3] = entries;
    // SAFETY: attr is a zeroed union bpf_attr prefix of the right size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0, /* BPF_MAP_CREATE */
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned to us.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

fn bpf_syscall() -> Item {
    let r = create_map(2 /* BPF_MAP_TYPE_ARRAY */, 4, 4, 1);
    Item {
        name: "bpf()",
        ok: r.is_ok(),
        core: true,
        detail: match r {
            Ok(()) => "maps can be created".into(),
            Err(e) => format!("BPF_MAP_CREATE failed: {e}"),
        },
        fix: "run with CAP_BPF; if it still fails, check kernel.unprivileged_bpf_disabled and seccomp/LSM policy",
    }
}

fn ring_buffer() -> Item {
    let r = create_map(27 /* BPF_MAP_TYPE_RINGBUF */, 0, 0, 4096);
    Item {
        name: "ring buffer",
        ok: r.is_ok(),
        core: true,
        detail: match r {
            Ok(()) => "BPF_MAP_TYPE_RINGBUF supported".into(),
            Err(e) => format!("creating a ring buffer failed: {e}"),
        },
        fix: "use a kernel of 5.8 or newer",
    }
}

fn perf_event() -> Item {
    // struct perf_event_attr: type, size, config, ..., flags at byte 40.
    let mut attr = [0u64; 16];
    attr[0] = 1 /* PERF_TYPE_SOFTWARE */ | ((std::mem::size_of_val(&attr) as u64) << 32);
    attr[1] = 0; // PERF_COUNT_SW_CPU_CLOCK
    attr[5] = 1 | (1 << 5) | (1 << 6); // disabled, exclude_kernel, exclude_hv
    // SAFETY: attr is a valid perf_event_attr of the size it claims.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0) };
    let r = if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // SAFETY: fd was just returned to us.
        unsafe { libc::close(fd as i32) };
        Ok(())
    };
    Item {
        name: "perf_event_open",
        ok: r.is_ok(),
        core: true,
        detail: match r {
            Ok(()) => "available".into(),
            Err(e) => format!("failed: {e}"),
        },
        fix: "grant CAP_PERFMON, or lower kernel.perf_event_paranoid",
    }
}

fn uprobes() -> Item {
    file_item(
        "uprobes",
        "/sys/bus/event_source/devices/uprobe/type",
        (
            "uprobe PMU present (for GIL, serialization and CUDA probes)",
            "no uprobe PMU",
        ),
        "use a kernel built with CONFIG_UPROBE_EVENTS=y",
    )
}

fn programs() -> Item {
    let r = bpf::attach_all(u64::MAX);
    Item {
        name: "programs",
        ok: r.is_ok(),
        core: true,
        detail: match r {
            Ok(_) => format!(
                "all {} programs load and attach (detached again)",
                bpf::PROGRAMS.len()
            ),
            Err(e) => format!("{e:#}"),
        },
        fix: "see the error above; run gapscoped with RUST_LOG=debug for the verifier log",
    }
}
