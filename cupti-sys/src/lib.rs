//! Gapscope's CUPTI layer: what the injection library needs to turn
//! CUPTI's activity records into `gapscope-wire` records.
//!
//! * `layout` — where the fields Gapscope reads sit in each activity
//!   record, one table for every CUPTI from CUDA 12.0 (API 18) to 13.5
//!   (API 130500): the fields kept the same offsets while the structs grew
//!   (`tests/layout.rs` compiles a C program against each release's real
//!   headers and compares).
//! * `decode` — a record's bytes into a typed `Activity`, refusing any
//!   record shorter than the fields it needs, and an `Activity` into a
//!   wire record.
//!
//! The activity-buffer calls themselves (`cuptiActivityRegisterCallbacks`,
//! `cuptiActivityGetNextRecord`, …) come from cudarc's dynamically loaded
//! bindings in the injection library, so nothing here needs CUDA to build
//! or test.
#![forbid(unsafe_code)]

pub mod decode;
pub mod layout;

pub use decode::{Activity, decode};
pub use layout::{ActivityKind, supported};
