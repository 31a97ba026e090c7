#!/usr/bin/env python3
"""Writes Gapscope's Grafana dashboards (grafana/dashboards/*.json).

The dashboards are generated so every panel follows the same rules: the
datasource variable, a unit, a description, `$__rate_interval` in every
rate, and labels filtered by the instance/service/GPU variables. Edit the
panel lists below and run `grafana/generate.py`; the tests run it with
`--check` and fail when the JSON in the repository is out of date, then
prove every query against a real Prometheus scraping a real gapscoped.

Usage: grafana/generate.py [--check]
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "grafana" / "dashboards"
# The same dashboards as a ConfigMap for Grafana's dashboard sidecar
# (kustomize may not read files outside deploy/kubernetes).
CONFIGMAP = ROOT / "deploy" / "kubernetes" / "grafana-dashboards.yaml"
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
SVC = 'instance=~"$instance", service=~"$service"'
INST = 'instance=~"$instance"'
GPU = 'instance=~"$instance", gpu=~"$gpu"'
# The load generator's own metrics (`--metrics-listen`): its host is a
# variable of its own, since it rarely runs where gapscoped does.
CLIENT = 'instance=~"$client"'


def panel(title, unit, description, *targets, kind="timeseries", stack=False, legend="table", minimum=None):
    """One panel. Each target is (expr, legend)."""
    defaults = {"unit": unit}
    if minimum is not None:
        defaults["min"] = minimum
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [
            {"datasource": DS, "expr": expr, "legendFormat": leg, "refId": chr(ord("A") + i), "range": True}
            for i, (expr, leg) in enumerate(targets)
        ],
    }
    if kind == "timeseries":
        custom = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
        if stack:
            custom["stacking"] = {"mode": "normal", "group": "A"}
            custom["fillOpacity"] = 60
        p["fieldConfig"]["defaults"]["custom"] = custom
        p["options"] = {
            "legend": {"displayMode": legend, "placement": "bottom", "showLegend": True,
                       "calcs": ["mean", "max"] if legend == "table" else []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    return p


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def quantile(q, metric, labels, by):
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{labels}}}[{RI}])))"


def variable_query(name, label, query, multi=True, hide=0):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "definition": query,
        "refresh": 2,
        "multi": multi,
        "includeAll": multi,
        "allValue": ".*" if multi else None,
        "current": {},
        "sort": 1,
        "hide": hide,
    }


def templating(extra=()):
    return {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1},
        variable_query("instance", "Host", "label_values(gapscope_build_info, instance)"),
        *extra,
    ]}


SERVICE_VAR = variable_query("service", "Service", 'label_values(gapscope_service_processes{instance=~"$instance"}, service)')
GPU_VAR = variable_query("gpu", "GPU", 'label_values(gapscope_gpu_utilization_ratio{instance=~"$instance"}, gpu)')
CLIENT_VAR = variable_query("client", "Load generator", "label_values(gapscope_client_info, instance)")

PHASES = {
    "builtIn": 0,
    "datasource": DS,
    "enable": True,
    "expr": 'max by (phase, kind) (gapscope_loadgen_phase_active{instance=~"$instance"}) == 1',
    "iconColor": "rgba(255, 152, 48, 0.6)",
    "name": "Load generator phases",
    "step": "1s",
    "titleFormat": "{{phase}}",
    "textFormat": "{{kind}} phase (gapscope-loadgen)",
    "useValueForTime": False,
}


def dashboard(uid, title, description, panels, variables=(), tags=()):
    """Lays panels out two to a row (rows full width) and numbers them."""
    x, y, next_id = 0, 0, 1
    laid = []
    for p in panels:
        p = dict(p)
        p["id"] = next_id
        next_id += 1
        if p["type"] == "row":
            if x:
                x, y = 0, y + 8
            p["gridPos"] = {"h": 1, "w": 24, "x": 0, "y": y}
            y += 1
        else:
            w = 6 if p["type"] == "stat" else 12
            if x + w > 24:
                x, y = 0, y + (8 if p["type"] != "stat" else 4)
            p["gridPos"] = {"h": 4 if p["type"] == "stat" else 8, "w": w, "x": x, "y": y}
            x += w
        laid.append(p)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["gapscope", *tags],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "time": {"from": "now-30m", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": [PHASES]},
        "links": [{"type": "dashboards", "tags": ["gapscope"], "asDropdown": True, "title": "Gapscope"}],
        "templating": templating(variables),
        "panels": laid,
        "version": 1,
    }


GPU_TELEMETRY = dashboard(
    "gapscope-gpu",
    "Gapscope / GPU telemetry",
    "NVML readings per GPU with the load generator's phases: the published comparison's graphs, live.",
    [
        row("Utilization and power"),
        panel("GPU utilization", "percentunit", "Share of the last sample period in which a kernel ran (NVML); the load generator's phases are shaded.",
              (f"gapscope_gpu_utilization_ratio{{{GPU}}}", "GPU {{gpu}} {{modelName}}"), minimum=0),
        panel("Power", "watt", "Power draw and the enforced limit (NVML).",
              (f"gapscope_gpu_power_watts{{{GPU}}}", "GPU {{gpu}}"),
              (f"gapscope_gpu_power_limit_watts{{{GPU}}}", "GPU {{gpu}} limit")),
        panel("Energy rate", "watt", "Joules per second from the total-energy counter: average power over the rate window, without sampling gaps.",
              (f"rate(gapscope_gpu_energy_joules_total{{{GPU}}}[{RI}])", "GPU {{gpu}}")),
        panel("Memory controller utilization", "percentunit", "Share of time device memory was read or written (NVML).",
              (f"gapscope_gpu_memory_utilization_ratio{{{GPU}}}", "GPU {{gpu}}"), minimum=0),
        row("Memory, clocks and bus"),
        panel("GPU memory used", "bytes", "Device memory in use and the total.",
              (f"gapscope_gpu_memory_used_bytes{{{GPU}}}", "GPU {{gpu}} used"),
              (f"gapscope_gpu_memory_total_bytes{{{GPU}}}", "GPU {{gpu}} total")),
        panel("GPU memory by service", "bytes", "Device memory held by the processes of each traced service (NVML's compute processes).",
              (f"sum by (gpu, service) (gapscope_gpu_process_memory_bytes{{{GPU}}})", "GPU {{gpu}} {{service}}"), stack=True),
        panel("Clocks", "hertz", "SM and memory clocks: a falling SM clock under load means throttling.",
              (f"gapscope_gpu_sm_clock_hertz{{{GPU}}}", "GPU {{gpu}} SM"),
              (f"gapscope_gpu_memory_clock_hertz{{{GPU}}}", "GPU {{gpu}} memory")),
        panel("Temperature", "celsius", "GPU temperature.",
              (f"gapscope_gpu_temperature_celsius{{{GPU}}}", "GPU {{gpu}}")),
        panel("PCIe throughput", "Bps", "Host-device traffic over PCIe by direction (NVML, a 20 ms sample).",
              (f"gapscope_gpu_pcie_throughput_bytes_per_second{{{GPU}}}", "GPU {{gpu}} {{direction}}")),
        panel("Throttle reasons", "short", "1 while NVML reports the reason; gpu_idle is the GPU itself saying it has nothing to do.",
              (f"gapscope_gpu_throttle_reason{{{GPU}}} == 1", "GPU {{gpu}} {{reason}}"), minimum=0),
        row("Silent phases"),
        panel("Idle check of silent phases", "short", "1 when the GPU was really idle during the load generator's last silent phase (utilization ≤ 1 %, power near the idle baseline), 0 when something kept it busy.",
              (f"gapscope_gpu_idle_check_idle{{{GPU}}}", "GPU {{gpu}} {{phase}}"), kind="stat"),
        panel("Power above idle in silent phases", "watt", "Mean power above the idle baseline during each silent phase.",
              (f"gapscope_gpu_idle_check_power_excess_watts{{{GPU}}}", "GPU {{gpu}} {{phase}}"), kind="stat"),
    ],
    variables=[GPU_VAR],
    tags=["gpu"],
)

GPU_IDLE = dashboard(
    "gapscope-gpu-idle",
    "Gapscope / GPU idle",
    "When the GPU waits, and on what: idle time by cause (the attribution), busy time from CUPTI deep mode, idle gaps between kernels, host-side syncs and launch latency.",
    [
        row("Why the GPU is idle"),
        panel("GPU idle by cause", "percentunit", "Share of wall time the GPU sat idle, split by what the service's launching threads were doing meanwhile (launch_overhead, host_sync, gil_wait, serialization, python_cpu, unobserved, runqueue, syscall_<family>, no_work). Exact with CUPTI deep mode, a lower bound from the uprobes alone. `gapscoped explain SERVICE` prints the same for a window.",
              (f"sum by (cause) (rate(gapscope_gpu_idle_seconds_total{{{SVC}}}[{RI}]))", "{{cause}}"), stack=True, minimum=0),
        panel("Busy and idle on the attribution timeline", "percentunit", "Busy and idle shares as the attribution counts them (busy + idle by cause = wall time), per device and source (cupti, or uprobes for all devices together).",
              (f"sum by (service, device, source) (rate(gapscope_gpu_timeline_busy_seconds_total{{{SVC}}}[{RI}]))", "busy {{service}} {{device}} ({{source}})"),
              (f"sum by (service, device, source) (rate(gapscope_gpu_idle_seconds_total{{{SVC}}}[{RI}]))", "idle {{service}} {{device}} ({{source}})"), minimum=0),
        panel("Idle gaps attributed per second", "ops", "Idle gaps the attribution closed, per second: many short gaps are launch overhead, few long ones a stalled host.",
              (f"sum by (service, device) (rate(gapscope_gpu_idle_gaps_total{{{SVC}}}[{RI}]))", "{{service}} {{device}}")),
        row("The client's view (gapscope-loadgen --metrics-listen)"),
        panel("Client output tokens per second by phase", "short", "Output tokens per second the load generator received, by the phase that sent the request (counted when each request ends): the throughput the GPU's idle time costs.",
              (f"sum by (phase) (rate(gapscope_client_output_tokens_total{{{CLIENT}}}[{RI}]))", "{{phase}}"), stack=True, minimum=0),
        panel("Client requests per second and in flight", "short", "Requests finished per second by phase and outcome (ok, error; errors by kind are in gapscope_client_request_errors_total), and requests in flight now.",
              (f"sum by (phase, outcome) (rate(gapscope_client_requests_total{{{CLIENT}}}[{RI}]))", "{{phase}} {{outcome}}/s"),
              (f"sum(gapscope_client_requests_in_flight{{{CLIENT}}})", "in flight"), minimum=0),
        panel("Client TTFT and E2E (p50, p99)", "s", "Time to first token and end-to-end latency as the client measured them, by phase (histograms of successful requests).",
              (quantile(0.5, "gapscope_client_ttft_seconds", CLIENT, "phase"), "TTFT p50 {{phase}}"),
              (quantile(0.99, "gapscope_client_ttft_seconds", CLIENT, "phase"), "TTFT p99 {{phase}}"),
              (quantile(0.99, "gapscope_client_e2e_seconds", CLIENT, "phase"), "E2E p99 {{phase}}")),
        panel("Client inter-token latency (p50, p99)", "s", "Time between output tokens as the client received them, per token (a chunk of k tokens after a gap g counts k tokens of g/k).",
              (quantile(0.5, "gapscope_client_itl_seconds", CLIENT, "phase"), "p50 {{phase}}"),
              (quantile(0.99, "gapscope_client_itl_seconds", CLIENT, "phase"), "p99 {{phase}}")),
        row("Busy and idle (CUPTI)"),
        panel("GPU busy share by service", "percentunit", "Share of wall time with at least one kernel, copy or memset of the service running on the device (union of CUPTI intervals: overlapping streams count once).",
              (f"sum by (service, device) (rate(gapscope_gpu_busy_seconds_total{{{SVC}}}[{RI}]))", "{{service}} GPU {{device}}"), minimum=0),
        panel("GPU idle share by service", "percentunit", "1 − busy share: the time Gapscope explains.",
              (f"1 - clamp_max(sum by (service, device) (rate(gapscope_gpu_busy_seconds_total{{{SVC}}}[{RI}])), 1)", "{{service}} GPU {{device}}"), minimum=0),
        panel("Idle gaps per second", "ops", "Closed idle gaps between kernels, per second.",
              (f"sum by (service, device) (rate(gapscope_gpu_idle_gap_seconds_count{{{SVC}}}[{RI}]))", "{{service}} GPU {{device}}")),
        panel("Idle gap length (p50, p99)", "s", "How long the GPU waits between consecutive kernels.",
              (quantile(0.5, "gapscope_gpu_idle_gap_seconds", SVC, "service, device"), "p50 {{service}} GPU {{device}}"),
              (quantile(0.99, "gapscope_gpu_idle_gap_seconds", SVC, "service, device"), "p99 {{service}} GPU {{device}}")),
        row("Why the host is late"),
        panel("Host-sync wait per second", "s", "Seconds per second the service's threads spent blocked in CUDA synchronize and blocking copies (uprobes; no injection needed).",
              (f"sum by (service, call) (rate(gapscope_cuda_host_sync_wait_seconds_sum{{{SVC}}}[{RI}]))", "{{service}} {{call}}"), stack=True),
        panel("Launch latency (p50, p99)", "s", "From the launch API call to the kernel starting on the GPU (CUPTI).",
              (quantile(0.5, "gapscope_gpu_launch_latency_seconds", SVC, "service"), "p50 {{service}}"),
              (quantile(0.99, "gapscope_gpu_launch_latency_seconds", SVC, "service"), "p99 {{service}}")),
        panel("Launch call time per second", "s", "Seconds per second spent inside kernel-launch API calls (uprobes).",
              (f"sum by (service, api) (rate(gapscope_cuda_launch_call_duration_seconds_sum{{{SVC}}}[{RI}]))", "{{service}} {{api}}")),
        panel("GPU-side synchronization wait (p99)", "s", "Synchronization records from CUPTI: how long the host waited for the device.",
              (quantile(0.99, "gapscope_gpu_sync_wait_seconds", SVC, "service"), "p99 {{service}}")),
        panel("Long host syncs kept on the timeline", "ops", "Host syncs longer than the timeline threshold, per second (each is an interval in /api/v1/intervals).",
              (f"sum by (service) (rate(gapscope_timeline_intervals_total{{{SVC}, kind=\"host_sync\"}}[{RI}]))", "{{service}}")),
        panel("NVML utilization (any process)", "percentunit", "NVML's view for comparison: it counts any kernel of any process and says nothing about why the GPU waits.",
              (f"gapscope_gpu_utilization_ratio{{{INST}}}", "GPU {{gpu}}"), minimum=0),
    ],
    variables=[SERVICE_VAR, CLIENT_VAR],
    tags=["gpu"],
)

KERNELS = dashboard(
    "gapscope-kernels",
    "Gapscope / Kernels",
    "What the engine asks of the GPU: kernel classes and durations (CUPTI), launches and CUDA graphs (uprobes), copies.",
    [
        row("Kernels (CUPTI deep mode)"),
        panel("Kernels per second by class", "ops", "Kernels finished per second, by class (gemm, attention, norm, elementwise, reduce, copy, communication, other; classified from kernel names).",
              (f"sum by (class) (rate(gapscope_gpu_kernel_duration_seconds_count{{{SVC}}}[{RI}]))", "{{class}}"), stack=True),
        panel("GPU time by kernel class", "percentunit", "Kernel seconds per second by class: where device time goes.",
              (f"sum by (class) (rate(gapscope_gpu_kernel_duration_seconds_sum{{{SVC}}}[{RI}]))", "{{class}}"), stack=True),
        panel("Kernel duration (p50, p99)", "s", "Many tiny kernels (under 10 µs) are the mark of an unfused Python wrapper.",
              (quantile(0.5, "gapscope_gpu_kernel_duration_seconds", SVC, "service"), "p50 {{service}}"),
              (quantile(0.99, "gapscope_gpu_kernel_duration_seconds", SVC, "service"), "p99 {{service}}")),
        panel("Mean kernel duration by service", "s", "Kernel seconds divided by kernels.",
              (f"sum by (service) (rate(gapscope_gpu_kernel_duration_seconds_sum{{{SVC}}}[{RI}])) / sum by (service) (rate(gapscope_gpu_kernel_duration_seconds_count{{{SVC}}}[{RI}]))", "{{service}}")),
        row("Per generated token"),
        panel("Launches per generated token", "short", "Kernel and graph launches per output token the load generator counted (its annotations): a Python wrapper launches kernel by kernel, a fused engine with CUDA graphs a few times per token. Counts one CUDA API per service (a runtime launch also reaches the driver).",
              (f"max by (service) (sum by (service, api) (rate(gapscope_cuda_launches_total{{{SVC}}}[{RI}]))) / scalar(sum(rate(gapscope_loadgen_output_tokens_total{{{INST}}}[{RI}])))", "{{service}}"), minimum=0),
        panel("Kernels per generated token", "short", "Kernels the GPU ran (CUPTI) per output token the load generator counted.",
              (f"sum by (service) (rate(gapscope_gpu_kernel_duration_seconds_count{{{SVC}}}[{RI}])) / scalar(sum(rate(gapscope_loadgen_output_tokens_total{{{INST}}}[{RI}])))", "{{service}}"), minimum=0),
        row("Launches (uprobes)"),
        panel("Kernel launches per second", "ops", "Launch API calls by entry point (estimated by duty cycling above the launch budget; see the sampling ratio).",
              (f"sum by (service, api, entry) (rate(gapscope_cuda_launches_total{{{SVC}}}[{RI}]))", "{{service}} {{entry}}"), stack=True),
        panel("CUDA graph share of launches", "percentunit", "Graph launches over all launches: compiled engines replay CUDA graphs, Python wrappers launch kernel by kernel.",
              (f"sum by (service) (rate(gapscope_cuda_graph_launches_total{{{SVC}}}[{RI}])) / sum by (service) (rate(gapscope_cuda_launches_total{{{SVC}}}[{RI}]))", "{{service}}"), minimum=0),
        panel("Launch call time (p99)", "s", "Time inside one launch API call.",
              (quantile(0.99, "gapscope_cuda_launch_call_duration_seconds", SVC, "service, api"), "{{service}} {{api}}")),
        panel("Launch sampling ratio", "percentunit", "Share of seconds each launch entry point is probed (1 = every launch counted).",
              ("min by (api, entry) (gapscope_cuda_launch_sampling_ratio{" + INST + "})", "{{api}} {{entry}}"), minimum=0),
        row("Copies"),
        panel("Copy throughput", "Bps", "Bytes copied per second by direction (CUPTI memcpy records).",
              (f"sum by (service, direction) (rate(gapscope_gpu_copy_bytes_total{{{SVC}}}[{RI}]))", "{{service}} {{direction}}")),
        panel("Memset throughput", "Bps", "Bytes set per second (CUPTI memset records).",
              (f"sum by (service) (rate(gapscope_gpu_memset_bytes_total{{{SVC}}}[{RI}]))", "{{service}}")),
    ],
    variables=[SERVICE_VAR],
    tags=["gpu"],
)

CPU_SIDE = dashboard(
    "gapscope-cpu",
    "Gapscope / CPU side",
    "What the serving processes do on the CPU: syscalls, time off CPU by reason, run-queue waits, the GIL and serialization.",
    [
        row("Syscalls"),
        panel("Syscalls per second (top 10)", "ops", "Syscall rate of the traced services, the ten busiest.",
              (f"topk(10, sum by (syscall) (rate(gapscope_syscall_duration_seconds_count{{{SVC}}}[{RI}])))", "{{syscall}}")),
        panel("Time in syscalls per second (top 10)", "s", "Seconds per second inside each syscall, summed over threads: blocking reads and futex waits stand out.",
              (f"topk(10, sum by (syscall) (rate(gapscope_syscall_duration_seconds_sum{{{SVC}}}[{RI}])))", "{{syscall}}")),
        row("Scheduler"),
        panel("On CPU and off CPU by reason", "s", "Thread-seconds per second on CPU and off CPU (sleeping, blocked on I/O, preempted...).",
              (f"sum by (service) (rate(gapscope_oncpu_seconds_total{{{SVC}}}[{RI}]))", "{{service}} on CPU"),
              (f"sum by (service, reason) (rate(gapscope_offcpu_seconds_total{{{SVC}}}[{RI}]))", "{{service}} off CPU: {{reason}}"), stack=True),
        panel("Run-queue latency (p50, p99)", "s", "Time a runnable thread waited for a CPU.",
              (quantile(0.5, "gapscope_runqueue_latency_seconds", SVC, "service"), "p50 {{service}}"),
              (quantile(0.99, "gapscope_runqueue_latency_seconds", SVC, "service"), "p99 {{service}}")),
        row("Python"),
        panel("GIL wait per second", "s", "Thread-seconds per second spent waiting for the GIL: threads that could run but may not.",
              (f"sum by (service) (rate(gapscope_gil_wait_seconds_sum{{{SVC}}}[{RI}]))", "{{service}}")),
        panel("GIL held share", "percentunit", "Share of wall time some thread held the GIL: near 1 means the interpreter is the bottleneck.",
              (f"sum by (service) (rate(gapscope_gil_held_seconds_total{{{SVC}}}[{RI}]))", "{{service}}"), minimum=0),
        panel("GIL wait (p50, p99)", "s", "One wait for the GIL.",
              (quantile(0.5, "gapscope_gil_wait_seconds", SVC, "service"), "p50 {{service}}"),
              (quantile(0.99, "gapscope_gil_wait_seconds", SVC, "service"), "p99 {{service}}")),
        panel("GIL hand-overs per second", "ops", "Times the GIL passed from one thread to another.",
              (f"sum by (service) (rate(gapscope_gil_switches_total{{{SVC}}}[{RI}]))", "{{service}}")),
        panel("Serialization time per second", "s", "Seconds per second in json, pickle, orjson, msgpack, protobuf, pydantic-core and configured functions.",
              (f"sum by (service, codec, op) (rate(gapscope_serialization_duration_seconds_sum{{{SVC}}}[{RI}]))", "{{service}} {{codec}} {{op}}"), stack=True),
        panel("Serialization call (p99)", "s", "One serialization call.",
              (quantile(0.99, "gapscope_serialization_duration_seconds", SVC, "codec, op"), "{{codec}} {{op}}")),
        panel("Python processes", "short", "Traced Python processes by interpreter version.",
              (f"sum by (service, version) (gapscope_python_processes{{{SVC}}})", "{{service}} Python {{version}}")),
        panel("Long stalls kept on the timeline", "ops", "Intervals (GIL waits, serialization calls, host syncs) over the timeline threshold, per second.",
              (f"sum by (service, kind) (rate(gapscope_timeline_intervals_total{{{SVC}}}[{RI}]))", "{{service}} {{kind}}")),
    ],
    variables=[SERVICE_VAR],
    tags=["cpu"],
)

HEALTH = dashboard(
    "gapscope-health",
    "Gapscope / Health",
    "gapscoped's own health and cost: collectors, events seen and dropped, BPF run time, maps, deep-mode connections.",
    [
        row("Collectors"),
        panel("Collectors up", "short", "1 when the collector works; compare with gapscope_collector_enabled (0 means turned off in the configuration).",
              (f"gapscope_collector_up{{{INST}}}", "{{instance}} {{collector}}"), minimum=0),
        panel("Traced processes", "short", "Processes each service traces now.",
              (f"sum by (service) (gapscope_service_processes{{{INST}}})", "{{service}}"), stack=True),
        row("Events"),
        panel("Events per second", "ops", "Events handed from the kernel to gapscoped, by source.",
              (f"sum by (source) (rate(gapscope_events_total{{{INST}}}[{RI}]))", "{{source}}")),
        panel("Events dropped per second", "ops", "Events lost between the kernel and gapscoped (ring buffer full); the GapscopeEventsDropped alert fires above 1 %.",
              (f"sum by (source) (rate(gapscope_events_dropped_total{{{INST}}}[{RI}]))", "{{source}}")),
        panel("BPF programs skipped per second", "ops", "Runs the kernel skipped because the CPU was already inside BPF (another program, or a BPF map syscall preempted midway): context switches, wakeups or calls gapscoped never saw.",
              (f"sum by (program) (rate(gapscope_bpf_program_misses_total{{{INST}}}[{RI}]))", "{{program}}")),
        row("Cost"),
        panel("BPF program CPU", "percentunit", "CPU time spent in each of gapscoped's BPF programs (kernel run-time statistics), as a share of one CPU (summed over the hosts selected): on each host, the time measured over the time the statistics were on, so an estimate when bpf_stats is \"sampled\" (the default: one second a minute). 5 m windows, so each holds samples.",
              (f"sum by (program) (rate(gapscope_bpf_program_run_seconds_total{{{INST}}}[5m]) / on(instance, job) group_left() rate(gapscope_bpf_stats_sampled_seconds_total{{{INST}}}[5m]))", "{{program}}"), stack=True),
        panel("BPF program runs per second", "ops", "How often each program ran while the statistics were on, per second of that time.",
              (f"sum by (program) (rate(gapscope_bpf_program_runs_total{{{INST}}}[5m]) / on(instance, job) group_left() rate(gapscope_bpf_stats_sampled_seconds_total{{{INST}}}[5m]))", "{{program}}")),
        panel("BPF map entries", "short", "Entries in gapscoped's maps (bounded).",
              (f"sum by (map) (gapscope_bpf_map_entries{{{INST}}})", "{{map}}")),
        panel("Scrape time by collector", "s", "Time each collector took to render the last scrape.",
              (f"gapscope_scrape_collector_duration_seconds{{{INST}}}", "{{collector}}"), stack=True),
        panel("Timeline intervals retained", "short", "Intervals kept for /api/v1/intervals, and those evicted per second when the buffer is full.",
              (f"gapscope_timeline_intervals_retained{{{INST}}}", "retained"),
              (f"rate(gapscope_timeline_intervals_evicted_total{{{INST}}}[{RI}])", "evicted per second")),
        panel("Probed library files", "short", "Library files with uprobes attached (serialization and CUDA).",
              (f"gapscope_serialization_probed_files{{{INST}}}", "serialization"),
              (f"gapscope_cuda_probed_files{{{INST}}}", "CUDA")),
        row("Deep mode (CUPTI injection)"),
        panel("Injection connections", "short", "Processes connected to the deep-mode socket, and connections rejected by reason per second.",
              (f"gapscope_inject_connections{{{INST}}}", "connected"),
              (f"sum by (reason) (rate(gapscope_inject_rejected_total{{{INST}}}[{RI}]))", "rejected: {{reason}}")),
        panel("Deep-mode records per second", "ops", "CUPTI records received and dropped (by the library or the daemon).",
              (f"sum(rate(gapscope_inject_records_total{{{INST}}}[{RI}]))", "received"),
              (f"sum by (by) (rate(gapscope_inject_records_dropped_total{{{INST}}}[{RI}]))", "dropped by {{by}}")),
        panel("Build", "short", "gapscoped's version on each host.",
              (f"gapscope_build_info{{{INST}}}", "{{instance}} {{version}} {{revision}}"), kind="stat"),
    ],
    tags=["health"],
)

A = 'instance=~"$instance", service="$service_a"'
B = 'instance=~"$instance", service="$service_b"'


def ab(title, unit, description, expr):
    """A panel with the same query for service A and service B."""
    return panel(title, unit, description, (expr(A), "$service_a"), (expr(B), "$service_b"), legend="list")


COMPARE = dashboard(
    "gapscope-compare",
    "Gapscope / A-B comparison",
    "Two services side by side (the published BentoML-versus-LMDeploy question): the same figures for each, on one time axis.",
    [
        row("GPU"),
        panel("GPU idle by cause", "percentunit", "Idle share of wall time by cause for each service: the seed's question (why is one stack's GPU idle more) in one panel.",
              (f"sum by (cause) (rate(gapscope_gpu_idle_seconds_total{{{A}}}[{RI}]))", "$service_a {{cause}}"),
              (f"sum by (cause) (rate(gapscope_gpu_idle_seconds_total{{{B}}}[{RI}]))", "$service_b {{cause}}"), minimum=0),
        ab("Launches per generated token", "short", "Kernel launches per output token (the load generator's count).",
           lambda s: f"max(sum by (api) (rate(gapscope_cuda_launches_total{{{s}}}[{RI}]))) / scalar(sum(rate(gapscope_loadgen_output_tokens_total{{{INST}}}[{RI}])))"),
        ab("GPU busy share", "percentunit", "Share of wall time the service's kernels kept the GPU busy (CUPTI).",
           lambda s: f"sum(rate(gapscope_gpu_busy_seconds_total{{{s}}}[{RI}]))"),
        ab("Idle gap (p99)", "s", "99th percentile of the GPU's waits between kernels.",
           lambda s: f"histogram_quantile(0.99, sum by (le) (rate(gapscope_gpu_idle_gap_seconds_bucket{{{s}}}[{RI}])))"),
        ab("Kernel duration (p50)", "s", "Median kernel: small for unfused wrappers, larger for fused engines.",
           lambda s: f"histogram_quantile(0.5, sum by (le) (rate(gapscope_gpu_kernel_duration_seconds_bucket{{{s}}}[{RI}])))"),
        ab("Kernel launches per second", "ops", "Launch API calls (uprobes).",
           lambda s: f"sum(rate(gapscope_cuda_launches_total{{{s}}}[{RI}]))"),
        ab("Host-sync wait per second", "s", "Seconds per second blocked in CUDA synchronize and blocking copies.",
           lambda s: f"sum(rate(gapscope_cuda_host_sync_wait_seconds_sum{{{s}}}[{RI}]))"),
        row("CPU"),
        ab("GIL wait per second", "s", "Thread-seconds per second waiting for the GIL.",
           lambda s: f"sum(rate(gapscope_gil_wait_seconds_sum{{{s}}}[{RI}]))"),
        ab("Serialization time per second", "s", "Seconds per second serializing (all codecs).",
           lambda s: f"sum(rate(gapscope_serialization_duration_seconds_sum{{{s}}}[{RI}]))"),
        ab("Time in syscalls per second", "s", "Seconds per second inside syscalls.",
           lambda s: f"sum(rate(gapscope_syscall_duration_seconds_sum{{{s}}}[{RI}]))"),
        ab("On CPU", "s", "Thread-seconds per second on CPU.",
           lambda s: f"sum(rate(gapscope_oncpu_seconds_total{{{s}}}[{RI}]))"),
        ab("Run-queue latency (p99)", "s", "Waits for a CPU.",
           lambda s: f"histogram_quantile(0.99, sum by (le) (rate(gapscope_runqueue_latency_seconds_bucket{{{s}}}[{RI}])))"),
    ],
    variables=[
        variable_query("service_a", "Service A", 'label_values(gapscope_service_processes{instance=~"$instance"}, service)', multi=False),
        variable_query("service_b", "Service B", 'label_values(gapscope_service_processes{instance=~"$instance"}, service)', multi=False),
    ],
    tags=["compare"],
)

DASHBOARDS = {
    "gapscope-gpu.json": GPU_TELEMETRY,
    "gapscope-gpu-idle.json": GPU_IDLE,
    "gapscope-kernels.json": KERNELS,
    "gapscope-cpu.json": CPU_SIDE,
    "gapscope-health.json": HEALTH,
    "gapscope-compare.json": COMPARE,
}


def render(d):
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"


def configmap():
    lines = [
        "# Written by grafana/generate.py from the same panels as grafana/dashboards/.",
        "# Grafana's dashboard sidecar loads ConfigMaps labelled grafana_dashboard.",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: gapscope-grafana-dashboards",
        "  namespace: gapscope",
        "  labels:",
        '    grafana_dashboard: "1"',
        "  annotations:",
        "    grafana_folder: Gapscope",
        "data:",
    ]
    for name, d in DASHBOARDS.items():
        lines.append(f"  {name}: |")
        lines.extend("    " + line for line in render(d).rstrip("\n").split("\n"))
    return "\n".join(lines) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    outputs = {OUT / name: render(d) for name, d in DASHBOARDS.items()}
    outputs[CONFIGMAP] = configmap()
    for path, text in outputs.items():
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run grafana/generate.py and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
