//! Errors a user can fix: bad configuration, bad flags, a port in use,
//! missing privileges. They exit with status 2 and one message that names
//! the problem and the fix; everything else is an internal failure (exit 1).

use std::fmt;

/// A problem in what the user asked for, with the way to fix it.
#[derive(Debug)]
pub struct UsageError {
    pub problem: String,
    pub fix: String,
}

impl UsageError {
    pub fn new(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// The same error, saying which file it is about.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        Self {
            problem: format!("{}: {}", path.display(), self.problem),
            fix: self.fix,
        }
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; fix: {}", self.problem, self.fix)
    }
}

impl std::error::Error for UsageError {}

/// Exit status for a `UsageError`.
pub const EXIT_USAGE: i32 = 2;
