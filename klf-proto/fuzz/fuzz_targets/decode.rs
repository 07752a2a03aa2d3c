//! Feeds arbitrary bytes to the frame decoder, as a hostile peer could.
//!
//! The input is read as a stream: frames are decoded one after another until the decoder refuses
//! the rest. Every decoded frame must re-encode to bytes that decode to the same frame. A panic, an
//! out-of-bounds length or an allocation over libFuzzer's limit is a bug.

#![no_main]

use klf_proto::{Limits, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut rest = data;
    while let Ok((frame, used)) = decode(rest, &limits) {
        assert!(used >= klf_proto::HEADER_LEN && used <= rest.len());

        let bytes = encode(&frame, &limits).expect("a decoded frame re-encodes");
        // Re-encoding is canonical, so never longer than what was read (which may carry trailing
        // bytes of appended fields).
        assert!(bytes.len() <= used);
        let (again, again_used) = decode(&bytes, &limits).expect("a re-encoded frame decodes");
        assert_eq!(again, frame);
        assert_eq!(again_used, bytes.len());

        rest = &rest[used..];
    }
});
