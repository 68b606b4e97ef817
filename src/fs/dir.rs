//! Directories: opendir with the kernel listing cache decision, readdir snapshots, readdirplus lookups, releasedir, fsyncdir.

use super::*;

impl SparseFs {
    /// opendir. Returns the handle and how the kernel may cache the listing: `cache`
    /// (`FOPEN_CACHE_DIR`) once the backend shows the directory with the stamp (size,
    /// mtime, ctime) of a listing already read (so a tree listed once, by find or rsync,
    /// does not pay for filling the cache), `keep` (`FOPEN_KEEP_CACHE`: the kernel's cached
    /// listing may be used) when the kernel was asked to cache a listing of that same
    /// stamp. Only listings taken when the directory had been unchanged for
    /// `stamp::SETTLED` (2 s) count (see [`Self::readdir`]). Changes through this mount move the mtime (and the
    /// kernel drops its cache itself); another node's change moves the backend's mtime
    /// and ctime, seen by the fresh stat here; with `--no-dir-cache` nothing is cached.
    ///
    /// # Errors
    /// `ENOTDIR`, the backend's errno.
    pub fn opendir(&self, ino: Ino) -> io::Result<(Fh, DirCache)> {
        let inode = self.inode(ino)?;
        if inode.kind != libc::S_IFDIR {
            return Err(errno(libc::ENOTDIR));
        }
        // The stat is only for the cache decision (a round trip on a networked backend).
        let stamp = if self.sh.cfg.dir_cache {
            stamp_of(&self.sh.meta.fstat_fresh(inode.fd()?.as_fd())?)
        } else {
            Default::default()
        };
        let seen = *inode.listed.lock();
        let cache = DirCache {
            cache: self.sh.cfg.dir_cache && seen.read == Some(stamp),
            keep: self.sh.cfg.dir_cache && seen.cached == Some(stamp),
        };
        if cache.keep {
            self.sh.stats.dir_cache_kept.fetch_add(1, Relaxed);
        }
        let fh = self.new_fh(Handle::Dir {
            inode,
            stamp,
            cache: cache.cache,
            entries: Arc::new(Mutex::new(Rank::DirSnapshot, Listing::default())),
        });
        Ok((fh, cache))
    }

    /// The entries of a directory handle from index `from` on: at least `want` of them
    /// where the directory has that many. The listing is read from the backend as the
    /// kernel asks for it, a chunk at a time ([`sys::DIR_CHUNK`]), and kept for the
    /// handle's life (the kernel's offsets are indices into it). A reader that stats each
    /// batch as it reads (`ls -l`) then finds the backend client's caches still warm from
    /// the listing: reading a 10,000-entry directory whole first made every later stat a
    /// round trip on GlusterFS. The stamp taken at opendir is recorded (as read, and as
    /// cached when the handle asked the kernel to cache) once the listing is complete, when
    /// the directory had then been unchanged for `stamp::SETTLED` (2 s): a change in the same
    /// timestamp tick as the stamp would otherwise go unseen.
    ///
    /// # Errors
    /// `EBADF`, the backend's errno.
    pub fn readdir(&self, fh: Fh, from: usize, want: usize) -> io::Result<Arc<DirSnapshot>> {
        let (inode, stamp, cache, slot) = self.sh.handles.dir(fh)?;
        let mut l = slot.lock();
        if !l.started {
            let snap = Arc::make_mut(&mut l.snap);
            snap.push(inode.ino.0, libc::DT_DIR, b".");
            snap.push(inode.ino.0, libc::DT_DIR, b"..");
            l.started = true;
        }
        let dev = inode.key.0;
        let mut keep = |ino: u64, name: &[u8]| {
            if inode.ino == Ino::ROOT && name == SIDECAR_DIR.as_bytes() {
                return None;
            }
            Some(self.sh.inodes.ino_for(dev, ino).map_or(ino, |i| i.0))
        };
        if !l.done && l.dir.is_none() && l.snap.len() < from.saturating_add(want) {
            let fd = self
                .sh
                .meta
                .reopen(inode.fd()?.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
            match ListingFd::hold(fd) {
                Ok(held) => l.dir = Some(held),
                Err(fd) => {
                    // Too many listings in progress: this one is read whole now.
                    while self.sh.meta.read_dir_chunk(
                        fd.as_fd(),
                        Arc::make_mut(&mut l.snap),
                        &mut keep,
                    )? {}
                    drop(fd);
                    self.listed(&mut l, &inode, stamp, cache);
                }
            }
        }
        while !l.done && l.snap.len() < from.saturating_add(want) {
            let Listing { snap, dir, .. } = &mut *l;
            let dir = dir.as_ref().expect("open until done");
            let more = self
                .sh
                .meta
                .read_dir_chunk(dir.as_fd(), Arc::make_mut(snap), &mut keep)?;
            if !more {
                self.listed(&mut l, &inode, stamp, cache);
            }
        }
        Ok(l.snap.clone())
    }

    /// The end of a listing: its fd is closed, and its stamp recorded (see
    /// [`Self::readdir`]).
    fn listed(&self, l: &mut Listing, inode: &Inode, stamp: crate::inodes::Stamp, cache: bool) {
        l.done = true;
        l.dir = None;
        self.sh.stats.dir_listings.fetch_add(1, Relaxed);
        if self.sh.cfg.dir_cache && stamp.settled_at(crate::stamp::epoch_secs()) {
            let mut seen = inode.listed.lock();
            seen.read = Some(stamp);
            if cache {
                seen.cached = Some(stamp);
            }
        }
    }

    /// readdirplus support: looks an entry of a snapshot up (raising its lookup count,
    /// as the kernel expects for every entry it is given with attributes). `Ok(None)` for
    /// `.` and `..` (not looked up: the kernel skips them) and for an entry that vanished
    /// since the snapshot (`ENOENT`: leave it out). Other errors (`EMFILE`, `EACCES`,
    /// the backend's) are returned: the entry must not be sent with made-up attributes.
    ///
    /// # Errors
    /// The lookup's errno other than `ENOENT`.
    pub fn lookup_entry(&self, dir: Ino, e: &DirEntry<'_>) -> io::Result<Option<Entry>> {
        if e.name == "." || e.name == ".." {
            return Ok(None);
        }
        match self.lookup(dir, e.name) {
            Ok(entry) => Ok(Some(entry)),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// releasedir.
    pub fn releasedir(&self, fh: Fh) {
        drop(self.drop_fh(fh));
    }

    /// fsyncdir.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn fsyncdir(&self, ino: Ino, datasync: bool) -> io::Result<()> {
        let inode = self.inode(ino)?;
        let d = self
            .sh
            .meta
            .reopen(inode.fd()?.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        self.sh.meta.fsync(d.as_fd(), datasync)
    }
}
