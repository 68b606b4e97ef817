//! The stored-map decoder against arbitrary bytes (what a corrupt, truncated or hostile
//! `user.sparsefs.extents` xattr or sidecar record may hold): it must never panic, and
//! whatever it accepts must re-encode to a record that decodes to the same map.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sparsefs::mapfile::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok((map, stamp, flags)) = decode(data) {
        let again = encode(&map, &stamp, flags);
        let (m2, s2, f2) = decode(&again).expect("re-encoded record decodes");
        assert_eq!(map, m2);
        assert_eq!(stamp, s2);
        assert_eq!(flags, f2);
    }
});
