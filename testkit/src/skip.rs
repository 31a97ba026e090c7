//! Skips that the test run shows and counts.
//!
//! libtest has no "skipped" outcome and hides what a passing test prints, so
//! a test that cannot run on this host would otherwise pass in silence. A
//! test that stands aside calls [`skip`] and returns: the reason goes straight
//! to the run's stderr (past libtest's capture, which only takes `print!`),
//! and into the file named by `GAPSCOPE_SKIP_LOG`, from which
//! `scripts/test.sh` counts skipped tests apart from passed ones and lists
//! the reasons once at the end. A test that passes but could not check one
//! of its parts here says so with [`not_checked`]: listed, not counted.
//!
//! Log lines: `skip|part <TAB> binary::test <TAB> reason`.

use std::io::Write as _;

/// This test stands aside on this host, for `why` (which names the fix).
/// Call it, then return from the test.
pub fn skip(why: &str) {
    record("skip", "SKIP", why);
}

/// This test passes, but `why` it could not check one of its parts here.
pub fn not_checked(why: &str) {
    record("part", "NOT CHECKED", why);
}

fn record(kind: &str, shown: &str, why: &str) {
    let test = test_name();
    let why = why.replace(['\n', '\t'], " ");
    // Straight to fd 2: libtest captures the print macros, not this.
    let _ = writeln!(std::io::stderr(), "{shown} {test}: {why}");
    if let Some(path) = std::env::var_os("GAPSCOPE_SKIP_LOG") {
        let line = format!("{kind}\t{test}\t{why}\n");
        // One write of a short line to an O_APPEND file: lines from test
        // binaries running at once do not interleave.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// `binary::module::test`: libtest runs each test on a thread named after it.
fn test_name() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| match s.rsplit_once('-') {
            // cargo names test binaries NAME-HASH.
            Some((name, hash)) if hash.len() == 16 => name.to_owned(),
            _ => s,
        })
        .unwrap_or_default();
    let thread = std::thread::current();
    match thread.name() {
        Some(name) if name != "main" => format!("{binary}::{name}"),
        _ => binary,
    }
}
