//! The frame format between the injection library (`libgapscope_inject.so`,
//! inside a serving process) and gapscoped, over a Unix stream socket.
//!
//! Every frame is a 12-byte header — magic `GSCP`, version (u16), kind
//! (u16), payload length (u32), all little-endian — and a payload of at
//! most `MAX_PAYLOAD` bytes. The payload of each kind has a fixed layout
//! (below) and is checked in full before anything in it is used: a
//! decoder never trusts a length it has not bounded, never allocates more
//! than the frame's own size, and a frame is either taken whole or
//! rejected whole.
//!
//! A stream starts with `Hello`; then `Names` (kernel names, interned per
//! connection), `Records` (GPU activity, fixed 48-byte records),
//! `Dropped` (what the sender had to throw away) and `Devices` (which GPU,
//! by UUID, each CUDA device index of the process is) in any order.
//! `Devices` came with this release: a gapscoped of an older one refuses
//! it as an unknown kind (upgrade the daemon first, as always).
//!
//! Version 2 added the calling thread and the graph id to each record;
//! version 1 frames (40-byte records, from an agent of an older release
//! still loaded in a running process) are read with both as 0.
#![forbid(unsafe_code)]

use std::fmt;

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"GSCP";
/// The version this crate writes.
pub const VERSION: u16 = 2;
/// The oldest version it reads.
pub const OLDEST_VERSION: u16 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 12;
/// Largest payload accepted.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Bytes per activity record.
pub const RECORD_LEN: usize = 48;
/// Bytes per activity record of version 1.
const RECORD_LEN_V1: usize = 40;
/// Longest kernel name carried (longer ones are cut by the sender).
pub const MAX_NAME: usize = 1024;
/// Longest agent string in `Hello`.
pub const MAX_AGENT: usize = 64;
/// Highest device index accepted.
pub const MAX_DEVICES: u8 = 64;

/// Frame kinds, the header's `kind`.
pub mod kind {
    pub const HELLO: u16 = 1;
    pub const RECORDS: u16 = 2;
    pub const NAMES: u16 = 3;
    pub const DROPPED: u16 = 4;
    pub const DEVICES: u16 = 5;
}

/// Bytes per `Devices` entry: index u8, three zero bytes, UUID (16).
pub const DEVICE_LEN: usize = 20;

/// One CUDA device of the sending process: the index its records carry
/// (the CUDA ordinal, within `CUDA_VISIBLE_DEVICES`) and the GPU's UUID
/// (`cuDeviceGetUuid`; NVML writes the same bytes as `GPU-xxxxxxxx-…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub index: u8,
    pub uuid: [u8; 16],
}

impl Device {
    /// The UUID as NVML spells it: `GPU-` and the 16 bytes in 8-4-4-4-12
    /// lowercase hex.
    pub fn nvml_uuid(&self) -> String {
        let hex: String = self.uuid.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "GPU-{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }
}

/// How the sender's timestamps were put on CLOCK_MONOTONIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockMode {
    /// CUPTI's timestamp callback returned CLOCK_MONOTONIC itself.
    Callback = 1,
    /// CUPTI's own clock plus an offset measured by bracketing it between
    /// two CLOCK_MONOTONIC reads (the callback was refused or gave zeros).
    Offset = 2,
}

/// The first frame of a stream: who is talking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub pid: u32,
    /// `cuDriverGetVersion` / `cuptiGetVersion`, as the process loaded them.
    pub cuda_version: u32,
    pub cupti_version: u32,
    pub clock: ClockMode,
    /// Added to CUPTI timestamps in `Offset` mode (already applied to the
    /// records; sent so the daemon can report it).
    pub clock_offset_ns: i64,
    /// The injection library's name and version.
    pub agent: String,
}

/// What an activity record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A kernel ran; `name` is its interned name.
    Kernel = 1,
    /// A copy; `detail` is a `copy` direction, `bytes` its size.
    Memcpy = 2,
    /// A memset; `bytes` its size.
    Memset = 3,
    /// The CPU waited in a CUDA synchronization; `detail` says which.
    Sync = 4,
    /// A runtime API call; `name` is CUPTI's callback id.
    RuntimeApi = 5,
    /// A driver API call; `name` is CUPTI's callback id.
    DriverApi = 6,
    /// CUPTI's own overhead (buffer flushes, instrumentation).
    Overhead = 7,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Kernel,
            2 => Self::Memcpy,
            3 => Self::Memset,
            4 => Self::Sync,
            5 => Self::RuntimeApi,
            6 => Self::DriverApi,
            7 => Self::Overhead,
            _ => return None,
        })
    }
}

/// `Record::detail` of a memcpy: its direction.
pub mod copy {
    pub const OTHER: u8 = 0;
    pub const HOST_TO_DEVICE: u8 = 1;
    pub const DEVICE_TO_HOST: u8 = 2;
    pub const DEVICE_TO_DEVICE: u8 = 3;
    pub const HOST_TO_HOST: u8 = 4;
    pub const PEER_TO_PEER: u8 = 5;
}

/// CUPTI callback ids (an API record's `name`) of the calls that launch GPU
/// work or wait for it: the entry points gapscoped's uprobes probe, with
/// their per-thread default stream variants. The same in CUDA 12.0 to 13.5
/// (`gapscope-cupti-sys`'s layout test reads them in the real headers).
pub mod cbid {
    /// `cupti_driver_cbid.h`: (`CUPTI_DRIVER_TRACE_CBID_` name, id).
    pub const DRIVER_LAUNCH_OR_WAIT: [(&str, u32); 12] = [
        ("cuCtxSynchronize", 17),
        ("cuEventSynchronize", 121),
        ("cuStreamSynchronize", 126),
        ("cuMemcpyDtoH_v2", 278),
        ("cuLaunchKernel", 307),
        ("cuMemcpyDtoH_v2_ptds", 398),
        ("cuStreamSynchronize_ptsz", 440),
        ("cuLaunchKernel_ptsz", 442),
        ("cuGraphLaunch", 514),
        ("cuGraphLaunch_ptsz", 515),
        ("cuLaunchKernelEx", 652),
        ("cuLaunchKernelEx_ptsz", 653),
    ];
    /// `cupti_runtime_cbid.h`: (`CUPTI_RUNTIME_TRACE_CBID_` name, id).
    pub const RUNTIME_LAUNCH_OR_WAIT: [(&str, u32); 9] = [
        ("cudaStreamSynchronize_v3020", 131),
        ("cudaDeviceSynchronize_v3020", 165),
        ("cudaLaunchKernel_v7000", 211),
        ("cudaLaunchKernel_ptsz_v7000", 214),
        ("cudaStreamSynchronize_ptsz_v7000", 239),
        ("cudaGraphLaunch_v10000", 311),
        ("cudaGraphLaunch_ptsz_v10000", 312),
        ("cudaLaunchKernelExC_v11060", 430),
        ("cudaLaunchKernelExC_ptsz_v11060", 431),
    ];

    /// What a launch-or-wait call does with the GPU.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Role {
        /// A kernel or graph launch: its correlation id returns on kernels.
        LaunchesKernels,
        /// A copy: work for the GPU, and a wait for it.
        Copies,
        /// A synchronization: a wait, no work.
        Waits,
    }

    impl Role {
        /// Whether the call hands the GPU work.
        pub fn hands_work(self) -> bool {
            self != Self::Waits
        }
    }

    /// The role of an API record (`driver` or runtime) that launches or
    /// waits for GPU work; None for any other call.
    pub fn role(driver: bool, id: u32) -> Option<Role> {
        let table: &[(&str, u32)] = if driver {
            &DRIVER_LAUNCH_OR_WAIT
        } else {
            &RUNTIME_LAUNCH_OR_WAIT
        };
        let (name, _) = table.iter().find(|(_, c)| *c == id)?;
        Some(if name.contains("Launch") {
            Role::LaunchesKernels
        } else if name.contains("Memcpy") {
            Role::Copies
        } else {
            Role::Waits
        })
    }
}

/// One GPU activity or API call, on CLOCK_MONOTONIC nanoseconds.
///
/// Layout (48 bytes, little-endian): kind u8, device u8, detail u8, 0 u8,
/// stream u32, correlation u32, name u32, start_ns u64, end_ns u64,
/// bytes u64, thread u32, graph u32 (version 1: the first 40 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub device: u8,
    pub detail: u8,
    pub stream: u32,
    /// Joins an API call to the GPU work it caused.
    pub correlation: u32,
    /// Kernel: interned name id (0: unknown). API: callback id.
    pub name: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub bytes: u64,
    /// API records: the calling thread's id as the kernel knows it
    /// (gettid), so a launch joins the thread's states; 0: unknown.
    pub thread: u32,
    /// Kernels launched by a CUDA graph: its id; else 0.
    pub graph: u32,
}

/// An interned kernel name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub id: u32,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Records(Vec<Record>),
    Names(Vec<Name>),
    /// Records and buffers the sender threw away since the last `Dropped`.
    Dropped {
        records: u64,
        buffers: u64,
    },
    /// The process's CUDA devices (at most `MAX_DEVICES`, each index once).
    Devices(Vec<Device>),
}

/// Why a frame was rejected. After any of these the stream cannot be
/// trusted: the receiver drops the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    BadMagic([u8; 4]),
    UnsupportedVersion(u16),
    UnknownKind(u16),
    TooLarge(usize),
    /// The payload's length does not fit its kind.
    BadLength {
        kind: u16,
        len: usize,
    },
    BadRecord {
        index: usize,
        why: &'static str,
    },
    BadName {
        index: usize,
        why: &'static str,
    },
    BadHello(&'static str),
    BadDevice {
        index: usize,
        why: &'static str,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(m) => write!(f, "not a gapscope frame (magic {m:02x?})"),
            Self::UnsupportedVersion(v) => write!(
                f,
                "frame version {v}, this side reads {OLDEST_VERSION} to {VERSION}: use an injection library from the same release as gapscoped"
            ),
            Self::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            Self::TooLarge(n) => {
                write!(f, "payload of {n} bytes, over the {MAX_PAYLOAD}-byte limit")
            }
            Self::BadLength { kind, len } => {
                write!(f, "a kind-{kind} payload cannot be {len} bytes long")
            }
            Self::BadRecord { index, why } => write!(f, "record {index}: {why}"),
            Self::BadName { index, why } => write!(f, "name {index}: {why}"),
            Self::BadHello(why) => write!(f, "hello: {why}"),
            Self::BadDevice { index, why } => write!(f, "device entry {index}: {why}"),
        }
    }
}

impl std::error::Error for WireError {}

/// Appends `frame`, encoded, to `out`. The caller keeps frames within
/// `MAX_PAYLOAD` (`max_records_per_frame`, `MAX_NAME`); an oversized
/// frame is encoded anyway and the receiver rejects it.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let kind = match frame {
        Frame::Hello(_) => kind::HELLO,
        Frame::Records(_) => kind::RECORDS,
        Frame::Names(_) => kind::NAMES,
        Frame::Dropped { .. } => kind::DROPPED,
        Frame::Devices(_) => kind::DEVICES,
    };
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    match frame {
        Frame::Hello(h) => {
            out.extend_from_slice(&h.pid.to_le_bytes());
            out.extend_from_slice(&h.cuda_version.to_le_bytes());
            out.extend_from_slice(&h.cupti_version.to_le_bytes());
            out.push(h.clock as u8);
            out.extend_from_slice(&h.clock_offset_ns.to_le_bytes());
            let agent = &h.agent.as_bytes()[..h.agent.len().min(MAX_AGENT)];
            out.push(agent.len() as u8);
            out.extend_from_slice(agent);
        }
        Frame::Records(records) => {
            for r in records {
                out.extend_from_slice(&[r.kind as u8, r.device, r.detail, 0]);
                out.extend_from_slice(&r.stream.to_le_bytes());
                out.extend_from_slice(&r.correlation.to_le_bytes());
                out.extend_from_slice(&r.name.to_le_bytes());
                out.extend_from_slice(&r.start_ns.to_le_bytes());
                out.extend_from_slice(&r.end_ns.to_le_bytes());
                out.extend_from_slice(&r.bytes.to_le_bytes());
                out.extend_from_slice(&r.thread.to_le_bytes());
                out.extend_from_slice(&r.graph.to_le_bytes());
            }
        }
        Frame::Names(names) => {
            for n in names {
                let text = truncate_utf8(&n.text, MAX_NAME);
                out.extend_from_slice(&n.id.to_le_bytes());
                out.extend_from_slice(&(text.len() as u16).to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
        Frame::Dropped { records, buffers } => {
            out.extend_from_slice(&records.to_le_bytes());
            out.extend_from_slice(&buffers.to_le_bytes());
        }
        Frame::Devices(devices) => {
            for d in devices {
                out.extend_from_slice(&[d.index, 0, 0, 0]);
                out.extend_from_slice(&d.uuid);
            }
        }
    }
    let len = (out.len() - start - HEADER_LEN) as u32;
    out[start + 8..start + 12].copy_from_slice(&len.to_le_bytes());
}

/// Most records one frame can carry.
pub const fn max_records_per_frame() -> usize {
    MAX_PAYLOAD / RECORD_LEN
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decodes the first frame in `buf`: `Ok(Some((frame, bytes used)))`,
/// `Ok(None)` when more bytes are needed, `Err` when the stream is bad.
/// The header is checked as soon as it is complete, so a hostile length
/// is refused before its payload is waited for.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    if buf.len() < HEADER_LEN {
        // A wrong magic is refused as early as its bytes arrive.
        let n = buf.len().min(4);
        if buf[..n] != MAGIC[..n] {
            let mut m = [0u8; 4];
            m[..n].copy_from_slice(&buf[..n]);
            return Err(WireError::BadMagic(m));
        }
        return Ok(None);
    }
    let magic: [u8; 4] = buf[0..4].try_into().unwrap_or_default();
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([buf[4], buf[5]]);
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(WireError::UnsupportedVersion(version));
    }
    let kind = u16::from_le_bytes([buf[6], buf[7]]);
    if !(kind::HELLO..=kind::DEVICES).contains(&kind) {
        return Err(WireError::UnknownKind(kind));
    }
    let len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLarge(len));
    }
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    let frame = match kind {
        kind::HELLO => Frame::Hello(hello(payload)?),
        kind::RECORDS => Frame::Records(records(payload, version)?),
        kind::NAMES => Frame::Names(names(payload)?),
        kind::DEVICES => Frame::Devices(devices(payload)?),
        _ => {
            if len != 16 {
                return Err(WireError::BadLength { kind, len });
            }
            let mut r = Reader(payload);
            Frame::Dropped {
                records: r.u64(),
                buffers: r.u64(),
            }
        }
    };
    Ok(Some((frame, HEADER_LEN + len)))
}

/// Reads little-endian integers from a slice whose length was checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take(2).try_into().unwrap_or_default())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap_or_default())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap_or_default())
    }
}

const HELLO_FIXED: usize = 4 + 4 + 4 + 1 + 8 + 1;

fn devices(p: &[u8]) -> Result<Vec<Device>, WireError> {
    if !p.len().is_multiple_of(DEVICE_LEN) || p.len() > DEVICE_LEN * MAX_DEVICES as usize {
        return Err(WireError::BadLength {
            kind: kind::DEVICES,
            len: p.len(),
        });
    }
    let mut out: Vec<Device> = Vec::with_capacity(p.len() / DEVICE_LEN);
    for (index, chunk) in p.chunks_exact(DEVICE_LEN).enumerate() {
        let bad = |why| Err(WireError::BadDevice { index, why });
        if chunk[1..4] != [0, 0, 0] {
            return bad("reserved bytes are not zero");
        }
        let d = Device {
            index: chunk[0],
            uuid: chunk[4..].try_into().unwrap_or_default(),
        };
        if d.index >= MAX_DEVICES {
            return bad("device index out of range");
        }
        if out.iter().any(|o| o.index == d.index) {
            return bad("device index given twice");
        }
        out.push(d);
    }
    Ok(out)
}

fn hello(p: &[u8]) -> Result<Hello, WireError> {
    if p.len() < HELLO_FIXED {
        return Err(WireError::BadLength {
            kind: kind::HELLO,
            len: p.len(),
        });
    }
    let mut r = Reader(p);
    let pid = r.u32();
    let cuda_version = r.u32();
    let cupti_version = r.u32();
    let clock = match r.u8() {
        1 => ClockMode::Callback,
        2 => ClockMode::Offset,
        _ => return Err(WireError::BadHello("unknown clock mode")),
    };
    let clock_offset_ns = r.u64() as i64;
    let agent_len = r.u8() as usize;
    if agent_len > MAX_AGENT {
        return Err(WireError::BadHello("agent string too long"));
    }
    if r.0.len() != agent_len {
        return Err(WireError::BadLength {
            kind: kind::HELLO,
            len: p.len(),
        });
    }
    let agent = std::str::from_utf8(r.0)
        .map_err(|_| WireError::BadHello("agent string is not UTF-8"))?
        .to_string();
    Ok(Hello {
        pid,
        cuda_version,
        cupti_version,
        clock,
        clock_offset_ns,
        agent,
    })
}

fn records(p: &[u8], version: u16) -> Result<Vec<Record>, WireError> {
    let len = if version == 1 {
        RECORD_LEN_V1
    } else {
        RECORD_LEN
    };
    if !p.len().is_multiple_of(len) {
        return Err(WireError::BadLength {
            kind: kind::RECORDS,
            len: p.len(),
        });
    }
    p.chunks_exact(len)
        .enumerate()
        .map(|(index, chunk)| {
            let mut r = Reader(chunk);
            let kind = RecordKind::from_u8(r.u8()).ok_or(WireError::BadRecord {
                index,
                why: "unknown record kind",
            })?;
            let device = r.u8();
            let detail = r.u8();
            let _reserved = r.u8();
            let rec = Record {
                kind,
                device,
                detail,
                stream: r.u32(),
                correlation: r.u32(),
                name: r.u32(),
                start_ns: r.u64(),
                end_ns: r.u64(),
                bytes: r.u64(),
                // Version 1 ends here: the reader gives 0 past the end.
                thread: r.u32(),
                graph: r.u32(),
            };
            if rec.device >= MAX_DEVICES {
                return Err(WireError::BadRecord {
                    index,
                    why: "device index out of range",
                });
            }
            if rec.end_ns < rec.start_ns {
                return Err(WireError::BadRecord {
                    index,
                    why: "ends before it starts",
                });
            }
            Ok(rec)
        })
        .collect()
}

fn names(p: &[u8]) -> Result<Vec<Name>, WireError> {
    let mut r = Reader(p);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let index = out.len();
        if r.0.len() < 6 {
            return Err(WireError::BadName {
                index,
                why: "truncated entry",
            });
        }
        let id = r.u32();
        let len = r.u16() as usize;
        if len > MAX_NAME {
            return Err(WireError::BadName {
                index,
                why: "longer than MAX_NAME",
            });
        }
        if id == 0 {
            return Err(WireError::BadName {
                index,
                why: "id 0 means no name",
            });
        }
        if r.0.len() < len {
            return Err(WireError::BadName {
                index,
                why: "runs past the payload",
            });
        }
        let text = std::str::from_utf8(r.take(len)).map_err(|_| WireError::BadName {
            index,
            why: "not UTF-8",
        })?;
        out.push(Name {
            id,
            text: text.to_string(),
        });
    }
    Ok(out)
}

/// Accumulates bytes from a stream and yields whole frames. Its buffer
/// holds at most one incomplete frame (the header bounds it) plus what
/// the caller pushed since it last took frames out.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// Bytes waiting for the rest of their frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, None when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        match decode(&self.buf)? {
            Some((frame, used)) => {
                self.buf.drain(..used);
                Ok(Some(frame))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests;
