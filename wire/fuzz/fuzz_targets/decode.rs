//! Any bytes into the frame decoder: it must never panic, never claim
//! more bytes than it was given, and every frame it accepts must encode
//! back to bytes that decode to the same frame. The same bytes fed to a
//! `FrameReader` in two pieces must give the same frames as in one.
#![no_main]

use gapscope_wire::{FrameReader, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((frame, used))) = decode(data) {
        assert!(used <= data.len());
        let mut again = Vec::new();
        encode(&frame, &mut again);
        let (back, n) = decode(&again).unwrap().unwrap();
        assert_eq!(back, frame);
        assert_eq!(n, again.len());
    }
    let whole = frames(&[data]);
    let cut = data.len() / 2;
    assert_eq!(frames(&[&data[..cut], &data[cut..]]), whole);
});

/// Frames a reader yields from `pieces`, until the end or the first error.
fn frames(pieces: &[&[u8]]) -> (Vec<gapscope_wire::Frame>, bool) {
    let mut r = FrameReader::default();
    let mut out = Vec::new();
    for p in pieces {
        r.push(p);
        loop {
            match r.next_frame() {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}
