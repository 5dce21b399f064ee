//! The legacy v1 form parser, verifier and re-signer on arbitrary bodies. Must never panic.
#![no_main]

use ekyc_gateway::sigv1::{Params, Target, resign, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(params) = Params::parse(data) {
        let target = Target {
            method: "POST",
            host: "faceid.tencentcloudapi.com",
            path: "/",
        };
        let _ = verify(target, &params, "fuzz-secret-key");
        let signed = resign(target, &params, "AKIDfuzz", "fuzz-secret-key", 1_700_000_000, 42);
        let _ = signed.to_form();
    }
});
