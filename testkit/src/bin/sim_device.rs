//! `gapscope-sim-device`: builds the simulated device for the demo's third
//! part (no GPU here): the fake CUDA libraries over `fake_gpu.c` and the
//! CUPTI stand-in built against CUDA 12.9's CUPTI headers, in a directory
//! it keeps. Prints `FIXTURE_DIR CUPTI_LIBRARY`; with `--nvml`, also the
//! NVML stand-in on a second line (the device check's stand-in mode).
//! Exits 1 saying why when it cannot (no CUPTI or NVML headers:
//! scripts/setup.sh fetches them).

use gapscope_testkit::{fake_cuda::FakeCuda, fake_nvml::FakeNvml};

fn main() {
    let nvml = match std::env::args().nth(1).as_deref() {
        None => None,
        Some("--nvml") => match FakeNvml::build() {
            Ok(n) => Some(n),
            Err(why) => {
                eprintln!("gapscope-sim-device: {why}");
                std::process::exit(1);
            }
        },
        Some(other) => {
            eprintln!("gapscope-sim-device: unknown argument {other:?} (use --nvml or nothing)");
            std::process::exit(2);
        }
    };
    // Not the tests' directory name: a test's gapscoped never traces the
    // demo's or the device check's processes.
    let fixture = FakeCuda::build_in("gapscope-sim-device");
    match fixture.cupti("cupti-12.9") {
        Ok(cupti) => {
            let dir = fixture.keep();
            println!("{} {}", dir.display(), cupti.display());
            if let Some(nvml) = nvml {
                let library = nvml.library();
                nvml.keep();
                println!("{}", library.display());
            }
        }
        Err(why) => {
            eprintln!("gapscope-sim-device: {why}");
            std::process::exit(1);
        }
    }
}
