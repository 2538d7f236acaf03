//! A caller's Opus packet (WebRTC RTP payload, or a WebSocket client's
//! binary frame after `audio-format` opus): decoded into 16 kHz frames or
//! refused, never a panic, and never more than a packet's worth of audio.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use palaver_media::codec::EncoderConfig;
use palaver_media::rtc::CallAudio;

thread_local! {
    static CALL: RefCell<Option<CallAudio>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    // First byte: whether the packet follows the previous one (else the
    // decoder conceals a loss first); the rest is the packet.
    let Some((&flags, packet)) = data.split_first() else {
        return;
    };
    CALL.with(|call| {
        let mut call = call.borrow_mut();
        let audio = call.get_or_insert_with(|| {
            CallAudio::new(EncoderConfig::default()).expect("the call codec opens")
        });
        let mut frames = 0usize;
        let _ = audio.decode(packet, flags & 1 == 1, |_| frames += 1);
        // At most 120 ms of audio in one Opus packet, plus a concealed loss.
        assert!(frames <= 12, "{frames} frames from one packet");
    });
});
