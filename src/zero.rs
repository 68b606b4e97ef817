//! Zero detection at memory speed: word-wide OR-reduction that the compiler vectorises.
#![forbid(unsafe_code)]

/// Returns true if every byte of `buf` is zero.
///
/// Works on 64-byte chunks of eight `u64` words OR-ed together (the loop auto-vectorises
/// to SSE2/AVX2), with an early exit per chunk so that data blocks are rejected after
/// their first non-zero chunk.
#[inline]
pub fn is_zero(buf: &[u8]) -> bool {
    let (chunks, rest) = buf.as_chunks::<64>();
    for chunk in chunks {
        let mut acc = 0u64;
        for w in chunk.as_chunks::<8>().0 {
            acc |= u64::from_ne_bytes(*w);
        }
        if acc != 0 {
            return false;
        }
    }
    rest.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_zero() {
        assert!(is_zero(&[]));
    }

    #[test]
    fn any_single_nonzero_byte_is_found_at_every_position_and_length() {
        for len in 0..300usize {
            let mut v = vec![0u8; len];
            assert!(is_zero(&v), "len {len}");
            for i in 0..len {
                v[i] = 0x80;
                assert!(!is_zero(&v), "len {len} pos {i}");
                v[i] = 0;
            }
        }
    }

    #[test]
    fn unaligned_slices_are_handled() {
        let mut v = vec![0u8; 4096 + 7];
        for start in 0..8 {
            assert!(is_zero(&v[start..]));
        }
        v[4096 + 6] = 1;
        for start in 0..8 {
            assert!(!is_zero(&v[start..]));
        }
    }
}
