//! The serialization probes' shared items.

/// Serialization probes (uprobe/uretprobe pairs) a daemon can attach; the
/// probe's index is its BPF attach cookie and indexes per-service slots.
pub const MAX_SER_PROBES: u32 = 16;
