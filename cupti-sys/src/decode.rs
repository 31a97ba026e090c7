//! One CUPTI activity record's bytes into an `Activity`, and an
//! `Activity` into a wire record. Fields are read at the offsets in
//! `layout`, little-endian, from a slice whose length is checked first:
//! a record too short for its fields is an error, never a read past it.

use gapscope_wire::{MAX_DEVICES, Record, RecordKind, copy};

use crate::layout::{self, ActivityKind, Field};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    Kernel {
        start: u64,
        end: u64,
        device: u32,
        context: u32,
        stream: u32,
        correlation: u32,
        /// CUPTI's `const char *name`; the injection library reads it
        /// while the buffer is alive.
        name_ptr: u64,
        /// The launching graph, 0 for a kernel launched on its own.
        graph: u32,
    },
    Memcpy {
        copy_kind: u8,
        bytes: u64,
        start: u64,
        end: u64,
        device: u32,
        stream: u32,
        correlation: u32,
    },
    Memset {
        bytes: u64,
        start: u64,
        end: u64,
        device: u32,
        stream: u32,
        correlation: u32,
    },
    Api {
        driver: bool,
        cbid: u32,
        start: u64,
        end: u64,
        process: u32,
        thread: u32,
        correlation: u32,
    },
    Sync {
        sync_type: u32,
        start: u64,
        end: u64,
        correlation: u32,
        context: u32,
        stream: u32,
    },
    Overhead {
        overhead_kind: u32,
        start: u64,
        end: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A kind Gapscope does not enable (or a corrupt record).
    UnknownKind(u32),
    /// The record ends before a field it must have.
    TooShort { kind: u32, len: usize, need: usize },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownKind(k) => write!(f, "activity kind {k} is not decoded"),
            Self::TooShort { kind, len, need } => {
                write!(
                    f,
                    "a kind-{kind} record of {len} bytes; its fields need {need}"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reads fields from a record whose length covers the furthest one.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn get(&self, (offset, size): Field) -> u64 {
        let mut v = [0u8; 8];
        v[..size].copy_from_slice(&self.0[offset..offset + size]);
        u64::from_le_bytes(v)
    }
    fn u32(&self, f: Field) -> u32 {
        self.get(f) as u32
    }
}

/// The bytes a record of `kind` must have for the fields read.
fn need(kind: ActivityKind) -> usize {
    let fields: &[Field] = match kind {
        ActivityKind::Kernel | ActivityKind::ConcurrentKernel => {
            &[layout::kernel::NAME, layout::kernel::GRAPH_ID]
        }
        ActivityKind::Memcpy => &[layout::memcpy::CORRELATION_ID],
        ActivityKind::Memset => &[layout::memset::CORRELATION_ID],
        ActivityKind::Driver | ActivityKind::Runtime => &[layout::api::CORRELATION_ID],
        ActivityKind::Synchronization => &[layout::sync::STREAM_ID],
        ActivityKind::Overhead => &[layout::overhead::END],
    };
    fields.iter().map(|(o, s)| o + s).max().unwrap_or(4)
}

/// Decodes one record (the bytes `cuptiActivityGetNextRecord` pointed at,
/// as many as the record's struct has).
pub fn decode(record: &[u8]) -> Result<Activity, DecodeError> {
    if record.len() < 4 {
        return Err(DecodeError::TooShort {
            kind: 0,
            len: record.len(),
            need: 4,
        });
    }
    let f = Fields(record);
    let raw_kind = f.u32(layout::KIND);
    let kind = ActivityKind::from_u32(raw_kind).ok_or(DecodeError::UnknownKind(raw_kind))?;
    let need = need(kind);
    if record.len() < need {
        return Err(DecodeError::TooShort {
            kind: raw_kind,
            len: record.len(),
            need,
        });
    }
    use layout::{api, kernel, memcpy, memset, overhead, sync};
    Ok(match kind {
        ActivityKind::Kernel | ActivityKind::ConcurrentKernel => Activity::Kernel {
            start: f.get(kernel::START),
            end: f.get(kernel::END),
            device: f.u32(kernel::DEVICE_ID),
            context: f.u32(kernel::CONTEXT_ID),
            stream: f.u32(kernel::STREAM_ID),
            correlation: f.u32(kernel::CORRELATION_ID),
            name_ptr: f.get(kernel::NAME),
            graph: f.u32(kernel::GRAPH_ID),
        },
        ActivityKind::Memcpy => Activity::Memcpy {
            copy_kind: f.get(memcpy::COPY_KIND) as u8,
            bytes: f.get(memcpy::BYTES),
            start: f.get(memcpy::START),
            end: f.get(memcpy::END),
            device: f.u32(memcpy::DEVICE_ID),
            stream: f.u32(memcpy::STREAM_ID),
            correlation: f.u32(memcpy::CORRELATION_ID),
        },
        ActivityKind::Memset => Activity::Memset {
            bytes: f.get(memset::BYTES),
            start: f.get(memset::START),
            end: f.get(memset::END),
            device: f.u32(memset::DEVICE_ID),
            stream: f.u32(memset::STREAM_ID),
            correlation: f.u32(memset::CORRELATION_ID),
        },
        ActivityKind::Driver | ActivityKind::Runtime => Activity::Api {
            driver: kind == ActivityKind::Driver,
            cbid: f.u32(api::CBID),
            start: f.get(api::START),
            end: f.get(api::END),
            process: f.u32(api::PROCESS_ID),
            thread: f.u32(api::THREAD_ID),
            correlation: f.u32(api::CORRELATION_ID),
        },
        ActivityKind::Synchronization => Activity::Sync {
            sync_type: f.u32(sync::TYPE),
            start: f.get(sync::START),
            end: f.get(sync::END),
            correlation: f.u32(sync::CORRELATION_ID),
            context: f.u32(sync::CONTEXT_ID),
            stream: f.u32(sync::STREAM_ID),
        },
        ActivityKind::Overhead => Activity::Overhead {
            overhead_kind: f.u32(overhead::KIND),
            start: f.get(overhead::START),
            end: f.get(overhead::END),
        },
    })
}

/// CUPTI's `CUpti_ActivityMemcpyKind` as a wire copy direction (arrays
/// count as device memory).
pub fn copy_direction(copy_kind: u8) -> u8 {
    match copy_kind {
        1 | 3 => copy::HOST_TO_DEVICE,
        2 | 4 => copy::DEVICE_TO_HOST,
        5..=8 => copy::DEVICE_TO_DEVICE,
        9 => copy::HOST_TO_HOST,
        10 => copy::PEER_TO_PEER,
        _ => copy::OTHER,
    }
}

impl Activity {
    /// Its (start, end) timestamps, on whatever clock CUPTI used.
    pub fn span(&self) -> (u64, u64) {
        match *self {
            Activity::Kernel { start, end, .. }
            | Activity::Memcpy { start, end, .. }
            | Activity::Memset { start, end, .. }
            | Activity::Api { start, end, .. }
            | Activity::Sync { start, end, .. }
            | Activity::Overhead { start, end, .. } => (start, end),
        }
    }

    /// The wire record: timestamps moved by `offset_ns` (0 when CUPTI's
    /// timestamp callback already gave CLOCK_MONOTONIC), `name` the
    /// interned kernel name, `device_of_context` the device of a
    /// synchronization's context (its record has none). None for a record
    /// the wire cannot carry: one that ends before it starts (CUPTI leaves
    /// incomplete records' end at 0) or on a device index over 63.
    pub fn to_wire(
        &self,
        offset_ns: i64,
        name: u32,
        device_of_context: impl Fn(u32) -> Option<u32>,
    ) -> Option<Record> {
        let shift = |t: u64| t.checked_add_signed(offset_ns);
        // (CUDA device, the record on CUPTI's clock)
        let (device, raw) = match *self {
            Activity::Kernel {
                start,
                end,
                device,
                stream,
                correlation,
                graph,
                ..
            } => (
                device,
                Record {
                    stream,
                    correlation,
                    name,
                    graph,
                    ..span(RecordKind::Kernel, start, end)
                },
            ),
            Activity::Memcpy {
                copy_kind,
                bytes,
                start,
                end,
                device,
                stream,
                correlation,
            } => (
                device,
                Record {
                    detail: copy_direction(copy_kind),
                    stream,
                    correlation,
                    bytes,
                    ..span(RecordKind::Memcpy, start, end)
                },
            ),
            Activity::Memset {
                bytes,
                start,
                end,
                device,
                stream,
                correlation,
            } => (
                device,
                Record {
                    stream,
                    correlation,
                    bytes,
                    ..span(RecordKind::Memset, start, end)
                },
            ),
            Activity::Api {
                driver,
                cbid,
                start,
                end,
                correlation,
                thread,
                ..
            } => {
                let kind = if driver {
                    RecordKind::DriverApi
                } else {
                    RecordKind::RuntimeApi
                };
                let name = cbid;
                (
                    0,
                    Record {
                        correlation,
                        name,
                        thread,
                        ..span(kind, start, end)
                    },
                )
            }
            Activity::Sync {
                sync_type,
                start,
                end,
                correlation,
                context,
                stream,
            } => (
                device_of_context(context).unwrap_or(0),
                Record {
                    detail: sync_type.min(255) as u8,
                    stream,
                    correlation,
                    ..span(RecordKind::Sync, start, end)
                },
            ),
            Activity::Overhead {
                overhead_kind,
                start,
                end,
            } => (
                0,
                Record {
                    name: overhead_kind,
                    ..span(RecordKind::Overhead, start, end)
                },
            ),
        };
        if raw.end_ns < raw.start_ns || device >= u32::from(MAX_DEVICES) {
            return None;
        }
        Some(Record {
            device: device as u8,
            start_ns: shift(raw.start_ns)?,
            end_ns: shift(raw.end_ns)?,
            ..raw
        })
    }
}

/// A record of `kind` from `start` to `end` with every other field zero.
fn span(kind: RecordKind, start: u64, end: u64) -> Record {
    Record {
        kind,
        device: 0,
        detail: 0,
        stream: 0,
        correlation: 0,
        name: 0,
        start_ns: start,
        end_ns: end,
        bytes: 0,
        thread: 0,
        graph: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of `size` bytes with `fields` written at their layout
    /// offsets, as CUPTI would lay it out.
    fn record(kind: ActivityKind, size: usize, fields: &[(Field, u64)]) -> Vec<u8> {
        let mut b = vec![0xaa; size];
        b[0..4].copy_from_slice(&(kind as u32).to_le_bytes());
        for ((offset, len), v) in fields {
            b[*offset..offset + len].copy_from_slice(&v.to_le_bytes()[..*len]);
        }
        b
    }

    #[test]
    fn a_kernel_record_of_either_release_decodes_to_the_same_activity() {
        use layout::kernel::*;
        let fields = [
            (START, 1_000),
            (END, 3_500),
            (DEVICE_ID, 2),
            (CONTEXT_ID, 9),
            (STREAM_ID, 13),
            (CORRELATION_ID, 77),
            (NAME, 0x7f00_dead_beef),
            (GRAPH_ID, 5),
        ];
        let want = Activity::Kernel {
            start: 1_000,
            end: 3_500,
            device: 2,
            context: 9,
            stream: 13,
            correlation: 77,
            name_ptr: 0x7f00_dead_beef,
            graph: 5,
        };
        // CUpti_ActivityKernel9 (12.x) is 208 bytes, Kernel13 (13.5) 248.
        for size in [208, 248] {
            let b = record(ActivityKind::ConcurrentKernel, size, &fields);
            assert_eq!(decode(&b), Ok(want));
        }
        assert_eq!(want.span(), (1_000, 3_500));
        let r = want.to_wire(-500, 4, |_| None).unwrap();
        assert_eq!((r.kind, r.device, r.name), (RecordKind::Kernel, 2, 4));
        assert_eq!((r.start_ns, r.end_ns, r.correlation), (500, 3_000, 77));
    }

    #[test]
    fn copies_memsets_api_calls_syncs_and_overhead_decode() {
        use layout::{api, memcpy, memset, overhead, sync};
        let m = record(
            ActivityKind::Memcpy,
            96,
            &[
                (memcpy::COPY_KIND, 2),
                (memcpy::BYTES, 1 << 20),
                (memcpy::START, 10),
                (memcpy::END, 20),
                (memcpy::DEVICE_ID, 1),
                (memcpy::STREAM_ID, 7),
                (memcpy::CORRELATION_ID, 5),
            ],
        );
        let a = decode(&m).unwrap();
        let r = a.to_wire(0, 0, |_| None).unwrap();
        assert_eq!(
            (r.kind, r.detail, r.bytes),
            (RecordKind::Memcpy, copy::DEVICE_TO_HOST, 1 << 20)
        );

        let s = record(
            ActivityKind::Memset,
            88,
            &[
                (memset::BYTES, 64),
                (memset::START, 1),
                (memset::END, 2),
                (memset::CORRELATION_ID, 3),
            ],
        );
        assert!(matches!(
            decode(&s),
            Ok(Activity::Memset {
                bytes: 64,
                correlation: 3,
                ..
            })
        ));

        let call = record(
            ActivityKind::Runtime,
            40,
            &[
                (api::CBID, 211),
                (api::START, 5),
                (api::END, 9),
                (api::CORRELATION_ID, 5),
            ],
        );
        let r = decode(&call).unwrap().to_wire(0, 0, |_| None).unwrap();
        assert_eq!(
            (r.kind, r.name, r.correlation),
            (RecordKind::RuntimeApi, 211, 5)
        );
        let call = record(ActivityKind::Driver, 40, &[(api::START, 5), (api::END, 9)]);
        assert!(matches!(
            decode(&call),
            Ok(Activity::Api { driver: true, .. })
        ));

        let wait = record(
            ActivityKind::Synchronization,
            56,
            &[
                (sync::TYPE, 3),
                (sync::START, 100),
                (sync::END, 900),
                (sync::CONTEXT_ID, 4),
            ],
        );
        let r = decode(&wait)
            .unwrap()
            .to_wire(0, 0, |ctx| (ctx == 4).then_some(3))
            .unwrap();
        assert_eq!((r.kind, r.detail, r.device), (RecordKind::Sync, 3, 3));

        let o = record(
            ActivityKind::Overhead,
            40,
            &[
                (overhead::KIND, 1 << 16),
                (overhead::START, 1),
                (overhead::END, 2),
            ],
        );
        assert!(matches!(
            decode(&o),
            Ok(Activity::Overhead {
                overhead_kind: 65536,
                ..
            })
        ));
    }

    #[test]
    fn short_unknown_and_unplaceable_records_are_refused() {
        assert_eq!(
            decode(&[1, 0]),
            Err(DecodeError::TooShort {
                kind: 0,
                len: 2,
                need: 4
            })
        );
        assert_eq!(
            decode(&record(ActivityKind::Kernel, 111, &[])),
            Err(DecodeError::TooShort {
                kind: 3,
                len: 111,
                need: 160
            })
        );
        let mut b = record(ActivityKind::Kernel, 208, &[]);
        b[0] = 99;
        assert_eq!(decode(&b), Err(DecodeError::UnknownKind(99)));
        // An incomplete record (end 0) and a device past 63 stay off the wire.
        let k = |end, device| Activity::Kernel {
            start: 10,
            end,
            device,
            context: 0,
            stream: 0,
            correlation: 0,
            name_ptr: 0,
            graph: 0,
        };
        assert!(k(0, 0).to_wire(0, 0, |_| None).is_none());
        assert!(k(20, 64).to_wire(0, 0, |_| None).is_none());
        assert!(
            k(20, 0).to_wire(-11, 0, |_| None).is_none(),
            "before the epoch"
        );
    }

    #[test]
    fn copy_kinds_map_to_directions() {
        assert_eq!(copy_direction(1), copy::HOST_TO_DEVICE);
        assert_eq!(copy_direction(2), copy::DEVICE_TO_HOST);
        assert_eq!(copy_direction(8), copy::DEVICE_TO_DEVICE);
        assert_eq!(copy_direction(9), copy::HOST_TO_HOST);
        assert_eq!(copy_direction(10), copy::PEER_TO_PEER);
        assert_eq!(copy_direction(0), copy::OTHER);
    }
}
