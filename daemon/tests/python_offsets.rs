//! The per-version GIL offsets in `python::offsets` are what each
//! CPython's own headers say: compile `data/gil_offsets.c` against every
//! pyenv version's internal headers and compare.

use std::{collections::HashMap, path::PathBuf, process::Command};

use gapscope_testkit::pyenv_prefix;
use gapscoped::python::offsets::{self, GilPath, ThreadId};

#[test]
fn offsets_match_each_versions_headers() {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/gil_offsets.c");
    let dir = tempfile::tempdir().unwrap();
    for &(major, minor) in offsets::SUPPORTED {
        let include = pyenv_prefix(minor).join(format!("include/python{major}.{minor}"));
        let exe = dir.path().join(format!("offsets{minor}"));
        let cc = Command::new("cc")
            .arg("-I")
            .arg(&include)
            .arg("-I")
            .arg(include.join("internal"))
            .arg(&source)
            .arg("-o")
            .arg(&exe)
            .output()
            .expect("cc");
        assert!(
            cc.status.success(),
            "compiling against {}: {}",
            include.display(),
            String::from_utf8_lossy(&cc.stderr)
        );
        let out = Command::new(&exe).output().unwrap();
        let said: HashMap<String, u64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect();
        let ours = offsets::for_version(major, minor).unwrap();
        let v = format!("{major}.{minor}");
        match ours.gil {
            GilPath::InRuntime { runtime_ceval_gil } => {
                assert_eq!(said["runtime_ceval_gil"], runtime_ceval_gil, "{v}");
            }
            GilPath::ViaMainInterpreter {
                interpreters_main,
                interp_ceval_gil,
            } => {
                assert_eq!(said["interpreters_main"], interpreters_main, "{v}");
                assert_eq!(said["interp_ceval_gil"], interp_ceval_gil, "{v}");
            }
        }
        assert_eq!(said["gil_size"], ours.gil_size, "{v}");
        assert_eq!(said["locked"], ours.locked, "{v}");
        assert_eq!(said["switch_number"], ours.switch_number, "{v}");
        assert_eq!(said["mutex"], ours.mutex, "{v}");
        assert_eq!(said["switch_mutex"], ours.switch_mutex, "{v}");
        assert_eq!(said["last_holder"], ours.last_holder, "{v}");
        match ours.thread_id {
            ThreadId::Native {
                tstate_native_thread_id,
            } => assert_eq!(
                said["tstate_native_thread_id"], tstate_native_thread_id,
                "{v}"
            ),
            ThreadId::Pthread { tstate_thread_id } => {
                assert_eq!(said["tstate_thread_id"], tstate_thread_id, "{v}");
            }
        }
        assert_eq!(
            said["mutex_size"],
            gapscope_ebpf_common::GIL_MUTEX_SIZE,
            "{v}"
        );
    }
}
