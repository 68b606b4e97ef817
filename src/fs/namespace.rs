//! Names: lookup and forget, creating nodes as the caller, unlink, rmdir, rename, link, and what a removed or renamed name means for stamps and stored maps.

use super::*;

impl SparseFs {
    pub(super) fn entry(&self, fd: OwnedFd) -> io::Result<(Arc<Inode>, libc::stat)> {
        // One stat serves the table (dev, ino) and the reply: a round trip each on a
        // networked backend.
        let st = self.sh.meta.fstat(fd.as_fd())?;
        let key = (st.st_dev, st.st_ino);
        let inode = self
            .sh
            .inodes
            .insert_lookup(fd, &st, |node| same_file(key, node));
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
        let fd = self
            .sh
            .meta
            .openat(dir.fd().as_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let (inode, st) = self.entry(fd)?;
        Ok(Entry::of(&inode, st))
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
        let Ok(st) = self.sh.meta.fstatat(dir.fd().as_fd(), name) else {
            return Child::default();
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Child::default();
        }
        let known = self
            .sh
            .inodes
            .ino_for(st.st_dev, st.st_ino)
            .and_then(|ino| self.sh.inodes.get(ino).ok())
            .filter(|i| i.key == (st.st_dev, st.st_ino) && i.node().is_some());
        let last_link = (self.sh.cfg.map_store != MapStore::None
            && st.st_nlink == 1
            && st.st_dev == self.sh.inodes.root_key().0)
            .then_some(st.st_ino);
        Child {
            known,
            ino: Some(st.st_ino),
            last_link,
            nlink: st.st_nlink,
        }
    }

    /// Drops the sidecar record of a file whose last link was removed through the mount.
    pub(super) fn forget_record(&self, ino: Option<u64>) {
        if let (Some(ino), Ok(p)) = (ino, self.persist()) {
            p.forget_ino(ino);
        }
    }

    /// Runs a creating operation as the caller (so the new node belongs to them), and
    /// looks the result up.
    pub(super) fn create_as(
        &self,
        parent: &Inode,
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
        parent: &Inode,
        name: &OsStr,
        who: Caller,
        f: impl Fn(&std::ffi::CStr) -> io::Result<Option<OwnedFd>>,
    ) -> io::Result<(Arc<Inode>, libc::stat, Option<OwnedFd>)> {
        let c = self.name_ok(parent.ino, name)?;
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
                    .openat(parent.fd().as_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0)?
            }
        };
        let (i, st) = self.entry(fd)?;
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
                .mknodat(dir.fd().as_fd(), c, mode & !umask, rdev as u64)
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
                .mkdirat(dir.fd().as_fd(), c, mode & !umask & 0o7777)
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
                .symlinkat(target.as_os_str(), dir.fd().as_fd(), c)
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
        self.sh.meta.unlinkat(dir.fd().as_fd(), &c, 0)?;
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
        self.sh
            .meta
            .unlinkat(dir.fd().as_fd(), &sys::component(name)?, libc::AT_REMOVEDIR)
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
        let target = self.child(&b, &nn);
        self.sh
            .meta
            .renameat2(a.fd().as_fd(), &on, b.fd().as_fd(), &nn, flags)?;
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
        self.sh
            .meta
            .link(inode.fd().as_fd(), dir.fd().as_fd(), &c)?;
        self.restamp(Some(inode.clone()));
        let fd = self
            .sh
            .meta
            .openat(dir.fd().as_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let (i, st) = self.entry(fd)?;
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
