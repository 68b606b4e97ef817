//! Attributes: stat synthesis from the engine's view, getattr, setattr (chmod, chown, truncate, times), set-id clearing, readlink, statfs, access.

use super::*;

impl SparseFs {
    /// The stat of an inode, with size and blocks from its sparse state.
    pub(super) fn stat_of(&self, inode: &Inode) -> io::Result<libc::stat> {
        Ok(self.sparse_stat(inode, self.sh.meta.fstat(inode.fd()?.as_fd())?))
    }

    /// `st` (a stat of the inode's backing file) with the inode number, block size, and
    /// size, times and blocks from its sparse state where that is trusted (see
    /// [`NodeState::stat_view`]). Reads the node's state only: never waits for a flush.
    pub(super) fn sparse_stat(&self, inode: &Inode, mut st: libc::stat) -> libc::stat {
        st.st_ino = inode.ino.0;
        st.st_blksize = self.sh.cfg.geo.block as _;
        let view = inode
            .node()
            .and_then(|n| n.with_state(|s| s.stat_view(&stamp_of(&st))));
        if let Some(v) = view {
            st.st_size = v.size as i64;
            if let Some(t) = v.written
                && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
            {
                let (s, ns) = (d.as_secs() as i64, d.subsec_nanos() as i64);
                if (s, ns) > (st.st_mtime, st.st_mtime_nsec) {
                    (st.st_mtime, st.st_mtime_nsec) = (s, ns);
                }
                if (s, ns) > (st.st_ctime, st.st_ctime_nsec) {
                    (st.st_ctime, st.st_ctime_nsec) = (s, ns);
                }
            }
            if v.exact {
                st.st_blocks = v.blocks as i64;
            } else if v.dirty {
                st.st_blocks = st.st_blocks.max(v.blocks as i64);
            }
        }
        st
    }

    /// getattr.
    ///
    /// # Errors
    /// `ESTALE` for unknown inodes.
    pub fn getattr(&self, ino: Ino) -> io::Result<libc::stat> {
        let inode = self.inode(ino)?;
        self.stat_of(&inode)
    }

    /// setattr: chmod, chown, truncate, utimens. A regular file is flushed first so that
    /// times set now are not moved by a later flush.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn setattr(&self, ino: Ino, a: SetAttr) -> io::Result<libc::stat> {
        let inode = self.inode(ino)?;
        let is_reg = inode.kind == libc::S_IFREG;
        let node = if is_reg && (a.size.is_some() || inode.node().is_some()) {
            Some(self.node(&inode)?)
        } else {
            None
        };
        if let Some(n) = &node {
            n.transition(|n| self.refresh_if_stale(&inode, n).map(drop))?;
            if let Some(size) = a.size {
                self.truncate_node(n, size)?;
            } else {
                n.with_engine(|e, _| e.flush(Depth::Full, Trigger::Sync))?;
            }
        } else if a.size.is_some() {
            return Err(errno(if inode.kind == libc::S_IFDIR {
                libc::EISDIR
            } else {
                libc::EINVAL
            }));
        }
        if let Some(mode) = a.mode
            && inode.kind != libc::S_IFLNK
        {
            self.sh.meta.chmod(inode.fd()?.as_fd(), mode & 0o7777)?;
        }
        if a.uid.is_some() || a.gid.is_some() {
            self.sh.meta.chown(
                inode.fd()?.as_fd(),
                a.uid.unwrap_or(u32::MAX),
                a.gid.unwrap_or(u32::MAX),
            )?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let ts = |t: Option<Option<libc::timespec>>| match t {
                None => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                Some(None) => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_NOW,
                },
                Some(Some(t)) => t,
            };
            self.sh.meta.utimens(
                inode.fd()?.as_fd(),
                &[ts(a.atime), ts(a.mtime)],
                inode.kind == libc::S_IFLNK,
            )?;
        }
        // The fresh stat that records the stamp of our own change is also the reply.
        let fresh = node.as_ref().and_then(|n| self.record_stamp(&inode, n));
        let st = match fresh {
            Some(st) => self.sparse_stat(&inode, st),
            None => self.stat_of(&inode)?,
        };
        if let Some(n) = &node {
            n.with_state(|s| s.saw_mode(st.st_mode));
        }
        Ok(st)
    }

    /// Clears the set-id bits a write by an unprivileged caller clears. The kernel leaves
    /// that to us for uncached (direct-I/O) writes (`FUSE_WRITE_KILL_SUIDGID`), and the
    /// backend would not do it: the daemon writes with `CAP_FSETID`.
    pub(super) fn clear_setid(&self, inode: &Inode, node: &FileNode) -> io::Result<()> {
        let st = self.sh.meta.fstat(inode.fd()?.as_fd())?;
        let bits = crate::node::setid_to_clear(st.st_mode);
        if bits != 0 {
            self.sh
                .meta
                .chmod(inode.fd()?.as_fd(), st.st_mode & 0o7777 & !bits)?;
            self.record_stamp(inode, node);
            if let Some(f) = self.sh.invalidate_attrs.get() {
                f(inode.ino);
            }
        }
        node.with_state(|s| s.setid_cleared());
        Ok(())
    }

    /// readlink.
    ///
    /// # Errors
    /// `EINVAL` if not a symlink.
    pub fn readlink(&self, ino: Ino) -> io::Result<OsString> {
        self.sh.meta.readlink(self.inode(ino)?.fd()?.as_fd())
    }

    /// statfs of the backing filesystem.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn statfs(&self, ino: Ino) -> io::Result<libc::statvfs> {
        self.sh.meta.statvfs(self.inode(ino)?.fd()?.as_fd())
    }

    /// access (only reached without default_permissions).
    ///
    /// # Errors
    /// `EACCES`.
    pub fn access(&self, ino: Ino, mask: i32) -> io::Result<()> {
        let inode = self.inode(ino)?;
        if inode.kind == libc::S_IFLNK {
            return Ok(());
        }
        self.sh.meta.access(inode.fd()?.as_fd(), mask)
    }
}
