//! An SDP offer as `POST /v1/sessions/{id}/webrtc` receives it: answered,
//! or refused with an `OfferError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The server refuses a body that is not UTF-8 before negotiating.
    let Ok(offer) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(answer) = palaver_media::rtc::answer_offer(offer) {
        assert!(answer.starts_with("v=0"), "{answer}");
    }
});
