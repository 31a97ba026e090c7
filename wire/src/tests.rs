use super::*;

fn hello() -> Frame {
    Frame::Hello(Hello {
        pid: 4242,
        cuda_version: 13000,
        cupti_version: 26,
        clock: ClockMode::Offset,
        clock_offset_ns: -1_234_567,
        agent: "gapscope-inject 0.1.0".into(),
    })
}

fn record(kind: RecordKind, start: u64, end: u64) -> Record {
    Record {
        kind,
        device: 1,
        detail: copy::DEVICE_TO_HOST,
        stream: 7,
        correlation: 99,
        name: 3,
        start_ns: start,
        end_ns: end,
        bytes: 1 << 40,
        thread: 4242,
        graph: 7,
    }
}

fn all_frames() -> Vec<Frame> {
    vec![
        hello(),
        Frame::Names(vec![
            Name {
                id: 1,
                text: "ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_64x3_tn".into(),
            },
            Name {
                id: 2,
                text: "void at::native::vectorized_elementwise_kernel<4, …>".into(),
            },
        ]),
        Frame::Records(vec![
            record(RecordKind::Kernel, 10, 20),
            record(RecordKind::Memcpy, 20, 20),
            record(RecordKind::Sync, 5, u64::MAX),
            record(RecordKind::Overhead, 0, 0),
        ]),
        Frame::Dropped {
            records: 12,
            buffers: 1,
        },
        Frame::Records(Vec::new()),
        Frame::Names(Vec::new()),
        Frame::Devices(vec![
            Device {
                index: 0,
                uuid: [0xab; 16],
            },
            Device {
                index: 3,
                uuid: *b"0123456789abcdef",
            },
        ]),
        Frame::Devices(Vec::new()),
    ]
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode(frame, &mut out);
    out
}

#[test]
fn every_frame_round_trips() {
    for frame in all_frames() {
        let bytes = encoded(&frame);
        let (back, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!(back, frame);
        assert_eq!(used, bytes.len());
    }
}

#[test]
fn a_stream_fed_a_byte_at_a_time_yields_the_same_frames() {
    let frames = all_frames();
    let stream: Vec<u8> = frames.iter().flat_map(encoded).collect();
    let mut reader = FrameReader::default();
    let mut out = Vec::new();
    for b in &stream {
        reader.push(&[*b]);
        while let Some(f) = reader.next_frame().unwrap() {
            out.push(f);
        }
        assert!(reader.pending() < HEADER_LEN + MAX_PAYLOAD);
    }
    assert_eq!(out, frames);
    assert_eq!(reader.pending(), 0);
}

#[test]
fn every_prefix_of_a_frame_asks_for_more() {
    for frame in all_frames() {
        let bytes = encoded(&frame);
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Ok(None), "{frame:?} cut at {cut}");
        }
    }
}

#[test]
fn long_names_are_cut_on_a_character_boundary() {
    let long = "é".repeat(MAX_NAME);
    let bytes = encoded(&Frame::Names(vec![Name {
        id: 5,
        text: long.clone(),
    }]));
    let Frame::Names(n) = decode(&bytes).unwrap().unwrap().0 else {
        panic!()
    };
    assert_eq!(n[0].text.len(), MAX_NAME);
    assert!(long.starts_with(&n[0].text));
}

/// A header for `kind` with `len` payload bytes, followed by `payload`.
fn raw(kind: u16, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn with_payload(kind: u16, payload: &[u8]) -> Vec<u8> {
    raw(kind, payload.len() as u32, payload)
}

/// A valid record's bytes with one byte changed.
fn record_bytes(edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut b =
        encoded(&Frame::Records(vec![record(RecordKind::Kernel, 1, 2)]))[HEADER_LEN..].to_vec();
    edit(&mut b);
    b
}

fn hello_bytes(edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = encoded(&hello())[HEADER_LEN..].to_vec();
    edit(&mut b);
    b
}

#[test]
fn malformed_frames_are_rejected_with_the_reason() {
    let cases: Vec<(&str, Vec<u8>, WireError)> = vec![
        (
            "bad magic",
            b"HTTP/1.1 200 OK\r\n".to_vec(),
            WireError::BadMagic(*b"HTTP"),
        ),
        (
            "bad magic, early",
            b"GX".to_vec(),
            WireError::BadMagic(*b"GX\0\0"),
        ),
        (
            "newer version",
            {
                let mut b = with_payload(kind::DROPPED, &[0; 16]);
                b[4] = 3;
                b
            },
            WireError::UnsupportedVersion(3),
        ),
        (
            "unknown kind",
            with_payload(9, &[]),
            WireError::UnknownKind(9),
        ),
        ("kind zero", with_payload(0, &[]), WireError::UnknownKind(0)),
        (
            "hostile length",
            raw(kind::RECORDS, u32::MAX, &[]),
            WireError::TooLarge(u32::MAX as usize),
        ),
        (
            "one byte over the limit",
            raw(kind::RECORDS, MAX_PAYLOAD as u32 + 1, &[]),
            WireError::TooLarge(MAX_PAYLOAD + 1),
        ),
        (
            "records not a whole number",
            with_payload(kind::RECORDS, &[1; RECORD_LEN + 1]),
            WireError::BadLength {
                kind: kind::RECORDS,
                len: RECORD_LEN + 1,
            },
        ),
        (
            "record kind 0",
            with_payload(kind::RECORDS, &record_bytes(|b| b[0] = 0)),
            WireError::BadRecord {
                index: 0,
                why: "unknown record kind",
            },
        ),
        (
            "record kind 200",
            with_payload(kind::RECORDS, &record_bytes(|b| b[0] = 200)),
            WireError::BadRecord {
                index: 0,
                why: "unknown record kind",
            },
        ),
        (
            "device out of range",
            with_payload(kind::RECORDS, &record_bytes(|b| b[1] = MAX_DEVICES)),
            WireError::BadRecord {
                index: 0,
                why: "device index out of range",
            },
        ),
        (
            "ends before it starts",
            with_payload(kind::RECORDS, &record_bytes(|b| b[16] = 9)),
            WireError::BadRecord {
                index: 0,
                why: "ends before it starts",
            },
        ),
        (
            "dropped too short",
            with_payload(kind::DROPPED, &[0; 15]),
            WireError::BadLength {
                kind: kind::DROPPED,
                len: 15,
            },
        ),
        (
            "dropped too long",
            with_payload(kind::DROPPED, &[0; 17]),
            WireError::BadLength {
                kind: kind::DROPPED,
                len: 17,
            },
        ),
        (
            "name entry truncated",
            with_payload(kind::NAMES, &[1, 0, 0, 0, 3]),
            WireError::BadName {
                index: 0,
                why: "truncated entry",
            },
        ),
        (
            "name runs past the payload",
            with_payload(kind::NAMES, &[1, 0, 0, 0, 9, 0, b'a', b'b']),
            WireError::BadName {
                index: 0,
                why: "runs past the payload",
            },
        ),
        (
            "name too long",
            with_payload(kind::NAMES, &{
                let mut b = vec![1, 0, 0, 0];
                b.extend_from_slice(&(MAX_NAME as u16 + 1).to_le_bytes());
                b.extend(std::iter::repeat_n(b'a', MAX_NAME + 1));
                b
            }),
            WireError::BadName {
                index: 0,
                why: "longer than MAX_NAME",
            },
        ),
        (
            "name id 0",
            with_payload(kind::NAMES, &[0, 0, 0, 0, 1, 0, b'a']),
            WireError::BadName {
                index: 0,
                why: "id 0 means no name",
            },
        ),
        (
            "name not UTF-8",
            with_payload(kind::NAMES, &[1, 0, 0, 0, 2, 0, 0xc3, 0x28]),
            WireError::BadName {
                index: 0,
                why: "not UTF-8",
            },
        ),
        (
            "second name bad",
            with_payload(kind::NAMES, &[1, 0, 0, 0, 1, 0, b'a', 2, 0, 0, 0, 1]),
            WireError::BadName {
                index: 1,
                why: "truncated entry",
            },
        ),
        (
            "hello too short",
            with_payload(kind::HELLO, &[0; HELLO_FIXED - 1]),
            WireError::BadLength {
                kind: kind::HELLO,
                len: HELLO_FIXED - 1,
            },
        ),
        (
            "hello clock mode",
            with_payload(kind::HELLO, &hello_bytes(|b| b[12] = 3)),
            WireError::BadHello("unknown clock mode"),
        ),
        (
            "hello agent too long",
            with_payload(kind::HELLO, &hello_bytes(|b| b[21] = MAX_AGENT as u8 + 1)),
            WireError::BadHello("agent string too long"),
        ),
        (
            "hello agent length disagrees",
            with_payload(kind::HELLO, &hello_bytes(|b| b[21] -= 1)),
            WireError::BadLength {
                kind: kind::HELLO,
                len: HELLO_FIXED + 21,
            },
        ),
        (
            "devices, a partial entry",
            with_payload(kind::DEVICES, &[0; DEVICE_LEN + 1]),
            WireError::BadLength {
                kind: kind::DEVICES,
                len: DEVICE_LEN + 1,
            },
        ),
        (
            "devices, more than a process can have",
            with_payload(
                kind::DEVICES,
                &vec![0; DEVICE_LEN * (MAX_DEVICES as usize + 1)],
            ),
            WireError::BadLength {
                kind: kind::DEVICES,
                len: DEVICE_LEN * (MAX_DEVICES as usize + 1),
            },
        ),
        (
            "devices, index out of range",
            with_payload(kind::DEVICES, &device_bytes(&[MAX_DEVICES])),
            WireError::BadDevice {
                index: 0,
                why: "device index out of range",
            },
        ),
        (
            "devices, an index twice",
            with_payload(kind::DEVICES, &device_bytes(&[1, 2, 1])),
            WireError::BadDevice {
                index: 2,
                why: "device index given twice",
            },
        ),
        (
            "devices, reserved bytes",
            with_payload(kind::DEVICES, &{
                let mut b = device_bytes(&[0]);
                b[2] = 7;
                b
            }),
            WireError::BadDevice {
                index: 0,
                why: "reserved bytes are not zero",
            },
        ),
        (
            "hello agent not UTF-8",
            with_payload(kind::HELLO, &hello_bytes(|b| b[22] = 0xff)),
            WireError::BadHello("agent string is not UTF-8"),
        ),
    ];
    for (what, bytes, want) in cases {
        assert_eq!(
            decode(&bytes).map(|f| f.map(|(f, _)| f)),
            Err(want.clone()),
            "{what}"
        );
        // The message names the problem.
        assert!(!want.to_string().is_empty());
        // A reader refuses it the same way, and only once its bytes are in.
        let mut r = FrameReader::default();
        r.push(&bytes);
        assert_eq!(r.next_frame(), Err(want), "{what}");
    }
}

/// A `Devices` payload with these indexes (UUIDs of one repeated byte).
fn device_bytes(indexes: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for &i in indexes {
        b.extend_from_slice(&[i, 0, 0, 0]);
        b.extend_from_slice(&[i; 16]);
    }
    b
}

#[test]
fn a_device_uuid_is_spelled_as_nvml_spells_it() {
    let d = Device {
        index: 0,
        uuid: [
            0x3f, 0x2a, 0x91, 0x0c, 0x5b, 0x7e, 0x4d, 0x21, 0x9a, 0x0b, 0xcc, 0xde, 0x01, 0x23,
            0x45, 0x67,
        ],
    };
    assert_eq!(d.nvml_uuid(), "GPU-3f2a910c-5b7e-4d21-9a0b-ccde01234567");
}

#[test]
fn a_frame_of_the_largest_size_is_accepted() {
    let n = max_records_per_frame();
    let frame = Frame::Records(vec![record(RecordKind::Kernel, 1, 2); n]);
    let bytes = encoded(&frame);
    assert!(bytes.len() <= HEADER_LEN + MAX_PAYLOAD);
    assert_eq!(decode(&bytes).unwrap().unwrap().0, frame);
}

#[test]
fn version_1_records_are_read_without_thread_and_graph() {
    // A version-1 sender (an older agent still loaded in a running
    // process): 40-byte records, the same fields up to `bytes`.
    let r = record(RecordKind::RuntimeApi, 10, 20);
    let v2 = encoded(&Frame::Records(vec![r, r]));
    let mut v1 = v2[..HEADER_LEN].to_vec();
    v1[4..6].copy_from_slice(&1u16.to_le_bytes());
    v1[8..12].copy_from_slice(&80u32.to_le_bytes());
    for rec in v2[HEADER_LEN..].chunks(RECORD_LEN) {
        v1.extend_from_slice(&rec[..40]);
    }
    let (frame, used) = decode(&v1).unwrap().unwrap();
    assert_eq!(used, v1.len());
    let old = Record {
        thread: 0,
        graph: 0,
        ..r
    };
    assert_eq!(frame, Frame::Records(vec![old, old]));
    // A length that fits neither layout of its version is refused.
    v1[8..12].copy_from_slice(&48u32.to_le_bytes());
    assert_eq!(
        decode(&v1[..HEADER_LEN + 48]),
        Err(WireError::BadLength {
            kind: kind::RECORDS,
            len: 48
        })
    );
    // A version from the future is refused with the fix.
    let mut future = v2.clone();
    future[4..6].copy_from_slice(&3u16.to_le_bytes());
    let err = decode(&future).unwrap_err();
    assert_eq!(err, WireError::UnsupportedVersion(3));
    assert!(err.to_string().contains("same release"), "{err}");
}

#[test]
fn each_launch_or_wait_call_has_the_role_its_name_says() {
    for (driver, table) in [
        (true, &cbid::DRIVER_LAUNCH_OR_WAIT[..]),
        (false, &cbid::RUNTIME_LAUNCH_OR_WAIT[..]),
    ] {
        for (name, id) in table {
            let role = cbid::role(driver, *id).unwrap_or_else(|| panic!("{name}"));
            let want = if name.contains("Synchronize") {
                cbid::Role::Waits
            } else if name.contains("Memcpy") {
                cbid::Role::Copies
            } else {
                cbid::Role::LaunchesKernels
            };
            assert_eq!(role, want, "{name}");
            assert_eq!(role.hands_work(), !name.contains("Synchronize"), "{name}");
        }
    }
    assert_eq!(cbid::role(true, 9999), None);
    // The two id spaces are apart: 211 is cudaLaunchKernel among the
    // runtime's ids, and none of the driver's launches or waits.
    assert_eq!(cbid::role(false, 211), Some(cbid::Role::LaunchesKernels));
    assert_eq!(cbid::role(true, 211), None);
}
