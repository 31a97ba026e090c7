//! Explain: every second of GPU idle time attributed to what the serving
//! process was doing, in numbers that add up.
//!
//! * `cause`: the fixed set of causes and their precedence;
//! * `attribute`: one gap split among causes (pure, tested on constructed
//!   timelines);
//! * `engine`: the per-service window of thread states, gap discovery
//!   (CUPTI stretches, or host syncs and launches from the uprobes) and
//!   attribution as gaps settle;
//! * `feed`: what the event loop hands the engine (ring-buffer intervals,
//!   deep-mode stretches, waits in progress);
//! * `energy`: NVML's readings as each GPU's power curve, and the busy
//!   and idle stretches priced on it;
//! * `history`: busy and idle-by-cause time in 100 ms buckets;
//! * `snapshot`: the CPU-side counters at points in time, so a report can
//!   say what happened within a window or a load-generator phase;
//! * `report`: the JSON `/api/v1/explain` serves;
//! * `render`: `gapscoped explain`, the terminal report and `--compare`;
//! * `trace`: one service over a window as a Chrome/Perfetto trace
//!   (`gapscoped trace`, `/api/v1/trace`).

pub mod attribute;
pub mod cause;
pub mod client;
pub mod energy;
pub mod engine;
pub mod feed;
pub mod history;
pub mod render;
pub mod report;
pub mod snapshot;
pub mod trace;

pub use cause::Cause;
pub use engine::{Explainer, ThreadNow};
