//! The CUPTI stand-in and the simulated device, checked against what the
//! injection library relies on (`data/fake_cupti_check.c`), built against
//! each CUPTI release's real headers: the deep-mode tests' truths are only
//! as good as the fixture that produces them.

use std::process::Command;

use gapscope_testkit::{
    fake_cuda::{self, FakeCuda},
    repo_root,
};

const RELEASES: [&str; 3] = ["cupti-12.0", "cupti-12.9", "cupti-13.5"];

#[test]
fn the_stand_in_behaves_like_cupti_for_each_release() {
    let fixture = FakeCuda::build();
    let data = repo_root().join("testkit/data");
    for release in RELEASES {
        let flags = match fake_cuda::cupti_flags(release) {
            Ok(flags) => flags,
            Err(why) => {
                gapscope_testkit::skip(&why);
                return;
            }
        };
        let lib = fixture.cupti(release).unwrap();
        let check = fixture.path(&format!("check-{release}"));
        let name = lib
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_start_matches("lib");
        let out = Command::new("cc")
            .args(["-O1", "-pthread"])
            .args(&flags)
            .arg(format!("-I{}", data.display()))
            .arg("-o")
            .arg(&check)
            .arg(data.join("fake_cupti_check.c"))
            .arg(format!("-L{}", fixture.path("").display()))
            .arg(format!("-l{name}"))
            .args(["-lfakegpu", "-Wl,-rpath,$ORIGIN"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{release}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for decline in [None, Some("1")] {
            let mut run = Command::new(&check);
            if let Some(n) = decline {
                run.env("GAPSCOPE_FAKE_CUPTI_DECLINE", n);
            }
            let out = run.output().unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "ok\n",
                "{release} (declining {decline:?}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
