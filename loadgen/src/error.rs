//! Errors a user can fix: printed as one line naming the problem and the
//! fix, exit status 2.

use std::fmt;

#[derive(Debug, Clone)]
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
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; fix: {}", self.problem, self.fix)
    }
}

impl std::error::Error for UsageError {}
