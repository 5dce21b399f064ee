//! The streaming billable check on arbitrary answers cut into arbitrary frames (the
//! first byte picks the frame size). Must never panic, and the verdict must not depend
//! on how the answer is cut.
#![no_main]

use ekyc_gateway::meter::billable::BillableScanner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, answer)) = data.split_first() else { return };
    let mut whole = BillableScanner::new();
    whole.feed(answer);
    let mut framed = BillableScanner::new();
    for frame in answer.chunks(usize::from(cut).max(1)) {
        framed.feed(frame);
    }
    assert_eq!(whole.is_billable(), framed.is_billable(), "the verdict depends on framing");
});
