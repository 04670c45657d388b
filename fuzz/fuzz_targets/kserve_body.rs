//! A KServe v2 inference request body, JSON or with the binary tensor
//! extension: the first two bytes, when the third is odd, give the JSON
//! header's length.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data {
        [a, b, flag, rest @ ..] if flag % 2 == 1 => {
            (Some(usize::from(u16::from_le_bytes([*a, *b]))), rest)
        }
        _ => (None, data),
    };
    let body = bytes::Bytes::copy_from_slice(body);
    let _ = edgefleet_localapi::kserve::parse_request(&body, header);
});
