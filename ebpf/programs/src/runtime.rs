//! What every BPF object of this crate needs besides its programs: a panic
//! handler (BPF programs cannot unwind; the verifier rejects any path that
//! reaches it) and the license the kernel checks before it lets a program
//! call GPL-only helpers.

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
