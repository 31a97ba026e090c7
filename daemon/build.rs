//! Builds the BPF programs in `ebpf/programs` with the nightly toolchain
//! (bpfel target, `-Z build-std=core`, linked by bpf-linker) and leaves the
//! object in OUT_DIR, where `src/bpf/mod.rs` embeds it with `include_bytes!`.

fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "gapscope-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/programs"),
        ..Default::default()
    };
    println!("cargo:rerun-if-changed=../ebpf/common/src");
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).map_err(|e| {
        anyhow::anyhow!(
            "building the BPF programs failed: {e:#}\n\
             fix: run scripts/setup.sh (it installs the nightly toolchain's rust-src and bpf-linker)"
        )
    })
}
