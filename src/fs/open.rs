//! Opening files: building a file's node (its backend stack), the open transition (staleness, passthrough join and bypass), create, the handle lookup, release and the end of a bypass.

use super::*;

impl SparseFs {
    pub(super) fn node(&self, inode: &Arc<Inode>) -> io::Result<Arc<FileNode>> {
        Ok(self.node_with(inode, None, None)?.0)
    }

    /// The file's node, made now (with `data`, an open fd of the file, if given; else a
    /// reopen of the inode's `O_PATH` fd) if it has none; `true` if made now (its stamp is
    /// fresh). `known`: a stat of the file known to be current (it was just made or
    /// emptied), taken instead of a fresh one. The node is built without any lock (it
    /// takes backend calls); of two racing builders one installs its node and the other's
    /// is dropped.
    pub(super) fn node_with(
        &self,
        inode: &Arc<Inode>,
        data: Option<OwnedFd>,
        known: Option<&libc::stat>,
    ) -> io::Result<(Arc<FileNode>, bool)> {
        if let Some(n) = inode.node() {
            return Ok((n, false));
        }
        if inode.kind != libc::S_IFREG {
            return Err(errno(libc::EINVAL));
        }
        let fd = match data {
            Some(fd) => fd,
            None => reopen_data(&*self.sh.meta, inode)?,
        };
        let stats = self.sh.stats.clone();
        let wrap = move |fd: OwnedFd| -> Box<dyn BackendFile> {
            Box::new(Counting::new(FdFile::new(File::from(fd)), stats.clone()))
        };
        let first = wrap(fd);
        // The reopen holds the inode weakly: the inode owns the node, not the other way.
        let weak = Arc::downgrade(inode);
        let meta = self.sh.meta.clone();
        let data = Reopening::new(
            first,
            Box::new(move || {
                let inode = weak.upgrade().ok_or_else(|| errno(libc::ESTALE))?;
                Ok(wrap(reopen_data(&*meta, &inode)?))
            }),
            self.sh.stats.data_fds.clone(),
            Some(self.sh.inodes.anchoring().pool.clone()),
        );
        let backend: Box<dyn BackendFile> = Box::new(data.clone());
        let (geo, caps, stats) = (self.sh.cfg.geo, self.sh.caps, self.sh.stats.clone());
        let (mut engine, st) = match known {
            Some(st) => (
                SparseFile::open_sized(backend, st.st_size as u64, geo, caps, stats),
                *st,
            ),
            None => (
                SparseFile::open(backend, geo, caps, stats)?,
                self.sh.meta.fstat_fresh(inode.fd()?.as_fd())?,
            ),
        };
        let record = self.load_map(inode, &mut engine, &st);
        let state = NodeState::new(stamp_of(&st), st.st_mode, record, engine.view());
        let node = Arc::new(FileNode::new(engine, state, data));
        Ok(inode.install_node(node))
    }

    pub(super) fn new_fh(&self, h: Handle) -> Fh {
        self.sh.stats.open_handles.fetch_add(1, Relaxed);
        self.sh.handles.insert(h)
    }

    /// Forgets handle `fh` (counted in the stats).
    pub(super) fn drop_fh(&self, fh: Fh) -> Option<Handle> {
        let h = self.sh.handles.remove(fh);
        if h.is_some() {
            self.sh.stats.open_handles.fetch_sub(1, Relaxed);
        }
        h
    }

    /// Opens a handle of a regular file, as one transition of its node (see
    /// [`FileNode::transition`]): the staleness check, the choice between an ordinary
    /// and a passthrough handle (and a joining writer's bypass), and the count.
    pub(super) fn open_node(
        &self,
        inode: &Arc<Inode>,
        flags: i32,
        data: Option<OwnedFd>,
        make: Option<MakeToken<'_>>,
        known: Option<&libc::stat>,
    ) -> io::Result<Opened> {
        let (node, made) = self.node_with(inode, data, known)?;
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let qualifies = make.is_some()
            && self.sh.passthrough.load(Relaxed)
            && !writable
            && flags & libc::O_DIRECT == 0;
        let mut unchanged = false;
        let mut keep_cache = false;
        let token = node.transition(|node| -> io::Result<Option<PassToken>> {
            if !made {
                unchanged = self.refresh_if_stale(inode, node)?;
                // Held from here to the last close (see `Reopening::ensure_open`).
                node.data.ensure_open()?;
            }
            let token = match node.with_state(|s| s.plan_open(writable, qualifies)) {
                OpenPlan::Ordinary => None,
                OpenPlan::Join { token, bypass } => {
                    if bypass {
                        node.with_engine(|e, state| -> io::Result<()> {
                            e.flush(Depth::Full, Trigger::Sync)?;
                            e.reset_from_backend()?;
                            state.with(|s| s.bypass());
                            Ok(())
                        })?;
                    }
                    if writable {
                        self.sh.stats.passthrough_writers.fetch_add(1, Relaxed);
                    }
                    Some(token)
                }
                OpenPlan::Passthrough => {
                    let make = make.expect("qualifies only with a registrar");
                    // The kernel opens its own backing file from the path of the fd
                    // registered, with the handle's flags: the inode's `O_PATH` fd does
                    // (Linux 6.13+ takes it), where it holds the file (not on a FUSE
                    // backing: there it dies with its name, and the kernel's open would
                    // fail the application's open, where a reopen that fails here leaves
                    // an ordinary open); a read-only reopen elsewhere, or where the
                    // kernel refuses it.
                    let pfd = inode.fd()?;
                    let by_path = if self.sh.fuse_backing {
                        Err(errno(libc::EBADF))
                    } else {
                        make(pfd.as_fd())
                    };
                    let registered = by_path.or_else(|e| {
                        if !matches!(e.raw_os_error(), Some(libc::EBADF | libc::EINVAL)) {
                            return Err(e);
                        }
                        self.sh
                            .meta
                            .reopen(pfd.as_fd(), libc::O_RDONLY)
                            .and_then(|fd| make(fd.as_fd()))
                    });
                    match registered {
                        Ok(t) => Some(t),
                        Err(e) => {
                            debug!(ino = inode.ino.0, error = %e, "passthrough refused: ordinary open");
                            None
                        }
                    }
                }
            };
            node.with_state(|s| {
                s.opened(token.clone());
                // Close-to-open without rereading what the kernel holds: an open that
                // found the file as this mount left it keeps the page cache (a reread
                // of a big file otherwise goes through FUSE again, and dropping 4 GiB of
                // cached pages took 0.2 s of the open). Handles that bypass the cache
                // drop it as before.
                if token.is_none() {
                    keep_cache = s.keep_kernel_cache(unchanged, crate::stamp::epoch_secs())
                        && !self.bypass_page_cache(flags);
                }
            });
            Ok(token)
        })?;
        if token.is_some() {
            self.sh.stats.passthrough_opens.fetch_add(1, Relaxed);
        }
        // A stored map just loaded: the kernel's attributes from the lookup show the
        // backend's allocation, not the map's (cp decides on the fstat after its open).
        if made
            && node.with_state(|s| s.recorded() && s.view().exact)
            && let Some(f) = self.sh.invalidate_attrs.get()
        {
            f(inode.ino);
        }
        let fh = self.new_fh(Handle::File {
            inode: inode.clone(),
            node,
            flags,
            pt: token.is_some(),
        });
        Ok(Opened {
            fh,
            passthrough: token,
            keep_cache,
        })
    }

    /// open. `O_DIRECT` and other flags stay with the handle; the backend fd is shared
    /// per inode and opened without them.
    ///
    /// # Errors
    /// `EISDIR`, the backend's errno.
    ///
    /// `make` registers a backend file for kernel passthrough (the adapter's part); when
    /// given and the open qualifies (see `passthrough_ok`), or the file already has
    /// passthrough handles, the result carries the token to answer with.
    pub fn open(&self, ino: Ino, flags: i32, make: Option<MakeToken<'_>>) -> io::Result<Opened> {
        let inode = self.inode(ino)?;
        match inode.kind {
            libc::S_IFREG => self.open_node(&inode, flags, None, make, None),
            libc::S_IFDIR => Err(errno(libc::EISDIR)),
            _ => Err(errno(libc::ENXIO)),
        }
    }

    /// Whether an open with these flags (as the kernel sends them: `create` keeps
    /// `O_CREAT`/`O_EXCL`, `open` has neither) bypasses the kernel's page cache
    /// (`FOPEN_DIRECT_IO`). Without the writeback cache every written page is still
    /// copied into the page cache and kept there, which halves write throughput and fills
    /// memory with pages of streams nobody reads back (measured: `cp --sparse=never` of
    /// 2 GiB 2.2-3.1 s cached, 1.05-1.2 s uncached). So: `O_WRONLY` opens (they cannot
    /// read or mmap), and `O_RDWR` creates with `O_EXCL` (a new temporary file:
    /// `mkstemp`, rsync's receiver). The kernel keeps other opens coherent: it writes
    /// back dirty mmap pages before a direct write and invalidates the cached pages it
    /// covers after it (`FUSE_DIRECT_IO_ALLOW_MMAP`, requested at init).
    pub fn bypass_page_cache(&self, flags: i32) -> bool {
        if self.sh.cfg.cache_writes {
            return false;
        }
        let excl = libc::O_CREAT | libc::O_EXCL;
        match flags & libc::O_ACCMODE {
            libc::O_WRONLY => true,
            libc::O_RDWR => flags & excl == excl,
            _ => false,
        }
    }

    /// create (+ open).
    ///
    /// # Errors
    /// The backend's errno.
    pub fn create(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        who: Caller,
    ) -> io::Result<(Entry, Opened)> {
        let dir = self.inode(parent)?;
        let excl = flags & libc::O_EXCL;
        let trunc = flags & libc::O_TRUNC;
        // The fd that created the file becomes its data fd (no close and reopen: an
        // open round trip on a networked backend). O_TRUNC is the backend's too, so that
        // the file is empty when it is looked at.
        let (inode, st, made) = self.create_as_with(&dir, name, who, |c| {
            self.sh
                .meta
                .openat(
                    dir.fd()?.as_fd(),
                    c,
                    libc::O_CREAT | libc::O_RDWR | libc::O_NOFOLLOW | excl | trunc,
                    mode & !umask & 0o7777,
                )
                .map(Some)
        })?;
        if inode.kind != libc::S_IFREG {
            self.forget(inode.ino, 1);
            return Err(errno(libc::EEXIST));
        }
        // A file this create made (O_EXCL) or emptied (O_TRUNC) is what the stat just
        // taken shows: its sparse state needs no stat of its own (one or two round trips
        // per created file on a networked backend).
        let known = (excl != 0 || trunc != 0).then_some(&st);
        // No new passthrough for a writable open, but one of a file (an existing file, by
        // a name the kernel had not looked up) that has passthrough handles must join them.
        let opened = self.open_node(&inode, flags, made, None, known)?;
        if trunc != 0 {
            let node = self.node(&inode)?;
            self.truncate_node(&node, 0)?;
        }
        let st = match known {
            Some(st) if st.st_size == 0 => self.sparse_stat(&inode, *st),
            _ => self.stat_of(&inode)?,
        };
        Ok((Entry::of(&inode, st), opened))
    }

    pub(super) fn file(&self, fh: Fh) -> io::Result<(Arc<Inode>, Arc<FileNode>, i32)> {
        self.sh.handles.file(fh)
    }

    /// release (last close of an open): flushes and forgets the handle.
    ///
    /// # Errors
    /// The backend's errno (not seen by close(2); logged).
    pub fn release(&self, fh: Fh) -> io::Result<()> {
        let h = self.drop_fh(fh);
        let Some(Handle::File {
            inode, node, pt, ..
        }) = h
        else {
            return Ok(());
        };
        // The stamp is recorded where this mount changes the file (close_flush of a
        // changed file, setattr, the end of a bypass), not again here: a round trip per
        // close, and a record now could cover another node's change made since.
        let r = self.close_flush(&inode, &node);
        node.transition(|node| {
            let rel = node.with_state(|s| s.released(pt));
            if rel.end_bypass && self.end_bypass(node) {
                self.record_stamp(&inode, node);
            }
            if rel.last && r.is_ok() {
                self.park_idle(node);
            }
        });
        r
    }

    /// Ends the bypass of a file whose passthrough handles are all closed (the kernel
    /// released its files before telling us): its engine takes the backend's size and an
    /// unknown map again (what passthrough writers did is not known; reads and SEEK_DATA
    /// of it then ask the backend). Returns whether it worked (the stamp is then to be
    /// recorded); if not, the file stays bypassed and the next release tries again.
    pub(super) fn end_bypass(&self, node: &FileNode) -> bool {
        node.with_engine(|e, state| {
            let synced = e
                .flush(Depth::Full, Trigger::Close)
                .and_then(|()| e.reset_from_backend());
            match synced {
                Ok(()) => {
                    state.with(|s| s.bypass_ended());
                    true
                }
                Err(err) => {
                    warn!(error = %err, "file written through passthrough: state not refreshed");
                    false
                }
            }
        })
    }

    /// Closes the read-write fd of a file nobody has open any more (it is opened again
    /// on its next use): the daemon holds a backend file only while it needs it. A file
    /// held open elsewhere on a networked backend pins it there (NFS silly-renames it when
    /// another client removes it, libfuse filesystems hide it as `.fuse_hidden*`), and
    /// the next open then opens it fresh, so a backend with its own page cache revalidates
    /// it as for any other client (close-to-open). Called in the file's last-close
    /// transition, so no open races it. A file still holding buffered data (its flush
    /// failed) keeps its fd for the retry.
    ///
    /// On a FUSE backing (bindfs, GlusterFS's client) an `O_PATH` fd does not keep the
    /// backing file, so once this fd closed, another client's removal may free the inode
    /// number while the kernel still knows the inode, and a new file may take it: the
    /// inode table gives such a file a node id of its own (see
    /// `InodeTable::insert_lookup`; found by the torture, writes of one file landing in
    /// another while this fd was kept open on FUSE backings instead).
    pub(super) fn park_idle(&self, node: &FileNode) {
        if node.with_state(|s| s.opens() == 0) {
            node.stop_prefetch();
        }
        let idle = node.with_state(|s| s.opens() == 0 && !s.view().dirty);
        if idle && node.data.park() {
            self.sh.stats.data_fds_parked.fetch_add(1, Relaxed);
        }
        if idle {
            // The last close has returned to the application (FUSE flush): an error the
            // backend's close reported (logged) must not fail the next open.
            let _ = node.data.take_deferred();
        }
    }
}

/// A read-write fd of a regular file from its `O_PATH` fd (read-only where the daemon may
/// not write it).
pub(super) fn reopen_data(meta: &dyn MetaBackend, inode: &Inode) -> io::Result<OwnedFd> {
    meta.reopen(inode.fd()?.as_fd(), libc::O_RDWR)
        .or_else(|_| meta.reopen(inode.fd()?.as_fd(), libc::O_RDONLY))
}
