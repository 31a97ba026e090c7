#!/usr/bin/env python3
"""gapscoped under a real systemd: boots a minimal Debian 12 tree (made
once with mmdebstrap, cached in /var/cache/gapscope) as PID 1 of a
systemd-nspawn container, installs the project's .deb in it and checks the
unit end to end: readiness only after the programs are attached, the
sandbox still attaching and finding another user's process, journald's fields,
the watchdog catching a hung daemon, Restart=on-failure after SIGKILL,
`systemctl reload` (a new service applied, a broken file refused),
nothing attached once `systemctl stop` returns (its time reported), and a purge that leaves
nothing behind. Writes one JSON result (--out) and prints a line per check.

Exit status: 0 every check passed, 1 one failed, 77 the check cannot run
on this host (the reason is printed after "SKIP:").

`systemctl reload` applies a new service in the same process, and a
broken file is refused with the running configuration kept.

Not covered: exact counts of a traced process: the container's PID namespace is not
the host's (gapscoped logs that it cannot match processes there), so
those are counted by daemon/tests/systemd.rs with the unit's capabilities
outside a container.
"""

import argparse
import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREE = "/var/cache/gapscope/nspawn-bookworm-1"
PACKAGES = "systemd,systemd-sysv,dbus,util-linux,procps"
KEPT_CAPS = (1 << 2) | (1 << 19) | (1 << 21) | (1 << 38) | (1 << 39)


def skip(why):
    print(f"SKIP: {why}", flush=True)
    sys.exit(77)


class Result:
    def __init__(self):
        self.checks = []

    def check(self, name, ok, value, why=""):
        self.checks.append({"name": name, "pass": bool(ok), "value": value, "why": why})
        mark = "PASS" if ok else "FAIL"
        print(f"  {mark} {name}: {value}" + (f" — {why}" if why and not ok else ""), flush=True)
        return ok


def run(argv, timeout=120, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def build_tree():
    """The cached Debian tree; made once (about 20 s and 210 MB)."""
    if os.path.isfile(os.path.join(TREE, "usr/lib/systemd/systemd")):
        return
    if not shutil.which("mmdebstrap"):
        skip("mmdebstrap is missing (apt-get install mmdebstrap; scripts/setup.sh does)")
    tmp = TREE + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(TREE), exist_ok=True)
    p = run(["mmdebstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", tmp,
             "http://deb.debian.org/debian"], timeout=900)
    if p.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        skip(f"mmdebstrap could not make a Debian tree (no archive?): {p.stderr.strip()[-300:]}")
    os.rename(tmp, TREE)


class Container:
    """A booted copy of the tree; `sh` runs a command in it."""

    def __init__(self, tree, log):
        self.tree = tree
        self.name = f"gapscope-check-{os.getpid()}"
        self.log = open(log, "w")
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "-D", tree, "--boot", "--register=no", "--keep-unit",
             f"--machine={self.name}", "--capability=all", "--console=passive",
             "--system-call-filter=bpf perf_event_open",
             "--bind=/sys/kernel/tracing", "--bind=/sys/fs/bpf"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.nspawn.poll() is None:
            children = run(["pgrep", "-P", str(self.nspawn.pid)]).stdout.split()
            if children:
                self.pid = int(children[0])
                state = self.sh("systemctl is-system-running 2>/dev/null || true").stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.5)
        self.stop()
        skip(f"systemd did not boot in the container within 60 s (see {log})")

    def sh(self, script, timeout=60, stdin=None):
        return subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "--",
                               "/bin/sh", "-c", script],
                              capture_output=True, text=True, timeout=timeout, input=stdin)

    def popen(self, script):
        return subprocess.Popen(["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "--",
                                 "/bin/sh", "-c", script],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def stop(self):
        if self.nspawn.poll() is None:
            self.nspawn.terminate()  # nspawn asks the container's systemd to power off
            try:
                self.nspawn.wait(60)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait()
        self.log.close()


def our_programs(ids=None):
    """Ids of loaded BPF programs that are gapscoped's (gs_*), or of those
    among `ids`, through bpf(2): BPF_PROG_GET_NEXT_ID,
    BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD."""
    libc = ctypes.CDLL(None, use_errno=True)
    nr_bpf = 321  # x86-64

    def bpf(cmd, attr):
        return libc.syscall(nr_bpf, cmd, ctypes.byref(attr), ctypes.sizeof(attr))

    names, next_id = [], 0
    while True:
        attr = (ctypes.c_uint32 * 4)(next_id, 0, 0, 0)
        if bpf(11, attr) != 0:  # no more programs
            return names
        next_id = attr[1]
        attr = (ctypes.c_uint32 * 4)(next_id, 0, 0, 0)
        fd = bpf(13, attr)
        if fd < 0:
            continue
        info = (ctypes.c_uint8 * 256)()
        get = (ctypes.c_uint64 * 2)(fd | (256 << 32), ctypes.addressof(info))
        if bpf(15, get) == 0:
            name = bytes(info[64:80]).split(b"\0")[0].decode(errors="replace")
            if name.startswith("gs_") and (ids is None or next_id in ids):
                names.append(next_id)
        os.close(fd)


def scrape(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def metric(text, name, labels):
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait(what, test, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = test()
        if value:
            return value
        time.sleep(0.1)
    return None


def logged_program_ids(c):
    """The BPF program ids the running daemon logged as attached."""
    pid = show(c, "MainPID")
    text = c.sh(f"journalctl _PID={pid} -o cat --no-pager").stdout
    return {int(w.split(")")[0]) for w in text.split("BPF program id ")[1:]
            if w.split(")")[0].isdigit()}


def show(c, prop):
    return c.sh(f"systemctl show -p {prop} --value gapscoped").stdout.strip()


def journal(c):
    out = c.sh("journalctl -u gapscoped -o json --no-pager").stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def checks(c, result, port):
    sh = c.sh
    p = sh("dpkg -i /root/gapscope.deb 2>&1")
    result.check("install", p.returncode == 0 and "not found" not in p.stdout,
                 f"dpkg -i exit {p.returncode}", p.stdout[-500:])
    result.check("enabled_not_started",
                 (sh("systemctl is-enabled gapscoped").stdout.strip(),
                  sh("systemctl is-active gapscoped").stdout.strip()) == ("enabled", "inactive"),
                 sh("systemctl is-enabled gapscoped; systemctl is-active gapscoped").stdout.split())
    sh(f"""cat > /etc/gapscope/gapscoped.toml <<EOF
[daemon]
listen = "127.0.0.1:{port}"
[[service]]
name = "probe"
cmdline = "gapscope-workload .*--tag systemd-check"
EOF""")

    # Type=notify: `systemctl start` returns once READY=1 came, and that is
    # after every program was attached and the port was serving.
    p = sh("systemctl start gapscoped", timeout=90)
    attached_now = set(our_programs())
    healthy = False
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            healthy = r.status == 200
    except OSError:
        pass
    ids = wait("the attach lines", lambda: logged_program_ids(c), 10) or set()
    result.check("start_ready_after_attach",
                 p.returncode == 0 and healthy and len(ids) >= 8 and ids <= attached_now,
                 f"start exit {p.returncode}; when it returned, {len(ids & attached_now)} of the "
                 f"{len(ids)} programs it logged were attached and /healthz "
                 f"{'answered 200' if healthy else 'did not answer'}",
                 p.stderr)

    pid = show(c, "MainPID")
    status = sh(f"cat /proc/{pid}/status").stdout
    field = lambda k: next((l.split(":", 1)[1].strip() for l in status.splitlines() if l.startswith(k)), "")
    eff = int(field("CapEff") or "0", 16)
    result.check("sandbox_capabilities", eff == KEPT_CAPS and field("NoNewPrivs") == "1",
                 f"CapEff {eff:#x} (expected {KEPT_CAPS:#x}), NoNewPrivs {field('NoNewPrivs')}")

    # Another user's process, found through /proc from inside the sandbox.
    # Its syscalls are not counted here: the container has a PID namespace
    # of its own, the BPF programs see the host's pids, and gapscoped says
    # so (it must run in the host's: daemon/tests/systemd.rs counts them
    # exactly with the unit's capabilities outside a container).
    n = 1000
    w = c.popen(f"exec setpriv --reuid=65534 --regid=65534 --clear-groups "
                f"/usr/local/bin/gapscope-workload syscalls --getppid {n} --tag systemd-check")
    ready = w.stdout.readline().strip()
    seen = wait("probe traced", lambda: metric(scrape(port), "gapscope_service_processes",
                                               {"service": "probe"}) == 1.0, 20)
    w.stdin.write("go\n")
    w.stdin.flush()
    while True:
        line = w.stdout.readline()
        if not line or line.strip() == "done":
            break
    counted = metric(scrape(port), "gapscope_syscall_duration_seconds_count",
                     {"service": "probe", "syscall": "getppid"})
    w.stdin.close()
    w.wait(10)
    log = sh("journalctl -u gapscoped --no-pager -o cat").stdout
    warned = "runs in a PID namespace of its own" in log
    result.check("finds_another_users_process", ready.startswith("ready") and bool(seen) and warned,
                 f"uid 65534's process {'matched' if seen else 'not matched'} through /proc; "
                 f"the PID namespace {'named' if warned else 'not named'} in the log "
                 f"({counted:.0f} of {n} syscalls counted: pids differ in a container)",
                 log[-1500:])

    entries = journal(c)
    warn = [e for e in entries if "NVML collector down" in str(e.get("MESSAGE", ""))]
    info = [e for e in entries if "programs attached" in str(e.get("MESSAGE", ""))]
    fields_ok = bool(warn and info) and all(
        e.get("_SYSTEMD_UNIT") == "gapscoped.service" and e.get("SYSLOG_IDENTIFIER") == "gapscoped"
        and e.get("_PID") for e in warn + info)
    result.check("journal_fields",
                 fields_ok and warn[-1].get("PRIORITY") == "4" and info[-1].get("PRIORITY") == "6"
                 and not str(info[-1]["MESSAGE"]).startswith("["),
                 f"PRIORITY warn={warn[-1].get('PRIORITY') if warn else None} "
                 f"info={info[-1].get('PRIORITY') if info else None}, unit and pid fields "
                 f"{'present' if fields_ok else 'missing'}")

    # The watchdog: a hung event loop stops its WATCHDOG=1 pings.
    sh("mkdir -p /etc/systemd/system/gapscoped.service.d && printf '[Service]\\nWatchdogSec=3s\\n"
       "Environment=GAPSCOPE_TEST_HOOKS=1\\n' > /etc/systemd/system/gapscoped.service.d/check.conf "
       "&& systemctl daemon-reload && systemctl restart gapscoped", timeout=90)
    before = show(c, "MainPID")
    restarts = int(show(c, "NRestarts") or 0)
    sh(f"kill -USR2 {before}")
    after = wait("watchdog restart", lambda: (show(c, "MainPID") not in ("0", before)
                                             and sh("systemctl is-active gapscoped").stdout.strip() == "active"
                                             and show(c, "MainPID")), 40)
    timeout_logged = "Watchdog timeout" in sh("journalctl -u gapscoped --no-pager").stdout
    result.check("watchdog_restarts_a_hung_daemon",
                 bool(after) and timeout_logged and int(show(c, "NRestarts") or 0) > restarts,
                 f"pid {before} hung, pid {after} running, watchdog timeout "
                 f"{'logged' if timeout_logged else 'not logged'}")
    sh("rm -rf /etc/systemd/system/gapscoped.service.d && systemctl daemon-reload "
       "&& systemctl restart gapscoped", timeout=90)

    before = show(c, "MainPID")
    sh("systemctl kill -s SIGKILL --kill-whom=main gapscoped")
    after = wait("restart after SIGKILL", lambda: (show(c, "MainPID") not in ("0", before)
                                                  and sh("systemctl is-active gapscoped").stdout.strip() == "active"
                                                  and show(c, "MainPID")), 30)
    result.check("restarts_after_sigkill", bool(after), f"pid {before} killed, pid {after} running")

    # `systemctl reload` (ExecReload sends SIGHUP): a new service applies
    # at once, in the same process; a broken file is refused, the running
    # configuration kept, and the journal says why.
    before = show(c, "MainPID")
    good = sh("cat /etc/gapscope/gapscoped.toml").stdout
    sh("cat >> /etc/gapscope/gapscoped.toml <<EOF\n[[service]]\nname = \"reloaded\"\n"
       "cmdline = \"nothing-here\"\nEOF")
    p = sh("systemctl reload gapscoped", timeout=30)
    applied = wait("reload applied", lambda: 'service="reloaded"' in scrape(port), 10)
    said = "services added: reloaded" in sh("journalctl -u gapscoped --no-pager -o cat").stdout
    result.check("reload_applies_the_config",
                 p.returncode == 0 and bool(applied) and said and show(c, "MainPID") == before,
                 f"systemctl reload exit {p.returncode}; the new service "
                 f"{'in' if applied else 'not in'} /metrics; pid {before} "
                 f"{'kept' if show(c, 'MainPID') == before else 'changed'}")
    sh("printf '[daemon]\\nlisten = = broken\\n' > /etc/gapscope/gapscoped.toml")
    p = sh("systemctl reload gapscoped", timeout=30)
    refused = wait("reload refused", lambda: metric(scrape(port), "gapscope_config_reloads_total",
                                                    {"result": "failure"}) >= 1, 10)
    said = "keeping the running configuration" in sh("journalctl -u gapscoped --no-pager -o cat").stdout
    still = ('service="reloaded"' in scrape(port)
             and sh("systemctl is-active gapscoped").stdout.strip() == "active")
    result.check("bad_reload_keeps_the_config",
                 bool(refused) and said and still and show(c, "MainPID") == before,
                 f"refused {'and said why' if said else 'silently'}; "
                 f"{'still serving the old configuration' if still else 'lost its configuration'}")
    sh(f"cat > /etc/gapscope/gapscoped.toml <<'EOF'\n{good}EOF")

    # A client trickling a request head holds a connection through the
    # stop: it is dropped after the shutdown grace, not waited for.
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    # This daemon's programs, by the ids it logged (another gapscoped on
    # the host has its own).
    ids = logged_program_ids(c)
    loaded = len(our_programs(ids))
    t = time.monotonic()
    sh("systemctl stop gapscoped", timeout=30)
    took = time.monotonic() - t
    # Ground truth, not a clock: when `systemctl stop` returns the process
    # has exited, and by then every program of it is gone; the slow client
    # was dropped, not waited for. The time is reported, not judged (the
    # issue's 1 s target; a loaded machine may take longer).
    left = our_programs(ids)
    slow.settimeout(5)
    try:
        dropped = slow.recv(1) == b""
    except OSError:
        dropped = True
    slow.close()
    result.check("stop_detaches", loaded > 0 and not left and dropped,
                 f"{loaded} programs attached before stop, {len(left)} when it returned "
                 f"after {took:.2f} s; the slow client {'dropped' if dropped else 'still open'}")

    p = sh("dpkg --purge gapscope 2>&1")
    left = sh("ls -d /usr/bin/gapscoped /usr/bin/gapscope-loadgen /usr/lib/gapscope /etc/gapscope "
              "/usr/lib/systemd/system/gapscoped.service /lib/systemd/system/gapscoped.service "
              "/etc/systemd/system/multi-user.target.wants/gapscoped.service "
              "/usr/share/gapscope /usr/share/doc/gapscope 2>/dev/null").stdout.split()
    known = sh("systemctl cat gapscoped >/dev/null 2>&1 && echo known || echo unknown").stdout.strip()
    result.check("purge_leaves_nothing", p.returncode == 0 and not left and known == "unknown",
                 f"purge exit {p.returncode}, left: {left or 'nothing'}, unit {known}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deb", help="the package to install (default: cargo deb from the debug build)")
    ap.add_argument("--bin-dir", default=os.environ.get("GAPSCOPE_BIN_DIR",
                                                        os.path.join(ROOT, "target/debug")))
    ap.add_argument("--out", default="systemd-check.json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        skip("booting a container takes root: run it with sudo")
    for tool in ("systemd-nspawn", "nsenter"):
        if not shutil.which(tool):
            skip(f"{tool} is missing (apt-get install systemd-container; scripts/setup.sh does)")
    if not os.path.isdir("/sys/kernel/tracing/events"):
        skip("tracefs is not mounted at /sys/kernel/tracing")
    build_tree()
    work = tempfile.mkdtemp(prefix="gapscope-systemd-", dir="/var/tmp")
    started = time.monotonic()
    result = Result()
    c = None
    try:
        tree = os.path.join(work, "root")
        subprocess.run(["cp", "-a", "--reflink=auto", TREE, tree], check=True)
        deb = args.deb
        if not deb:
            deb = os.path.join(work, "gapscope.deb")
            subprocess.run(["cargo", "deb", "-p", "gapscoped", "--no-build", "--profile", "dev",
                            "--fast", "-o", deb], check=True, cwd=ROOT, capture_output=True)
        shutil.copy(deb, os.path.join(tree, "root/gapscope.deb"))
        os.makedirs(os.path.join(tree, "usr/local/bin"), exist_ok=True)
        shutil.copy(os.path.join(args.bin_dir, "gapscope-workload"),
                    os.path.join(tree, "usr/local/bin/gapscope-workload"))
        print("## a real systemd in a container", flush=True)
        c = Container(tree, os.path.join(work, "console.log"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        checks(c, result, port)
    finally:
        if c:
            c.stop()
        shutil.rmtree(work, ignore_errors=True)
    ok = all(ch["pass"] for ch in result.checks)
    doc = {"schema": "gapscope-systemd-check/1", "pass": ok,
           "seconds": round(time.monotonic() - started, 1), "checks": result.checks,
           "not_covered": ["exact counts inside the container: its PID namespace is not the host's",
                           "sections other than [[service]] on reload: they take a restart, and the journal says which"]}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    failed = [ch["name"] for ch in result.checks if not ch["pass"]]
    print(f"\n{len(result.checks) - len(failed)} of {len(result.checks)} checks passed"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; written to {args.out}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
