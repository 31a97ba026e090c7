//! Every field offset in `gapscope_cupti_sys::layout` against the real
//! CUPTI headers of each release it claims: a C program (`data/
//! cupti_layout.c`) built with gcc against the headers prints `offsetof`
//! and `sizeof` of the very structs that release writes. The headers come
//! from NVIDIA's wheels, unpacked by scripts/setup.sh.

use std::{collections::HashMap, path::PathBuf, process::Command};

use gapscope_cupti_sys::layout::{ALL_FIELDS, supported};

/// (headers, struct names, CUPTI_API_VERSION, record sizes).
const RELEASES: &[(&str, [&str; 5], u32, [usize; 6])] = &[
    (
        "cupti-12.0",
        [
            "CUpti_ActivityKernel9",
            "CUpti_ActivityMemcpy5",
            "CUpti_ActivityMemset4",
            "CUpti_ActivitySynchronization",
            "CUpti_ActivityOverhead",
        ],
        18,
        [208, 88, 88, 40, 40, 40],
    ),
    (
        "cupti-12.9",
        [
            "CUpti_ActivityKernel9",
            "CUpti_ActivityMemcpy6",
            "CUpti_ActivityMemset4",
            "CUpti_ActivitySynchronization2",
            "CUpti_ActivityOverhead3",
        ],
        28,
        [208, 96, 88, 40, 56, 56],
    ),
    (
        "cupti-13.5",
        [
            "CUpti_ActivityKernel13",
            "CUpti_ActivityMemcpy7",
            "CUpti_ActivityMemset5",
            "CUpti_ActivitySynchronization2",
            "CUpti_ActivityOverhead3",
        ],
        130_500,
        [248, 112, 104, 40, 56, 56],
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_field_sits_where_each_release_puts_it() {
    let out_dir = tempfile_dir();
    for (name, structs, api, sizes) in RELEASES {
        let include = root()
            .join("../.cache/cuda-headers")
            .join(name)
            .join("include");
        assert!(
            include.join("cupti_activity.h").is_file(),
            "{} missing: run scripts/setup.sh (it fetches the CUPTI headers)",
            include.display()
        );
        let exe = out_dir.join(name);
        let mut cc = Command::new("cc");
        cc.arg(format!("-I{}", include.display()));
        for (macro_name, s) in ["KERNEL", "MEMCPY", "MEMSET", "SYNC", "OVERHEAD"]
            .iter()
            .zip(structs)
        {
            cc.arg(format!("-D{macro_name}={s}"));
        }
        let built = cc
            .arg(root().join("tests/data/cupti_layout.c"))
            .arg("-o")
            .arg(&exe)
            .output()
            .expect("running cc");
        assert!(
            built.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let printed = String::from_utf8(Command::new(&exe).output().unwrap().stdout).unwrap();
        let lines: HashMap<&str, Vec<usize>> = printed
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let key = parts.next()?;
                Some((key, parts.filter_map(|p| p.parse().ok()).collect()))
            })
            .collect();
        assert_eq!(lines["api_version"], vec![*api as usize], "{name}");
        assert!(supported(*api), "{name}: API {api} not claimed");
        assert_eq!(lines["sizes"], sizes.to_vec(), "{name}: struct sizes");
        for (field, (offset, size)) in ALL_FIELDS {
            assert_eq!(
                lines.get(field),
                Some(&vec![*offset, *size]),
                "{name}: {field} (offset, size) in the headers vs layout.rs"
            );
        }
    }
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gapscope-cupti-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The callback ids gapscoped takes for launching threads, as each
/// release's headers define them.
#[test]
fn launch_and_wait_callback_ids_are_the_headers() {
    for (name, _, _, _) in RELEASES {
        let include = root()
            .join("../.cache/cuda-headers")
            .join(name)
            .join("include");
        for (header, prefix, table) in [
            (
                "cupti_driver_cbid.h",
                "CUPTI_DRIVER_TRACE_CBID_",
                &gapscope_wire::cbid::DRIVER_LAUNCH_OR_WAIT[..],
            ),
            (
                "cupti_runtime_cbid.h",
                "CUPTI_RUNTIME_TRACE_CBID_",
                &gapscope_wire::cbid::RUNTIME_LAUNCH_OR_WAIT[..],
            ),
        ] {
            let text = std::fs::read_to_string(include.join(header)).unwrap_or_else(|e| {
                panic!("{name}/{header}: {e}: run scripts/setup.sh (it fetches the CUPTI headers)")
            });
            for (entry, id) in table {
                // `NAME<spaces>= ID,`, spaces as the header aligns them.
                let defined = text.lines().find_map(|l| {
                    let (left, right) = l.split_once('=')?;
                    (left.trim() == format!("{prefix}{entry}"))
                        .then(|| right.trim().trim_end_matches(',').parse::<u32>().ok())?
                });
                assert_eq!(defined, Some(*id), "{name}: {header}: {prefix}{entry}");
            }
        }
    }
}
