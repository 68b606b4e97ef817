//! Typed numbers at the edges: FUSE inode ids and open-handle ids are both `u64` on the
//! wire and must never be mixed up; a sparse block size is valid by construction.
#![forbid(unsafe_code)]

/// A FUSE inode id (the `st_ino` users see: the backing inode number, 1 for the root).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    /// The mount's root.
    pub const ROOT: Ino = Ino(1);
}

impl std::fmt::Display for Ino {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An open handle id (file or directory), as the kernel hands it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fh(pub u64);

impl std::fmt::Display for Fh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A sparse block size: a power of two from 4 KiB to 64 MiB (the unit of zero detection
/// and hole creation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockSize(u64);

impl BlockSize {
    /// The default, 32 KiB.
    pub const DEFAULT: BlockSize = BlockSize(32 << 10);

    /// `bytes` as a block size, if it is one.
    ///
    /// # Errors
    /// A message saying what a block size must be.
    pub fn new(bytes: u64) -> Result<BlockSize, String> {
        if bytes.is_power_of_two() && (4096..=64 << 20).contains(&bytes) {
            Ok(BlockSize(bytes))
        } else {
            Err(format!(
                "invalid sparse block {bytes}: must be a power of two from 4K to 64M"
            ))
        }
    }

    /// In bytes.
    pub fn get(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_size_is_a_power_of_two_from_4k_to_64m() {
        assert_eq!(BlockSize::new(32 << 10).unwrap(), BlockSize::DEFAULT);
        for ok in [4096, 1 << 20, 64 << 20] {
            assert_eq!(BlockSize::new(ok).unwrap().get(), ok);
        }
        for bad in [0, 512, 2048, 4097, 3 << 12, 128 << 20] {
            assert!(BlockSize::new(bad).is_err(), "{bad}");
        }
    }
}
