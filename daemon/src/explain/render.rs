//! `gapscoped explain`: the explain report as a person reads it in a
//! terminal, and two services side by side (`--compare`).

use std::fmt::Write as _;

use serde_json::Value;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// A sum that is +0 when empty (`Iterator::sum` of no floats is -0,
/// which prints as "-0").
pub fn fsum(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0, |a, b| a + b)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn bar(share: f64) -> String {
    "█".repeat((share * 30.0).round().clamp(0.0, 30.0) as usize)
}

fn opt(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "—".into(),
    }
}

/// One service's report.
pub fn report(r: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "gapscope explain — service {}, the last {:.0} s",
        r["service"].as_str().unwrap_or("?"),
        f(&r["window"]["seconds"])
    );
    let gpus = r["gpu"].as_array().cloned().unwrap_or_default();
    if gpus.is_empty() {
        let _ = writeln!(out, "\nGPU: no idle gap closed in the window");
    }
    for g in &gpus {
        gpu_block(&mut out, g, "");
    }
    cpu_section(&mut out, r);
    kernels_section(&mut out, r);
    phases_section(&mut out, r);
    quality_section(&mut out, r, &gpus);
    out
}

/// Where the service's threads spent the window: on and off CPU, top
/// syscalls, the GIL, serialization.
fn cpu_section(out: &mut String, r: &Value) {
    let cpu = &r["cpu"];
    let _ = writeln!(out, "\nCPU side");
    let mut off: Vec<(String, f64)> = cpu["off_cpu_seconds"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), f(v))).collect())
        .unwrap_or_default();
    off.sort_by(|a, b| b.1.total_cmp(&a.1));
    let _ = writeln!(
        out,
        "  on CPU {:.2} s; off CPU: {}",
        f(&cpu["on_cpu_seconds"]),
        join(off.iter().take(5).map(|(k, v)| format!("{k} {v:.2} s")))
    );
    let sys = cpu["top_syscalls"].as_array().cloned().unwrap_or_default();
    if !sys.is_empty() {
        let _ = writeln!(
            out,
            "  top syscalls: {}",
            join(sys.iter().take(5).map(|s| format!(
                "{} {:.3} s ({:.0} calls)",
                s["syscall"].as_str().unwrap_or("?"),
                f(&s["seconds"]),
                f(&s["calls"])
            )))
        );
    }
    let gil = &r["gil"];
    let _ = writeln!(
        out,
        "  GIL: {:.0} contended waits, {:.3} s waiting, {:.2} s held",
        f(&gil["waits"]),
        f(&gil["wait_seconds"]),
        f(&gil["held_seconds"])
    );
    let ser = r["serialization"].as_array().cloned().unwrap_or_default();
    if !ser.is_empty() {
        let _ = writeln!(
            out,
            "  serialization: {}",
            join(ser.iter().take(4).map(|c| format!(
                "{} {} {:.3} s ({:.0} calls)",
                c["codec"].as_str().unwrap_or("?"),
                c["op"].as_str().unwrap_or("?"),
                f(&c["seconds"]),
                f(&c["calls"])
            )))
        );
    }
}

/// Launches and kernels, per token, and the heaviest kernels.
fn kernels_section(out: &mut String, r: &Value) {
    let fu = &r["fusion"];
    let _ = writeln!(out, "\nKernels and launches");
    let _ = writeln!(
        out,
        "  {:.0} launches ({:.0} graph launches), {:.0} kernels; per token: {} launches, {} kernels",
        f(&fu["launches"]),
        f(&fu["graph_launches"]),
        f(&fu["kernels"]),
        opt(&fu["launches_per_token"], 1),
        opt(&fu["kernels_per_token"], 1)
    );
    if fu["median_kernel_us"].is_number() {
        let _ = writeln!(
            out,
            "  median kernel {} µs; {} of kernels under 10 µs",
            opt(&fu["median_kernel_us"], 1),
            fu["tiny_kernel_share"].as_f64().map_or("—".into(), pct)
        );
    }
    for k in r["kernels"]["top"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .take(5)
    {
        let _ = writeln!(
            out,
            "  {:>9.3} s {:>8} × [{}] {}",
            f(&k["total_seconds"]),
            k["count"],
            k["class"].as_str().unwrap_or("?"),
            k["name"].as_str().unwrap_or("?")
        );
    }
}

/// Each load-generator phase in the window, with its GPU split.
fn phases_section(out: &mut String, r: &Value) {
    let phases = r["phases"].as_array().cloned().unwrap_or_default();
    if !phases.is_empty() {
        let _ = writeln!(out, "\nPhases (load generator)");
        for p in &phases {
            let secs = (p["end_ns"].as_u64().unwrap_or(0) - p["start_ns"].as_u64().unwrap_or(0))
                as f64
                / 1e9;
            let _ = writeln!(
                out,
                "  {} ({}, {:.1} s){}",
                p["phase"].as_str().unwrap_or("?"),
                p["kind"].as_str().unwrap_or(""),
                secs,
                p["fusion"]["launches_per_token"]
                    .as_f64()
                    .map_or(String::new(), |l| format!(", {l:.1} launches/token"))
            );
            for g in p["gpu"].as_array().cloned().unwrap_or_default() {
                gpu_block(out, &g, "    ");
            }
        }
    }
}

/// Drops, evictions, each device's precision and the report's notes.
fn quality_section(out: &mut String, r: &Value, gpus: &[Value]) {
    let q = &r["data_quality"];
    let _ = writeln!(out, "\nData quality");
    let dropped: f64 = q["events_dropped"]
        .as_object()
        .map(|m| fsum(m.values().map(f)))
        .unwrap_or(0.0);
    let _ = writeln!(
        out,
        "  {} launching thread(s); {:.0} events dropped in the window; {} thread states evicted since start",
        q["launching_threads"], dropped, q["states_evicted"]
    );
    for g in gpus {
        let _ = writeln!(
            out,
            "  device {}: {}",
            g["device"].as_str().unwrap_or("?"),
            g["precision"].as_str().unwrap_or("")
        );
    }
    for n in q["notes"].as_array().cloned().unwrap_or_default() {
        let _ = writeln!(out, "  note: {}", n.as_str().unwrap_or(""));
    }
}

fn gpu_block(out: &mut String, g: &Value, indent: &str) {
    if indent.is_empty() {
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "{indent}GPU {} ({}): busy {} · idle {:.3} s in {} gaps",
        g["device"].as_str().unwrap_or("?"),
        g["source"].as_str().unwrap_or("?"),
        g["busy_ratio"].as_f64().map_or("—".into(), pct),
        f(&g["idle_seconds"]),
        g["gaps"]
    );
    let cov = &g["coverage"];
    if let Some(observed) = cov["observed_share"].as_f64() {
        let mut why = Vec::new();
        if f(&cov["no_launcher_seconds"]) > 0.0 {
            why.push(format!(
                "{:.3} s with no launching thread known",
                f(&cov["no_launcher_seconds"])
            ));
        }
        if f(&cov["below_threshold_seconds"]) > 0.0 {
            why.push(format!(
                "{:.3} s in stretches shorter than the timeline's threshold",
                f(&cov["below_threshold_seconds"])
            ));
        }
        let _ = writeln!(
            out,
            "{indent}  {} of the idle time has a recorded cause{}",
            pct(observed),
            if why.is_empty() {
                String::new()
            } else {
                format!("; unobserved: {}", why.join(", "))
            }
        );
    }
    let open = &g["open_gap"];
    if open.is_object() {
        let _ = writeln!(
            out,
            "{indent}  idle NOW for {:.1} s and counting (in the figures below); so far: {}",
            f(&open["seconds"]),
            join(
                open["idle_by_cause"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .take(3)
                    .map(|c| format!(
                        "{} {:.1} s",
                        c["cause"].as_str().unwrap_or("?"),
                        f(&c["seconds"])
                    ))
            )
        );
    }
    let e = &g["energy"];
    if e.is_object() {
        let _ = writeln!(
            out,
            "{indent}  energy: idle {:.1} J at {} W, busy {:.1} J at {} W ({} of the time priced by NVML)",
            f(&e["idle_joules"]),
            opt(&e["idle_watts"], 0),
            f(&e["busy_joules"]),
            opt(&e["busy_watts"], 0),
            pct(f(&e["priced_share"]))
        );
    }
    let money = g["gpu_hour_usd"].as_f64();
    for c in g["idle_by_cause"].as_array().cloned().unwrap_or_default() {
        let mut line = format!(
            "{indent}  {:<16} {:>9.3} s {:>6}",
            c["cause"].as_str().unwrap_or("?"),
            f(&c["seconds"]),
            pct(f(&c["share"])),
        );
        if e.is_object() {
            let _ = write!(line, " {:>9} J", opt(&c["joules"], 1));
        }
        if money.is_some() {
            let _ = write!(line, " {:>8} $/h", opt(&c["usd_per_hour"], 3));
        }
        let _ = writeln!(out, "{line}  {}", bar(f(&c["share"])));
        // Serialization by function, indented under it.
        for func in c["functions"].as_array().cloned().unwrap_or_default() {
            let name = format!(
                "{}.{}",
                func["codec"].as_str().unwrap_or("?"),
                func["op"].as_str().unwrap_or("?")
            );
            let _ = writeln!(
                out,
                "{indent}    {name:<16} {:>9.3} s {:>6}",
                f(&func["seconds"]),
                pct(f(&func["share"])),
            );
        }
        // The GIL's holders, indented under gil_wait.
        for h in c["holders"].as_array().cloned().unwrap_or_default() {
            let name = format!(
                "held by {} ({})",
                h["tid"],
                h["thread"].as_str().unwrap_or("exited")
            );
            let _ = writeln!(
                out,
                "{indent}    {name:<16} {:>9.3} s {:>6}",
                f(&h["seconds"]),
                pct(f(&h["share"])),
            );
        }
        if c["holders"].is_array() && f(&c["holders_unnamed_seconds"]) > 0.0 {
            let _ = writeln!(
                out,
                "{indent}    {:<16} {:>9.3} s",
                "holder not known",
                f(&c["holders_unnamed_seconds"]),
            );
        }
    }
    if let Some(usd) = money {
        let _ = writeln!(
            out,
            "{indent}  ($/h: each cause's share of this GPU's time × {usd} $ per GPU-hour)"
        );
    }
    let gains: Vec<String> = g["idle_by_cause"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|c| c["what_if"].is_object())
        .take(3)
        .flat_map(|c| {
            // A cause, then each of its functions (or GIL holders) when
            // there are several.
            let functions = c["functions"].as_array().cloned().unwrap_or_default();
            let holders = c["holders"].as_array().cloned().unwrap_or_default();
            let parts: Vec<String> = if functions.len() > 1 {
                functions
                    .iter()
                    .map(|func| {
                        what_if_line(func["function"].as_str().unwrap_or("?"), &func["what_if"])
                    })
                    .collect()
            } else if holders.len() > 1 {
                holders
                    .iter()
                    .map(|h| what_if_line(h["holder"].as_str().unwrap_or("?"), &h["what_if"]))
                    .collect()
            } else {
                Vec::new()
            };
            std::iter::once(what_if_line(
                c["cause"].as_str().unwrap_or("?"),
                &c["what_if"],
            ))
            .chain(parts)
        })
        .collect();
    if !gains.is_empty() {
        let _ = writeln!(out, "{indent}  what fixing each would buy:");
        for line in gains {
            let _ = writeln!(out, "{indent}    {line}");
        }
    }
    if g["what_if"].is_object() {
        let causes: Vec<&str> = g["what_if"]["causes"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{indent}  together: {}",
            what_if_line(&causes.join(" + "), &g["what_if"])
        );
        if let Some(absent) = g["what_if"]["not_holders"].as_array() {
            let absent: Vec<&str> = absent.iter().filter_map(Value::as_str).collect();
            let _ = writeln!(
                out,
                "{indent}  ({} held the GIL during none of this idle time: nothing to remove)",
                absent.join(", ")
            );
        }
    }
    if let Some(note) = g["what_if_note"].as_str() {
        let _ = writeln!(out, "{indent}  ({note})");
    }
}

/// "removing X: −2.1 ms idle a gap, +23.4 % steps/s".
fn what_if_line(what: &str, w: &Value) -> String {
    format!(
        "removing {what}: −{} ms idle a gap, +{} steps (tokens) a second",
        opt(&w["recoverable_ms_per_gap"], 2),
        w["predicted_speedup"].as_f64().map_or("—".into(), pct)
    )
}

fn join(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        "—".into()
    } else {
        v.join(", ")
    }
}

/// Idle seconds of one cause over every device of a report.
fn cause_seconds(r: &Value, cause: &str) -> f64 {
    r["gpu"]
        .as_array()
        .map(|gs| {
            fsum(
                gs.iter()
                    .flat_map(|g| g["idle_by_cause"].as_array().cloned().unwrap_or_default())
                    .filter(|c| c["cause"] == cause)
                    .map(|c| f(&c["seconds"])),
            )
        })
        .unwrap_or(0.0)
}

fn gpu_sum(r: &Value, key: &str) -> f64 {
    r["gpu"]
        .as_array()
        .map(|gs| fsum(gs.iter().map(|g| f(&g[key]))))
        .unwrap_or(0.0)
}

/// Two services side by side: the seed's question in one screen.
pub fn compare(a: &Value, b: &Value) -> String {
    let name = |r: &Value| r["service"].as_str().unwrap_or("?").to_string();
    let (na, nb) = (name(a), name(b));
    let rows = compare_rows(a, b);
    let width = |column: &dyn Fn(&(String, String, String)) -> &String, head: &str| {
        rows.iter()
            .map(|r| column(r).chars().count())
            .chain([head.chars().count()])
            .max()
            .unwrap_or(8)
    };
    let (w, wa, wb) = (
        width(&|r| &r.0, ""),
        width(&|r| &r.1, &na),
        width(&|r| &r.2, &nb),
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "gapscope explain --compare, the last {:.0} s\n",
        f(&a["window"]["seconds"])
    );
    let _ = writeln!(out, "{:<w$}  {:>wa$}  {:>wb$}", "", na, nb);
    for (label, x, y) in rows {
        let _ = writeln!(out, "{label:<w$}  {x:>wa$}  {y:>wb$}");
    }
    out
}

/// The comparison's rows: (label, first service, second service).
fn compare_rows(a: &Value, b: &Value) -> Vec<(String, String, String)> {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut both = |label: &str, show: &dyn Fn(&Value) -> String| {
        rows.push((label.to_string(), show(a), show(b)));
    };
    both("GPU busy", &|r| {
        let (busy, idle) = (gpu_sum(r, "busy_seconds"), gpu_sum(r, "idle_seconds"));
        if busy + idle > 0.0 {
            pct(busy / (busy + idle))
        } else {
            "—".into()
        }
    });
    both("GPU idle (s)", &|r| {
        format!("{:.3}", gpu_sum(r, "idle_seconds"))
    });
    both("idle gaps", &|r| format!("{:.0}", gpu_sum(r, "gaps")));
    for cause in crate::explain::Cause::ALL {
        let label = cause.label();
        if cause_seconds(a, label) > 0.0 || cause_seconds(b, label) > 0.0 {
            both(&format!("  idle: {label}"), &|r| {
                format!("{:.3}", cause_seconds(r, label))
            });
        }
    }
    for (label, key, digits) in [
        ("launches per token", "launches_per_token", 1),
        ("kernels per token", "kernels_per_token", 1),
        ("median kernel (µs)", "median_kernel_us", 1),
        ("kernels under 10 µs", "tiny_kernel_share", 3),
        ("graph launch share", "graph_launch_share", 3),
    ] {
        both(label, &|r| opt(&r["fusion"][key], digits));
    }
    both("launches", &|r| {
        format!("{:.0}", f(&r["fusion"]["launches"]))
    });
    both("GIL wait (s)", &|r| {
        format!("{:.3}", f(&r["gil"]["wait_seconds"]))
    });
    both("serialization (s)", &|r| {
        let total = r["serialization"]
            .as_array()
            .map(|v| fsum(v.iter().map(|c| f(&c["seconds"]))))
            .unwrap_or(0.0);
        format!("{total:.3}")
    });
    both("on CPU (s)", &|r| {
        format!("{:.2}", f(&r["cpu"]["on_cpu_seconds"]))
    });
    both("top syscall", &|r| {
        let top = &r["cpu"]["top_syscalls"][0];
        top["syscall"].as_str().map_or("—".to_string(), |s| {
            format!("{s} {:.2} s", f(&top["seconds"]))
        })
    });
    both("GPU timeline", &|r| {
        r["gpu"]
            .as_array()
            .map(|gs| {
                gs.iter()
                    .map(|g| g["source"].as_str().unwrap_or("?").to_string())
                    .collect::<Vec<_>>()
                    .join("+")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "—".into())
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(name: &str, gil: f64) -> Value {
        json!({
            "service": name,
            "window": {"seconds": 60.0},
            "gpu": [{"device": "0", "source": "cupti", "precision": "exact", "busy_seconds": 30.0,
                     "idle_seconds": 30.0, "busy_ratio": 0.5, "gaps": 10,
                     "idle_by_cause": [{"cause": "gil_wait", "seconds": gil, "share": gil / 30.0,
                                        "holders": [
                                            {"holder": "gil_wait:4312", "tid": 4312, "thread": "tokenizer",
                                             "seconds": gil * 0.75, "share": gil * 0.75 / 30.0,
                                             "what_if": {"causes": ["gil_wait:4312"], "recoverable_seconds": gil * 0.75,
                                                         "predicted_speedup": 0.5}},
                                            {"holder": "gil_wait:77", "tid": 77, "thread": null,
                                             "seconds": gil * 0.2, "share": gil * 0.2 / 30.0,
                                             "what_if": {"causes": ["gil_wait:77"], "recoverable_seconds": gil * 0.2,
                                                         "predicted_speedup": 0.1}}],
                                        "holders_unnamed_seconds": gil * 0.05,
                                        "what_if": {"causes": ["gil_wait"], "recoverable_seconds": gil,
                                                    "predicted_speedup": 0.9}}]}],
            "cpu": {"on_cpu_seconds": 10.0, "off_cpu_seconds": {"syscall_poll": 2.0},
                    "top_syscalls": [{"syscall": "futex", "calls": 10.0, "seconds": 1.5}]},
            "gil": {"waits": 3.0, "wait_seconds": gil, "held_seconds": 9.0},
            "serialization": [],
            "kernels": {"top": []},
            "fusion": {"launches": 100.0, "graph_launches": 0.0, "kernels": 0.0, "launches_per_token": 12.5},
            "phases": [],
            "data_quality": {"launching_threads": 1, "events_dropped": {}, "states_evicted": 0, "notes": ["n"]}
        })
    }

    #[test]
    fn the_report_and_the_comparison_carry_the_numbers() {
        let text = report(&sample("a", 20.0));
        for want in [
            "service a",
            "GPU 0 (cupti): busy 50.0%",
            "gil_wait",
            "20.000 s",
            "futex 1.500 s",
            "12.5 launches",
            "note: n",
            "held by 4312 (tokenizer)",
            "held by 77 (exited)",
            "holder not known",
            "gil_wait:4312",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        let text = compare(&sample("bentoml", 20.0), &sample("engine", 1.0));
        assert!(
            text.contains("bentoml") && text.contains("engine"),
            "{text}"
        );
        let line = text.lines().find(|l| l.contains("idle: gil_wait")).unwrap();
        assert!(line.contains("20.000") && line.contains("1.000"), "{line}");
        // A service with nothing to show prints zeros and dashes, never "-0".
        let empty = json!({"service": "quiet", "window": {"seconds": 60.0}, "gpu": [],
                           "cpu": {}, "gil": {}, "serialization": [], "kernels": {"top": []},
                           "fusion": {}, "phases": [], "data_quality": {"events_dropped": {}}});
        for text in [report(&empty), compare(&sample("a", 1.0), &empty)] {
            assert!(!text.contains("-0"), "{text}");
        }
    }
}
