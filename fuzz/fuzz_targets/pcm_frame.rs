//! A WebSocket client's binary frame in the default encoding: 20 ms of
//! 16 kHz PCM16, or an error naming the size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palaver_media::AudioFrame;

fuzz_target!(|data: &[u8]| {
    match AudioFrame::from_le_bytes(data) {
        Ok(frame) => {
            assert_eq!(data.len(), AudioFrame::BYTES);
            let mut back = [0u8; AudioFrame::BYTES];
            frame.write_le_bytes(&mut back);
            assert_eq!(&back[..], data, "PCM16 round trip");
        }
        Err(_) => assert_ne!(data.len(), AudioFrame::BYTES),
    }
});
