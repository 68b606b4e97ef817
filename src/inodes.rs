//! The inode table: one `O_PATH` fd per backing inode, keyed by `(st_dev, st_ino)`, with
//! FUSE lookup counts. Hard links share one entry; an unlinked file stays reachable
//! through its fd while the kernel holds it.
//!
//! FUSE node ids are the backing inode numbers, so `st_ino` is stable across remounts.
//! The root is node 1; a backing inode numbered 1 on the root's device takes the root's
//! own backing number (a swap, so ids stay unique). Inodes of other devices (mounts
//! below the backing directory) get synthetic ids from 2^63 up.

use crate::file::SparseFile;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Identity of a backing file, taken from stat: what "changed outside the mount" is
/// judged by.
pub type Stamp = (u64, i64, i64, i64, i64);

/// The stamp of a stat: size, mtime and ctime with nanoseconds.
pub fn stamp_of(st: &libc::stat) -> Stamp {
    (
        st.st_size as u64,
        st.st_mtime,
        st.st_mtime_nsec,
        st.st_ctime,
        st.st_ctime_nsec,
    )
}

/// The sparse state of one regular file, shared by all its handles.
pub struct FileNode {
    /// The engine. Lock order: an inode's `engine` is taken after the inode table's
    /// locks have been released, and never two engines at once except in
    /// copy_file_range (source, released, then destination).
    pub engine: RwLock<SparseFile>,
    /// Open handles.
    pub opens: AtomicU32,
    /// The backend's stamp when the state was last known to match it.
    pub stamp: Mutex<Option<Stamp>>,
    /// The map changed since it was last persisted.
    pub changed: std::sync::atomic::AtomicBool,
    /// A persisted map may exist for this file (so one without holes removes it).
    pub persisted: std::sync::atomic::AtomicBool,
    /// The mode was last seen with set-id bits that a write by an unprivileged caller
    /// clears (see [`setid_to_clear`]); kept from every stat the node takes, as the
    /// kernel keeps `i_mode`, so writes need no stat of their own.
    pub setid: std::sync::atomic::AtomicBool,
    /// The backend file under the engine, whose fd is closed while idle past a budget.
    pub data: std::sync::Arc<crate::backend::reopen::Reopening>,
    /// Kernel passthrough handles (see [`Passthrough`]). Lock order: before `engine`.
    pub pt: Mutex<Passthrough>,
    /// A writable passthrough handle is (or was, until the last handle closes) open: its
    /// writes reach the backend without the engine, so the engine's size and map are
    /// taken again from the backend before each use.
    pub bypass: std::sync::atomic::AtomicBool,
}

/// What the kernel reads and writes directly for a token's handle (FUSE passthrough: a
/// backing file registered with the kernel; the adapter's type, opaque here).
pub type PassToken = Arc<dyn std::any::Any + Send + Sync>;

/// The passthrough handles of one file. The kernel requires every open of an inode
/// that has a passthrough open to be a passthrough open of the same backing file (other
/// opens fail with EIO), so a file's handles are either all passthrough or all ordinary.
#[derive(Default)]
pub struct Passthrough {
    /// Open passthrough handles.
    pub handles: u32,
    /// The registered backing file, held while `handles > 0`.
    pub token: Option<PassToken>,
}

/// The set-id bits of `mode` that a write by a caller without `CAP_FSETID` clears, as
/// Linux does: `S_ISUID`, and `S_ISGID` when group execute is set (without it the bit
/// means mandatory locking).
pub fn setid_to_clear(mode: u32) -> u32 {
    let mut bits = mode & libc::S_ISUID;
    if mode & (libc::S_ISGID | libc::S_IXGRP) == (libc::S_ISGID | libc::S_IXGRP) {
        bits |= libc::S_ISGID;
    }
    bits
}

/// A directory's stamps at its last listings taken when it had been unchanged for a
/// while (a later change then moves the stamp).
#[derive(Default, Clone, Copy)]
pub struct Listed {
    /// The last such listing read from the backend.
    pub read: Option<Stamp>,
    /// The last such listing the kernel was asked to cache (`FOPEN_CACHE_DIR`).
    pub cached: Option<Stamp>,
}

/// One backing inode.
pub struct Inode {
    /// FUSE node id (= `st_ino` shown to users).
    pub ino: u64,
    /// `(st_dev, st_ino)` on the backing filesystem.
    pub key: (u64, u64),
    /// `st_mode & S_IFMT`.
    pub kind: u32,
    fd: OwnedFd,
    lookups: AtomicU64,
    /// Sparse state, for regular files once opened.
    pub file: Mutex<Option<Arc<FileNode>>>,
    /// The backend said this file has no `security.capability` xattr. The kernel asks
    /// for it before every write; the answer is remembered until the xattr is set or
    /// removed through the mount.
    pub no_caps: std::sync::atomic::AtomicBool,
    /// What is known of a directory's listings (see `SparseFs::opendir`).
    pub listed: Mutex<Listed>,
}

impl Inode {
    /// The `O_PATH` fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The sparse state, if the file was opened.
    pub fn node(&self) -> Option<Arc<FileNode>> {
        self.file.lock().clone()
    }
}

#[derive(Default)]
struct Maps {
    by_ino: HashMap<u64, Arc<Inode>>,
    by_key: HashMap<(u64, u64), u64>,
}

/// All inodes the kernel knows about.
pub struct InodeTable {
    root: Arc<Inode>,
    maps: RwLock<Maps>,
    root_key: (u64, u64),
    next_synthetic: AtomicU64,
}

impl InodeTable {
    /// A table holding the root.
    pub fn new(root_fd: OwnedFd, root: &libc::stat) -> Self {
        let key = (root.st_dev, root.st_ino);
        let inode = Arc::new(Inode {
            ino: 1,
            key,
            kind: root.st_mode & libc::S_IFMT,
            fd: root_fd,
            lookups: AtomicU64::new(1 << 40),
            file: Mutex::new(None),
            no_caps: std::sync::atomic::AtomicBool::new(false),
            listed: Mutex::new(Listed::default()),
        });
        let mut maps = Maps::default();
        maps.by_ino.insert(1, inode.clone());
        maps.by_key.insert(key, 1);
        Self {
            root: inode,
            maps: RwLock::new(maps),
            root_key: key,
            next_synthetic: AtomicU64::new(1 << 63),
        }
    }

    /// The FUSE id a backing `(dev, ino)` gets (also used for readdir's `d_ino`).
    pub fn ino_for(&self, dev: u64, ino: u64) -> Option<u64> {
        if dev != self.root_key.0 {
            return self.maps.read().by_key.get(&(dev, ino)).copied();
        }
        Some(if ino == self.root_key.1 {
            1
        } else if ino == 1 {
            self.root_key.1
        } else {
            ino
        })
    }

    /// Finds an inode by FUSE id.
    ///
    /// # Errors
    /// `ESTALE` for an id the table does not hold.
    pub fn get(&self, ino: u64) -> std::io::Result<Arc<Inode>> {
        self.maps
            .read()
            .by_ino
            .get(&ino)
            .cloned()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESTALE))
    }

    /// Returns the inode for `fd`/`st` with its lookup count raised by one; `fd` is
    /// dropped if the inode is already known.
    pub fn insert_lookup(&self, fd: OwnedFd, st: &libc::stat) -> Arc<Inode> {
        let key = (st.st_dev, st.st_ino);
        let mut m = self.maps.write();
        if let Some(ino) = m.by_key.get(&key)
            && let Some(i) = m.by_ino.get(ino)
        {
            i.lookups.fetch_add(1, Relaxed);
            return i.clone();
        }
        let ino = if key.0 == self.root_key.0 {
            if key.1 == 1 { self.root_key.1 } else { key.1 }
        } else {
            self.next_synthetic.fetch_add(1, Relaxed)
        };
        let inode = Arc::new(Inode {
            ino,
            key,
            kind: st.st_mode & libc::S_IFMT,
            fd,
            lookups: AtomicU64::new(1),
            file: Mutex::new(None),
            no_caps: std::sync::atomic::AtomicBool::new(false),
            listed: Mutex::new(Listed::default()),
        });
        m.by_ino.insert(ino, inode.clone());
        m.by_key.insert(key, ino);
        inode
    }

    /// Drops `n` lookups; the inode leaves the table at zero (open handles keep their
    /// own reference).
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == 1 {
            return;
        }
        let mut m = self.maps.write();
        if let Some(i) = m.by_ino.get(&ino) {
            let left = i.lookups.load(Relaxed).saturating_sub(n);
            i.lookups.store(left, Relaxed);
            if left == 0 {
                let key = i.key;
                m.by_ino.remove(&ino);
                m.by_key.remove(&key);
            }
        }
    }

    /// Every regular-file node with sparse state (for flush-all).
    pub fn nodes(&self) -> Vec<Arc<FileNode>> {
        self.maps
            .read()
            .by_ino
            .values()
            .filter_map(|i| i.node())
            .collect()
    }

    /// `(st_dev, st_ino)` of the backing root.
    pub fn root_key(&self) -> (u64, u64) {
        self.root_key
    }

    /// The root's `O_PATH` fd (the backing directory).
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.fd()
    }

    /// Number of inodes held.
    pub fn len(&self) -> usize {
        self.maps.read().by_ino.len()
    }

    /// True if only the root is held.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }
}
