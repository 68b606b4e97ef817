//! Close-to-open freshness: stamps of what this mount last knew of a file, the staleness check at open, and extent maps stored with files (load at open, store at close).

use super::*;

impl SparseFs {
    /// Close-to-open: when nobody has the file open, a fresh stat of the backend that
    /// shows another stamp than the one last known to match means the file changed
    /// outside this mount: its sparse state is dropped and its stored map loaded again.
    /// Called inside the node's open transition (opens of the file wait; stat does not).
    ///
    /// Returns whether the kernel's page cache of the file may be kept (see
    /// [`NodeState::keep_kernel_cache`] for the rest of that decision): the stat was
    /// taken (nobody had the file open) and showed the stamp this mount knows, the
    /// backing is not a FUSE filesystem (whose attributes may lag another node's change:
    /// there every open drops the cache, as before), and the stamp's times have
    /// sub-second parts (a backend that keeps whole seconds, Lustre's mtime for one,
    /// could show the same stamp after another node's change of the same size).
    pub(super) fn refresh_if_stale(&self, inode: &Inode, node: &FileNode) -> io::Result<bool> {
        let Some(ticket) = node.with_state(|s| (s.opens() == 0).then(|| s.stamp_ticket())) else {
            return Ok(false);
        };
        let fd = inode.fd()?;
        let st = self.sh.meta.fstat_fresh(fd.as_fd())?;
        let now = stamp_of(&st);
        node.with_state(|s| s.saw_mode(st.st_mode));
        let forced =
            !node.with_state(|s| s.stale(&now)) && self.witness_disagrees(inode, node, fd.as_fd());
        drop(fd);
        if !forced && !node.with_state(|s| s.stale(&now)) {
            let fine = now.mtime.1 != 0 && now.ctime.1 != 0;
            return Ok(fine && !self.sh.fuse_backing);
        }
        node.with_engine(|e, state| {
            // Checked again under the engine: a truncate by path may have run meanwhile.
            if !state.with(|s| s.stale(&now) || (forced && s.idle_clean())) {
                return Ok(false);
            }
            debug!(
                ino = inode.ino.0,
                known = ?state.with(|s| s.stamp()),
                now = ?now,
                "backing file changed outside the mount: map dropped"
            );
            // A data fd kept open since the last close (FUSE backings) is closed: the
            // next call opens the file afresh, so the backend revalidates it.
            node.data.park();
            e.reset_from_backend()?;
            let record = self.load_map(inode, e, &st);
            state.with(|s| s.refreshed(ticket, now, record));
            Ok(false)
        })
    }

    /// On a FUSE backing (GlusterFS's client and the like keep attributes and small
    /// files' contents in caches that may lag another node's change by a second or more,
    /// so a fresh stat may still show the stamp this mount knows), whether the file's map
    /// xattr, read past those caches, says another mount stored a later map since (or
    /// removed the one this mount knows of). Unsure (the call failed) counts as yes.
    /// Not asked where the node's stamp already differs, or on other backings (a fresh
    /// stat there is the backend's truth), or where maps are not kept in xattrs.
    fn witness_disagrees(
        &self,
        inode: &Inode,
        node: &FileNode,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> bool {
        if !self.sh.fuse_backing || self.sh.cfg.map_store != MapStore::Xattr {
            return false;
        }
        let Some((known, record)) = node.with_state(|s| s.stamp().map(|k| (k, s.record()))) else {
            return false;
        };
        let Ok(p) = self.persist() else {
            return false;
        };
        let disagrees = match p.witness(fd) {
            Witness::Stamp(x) => !x.same_content(&known.born(0)),
            Witness::Absent => record == Record::Stored,
            Witness::Unknown => true,
        };
        if disagrees {
            debug!(
                ino = inode.ino.0,
                "the map's witness says another mount changed the file: state dropped"
            );
        }
        disagrees
    }

    pub(super) fn persist(&self) -> io::Result<Persist<'_>> {
        Ok(Persist::new(
            self.sh.inodes.root_fd(),
            self.sh.cfg.map_store,
            &*self.sh.meta,
            self.sh.births,
        )
        .with_sidecar(&self.sh.sidecar))
    }

    /// Loads a persisted map for a clean file of unknown layout (see [`Persist::load`]).
    /// Returns the record state found.
    pub(super) fn load_map(&self, inode: &Inode, e: &mut SparseFile, st: &libc::stat) -> Record {
        if self.sh.cfg.map_store == MapStore::None || e.size() == 0 || e.exact() {
            return Record::None;
        }
        let Ok(p) = self.persist() else {
            return Record::None;
        };
        // A removed file has no record to load; one that may exist is treated as stored.
        let Ok(fd) = inode.fd() else {
            return Record::Stored;
        };
        let birth = p.birth(fd.as_fd(), inode.handle());
        match p.load(fd.as_fd(), st, birth) {
            Loaded::None => Record::None,
            Loaded::Stale => {
                self.sh.stats.maps_stale.fetch_add(1, Relaxed);
                debug!(
                    ino = inode.ino.0,
                    "persisted extent map is stale (file changed since): file treated as data"
                );
                Record::Stored
            }
            Loaded::Refused(err) => {
                self.sh.stats.maps_refused.fetch_add(1, Relaxed);
                warn!(ino = inode.ino.0, error = %err, "persisted extent map refused: file treated as data");
                Record::Stored
            }
            Loaded::Map(data) => {
                self.sh.stats.maps_loaded.fetch_add(1, Relaxed);
                debug!(
                    ino = inode.ino.0,
                    extents = data.len(),
                    "persisted extent map loaded"
                );
                e.adopt_map(data);
                Record::Stored
            }
        }
    }

    /// Persists a clean file's exact map; a file without holes has a record that may
    /// exist (`replaces`) removed. Returns whether a record exists now (`None`: the store
    /// failed, one may). Failures only cost the knowledge, never correctness: logged.
    pub(super) fn store_map(&self, inode: &Inode, e: &SparseFile, replaces: bool) -> Option<bool> {
        if self.sh.cfg.map_store == MapStore::None {
            return Some(false);
        }
        if !e.exact() || e.is_dirty() {
            return Some(replaces);
        }
        let Ok(p) = self.persist() else {
            return Some(replaces);
        };
        if e.index_data().total() >= e.size() {
            if replaces {
                p.remove(inode.fd().ok()?.as_fd());
            }
            return Some(false);
        }
        let fd = inode.fd().ok()?;
        let birth = p.birth(fd.as_fd(), inode.handle());
        self.sidecar_may_appear();
        match p.store(fd.as_fd(), e.index_data(), birth) {
            Ok(()) => {
                self.sh.stats.maps_stored.fetch_add(1, Relaxed);
                Some(true)
            }
            Err(err) => {
                warn!(ino = inode.ino.0, error = %err, "extent map not persisted");
                None
            }
        }
    }

    /// Flushes a file for close and, if it changed through the mount, stores its map
    /// (under the engine: the record is the engine's map) and records its stamp.
    pub(super) fn close_flush(&self, inode: &Inode, node: &FileNode) -> io::Result<()> {
        let changed = node.with_engine(|e, state| {
            e.flush(Depth::Full, Trigger::Close)?;
            let Some(replaces) = state.with(|s| s.take_store()) else {
                return Ok::<_, io::Error>(false);
            };
            let exists = self.store_map(inode, e, replaces);
            state.with(|s| s.stored(exists));
            Ok(true)
        })?;
        if changed {
            self.record_stamp(inode, node);
        }
        Ok(())
    }

    pub(super) fn restamp(&self, inode: Option<Arc<Inode>>) {
        if let Some(i) = inode
            && let Some(n) = i.node()
        {
            self.record_stamp(&i, &n);
        }
    }

    /// Records the backend's current stamp as "known to match" and returns the fresh
    /// stat it was taken from (a caller that answers with the file's attributes needs
    /// no second stat). The stat runs without any lock; of racing recorders the one that
    /// asked last wins (see [`NodeState::stamp_ticket`]).
    pub(super) fn record_stamp(&self, inode: &Inode, node: &FileNode) -> Option<libc::stat> {
        let ticket = node.with_state(|s| s.stamp_ticket());
        let st = inode
            .fd()
            .and_then(|fd| self.sh.meta.fstat_fresh(fd.as_fd()))
            .ok()?;
        node.with_state(|s| s.record_stamp(ticket, stamp_of(&st)));
        Some(st)
    }
}
