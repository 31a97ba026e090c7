//! Builds the BPF programs in `ebpf/programs` with a nightly toolchain
//! (bpfel target, `-Z build-std=core`, linked by bpf-linker) and leaves the
//! object in OUT_DIR, where `src/bpf/mod.rs` embeds it with `include_bytes!`.
//!
//! The nightly's LLVM must be bpf-linker's (22): a newer nightly writes
//! bitcode bpf-linker cannot read. So the toolchain is `$GAPSCOPE_BPF_TOOLCHAIN`
//! when set, else `nightly` when its LLVM is 22, else the pinned
//! `nightly-2026-05-20` that `scripts/setup.sh` installs in that case.

use std::process::Command;

/// bpf-linker is built against this LLVM major (scripts/setup.sh).
const LLVM_MAJOR: &str = "22";
/// The last nightly known to carry LLVM 22 and build the programs.
const PINNED_NIGHTLY: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "gapscope-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/programs"),
        ..Default::default()
    };
    println!("cargo:rerun-if-changed=../ebpf/common/src");
    println!("cargo:rerun-if-env-changed=GAPSCOPE_BPF_TOOLCHAIN");
    let toolchain = bpf_toolchain();
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain)).map_err(|e| {
        anyhow::anyhow!(
            "building the BPF programs with the {toolchain} toolchain failed: {e:#}\n\
             fix: run scripts/setup.sh (it installs a nightly with LLVM {LLVM_MAJOR}, its rust-src and bpf-linker)"
        )
    })
}

fn bpf_toolchain() -> String {
    if let Ok(chosen) = std::env::var("GAPSCOPE_BPF_TOOLCHAIN")
        && !chosen.is_empty()
    {
        return chosen;
    }
    let nightly_llvm = Command::new("rustup")
        .args(["run", "nightly", "rustc", "-vV"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    let wanted = format!("LLVM version: {LLVM_MAJOR}.");
    if nightly_llvm.lines().any(|line| line.starts_with(&wanted)) {
        "nightly".into()
    } else {
        PINNED_NIGHTLY.into()
    }
}
