//! Where extent maps outlive the mount: the ranges in the backing file's
//! `user.sparsefs.extents` xattr (or a sidecar record where xattrs are refused), and the
//! exact validity stamp in a sidecar record under the backing root.
//!
//! Why the stamp lives outside the file: storing an xattr moves the file's ctime, so a
//! stamp inside the xattr could not say what ctime the file has once it is stored.
//! Writing the sidecar record does not touch the file; its stamp (size, mtime and ctime
//! to the ns, inode) is taken after the xattr, so any later change of the file, even one
//! that puts its mtime back, moves its ctime and the map is refused. Records are keyed
//! by inode number (the same on every node of a shared filesystem; st_dev is not), and
//! the stamp carries the file's birth identity (a digest of its file handle, which holds
//! the inode's generation) where the backing's handles name the same file on every mount:
//! a record left by a removed file never describes a new file that got its inode number,
//! even one with the same size and times (coarse timestamps, another node's clock).

use crate::backend::meta::MetaBackend;
use crate::extents::RangeSet;
use crate::lock::{Mutex, Rank};
use crate::mapfile::{DecodeError, FLAG_MAP_IN_XATTR, FLAG_STAMP_ONLY, decode, encode};
use crate::stamp::Stamp;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The xattr holding a file's persisted ranges on the backend. Hidden from
/// listxattr/getxattr through the mount and refused to setxattr/removexattr.
pub const MAP_XATTR: &str = "user.sparsefs.extents";
/// The sidecar directory under the backing root. Hidden from the mount's root.
pub const SIDECAR_DIR: &str = ".sparsefs-maps";

/// Where extent maps outlive the mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapStore {
    /// Ranges in the `user.sparsefs.extents` xattr (in the sidecar record where the
    /// backend refuses it: no user xattrs, map too large); stamp in the sidecar record.
    Xattr,
    /// Ranges and stamp in the sidecar record.
    Sidecar,
    /// Nowhere: maps live in memory only.
    None,
}

/// What a load found.
#[derive(Debug)]
pub enum Loaded {
    /// No record.
    None,
    /// A record for an older state of the file.
    Stale,
    /// A damaged or foreign record.
    Refused(String),
    /// A map that describes the file as it is.
    Map(RangeSet),
}

/// What the file's own map xattr says of the last map stored through any mount: the
/// freshness witness on backends whose client caches may lag between nodes (a FUSE
/// client such as GlusterFS's keeps attributes and small files' contents for a while,
/// but reads user xattrs from the brick).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Witness {
    /// No map xattr on the file.
    Absent,
    /// The content stamp (size, mtime) of the file when its map was last stored.
    Stamp(Stamp),
    /// Could not tell (the call failed otherwise, or the xattr is damaged).
    Unknown,
}

/// How long an open sidecar directory is used again before it is opened anew: a
/// directory another node pruned and made again since is then seen (records stored in
/// the new one found) within this time.
pub const SIDECAR_REUSE: Duration = Duration::from_secs(2);

/// The sidecar directory's `O_PATH` fd, kept between uses for [`SIDECAR_REUSE`]: every
/// file removed through the mount has its record looked for in it (a record exists for
/// every file whose map was stored), and opening the directory for each was a second
/// round trip per removal (`rm -rf` of 1,000,000 files: 2 backend calls per file more
/// while the directory existed). Closed by [`SidecarDir::expire`] once unused for that
/// long (the daemon holds nothing it does not need), and dropped at once when this mount
/// prunes the directory.
pub struct SidecarDir {
    /// Rank `SidecarDir` (a leaf): held to clone, set or take the fd, never across a call.
    slot: Mutex<Option<(Instant, Arc<OwnedFd>)>>,
}

impl Default for SidecarDir {
    fn default() -> Self {
        Self {
            slot: Mutex::new(Rank::SidecarDir, None),
        }
    }
}

impl SidecarDir {
    fn get(&self) -> Option<Arc<OwnedFd>> {
        let s = self.slot.lock();
        s.as_ref()
            .filter(|(at, _)| at.elapsed() < SIDECAR_REUSE)
            .map(|(_, fd)| fd.clone())
    }

    fn set(&self, fd: Arc<OwnedFd>) {
        let old = self.slot.lock().replace((Instant::now(), fd));
        drop(old);
    }

    fn forget(&self) {
        let old = self.slot.lock().take();
        drop(old);
    }

    /// Closes the fd once it is older than [`SIDECAR_REUSE`] (the flusher calls this
    /// between its rounds).
    pub fn expire(&self) {
        let old = {
            let mut s = self.slot.lock();
            if s.as_ref()
                .is_some_and(|(at, _)| at.elapsed() >= SIDECAR_REUSE)
            {
                s.take()
            } else {
                None
            }
        };
        drop(old);
    }
}

/// Persistence operations relative to one backing root.
pub struct Persist<'a> {
    root: BorrowedFd<'a>,
    store: MapStore,
    meta: &'a dyn MetaBackend,
    /// The backing's handles outlive the mount (see `sys::handles_outlive_the_mount`):
    /// stamps carry births.
    births: bool,
    /// The mount's open sidecar directory, where there is one (`sparsefs` tools open it
    /// for each use).
    sidecar: Option<&'a SidecarDir>,
}

fn xattr_name() -> CString {
    CString::new(MAP_XATTR).expect("no NUL")
}

fn record_name(st: &libc::stat) -> CString {
    CString::new(st.st_ino.to_string()).expect("no NUL")
}

impl<'a> Persist<'a> {
    /// Persistence under the backing root `root` (an `O_PATH` or open directory fd),
    /// calling the backend through `meta`.
    /// `births`: whether stamps carry the files' birth identities (the backing's file
    /// handles outlive the mount; decided once per backing).
    pub fn new(
        root: BorrowedFd<'a>,
        store: MapStore,
        meta: &'a dyn MetaBackend,
        births: bool,
    ) -> Self {
        Self {
            root,
            store,
            meta,
            births,
            sidecar: None,
        }
    }

    /// The same, keeping the sidecar directory open in `dir` between uses.
    pub fn with_sidecar(self, dir: &'a SidecarDir) -> Self {
        Self {
            sidecar: Some(dir),
            ..self
        }
    }

    /// The birth identity of `file` (0 where stamps carry none or the backend makes no
    /// handle for it): the digest of `known`, its handle taken at lookup, else of a
    /// fresh one (a backend call).
    pub fn birth(&self, file: BorrowedFd<'_>, known: Option<&crate::sys::FileHandle>) -> u64 {
        if !self.births {
            return 0;
        }
        match known {
            Some(h) => h.digest(),
            None => self
                .meta
                .name_to_handle(file)
                .map_or(0, |(h, _)| h.digest()),
        }
    }

    fn dir(&self, create: bool) -> io::Result<Arc<OwnedFd>> {
        if let Some(fd) = self.sidecar.and_then(SidecarDir::get) {
            return Ok(fd);
        }
        let name = CString::new(SIDECAR_DIR).expect("no NUL");
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let fd = Arc::new(match self.meta.openat(self.root, &name, flags, 0) {
            Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {
                let _ = self.meta.mkdirat(self.root, &name, 0o700);
                self.meta.openat(self.root, &name, flags, 0)
            }
            r => r,
        }?);
        if let Some(c) = self.sidecar {
            c.set(fd.clone());
        }
        Ok(fd)
    }

    /// The sidecar directory may be gone (pruned here or by another node): the next use
    /// opens it again.
    fn dir_gone(&self) {
        if let Some(c) = self.sidecar {
            c.forget();
        }
    }

    fn read_record(&self, st: &libc::stat) -> Option<Vec<u8>> {
        let dir = self.dir(false).ok()?;
        let f = self
            .meta
            .openat(
                dir.as_fd(),
                &record_name(st),
                libc::O_RDONLY | libc::O_NOFOLLOW,
                0,
            )
            .ok()?;
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut File::from(f), &mut v).ok()?;
        Some(v)
    }

    fn write_record(&self, st: &libc::stat, bytes: &[u8]) -> io::Result<()> {
        let mut dir = self.dir(true)?;
        let tmp = CString::new(format!("{}.tmp{}", st.st_ino, std::process::id())).expect("no NUL");
        let flags = libc::O_CREAT | libc::O_TRUNC | libc::O_WRONLY | libc::O_NOFOLLOW;
        let f = match self.meta.openat(dir.as_fd(), &tmp, flags, 0o600) {
            // The directory was pruned (its last record removed) since it was opened.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.dir_gone();
                dir = self.dir(true)?;
                self.meta.openat(dir.as_fd(), &tmp, flags, 0o600)?
            }
            r => r?,
        };
        std::io::Write::write_all(&mut File::from(f), bytes)?;
        self.meta
            .renameat2(dir.as_fd(), &tmp, dir.as_fd(), &record_name(st), 0)
    }

    /// The map xattr of `file`: asked with a 64 KiB buffer (a map kept in the xattr is
    /// small; the answer, ENODATA included, is one round trip), and only where it is
    /// larger (ERANGE) with one of its size. (Asking with 16 MiB each time cost ~2 ms per
    /// call over bindfs: every new file's open and close paid it, and rsync of 10,000
    /// small files through a bindfs backing took twice as long.)
    fn get_map_xattr(&self, file: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
        match self.meta.getxattr(file, &xattr_name(), 64 << 10) {
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
                let len = self.meta.getxattr(file, &xattr_name(), 0)?.len();
                self.meta.getxattr(file, &xattr_name(), len.max(1))
            }
            r => r,
        }
    }

    /// The witness in `file`'s map xattr (see [`Witness`]); `Unknown` where maps are
    /// not kept in xattrs.
    pub fn witness(&self, file: BorrowedFd<'_>) -> Witness {
        if self.store != MapStore::Xattr {
            return Witness::Unknown;
        }
        match self.get_map_xattr(file) {
            Ok(b) => decode(&b).map_or(Witness::Unknown, |(_, s, _)| Witness::Stamp(s)),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Witness::Absent,
            Err(_) => Witness::Unknown,
        }
    }

    /// Loads the map of `file` whose fresh stat is `st` and birth identity `birth` (see
    /// [`Persist::birth`]).
    pub fn load(&self, file: BorrowedFd<'_>, st: &libc::stat, birth: u64) -> Loaded {
        if self.store == MapStore::None {
            return Loaded::None;
        }
        let Some(rec) = self.read_record(st) else {
            return Loaded::None;
        };
        let (mut data, stamp, flags) = match decode(&rec) {
            Ok(x) => x,
            Err(e) => return Loaded::Refused(e.to_string()),
        };
        let now = Stamp::of(st).born(birth);
        if stamp != now {
            return Loaded::Stale;
        }
        if flags & FLAG_MAP_IN_XATTR != 0 {
            let xa = self
                .get_map_xattr(file)
                .map_err(|e| e.to_string())
                .and_then(|b| decode(&b).map_err(|e: DecodeError| e.to_string()));
            match xa {
                Ok((d, xs, f)) if f & FLAG_STAMP_ONLY == 0 && xs.same_content(&now.born(0)) => {
                    data = d;
                }
                Ok(_) => return Loaded::Stale,
                Err(e) => return Loaded::Refused(e),
            }
        } else if let Witness::Stamp(xs) = self.witness(file)
            && !xs.same_content(&now.born(0))
        {
            // The record and the stat agree, but the file's xattr (read past the client
            // caches that may have served both) says a later map was stored since.
            return Loaded::Stale;
        }
        Loaded::Map(data)
    }

    /// Stores `data` as the map of `file` (which must be on the backend as described),
    /// whose birth identity is `birth`.
    ///
    /// # Errors
    /// The backend's errno when no record could be written.
    pub fn store(&self, file: BorrowedFd<'_>, data: &RangeSet, birth: u64) -> io::Result<()> {
        if self.store == MapStore::None {
            return Ok(());
        }
        let st = self.meta.fstat_fresh(file)?;
        // An unlinked-but-open file has no future reader: no record for it.
        if st.st_nlink == 0 {
            return Ok(());
        }
        let mut st_final = st;
        let mut in_xattr = false;
        if self.store == MapStore::Xattr {
            // The xattr's own stamp carries no birth: the sidecar record's decides it,
            // and a small map stays inside an ext4 inode (no 4 KiB xattr block).
            let bytes = encode(data, &Stamp::of(&st), 0);
            // A map too large for an xattr goes to the record; the xattr then keeps only
            // its stamp, the witness other nodes check (see `Witness`).
            let full = match self.meta.setxattr(file, &xattr_name(), &bytes, 0) {
                Ok(()) => Some(true),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::E2BIG | libc::ENOSPC | libc::ERANGE)
                    ) =>
                {
                    let stamp_only = encode(&RangeSet::new(), &Stamp::of(&st), FLAG_STAMP_ONLY);
                    self.meta
                        .setxattr(file, &xattr_name(), &stamp_only, 0)
                        .ok()
                        .map(|()| false)
                }
                Err(_) => None,
            };
            if let Some(full) = full
                && let Ok(after) = self.meta.fstat_fresh(file)
            {
                in_xattr = full;
                st_final = after;
            }
        }
        let rec = if in_xattr {
            encode(
                &RangeSet::new(),
                &Stamp::of(&st_final).born(birth),
                FLAG_MAP_IN_XATTR,
            )
        } else {
            encode(data, &Stamp::of(&st_final).born(birth), 0)
        };
        self.write_record(&st_final, &rec)
    }

    /// Removes the sidecar record of inode `ino` (its file's last link is gone).
    /// Returns `false` if there is no sidecar directory (no record of any file).
    pub fn forget_ino(&self, ino: u64) -> bool {
        match self.dir(false) {
            Ok(dir) => {
                let name = CString::new(ino.to_string()).expect("no NUL");
                if self.meta.unlinkat(dir.as_fd(), &name, 0).is_ok() {
                    self.prune();
                }
                true
            }
            Err(e) => e.raw_os_error() != Some(libc::ENOENT),
        }
    }

    /// Removes the stored map of `file` (it has no holes any more).
    pub fn remove(&self, file: BorrowedFd<'_>) {
        let _ = self.meta.removexattr(file, &xattr_name());
        if let (Ok(dir), Ok(st)) = (self.dir(false), self.meta.fstat(file))
            && self
                .meta
                .unlinkat(dir.as_fd(), &record_name(&st), 0)
                .is_ok()
        {
            self.prune();
        }
    }

    /// Removes the sidecar directory if it holds nothing (called after a record was
    /// removed, and at unmount): a backing whose stored maps are all gone keeps no
    /// directory of them, and later removals find no directory in one call instead of
    /// opening it and failing to remove a record. `ENOTEMPTY` while records (or a store
    /// in progress) remain: nothing happens. A store racing with the removal opens the
    /// directory again (see `write_record`).
    pub fn prune(&self) {
        let name = CString::new(SIDECAR_DIR).expect("no NUL");
        if self
            .meta
            .unlinkat(self.root, &name, libc::AT_REMOVEDIR)
            .is_ok()
        {
            self.dir_gone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::meta::SysMeta;
    use std::os::unix::fs::MetadataExt;

    fn map_of(l: &Loaded) -> Option<&RangeSet> {
        match l {
            Loaded::Map(m) => Some(m),
            _ => None,
        }
    }

    #[test]
    fn a_record_left_by_a_removed_file_never_describes_the_file_that_gets_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let root: OwnedFd = File::open(dir.path()).unwrap().into();
        let p = Persist::new(root.as_fd(), MapStore::Xattr, &SysMeta, true);
        let a = File::create(dir.path().join("a")).unwrap();
        a.set_len(2 << 20).unwrap();
        let mut map = RangeSet::new();
        map.insert(1 << 20, (1 << 20) + 4096);
        let birth_a = p.birth(a.as_fd(), None);
        assert_ne!(birth_a, 0, "ext4 makes handles");
        p.store(a.as_fd(), &map, birth_a).unwrap();
        let st_a = crate::sys::fstat(a.as_fd()).unwrap();
        assert_eq!(map_of(&p.load(a.as_fd(), &st_a, birth_a)), Some(&map));
        // The file goes behind the mount's back (its record stays); files are made until
        // one gets its inode number.
        drop(a);
        std::fs::remove_file(dir.path().join("a")).unwrap();
        let mut reborn = None;
        for i in 0..4000 {
            let path = dir.path().join(format!("n{i}"));
            let f = File::create(&path).unwrap();
            if f.metadata().unwrap().ino() == st_a.st_ino {
                reborn = Some(f);
                break;
            }
        }
        let b = reborn.expect("ext4 hands a freed inode number out again");
        // The worst case: the new file has the old one's size and times (a backend with
        // coarse timestamps, another node's clock). Only its birth tells them apart.
        let mut st_b = crate::sys::fstat(b.as_fd()).unwrap();
        (st_b.st_size, st_b.st_mtime, st_b.st_mtime_nsec) =
            (st_a.st_size, st_a.st_mtime, st_a.st_mtime_nsec);
        (st_b.st_ctime, st_b.st_ctime_nsec) = (st_a.st_ctime, st_a.st_ctime_nsec);
        let birth_b = p.birth(b.as_fd(), None);
        assert_ne!(birth_b, birth_a, "the handle holds the inode's generation");
        assert!(matches!(p.load(b.as_fd(), &st_b, birth_b), Loaded::Stale));
        // Where handles do not outlive the mount (FUSE backings) stamps carry no birth.
        let q = Persist::new(root.as_fd(), MapStore::Xattr, &SysMeta, false);
        assert_eq!(q.birth(b.as_fd(), None), 0);
    }
}
