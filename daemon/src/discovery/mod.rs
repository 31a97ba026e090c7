//! Which processes belong to which service: reading /proc, matching against
//! the configuration, and keeping the kernel's tgid → service map in step.

pub mod matcher;
pub mod procfs;
pub mod targets;

pub use targets::Targets;
