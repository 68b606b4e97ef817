//! Extended attributes, the virtual ones (stats, scan requests, the test wedge) and the hidden map xattr.

use super::*;

impl SparseFs {
    pub(super) fn xattr_ok(&self, inode: &Inode) -> io::Result<()> {
        if inode.kind == libc::S_IFREG || inode.kind == libc::S_IFDIR {
            Ok(())
        } else {
            Err(errno(libc::EPERM))
        }
    }

    /// getxattr. On the root, [`STATS_XATTR`] answers the live counters to the owner
    /// and root (`EACCES` to anyone else).
    ///
    /// # Errors
    /// `ENODATA`, `ERANGE`, `ENOTSUP`, `EACCES`.
    pub fn getxattr(&self, ino: Ino, name: &OsStr, size: u32, who: Caller) -> io::Result<Vec<u8>> {
        if ino == Ino::ROOT && name == STATS_XATTR {
            if who.uid != 0 && who.uid != self.sh.cfg.owner {
                return Err(errno(libc::EACCES));
            }
            self.sh
                .stats
                .inodes
                .store(self.sh.inodes.len() as u64, Relaxed);
            let v = self.sh.stats.to_json().into_bytes();
            if size != 0 && (size as usize) < v.len() {
                return Err(errno(libc::ERANGE));
            }
            return Ok(v);
        }
        if let Some(from) = name.to_str().and_then(|n| n.strip_prefix(RUNS_XATTR)) {
            let v = self.runs_reply(ino, from)?;
            if size != 0 && (size as usize) < v.len() {
                return Err(errno(libc::ERANGE));
            }
            return Ok(v);
        }
        let inode = self.inode(ino)?;
        if (inode.kind != libc::S_IFREG && inode.kind != libc::S_IFDIR) || name == MAP_XATTR {
            return Err(errno(libc::ENODATA));
        }
        let caps = name == "security.capability";
        if caps && inode.no_caps.load(Relaxed) {
            return Err(errno(libc::ENODATA));
        }
        let c = std::ffi::CString::new(name.as_encoded_bytes()).map_err(|_| errno(libc::EINVAL))?;
        let r = self
            .sh
            .meta
            .getxattr(inode.fd()?.as_fd(), &c, size as usize);
        if caps && matches!(&r, Err(e) if e.raw_os_error() == Some(libc::ENODATA)) {
            inode.no_caps.store(true, Relaxed);
        }
        r
    }

    /// listxattr.
    ///
    /// # Errors
    /// `ERANGE`.
    pub fn listxattr(&self, ino: Ino, size: u32) -> io::Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        if inode.kind != libc::S_IFREG && inode.kind != libc::S_IFDIR {
            return Ok(Vec::new());
        }
        // Our own map xattr is not listed: fetch the whole list and filter it.
        let n = self.sh.meta.listxattr(inode.fd()?.as_fd(), 0)?.len();
        let all = self.sh.meta.listxattr(inode.fd()?.as_fd(), n.max(1))?;
        let hidden = format!("{MAP_XATTR}\0");
        let mut out = Vec::with_capacity(all.len());
        for item in all.split_inclusive(|&b| b == 0) {
            if item != hidden.as_bytes() {
                out.extend_from_slice(item);
            }
        }
        if size != 0 && (size as usize) < out.len() {
            return Err(errno(libc::ERANGE));
        }
        if size == 0 {
            return Ok(vec![0; out.len()]);
        }
        Ok(out)
    }

    /// setxattr.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        let inode = self.inode(ino)?;
        self.xattr_ok(&inode)?;
        inode.no_caps.store(false, Relaxed);
        if name == STATS_XATTR || name == MAP_XATTR {
            return Err(errno(libc::EPERM));
        }
        if name == SCAN_XATTR {
            return self.scan_request(&inode, value);
        }
        if name == WEDGE_XATTR && self.sh.cfg.debug_hooks {
            let node = inode.node().ok_or_else(|| errno(libc::EBADF))?;
            warn!(
                ino = inode.ino.0,
                "debug hook: wedging the file's engine lock for good"
            );
            // Answered once the wedge holds the lock (a write racing the answer would
            // otherwise slip in first under load; found by the umount --force test).
            let (held, wait) = std::sync::mpsc::channel::<()>();
            std::thread::Builder::new()
                .name("sparsefs-wedge".into())
                .spawn(move || {
                    node.with_engine(|_, _| {
                        let _ = held.send(());
                        loop {
                            std::thread::park()
                        }
                    })
                })?;
            let _ = wait.recv();
            return Ok(());
        }
        let c = std::ffi::CString::new(name.as_encoded_bytes()).map_err(|_| errno(libc::EINVAL))?;
        self.sh
            .meta
            .setxattr(inode.fd()?.as_fd(), &c, value, flags)?;
        self.restamp(Some(inode));
        Ok(())
    }

    /// A [`SCAN_XATTR`] request: scans a range of an open regular file for zero blocks
    /// (the engine reads the backend; the found blocks become known holes, persisted at
    /// close like any map change).
    pub(super) fn scan_request(&self, inode: &Inode, value: &[u8]) -> io::Result<()> {
        let text = std::str::from_utf8(value).map_err(|_| errno(libc::EINVAL))?;
        let mut it = text.split_ascii_whitespace();
        let num = |x: Option<&str>| x.and_then(|v| v.parse::<u64>().ok());
        let (Some(off), Some(len)) = (num(it.next()), num(it.next())) else {
            return Err(errno(libc::EINVAL));
        };
        let dig = match it.next() {
            None => false,
            Some("dig") => true,
            Some(_) => return Err(errno(libc::EINVAL)),
        };
        if inode.kind != libc::S_IFREG {
            return Err(errno(libc::EINVAL));
        }
        // Only through an open file: its sparse state exists while it is open.
        let node = inode.node().ok_or_else(|| errno(libc::EBADF))?;
        let changed = node.change(|e, state| {
            let found = e.scan_zeros(off, len, dig)?;
            // Punching moves the file's ctime: the map is stored again at close, with a
            // fresh stamp, or the next mount would find it stale.
            if found > 0 || dig {
                state.with(|s| s.scanned());
            }
            Ok(found > 0 || dig)
        })?;
        // st_blocks now follows the learned map: the kernel's cached attributes (taken
        // before the scan, for up to their TTL) would still show the backend's.
        if changed && let Some(f) = self.sh.invalidate_attrs.get() {
            f(inode.ino);
        }
        Ok(())
    }

    /// A [`RUNS_XATTR`] answer: the runs of an open regular file that end after `from`.
    fn runs_reply(&self, ino: Ino, from: &str) -> io::Result<Vec<u8>> {
        /// Past this many bytes a reply stops and says where to go on (under 64 KiB, the
        /// kernel's limit for an xattr value).
        const REPLY_MAX: usize = 60 * 1024;
        let from: u64 = from.parse().map_err(|_| errno(libc::EINVAL))?;
        let inode = self.inode(ino)?;
        if inode.kind != libc::S_IFREG {
            return Err(errno(libc::ENODATA));
        }
        // Only through an open file: its engine exists while it is open.
        let node = inode.node().ok_or_else(|| errno(libc::EBADF))?;
        let (size, runs) = node.change(|e, _| Ok((e.size(), e.block_runs()?)))?;
        let mut body = String::new();
        let mut next = size;
        for (s, e) in runs.iter().filter(|&(_, e)| e > from) {
            if body.len() > REPLY_MAX {
                next = s;
                break;
            }
            body.push_str(&format!("{s} {e}\n"));
        }
        Ok(format!("{size} {next}\n{body}").into_bytes())
    }

    /// removexattr.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> io::Result<()> {
        if name == MAP_XATTR {
            return Err(errno(libc::EPERM));
        }
        let inode = self.inode(ino)?;
        self.xattr_ok(&inode)?;
        inode.no_caps.store(false, Relaxed);
        let c = std::ffi::CString::new(name.as_encoded_bytes()).map_err(|_| errno(libc::EINVAL))?;
        self.sh.meta.removexattr(inode.fd()?.as_fd(), &c)?;
        self.restamp(Some(inode));
        Ok(())
    }
}
