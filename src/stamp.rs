//! What identifies a backing file's state: size, mtime, ctime (to the nanosecond) and
//! inode number, taken from one stat, and for stored maps the file's birth identity (a
//! digest of its file handle, which changes when an inode number is reused). The close-to-open check, the directory listing
//! cache and the stored extent maps all judge "changed since" by it.
#![forbid(unsafe_code)]

/// See the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// st_size.
    pub size: u64,
    /// st_mtime (s, ns).
    pub mtime: (i64, u32),
    /// st_ctime (s, ns). Any change of the file moves it, even one that puts mtime back.
    pub ctime: (i64, u32),
    /// st_ino.
    pub ino: u64,
    /// The file's identity beyond its inode number (a digest of its file handle, see
    /// `sys::FileHandle::digest`); 0 where it is not known. Set for stored maps only.
    pub birth: u64,
}

impl Stamp {
    /// The stamp of a stat.
    pub fn of(st: &libc::stat) -> Self {
        Self {
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            ctime: (st.st_ctime, st.st_ctime_nsec as u32),
            ino: st.st_ino,
            birth: 0,
        }
    }

    /// This stamp with the birth identity `birth` (0: unknown).
    pub fn born(self, birth: u64) -> Self {
        Self { birth, ..self }
    }

    /// True if the content-describing parts (inode, birth, size, mtime) agree; ctime is
    /// left out because storing a map in the file's own xattr moves it.
    pub fn same_content(&self, now: &Stamp) -> bool {
        self.ino == now.ino
            && self.birth == now.birth
            && self.size == now.size
            && self.mtime == now.mtime
    }

    /// The later of mtime and ctime, in seconds: when the file last changed.
    pub fn changed_at(&self) -> i64 {
        self.mtime.0.max(self.ctime.0)
    }

    /// Whether the file had been unchanged for [`SETTLED`] at `at` (seconds since the
    /// epoch): no later change can then show this same stamp.
    pub fn settled_at(&self, at: i64) -> bool {
        self.changed_at() + SETTLED <= at
    }
}

/// Seconds a stamp must have been unchanged before what was read under it is trusted
/// across opens (a kept directory listing, a kept page cache): another node's change in
/// the same timestamp tick as the last one known (a coarse clock, a server's whole
/// seconds) would otherwise show the same stamp. Two of a coarse timestamp's ticks.
pub const SETTLED: i64 = 2;

/// Now, in whole seconds since the epoch (0 before it).
pub fn epoch_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_takes_every_field_of_the_stat_and_content_ignores_ctime() {
        let mut st = crate::sys::zeroed_stat();
        (st.st_size, st.st_ino) = (10, 7);
        (st.st_mtime, st.st_mtime_nsec, st.st_ctime, st.st_ctime_nsec) = (1, 2, 3, 4);
        let a = Stamp::of(&st);
        assert_eq!((a.size, a.ino, a.mtime, a.ctime), (10, 7, (1, 2), (3, 4)));
        assert_eq!(a.changed_at(), 3);
        st.st_ctime_nsec = 5;
        let b = Stamp::of(&st);
        assert_ne!(a, b);
        assert!(a.same_content(&b));
    }
}
