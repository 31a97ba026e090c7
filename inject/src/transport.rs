//! Records to gapscoped over its Unix socket, from a thread of our own.
//!
//! The rules, because this runs inside someone else's process:
//! * Never block a caller: `send_records` and `intern` only try to hand
//!   work to the transport thread through a bounded channel; when it is
//!   full the records are dropped and counted.
//! * No daemon: stay dormant. Records are dropped and counted, a connect
//!   is tried with a growing back-off (100 ms to 5 s), quietly.
//! * Slow daemon: the socket is non-blocking; what does not fit waits in a
//!   bounded buffer, and past it records are dropped and counted. Each
//!   connection starts with `Hello`, every name interned so far and the
//!   process's devices once known, and the drops are reported in
//!   `Dropped` frames.
//! * Fork: the child has no transport thread; its copies of the handles
//!   see the pid change and do nothing.
//! * Each of these (no daemon, a daemon gone, a daemon not reading) is
//!   said once on the host's stderr when it starts, and the connection
//!   that ends it says so with what was lost meanwhile: a few lines per
//!   daemon restart, never one per record or per retry.
//! * Exit: `flush` lets the host's last records out before it exits,
//!   waiting a bounded time (the agent's atexit handler gives it 500 ms).

use std::{
    collections::HashMap,
    io::ErrorKind,
    os::unix::net::UnixStream,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use gapscope_wire::{Device, Frame, Hello, MAX_NAME, Name, Record, encode, max_records_per_frame};

#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub socket: PathBuf,
    /// Batches waiting for the transport thread.
    pub queue_batches: usize,
    /// Bytes waiting for the socket; past it, records are dropped.
    pub max_buffered_bytes: usize,
    /// How often the thread wakes to write and to retry connecting.
    pub tick: Duration,
}

impl TransportConfig {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            queue_batches: 256,
            max_buffered_bytes: 8 << 20,
            tick: Duration::from_millis(50),
        }
    }
}

/// What the transport did, readable from any thread.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub records_sent: AtomicU64,
    pub records_dropped: AtomicU64,
    /// Encoded and waiting for the socket (neither sent nor dropped yet).
    pub records_buffered: AtomicU64,
    /// The most bytes that ever waited for the socket.
    pub peak_buffered_bytes: AtomicU64,
    /// Handed to the transport thread, not yet encoded or dropped by it.
    pub records_queued: AtomicU64,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    pub bytes_written: AtomicU64,
}

enum Work {
    Records(Vec<Record>),
    Name(u32, String),
    Dropped(u64),
    Devices(Vec<Device>),
    /// Write everything handed over so far, then answer.
    Flush(SyncSender<()>),
}

pub struct Transport {
    tx: SyncSender<Work>,
    names: Mutex<HashMap<String, u32>>,
    stats: Arc<TransportStats>,
    pid: u32,
    thread: Option<JoinHandle<()>>,
}

/// Most kernel names interned; later ones are sent unnamed (id 0).
const MAX_NAMES: usize = 65_536;

impl Transport {
    /// Starts the transport thread. `hello` opens every connection.
    pub fn start(config: TransportConfig, hello: Hello) -> std::io::Result<Transport> {
        let (tx, rx) = sync_channel(config.queue_batches.max(1));
        let stats = Arc::new(TransportStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("gapscope-inject".into())
            .spawn(move || Worker::new(config, hello, thread_stats).run(rx))?;
        Ok(Transport {
            tx,
            names: Mutex::new(HashMap::new()),
            stats,
            pid: std::process::id(),
            thread: Some(thread),
        })
    }

    fn forked(&self) -> bool {
        std::process::id() != self.pid
    }

    /// Hands records to the transport thread; never waits.
    pub fn send_records(&self, records: Vec<Record>) {
        if records.is_empty() || self.forked() {
            return;
        }
        let n = records.len() as u64;
        // Counted before the send, so the thread never takes more than
        // was counted.
        self.stats.records_queued.fetch_add(n, Ordering::Relaxed);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Work::Records(records))
        {
            self.stats.records_queued.fetch_sub(n, Ordering::Relaxed);
            self.stats.records_dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Records lost before they reached us (CUPTI's own drops): reported
    /// to gapscoped with ours.
    pub fn report_dropped(&self, records: u64) {
        if records == 0 || self.forked() {
            return;
        }
        self.stats
            .records_dropped
            .fetch_add(records, Ordering::Relaxed);
        let _ = self.tx.try_send(Work::Dropped(records));
    }

    /// The process's CUDA devices, sent now and at the start of every
    /// later connection. False: not handed over (forked, queue full).
    pub fn send_devices(&self, devices: Vec<Device>) -> bool {
        !self.forked() && self.tx.try_send(Work::Devices(devices)).is_ok()
    }

    /// The id of a kernel name (0 when the table is full or the name
    /// could not be handed over).
    pub fn intern(&self, name: &str) -> u32 {
        if self.forked() {
            return 0;
        }
        let name = gapscope_wire::truncate_utf8(name, MAX_NAME);
        let Ok(mut names) = self.names.lock() else {
            return 0;
        };
        if let Some(id) = names.get(name) {
            return *id;
        }
        if names.len() >= MAX_NAMES {
            return 0;
        }
        let id = names.len() as u32 + 1;
        if self.tx.try_send(Work::Name(id, name.to_string())).is_err() {
            return 0;
        }
        names.insert(name.to_string(), id);
        id
    }

    /// Waits, at most `within`, until what was handed over before this
    /// call is written to the socket (or known lost). False: not all of
    /// it within the time, or no transport (forked, queue full).
    pub fn flush(&self, within: Duration) -> bool {
        if self.forked() {
            return false;
        }
        let (ack, done) = sync_channel(1);
        if self.tx.try_send(Work::Flush(ack)).is_err() {
            return false;
        }
        done.recv_timeout(within).is_ok()
    }

    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    /// Stops the thread after it wrote what it could (a second at most).
    pub fn shutdown(mut self) {
        let (tx, _) = sync_channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    config: TransportConfig,
    hello: Hello,
    stats: Arc<TransportStats>,
    conn: Option<UnixStream>,
    /// Encoded bytes not yet written to `conn`.
    out: Vec<u8>,
    /// Where each records frame in `out` ends, and its records: counted
    /// sent once written, dropped if the connection breaks first.
    frames: std::collections::VecDeque<(usize, u64)>,
    names: Vec<(u32, String)>,
    /// The process's devices, once the agent found them.
    devices: Vec<Device>,
    next_connect: Instant,
    backoff: Duration,
    /// Drops not yet reported to the daemon.
    unreported_drops: u64,
    /// Which troubles were said on stderr since the last connection
    /// (`Trouble` bits).
    said: u8,
    /// Records dropped before the first of them.
    dropped_before_trouble: u64,
    /// When the connection was made, until it has lasted `SETTLED`.
    connected_at: Option<Instant>,
}

/// What the host is told about, once each.
/// How long a connection must last to count as the daemon being back.
const SETTLED: Duration = Duration::from_millis(200);

#[derive(Clone, Copy)]
enum Trouble {
    NotListening = 1,
    Gone = 2,
    NotReading = 4,
}

impl Worker {
    fn new(config: TransportConfig, hello: Hello, stats: Arc<TransportStats>) -> Self {
        Self {
            config,
            hello,
            stats,
            conn: None,
            out: Vec::new(),
            frames: std::collections::VecDeque::new(),
            names: Vec::new(),
            devices: Vec::new(),
            next_connect: Instant::now(),
            backoff: Duration::from_millis(100),
            unreported_drops: 0,
            said: 0,
            dropped_before_trouble: 0,
            connected_at: None,
        }
    }

    /// Says `text` on stderr if `trouble` was not said since the last
    /// connection.
    fn say_once(&mut self, trouble: Trouble, text: impl FnOnce() -> String) {
        if self.said == 0 {
            self.dropped_before_trouble = self.stats.records_dropped.load(Ordering::Relaxed);
        }
        if self.said & trouble as u8 == 0 {
            self.said |= trouble as u8;
            eprintln!("gapscope-inject: {}", text());
        }
    }

    /// A connection that has lasted `SETTLED` ends the back-off and the
    /// troubles said.
    fn settle_connection(&mut self) {
        if self.conn.is_some() && self.connected_at.is_some_and(|t| t.elapsed() >= SETTLED) {
            self.connected_at = None;
            self.backoff = Duration::from_millis(100);
            self.say_connected();
        }
    }

    /// A connection ended the troubles said: say so, once.
    fn say_connected(&mut self) {
        if self.said != 0 {
            let lost =
                self.stats.records_dropped.load(Ordering::Relaxed) - self.dropped_before_trouble;
            eprintln!(
                "gapscope-inject: connected to gapscoped at {} again; {lost} records were dropped meanwhile",
                self.config.socket.display()
            );
            self.said = 0;
        }
    }

    fn run(mut self, rx: Receiver<Work>) {
        let mut pending: Vec<Record> = Vec::new();
        let mut open = true;
        while open || !pending.is_empty() {
            let deadline = Instant::now() + self.config.tick;
            // Gather what arrived during one tick.
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(Work::Records(r)) => pending.extend(r),
                    Ok(Work::Name(id, name)) => {
                        if self.conn.is_some() {
                            encode(
                                &Frame::Names(vec![Name {
                                    id,
                                    text: name.clone(),
                                }]),
                                &mut self.out,
                            );
                        }
                        self.names.push((id, name));
                    }
                    Ok(Work::Dropped(n)) => self.unreported_drops += n,
                    Ok(Work::Devices(devices)) => {
                        if self.conn.is_some() {
                            encode(&Frame::Devices(devices.clone()), &mut self.out);
                        }
                        self.devices = devices;
                    }
                    Ok(Work::Flush(ack)) => {
                        self.connect_if_due();
                        self.queue(std::mem::take(&mut pending));
                        self.write_within(Duration::from_secs(1));
                        let _ = ack.try_send(());
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.connect_if_due();
            self.queue(std::mem::take(&mut pending));
            self.write();
            self.settle_connection();
            if !open {
                break;
            }
        }
        // Last chance for what is buffered, without waiting long.
        self.write_within(Duration::from_secs(1));
    }

    /// Writes until nothing is buffered, the connection is gone, or `limit`
    /// has passed (a daemon that stopped reading).
    fn write_within(&mut self, limit: Duration) {
        let until = Instant::now() + limit;
        self.write();
        while !self.out.is_empty() && self.conn.is_some() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
            self.write();
        }
    }

    fn connect_if_due(&mut self) {
        if self.conn.is_some() || Instant::now() < self.next_connect {
            return;
        }
        match UnixStream::connect(&self.config.socket) {
            Ok(s) => {
                if s.set_nonblocking(true).is_err() {
                    return;
                }
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                // Counted as back only once it has lasted (settle_connection):
                // a daemon that accepts and closes at once (a refused peer,
                // a dying listener) keeps the back-off growing, quietly.
                self.connected_at = Some(Instant::now());
                self.out.clear();
                self.frames.clear();
                encode(&Frame::Hello(self.hello.clone()), &mut self.out);
                for chunk in self.names.chunks(512) {
                    let names = chunk
                        .iter()
                        .map(|(id, text)| Name {
                            id: *id,
                            text: text.clone(),
                        })
                        .collect();
                    encode(&Frame::Names(names), &mut self.out);
                }
                if !self.devices.is_empty() {
                    encode(&Frame::Devices(self.devices.clone()), &mut self.out);
                }
                self.conn = Some(s);
            }
            Err(e) => {
                let socket = self.config.socket.display().to_string();
                self.say_once(Trouble::NotListening, || {
                    format!(
                        "gapscoped is not listening at {socket} ({e}); GPU records are dropped and counted until it is (retrying every 5 s at most)"
                    )
                });
                self.next_connect = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
            }
        }
    }

    /// Encodes records into the outgoing buffer, or drops them when there
    /// is no daemon or no room.
    fn queue(&mut self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        let n = records.len() as u64;
        // From here they are buffered, sent or dropped.
        self.stats.records_queued.fetch_sub(n, Ordering::Relaxed);
        if self.conn.is_some() && self.out.len() >= self.config.max_buffered_bytes {
            let waiting = self.out.len() >> 20;
            self.say_once(Trouble::NotReading, || {
                format!(
                    "gapscoped is not reading ({waiting} MiB waiting); GPU records are dropped and counted until it does"
                )
            });
        }
        if self.conn.is_none() || self.out.len() >= self.config.max_buffered_bytes {
            self.stats.records_dropped.fetch_add(n, Ordering::Relaxed);
            self.unreported_drops += n;
            return;
        }
        if self.unreported_drops > 0 {
            encode(
                &Frame::Dropped {
                    records: self.unreported_drops,
                    buffers: 0,
                },
                &mut self.out,
            );
            self.unreported_drops = 0;
        }
        // Frame by frame until the limit, what waits for the socket never
        // exceeds it by more than one frame; the room is allocated once,
        // exactly (a doubling Vec could hold twice the limit).
        let per_frame = max_records_per_frame();
        let want = records.len() * gapscope_wire::RECORD_LEN
            + records.len().div_ceil(per_frame) * gapscope_wire::HEADER_LEN;
        let room = (self.config.max_buffered_bytes
            + gapscope_wire::HEADER_LEN
            + gapscope_wire::MAX_PAYLOAD)
            .saturating_sub(self.out.len());
        self.out.reserve_exact(want.min(room));
        let mut left = records.len();
        for chunk in records.chunks(per_frame) {
            if self.out.len() >= self.config.max_buffered_bytes {
                break;
            }
            encode(&Frame::Records(chunk.to_vec()), &mut self.out);
            self.frames.push_back((self.out.len(), chunk.len() as u64));
            left -= chunk.len();
        }
        self.stats
            .peak_buffered_bytes
            .fetch_max(self.out.len() as u64, Ordering::Relaxed);
        if left > 0 {
            self.stats
                .records_dropped
                .fetch_add(left as u64, Ordering::Relaxed);
            self.unreported_drops += left as u64;
        }
        self.count_buffered();
    }

    fn count_buffered(&self) {
        let n = self.frames.iter().map(|(_, n)| n).sum();
        self.stats.records_buffered.store(n, Ordering::Relaxed);
    }

    /// Counts the records of frames wholly within the first `written`
    /// bytes as sent, and moves the rest's offsets.
    fn account(&mut self, written: usize) {
        while let Some((end, n)) = self.frames.front().copied() {
            if end > written {
                break;
            }
            self.frames.pop_front();
            self.stats.records_sent.fetch_add(n, Ordering::Relaxed);
        }
        for f in &mut self.frames {
            f.0 -= written.min(f.0);
        }
        self.count_buffered();
    }

    /// Writes what the socket takes now.
    fn write(&mut self) {
        let Some(conn) = &mut self.conn else {
            return;
        };
        let mut written = 0;
        while written < self.out.len() {
            match send_no_signal(conn, &self.out[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The daemon went away: what was buffered is lost.
                    self.say_once(Trouble::Gone, || {
                        format!("gapscoped closed the connection ({e}); reconnecting, and counting what is lost meanwhile")
                    });
                    self.conn = None;
                    self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                    self.account(written);
                    let lost: u64 = self.frames.drain(..).map(|(_, n)| n).sum();
                    self.stats
                        .records_dropped
                        .fetch_add(lost, Ordering::Relaxed);
                    self.unreported_drops += lost;
                    self.out.clear();
                    self.next_connect = Instant::now() + self.backoff;
                    // Closed before it settled: the daemon refuses us (or
                    // is dying); keep backing off.
                    if self.connected_at.take().is_some() {
                        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
                    }
                    return;
                }
            }
        }
        self.account(written);
        self.out.drain(..written);
        self.stats
            .bytes_written
            .fetch_add(written as u64, Ordering::Relaxed);
    }
}

/// `write`, without SIGPIPE: a host that has not ignored SIGPIPE (a C++
/// server, unlike CPython) would be killed by it when gapscoped goes away.
fn send_no_signal(conn: &UnixStream, buf: &[u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid socket and a valid buffer of `buf.len()` bytes.
    let n = unsafe {
        libc::send(
            conn.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Read as _,
        os::unix::net::{UnixListener, UnixStream},
    };

    use gapscope_wire::{ClockMode, Device, Frame, FrameReader};

    use super::*;

    /// The daemon's end of one connection.
    struct Peer {
        conn: UnixStream,
        reader: FrameReader,
        frames: Vec<Frame>,
    }

    impl Peer {
        fn accept(listener: &UnixListener) -> Peer {
            let (conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            Peer {
                conn,
                reader: FrameReader::default(),
                frames: Vec::new(),
            }
        }

        /// Reads until a frame `is` arrives; every frame so far.
        fn until(&mut self, is: impl Fn(&Frame) -> bool) -> &[Frame] {
            let mut buf = [0u8; 4096];
            while !self.frames.iter().any(&is) {
                let n = self
                    .conn
                    .read(&mut buf)
                    .expect("the transport wrote within 5 s");
                assert!(n > 0, "the connection closed after {:?}", self.frames);
                self.reader.push(&buf[..n]);
                while let Some(f) = self.reader.next_frame().unwrap() {
                    self.frames.push(f);
                }
            }
            &self.frames
        }
    }

    fn is_devices(f: &Frame) -> bool {
        matches!(f, Frame::Devices(_))
    }

    #[test]
    fn every_connection_names_the_devices_once_they_are_known() {
        let socket =
            std::env::temp_dir().join(format!("gapscope-transport-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let hello = Hello {
            pid: 1,
            cuda_version: 0,
            cupti_version: 0,
            clock: ClockMode::Callback,
            clock_offset_ns: 0,
            agent: "test".into(),
        };
        let t = Transport::start(TransportConfig::new(&socket), hello).unwrap();
        let devices = vec![Device {
            index: 0,
            uuid: [7; 16],
        }];
        // Connected first, then the devices become known: sent on the
        // connection there is.
        let mut first = Peer::accept(&listener);
        first.until(|f| matches!(f, Frame::Hello(_)));
        assert!(t.send_devices(devices.clone()));
        let frames = first.until(is_devices);
        assert!(matches!(frames[0], Frame::Hello(_)), "{frames:?}");
        assert!(
            frames.contains(&Frame::Devices(devices.clone())),
            "{frames:?}"
        );
        // The daemon restarts: the next connection says them again, after
        // its hello, without being asked.
        drop(first);
        drop(listener);
        std::fs::remove_file(&socket).unwrap();
        let listener = UnixListener::bind(&socket).unwrap();
        // A write finds the old connection gone.
        let record = Record {
            kind: gapscope_wire::RecordKind::Kernel,
            device: 0,
            detail: 0,
            stream: 0,
            correlation: 0,
            name: 0,
            start_ns: 1,
            end_ns: 2,
            bytes: 0,
            thread: 0,
            graph: 0,
        };
        for _ in 0..3 {
            t.send_records(vec![record]);
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut again = Peer::accept(&listener);
        let frames = again.until(is_devices);
        assert!(matches!(frames[0], Frame::Hello(_)), "{frames:?}");
        assert!(frames.contains(&Frame::Devices(devices)), "{frames:?}");
        t.shutdown();
        let _ = std::fs::remove_file(&socket);
    }
}
