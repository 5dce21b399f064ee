//! The configuration parser and validator on arbitrary text. Must never panic: a bad
//! file is an error naming the key.
#![no_main]

use ekyc_gateway::config::Config;
use libfuzzer_sys::fuzz_target;

const ENV: [(&str, &str); 3] = [
    ("EKYC_UPSTREAM_SECRET_ID", "AKIDfuzz"),
    ("EKYC_UPSTREAM_SECRET_KEY", "fuzz"),
    ("EKYC_MASTER_KEY", "0000000000000000000000000000000000000000000000000000000000000000"),
];

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_toml(text, &ENV);
    }
});
