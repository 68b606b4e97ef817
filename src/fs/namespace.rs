//! Names: lookup and forget, creating nodes as the caller, unlink, rmdir, rename, link, and what a removed or renamed name means for stamps and stored maps.

use super::*;

/// How long a removal's finding that there is no sidecar directory of maps is trusted.
const SIDECAR_RECHECK_MS: u64 = 2000;

/// How long the stat a lookup took of a name stands for the name in a removal that
/// follows: the kernel's own entry timeout (it uses the name unchecked for as long).
const RECENT_VALID: std::time::Duration = std::time::Duration::from_secs(1);
/// Names remembered at most.
const RECENT_NAMES: usize = 32;

/// The names this mount looked up last, with the stat the lookup took (the backend's
/// device and inode number, mode, link count). `rm` makes the kernel look each name up just
/// before it removes it, and the removal needs the same facts (which file, its kind,
/// whether this is its last link) to let go of the daemon's own fds and of the file's
/// record: a second stat of the name was a second backend round trip per removed file.
/// A removal takes its name's entry; any other change of names through this mount
/// (create, link, rename, rmdir) forgets them all. A change by another node within
/// [`RECENT_VALID`] is taken as the kernel takes it: at worst the daemon lets go of the fds
/// of the file the name had (they are opened again when next needed) or drops its record
/// (its map is then unknown: data, never holes).
pub(crate) struct RecentNames {
    /// Rank `RecentNames` (a leaf).
    slot: Mutex<std::collections::VecDeque<(Ino, std::ffi::CString, Instant, libc::stat)>>,
}

impl Default for RecentNames {
    fn default() -> Self {
        Self {
            slot: Mutex::new(Rank::RecentNames, Default::default()),
        }
    }
}

impl RecentNames {
    /// A lookup of `name` in `dir` found `st` (`st_dev`, `st_ino` the backend's).
    fn saw(&self, dir: Ino, name: &std::ffi::CStr, st: &libc::stat) {
        let mut q = self.slot.lock();
        q.retain(|(d, n, ..)| !(*d == dir && n.as_c_str() == name));
        if q.len() == RECENT_NAMES {
            q.pop_front();
        }
        q.push_back((dir, name.to_owned(), Instant::now(), *st));
    }

    /// What the last lookup of `name` in `dir` found, if it is recent; forgotten here,
    /// with every other name of the same file (the removal changes their link count).
    fn take(&self, dir: Ino, name: &std::ffi::CStr) -> Option<libc::stat> {
        let mut q = self.slot.lock();
        let i = q
            .iter()
            .position(|(d, n, ..)| *d == dir && n.as_c_str() == name)?;
        let (_, _, at, st) = q.remove(i)?;
        q.retain(|(.., o)| (o.st_dev, o.st_ino) != (st.st_dev, st.st_ino));
        (at.elapsed() < RECENT_VALID).then_some(st)
    }

    /// Names changed through the mount: nothing remembered holds.
    fn clear(&self) {
        self.slot.lock().clear();
    }
}

impl SparseFs {
    /// The inode of `fd`, found by `name` in `parent`, in the table.
    pub(super) fn entry(
        &self,
        fd: OwnedFd,
        parent: &Arc<Inode>,
        name: &std::ffi::CStr,
    ) -> io::Result<(Arc<Inode>, libc::stat)> {
        // One stat serves the table (dev, ino) and the reply: a round trip each on a
        // networked backend.
        let st = self.sh.meta.fstat(fd.as_fd())?;
        let key = (st.st_dev, st.st_ino);
        let inode = self
            .sh
            .inodes
            .insert_lookup(fd, &st, Some((parent, name)), |node| same_file(key, node));
        let st = self.sparse_stat(&inode, st);
        Ok((inode, st))
    }

    /// lookup(2): a name in a directory. Raises the lookup count.
    ///
    /// # Errors
    /// `ENOENT`, `EINVAL` for names that are not one component, `ENAMETOOLONG`.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> io::Result<Entry> {
        if parent == Ino::ROOT && name == SIDECAR_DIR {
            return Err(errno(libc::ENOENT));
        }
        let dir = self.inode(parent)?;
        let c = sys::component(name)?;
        if let Some(found) = self.lookup_without_fd(&dir, &c)? {
            return Ok(found);
        }
        let fd = self
            .sh
            .meta
            .openat(dir.fd()?.as_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let (inode, st) = self.entry(fd, &dir, &c)?;
        let mut raw = st;
        (raw.st_dev, raw.st_ino) = inode.key;
        self.sh.recent.saw(dir.ino, &c, &raw);
        Ok(Entry::of(&inode, st))
    }

    /// A lookup that opens nothing, where inodes are anchored by handle and handles carry
    /// the inode number ([`crate::inodes::Anchoring::lookup_without_fd`]): one `fstatat`
    /// of the name (its errors are the lookup's), and, unless the table knows the inode
    /// unchanged, one `name_to_handle_at` of the same name, checked against the stat. The
    /// inode's `O_PATH` fd is opened by handle only when an operation needs it. `None`:
    /// look up with an fd (another mount below the backing, a name replaced between the
    /// two calls, no handle).
    fn lookup_without_fd(
        &self,
        dir: &Arc<Inode>,
        name: &std::ffi::CStr,
    ) -> io::Result<Option<Entry>> {
        let a = self.sh.inodes.anchoring();
        if !a.lookup_without_fd() {
            return Ok(None);
        }
        let dfd = dir.fd()?;
        let st = self.sh.meta.fstatat(dfd.as_fd(), name)?;
        if st.st_dev != self.sh.inodes.root_key().0 {
            return Ok(None);
        }
        let handle = if self.sh.inodes.known_unchanged(&st) {
            None
        } else {
            match a.handle_by_name(dfd.as_fd(), name, &st) {
                Some(h) => Some(h),
                None => return Ok(None),
            }
        };
        drop(dfd);
        let key = (st.st_dev, st.st_ino);
        let Some(inode) =
            self.sh
                .inodes
                .insert_found(Found::Handle(handle), &st, Some((dir, name)), |node| {
                    same_file(key, node)
                })
        else {
            return Ok(None);
        };
        self.sh.recent.saw(dir.ino, name, &st);
        let st = self.sparse_stat(&inode, st);
        Ok(Some(Entry::of(&inode, st)))
    }

    /// Drops lookups.
    pub fn forget(&self, ino: Ino, n: u64) {
        self.sh.inodes.forget(ino, n);
    }

    /// A name that may be created through the mount (the sidecar directory may not).
    pub(super) fn name_ok(&self, parent: Ino, name: &OsStr) -> io::Result<std::ffi::CString> {
        if parent == Ino::ROOT && name == SIDECAR_DIR {
            return Err(errno(libc::EPERM));
        }
        sys::component(name)
    }

    /// What unlink and rename need to know of `name` in `dir`, from one `fstatat` (a
    /// round trip on a networked backend): its known inode with sparse state, if any
    /// (operations that change its ctime re-record its stamp afterwards, so that our own
    /// changes never make its map look stale), and its inode number if it is a regular
    /// file whose only link this is (removing the name ends the file and its stored map).
    pub(super) fn child(&self, dir: &Inode, name: &std::ffi::CStr) -> Child {
        let st = match self.sh.recent.take(dir.ino, name) {
            Some(st) => st,
            None => match dir.fd().and_then(|d| self.sh.meta.fstatat(d.as_fd(), name)) {
                Ok(st) => st,
                Err(_) => return Child::default(),
            },
        };
        let kind = st.st_mode & libc::S_IFMT;
        let inode = self
            .sh
            .inodes
            .ino_for(st.st_dev, st.st_ino)
            .and_then(|ino| self.sh.inodes.get(ino).ok())
            .filter(|i| i.key == (st.st_dev, st.st_ino) && i.kind == kind);
        let held = inode
            .clone()
            .filter(|_| kind != libc::S_IFDIR)
            .map(|i| (i, st.st_nlink <= 1));
        if kind != libc::S_IFREG {
            return Child {
                inode,
                held,
                ..Child::default()
            };
        }
        let known = inode.clone().filter(|i| i.node().is_some());
        let last_link = (self.sh.cfg.map_store != MapStore::None
            && st.st_nlink == 1
            && st.st_dev == self.sh.inodes.root_key().0)
            .then_some(st.st_ino);
        Child {
            known,
            inode,
            held,
            ino: Some(st.st_ino),
            last_link,
            nlink: st.st_nlink,
        }
    }

    /// Drops the sidecar record of a file whose last link was removed through the mount.
    ///
    /// Where a removal found no sidecar directory (the backing takes xattrs, so maps are
    /// stored there and go with the file), removals in the next [`SIDECAR_RECHECK_MS`] do not
    /// look again: an `rm -rf` of files this mount knows nothing of paid one failed open
    /// (a round trip) per file for it. A store through this mount clears the memo. A
    /// record another node stores in that window and whose file is removed here stays
    /// behind until `sparsefs gc`; it is keyed by the file's stamp, so it can never be
    /// taken for another file's map.
    pub(super) fn forget_record(&self, ino: Option<u64>) {
        let Some(ino) = ino else { return };
        let now = (self.sh.started.elapsed().as_millis() as u64).max(1);
        let absent = self.sh.sidecar_absent_at.load(Relaxed);
        if absent != 0 && now.saturating_sub(absent) < SIDECAR_RECHECK_MS {
            return;
        }
        if let Ok(p) = self.persist()
            && !p.forget_ino(ino)
        {
            self.sh.sidecar_absent_at.store(now, Relaxed);
        }
    }

    /// A map is about to be stored: the sidecar directory may appear.
    pub(super) fn sidecar_may_appear(&self) {
        self.sh.sidecar_absent_at.store(0, Relaxed);
    }

    /// Runs `remove`, a backend call that removes the name `name` of `child` in `dir`
    /// (unlink, or a rename over it), after letting go of the daemon's own fds of that file
    /// where no application has it open: its read-write fd (libfuse filesystems such as
    /// bindfs rename a file removed while open to `.fuse_hidden*`, NFS clients to
    /// `.nfsXXXX`, and the directory then cannot be removed), and, for its last name, its
    /// `O_PATH` fd ([`Inode::detach`]; NFS silly-renames a name an fd holds). Files an
    /// application holds open keep everything and behave as on the backend itself.
    ///
    /// Runs as a transition of the file's node (the gate is held across the backend call,
    /// like every transition: an open of the same file waits, so none can slip in between
    /// the check and the removal). If the removal fails, a detached inode takes a fresh
    /// `O_PATH` fd of the name again.
    pub(super) fn removing(
        &self,
        child: &Child,
        dir: &Inode,
        name: &std::ffi::CStr,
        remove: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        let Some((inode, last)) = &child.held else {
            return remove();
        };
        let run = |node: Option<&FileNode>| {
            let idle = node.is_none_or(|n| n.with_state(|s| s.opens() == 0));
            if !idle {
                if *last || !inode.has_handle() {
                    // Open, and about to lose its last name (or the name it may be
                    // anchored by, where there are no handles): nothing could open it
                    // again, so its fds stay open (out of the pool's reach) until the
                    // kernel forgets it.
                    if let Some(n) = node {
                        n.data.pin()?;
                    }
                    inode.fd()?;
                    inode.pin();
                }
                return remove();
            }
            if let Some(n) = node {
                if n.data.park() {
                    self.sh.stats.data_fds_parked.fetch_add(1, Relaxed);
                }
                // No application holds it: an error its close reported (logged) has
                // nobody to go to, and must not fail the next open.
                let _ = n.data.take_deferred();
            }
            // Not on a FUSE backing: its kernel client does not silly-rename, and
            // libfuse filesystems hide only files they have open (an O_PATH fd opens
            // nothing there).
            if *last && !self.sh.fuse_backing {
                inode.detach();
            }
            let r = remove();
            if r.is_err() && *last {
                self.reanchor(inode, dir, name);
            }
            r
        };
        match inode.node() {
            Some(node) => node.transition(|n| run(Some(n))),
            None => run(None),
        }
    }

    /// Gives a detached inode a fresh `O_PATH` fd of `name` in `dir` if that still names it.
    fn reanchor(&self, inode: &Inode, dir: &Inode, name: &std::ffi::CStr) {
        let Ok(dfd) = dir.fd() else { return };
        if let Ok(fd) = self
            .sh
            .meta
            .openat(dfd.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)
            && let Ok(st) = self.sh.meta.fstat(fd.as_fd())
            && (st.st_dev, st.st_ino) == inode.key
        {
            inode.reattach(fd);
        }
    }

    /// Runs a creating operation as the caller (so the new node belongs to them), and
    /// looks the result up.
    pub(super) fn create_as(
        &self,
        parent: &Arc<Inode>,
        name: &OsStr,
        who: Caller,
        f: impl Fn(&std::ffi::CStr) -> io::Result<()>,
    ) -> io::Result<(Arc<Inode>, libc::stat)> {
        let (i, st, _) = self.create_as_with(parent, name, who, |c| f(c).map(|()| None))?;
        Ok((i, st))
    }

    /// [`Self::create_as`] for an operation that may return an open fd of what it made
    /// (create): the inode's `O_PATH` fd is then reopened from it through /proc (no
    /// second lookup of the name on the backend, and no race with a rename).
    pub(super) fn create_as_with(
        &self,
        parent: &Arc<Inode>,
        name: &OsStr,
        who: Caller,
        f: impl Fn(&std::ffi::CStr) -> io::Result<Option<OwnedFd>>,
    ) -> io::Result<(Arc<Inode>, libc::stat, Option<OwnedFd>)> {
        let c = self.name_ok(parent.ino, name)?;
        self.sh.recent.clear();
        let made = {
            let _ids = self
                .sh
                .cfg
                .creds
                .then(|| sys::FsIds::switch(who.uid, who.gid));
            f(&c)?
        };
        let fd = match &made {
            Some(m) => self.sh.meta.reopen(m.as_fd(), libc::O_PATH)?,
            None => {
                self.sh
                    .meta
                    .openat(parent.fd()?.as_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0)?
            }
        };
        let (i, st) = self.entry(fd, parent, &c)?;
        Ok((i, st, made))
    }

    /// mknod (regular files, fifos, sockets, devices).
    ///
    /// # Errors
    /// The backend's errno (`EEXIST`, `EPERM`, ...).
    pub fn mknod(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        who: Caller,
    ) -> io::Result<Entry> {
        let dir = self.inode(parent)?;
        let (i, st) = self.create_as(&dir, name, who, |c| {
            self.sh
                .meta
                .mknodat(dir.fd()?.as_fd(), c, mode & !umask, rdev as u64)
        })?;
        Ok(Entry::of(&i, st))
    }

    /// mkdir.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn mkdir(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        who: Caller,
    ) -> io::Result<Entry> {
        let dir = self.inode(parent)?;
        let (i, st) = self.create_as(&dir, name, who, |c| {
            self.sh
                .meta
                .mkdirat(dir.fd()?.as_fd(), c, mode & !umask & 0o7777)
        })?;
        Ok(Entry::of(&i, st))
    }

    /// symlink.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn symlink(
        &self,
        parent: Ino,
        name: &OsStr,
        target: &Path,
        who: Caller,
    ) -> io::Result<Entry> {
        let dir = self.inode(parent)?;
        let (i, st) = self.create_as(&dir, name, who, |c| {
            self.sh
                .meta
                .symlinkat(target.as_os_str(), dir.fd()?.as_fd(), c)
        })?;
        Ok(Entry::of(&i, st))
    }

    /// unlink.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn unlink(&self, parent: Ino, name: &OsStr) -> io::Result<()> {
        let dir = self.inode(parent)?;
        let c = sys::component(name)?;
        let child = self.child(&dir, &c);
        let dfd = dir.fd()?;
        self.removing(&child, &dir, &c, || {
            self.sh.meta.unlinkat(dfd.as_fd(), &c, 0)
        })?;
        // The last name of a file: nothing can open it again, so its stamp no longer
        // matters; its stored record is dropped unless this mount knows it has none.
        let unrecorded = child
            .known
            .as_ref()
            .and_then(|i| i.node())
            .is_some_and(|n| !n.with_state(|s| s.recorded()));
        if child.nlink > 1 {
            self.restamp(child.known);
        }
        if !unrecorded {
            self.forget_record(child.last_link);
        }
        Ok(())
    }

    /// rmdir.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn rmdir(&self, parent: Ino, name: &OsStr) -> io::Result<()> {
        let dir = self.inode(parent)?;
        self.sh.recent.clear();
        self.sh.meta.unlinkat(
            dir.fd()?.as_fd(),
            &sys::component(name)?,
            libc::AT_REMOVEDIR,
        )
    }

    /// rename / renameat2 (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
    ///
    /// # Errors
    /// The backend's errno.
    pub fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        let a = self.inode(parent)?;
        let b = self.inode(newparent)?;
        let (on, nn) = (
            self.name_ok(parent, name)?,
            self.name_ok(newparent, newname)?,
        );
        let moved = self.child(&a, &on);
        let mut target = self.child(&b, &nn);
        self.sh.recent.clear();
        if flags & libc::RENAME_EXCHANGE != 0 || target.ino.is_some() && target.ino == moved.ino {
            // Nothing is removed: the target keeps a name.
            target.held = None;
        }
        let (afd, bfd) = (a.fd()?, b.fd()?);
        self.removing(&target, &b, &nn, || {
            self.sh
                .meta
                .renameat2(afd.as_fd(), &on, bfd.as_fd(), &nn, flags)
        })?;
        // The anchors by name follow the rename.
        if let Some(i) = &moved.inode {
            i.named(&b, &nn);
        }
        if flags & libc::RENAME_EXCHANGE != 0
            && let Some(i) = &target.inode
        {
            i.named(&a, &on);
        }
        self.restamp(moved.known);
        if flags & libc::RENAME_EXCHANGE != 0 {
            self.restamp(target.known);
        } else if target.ino != moved.ino {
            // The target's name is gone (a rename onto another name of the same file
            // replaces nothing).
            self.forget_record(target.last_link);
        }
        Ok(())
    }

    /// link.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &OsStr) -> io::Result<Entry> {
        let inode = self.inode(ino)?;
        let dir = self.inode(newparent)?;
        let c = self.name_ok(newparent, newname)?;
        self.sh.recent.clear();
        self.sh
            .meta
            .link(inode.fd()?.as_fd(), dir.fd()?.as_fd(), &c)?;
        self.restamp(Some(inode.clone()));
        let fd = self
            .sh
            .meta
            .openat(dir.fd()?.as_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let (i, st) = self.entry(fd, &dir, &c)?;
        Ok(Entry::of(&i, st))
    }
}

/// Whether an idle file node's data fd still holds the file its backing inode number
/// names (asked when a lookup shows another ctime under that number; see
/// `InodeTable::insert_lookup`). A parked node (no fd) has nothing of another file to
/// write to: it reopens from the inode's fd, which each lookup refreshes.
pub(super) fn same_file(key: (u64, u64), node: &FileNode) -> bool {
    match node.data.open_identity() {
        Some(id) => matches!(id, Ok(k) if k == key),
        None => true,
    }
}
