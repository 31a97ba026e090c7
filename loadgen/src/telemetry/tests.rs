use super::*;

#[test]
fn parses_exporter_text_with_labels_and_escapes() {
    let body = "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n\
        # TYPE DCGM_FI_DEV_GPU_UTIL gauge\n\
        DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",UUID=\"GPU-1\",modelName=\"NVIDIA A40\",Hostname=\"a\\\"b\"} 87\n\
        DCGM_FI_DEV_POWER_USAGE{gpu=\"0\"} 251.5 1700000000000\n\
        up 1\n\
        broken{x=\"1\" 2\n";
    let s = parse_text(body);
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].labels["modelName"], "NVIDIA A40");
    assert_eq!(s[0].labels["Hostname"], "a\"b");
    assert_eq!(s[1].value, 251.5);
    assert_eq!(s[2].name, "up");
}

#[test]
fn energy_from_the_counter_else_from_power() {
    let s = |t: u64, p: f64, e: Option<f64>| Sample {
        t_ns: t * 1_000_000_000,
        utilization: Some(0.5),
        power_w: Some(p),
        energy_j: e,
    };
    let with = [
        s(0, 100.0, Some(1000.0)),
        s(1, 100.0, Some(1100.0)),
        s(2, 100.0, Some(1200.0)),
    ];
    let w = window(&with, 0, 2_000_000_000);
    assert_eq!(
        (w.energy_j, w.energy_source.as_deref()),
        (Some(200.0), Some("counter"))
    );
    // A counter that lags (the exporter's 30 s collection): it did not
    // move in this window, so power stands in, and the note says why.
    let lagging = [
        s(0, 100.0, Some(1000.0)),
        s(1, 100.0, Some(1000.0)),
        s(2, 100.0, Some(1000.0)),
    ];
    let w = window(&lagging, 0, 2_000_000_000);
    assert_eq!(
        (w.energy_j, w.energy_source.as_deref()),
        (Some(200.0), Some("power_integral"))
    );
    assert!(w.energy_note.unwrap().contains("moved 0 time(s)"));
    // A coarse counter: moves every other reading; read where it moved.
    let coarse = [
        s(0, 100.0, Some(1000.0)),
        s(1, 100.0, Some(1200.0)),
        s(2, 100.0, Some(1200.0)),
        s(3, 100.0, Some(1400.0)),
        s(4, 100.0, Some(1400.0)),
    ];
    let w = window(&coarse, 0, 4_000_000_000);
    assert_eq!(
        (w.energy_j, w.energy_source.as_deref()),
        (Some(400.0), Some("counter"))
    );
    let without = [s(0, 100.0, None), s(1, 300.0, None)];
    let w = window(&without, 0, 2_000_000_000);
    assert_eq!(
        (w.energy_j, w.energy_source.as_deref()),
        (Some(400.0), Some("power_integral"))
    );
}
