//! CUPTI deep mode, the daemon's side: the injection library inside a
//! serving process streams GPU activity records (`gapscope-wire` frames)
//! over a Unix socket; `socket` accepts only allowed peers and bounds what
//! each may send, `ingest` turns records into per-service, per-GPU
//! statistics — kernels by class, busy time as the union of activity,
//! idle gaps, launch latency, copies, synchronization — and busy stretches
//! for the timeline; `busy` keeps a GPU's busy time as the union of its
//! activity and cuts it into stretches; `classify` names a kernel's class
//! (gemm, attention, …) from its name.

pub mod busy;
pub mod classify;
pub mod ingest;
pub mod socket;

pub use ingest::Ingest;
