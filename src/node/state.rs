//! The state of one regular file that the mount opened, besides its engine: handles and
//! how they reach the backend, the stored map record, the backend stamp, set-id, and
//! the engine's published view. Pure: every transition is a method here, with a test.
//!
//! ```text
//!  access:  Ordinary ──first RO open of a clean dense file──> Passthrough{h, token}
//!              ^                                               │ writer joins
//!              │ last pt handle closes                         v (engine flushed, reset)
//!              └──────────(engine flushed, reset)──────── Bypassed{h, token}
//!  record:  None ──change──> NeedsStore{replaces:false} ──close──> Stored | None
//!           Stored ──change──> NeedsStore{replaces:true} ──close──> Stored | None
//! ```
//!
//! One `NodeState` lives behind one lock (rank `NodeState`, a leaf: taken after the
//! engine, never before), so what changes together is read together: a `stat` sees the
//! open count, the stamp and the engine's size and blocks of one moment without waiting
//! for the engine, which may be in a backend call.
#![forbid(unsafe_code)]

use std::time::SystemTime;

pub use crate::stamp::Stamp;

/// The stamp of a stat (see [`Stamp`]).
pub fn stamp_of(st: &libc::stat) -> Stamp {
    Stamp::of(st)
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

/// How the file's handles reach the backend. The kernel requires every open of an
/// inode that has a passthrough open to be a passthrough open of the same backing file
/// (other opens fail with EIO), so a file's handles are all passthrough or all ordinary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access<T> {
    /// Every handle goes through the engine.
    Ordinary,
    /// `handles` read-only kernel passthrough handles of the registered backing file
    /// `token`; the engine is clean and the backend's bytes are the file's.
    Passthrough {
        /// Open passthrough handles.
        handles: u32,
        /// The registered backing file.
        token: T,
    },
    /// A writable passthrough handle joined: writes reach the backend without the
    /// engine, so the engine takes size and map from the backend before each use and
    /// flushes after each change. Ends (back to `Ordinary`) when the last passthrough
    /// handle closes and the engine was reset; `token` is `None` once they are all closed
    /// (a failed reset is tried again at the next release).
    Bypassed {
        /// Open passthrough handles.
        handles: u32,
        /// The registered backing file, while handles are open.
        token: Option<T>,
    },
}

/// The map record stored with the file on the backend (see `persist`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// No record exists.
    None,
    /// A record may exist, and nothing changed through this mount since: nothing to store.
    Stored,
    /// The file changed through this mount: at close, its map is stored (or a record
    /// that `replaces` one which may exist is removed, for a file without holes) and its
    /// stamp recorded.
    NeedsStore {
        /// A record may exist now.
        replaces: bool,
    },
}

/// What the engine shows of itself, published at the end of every engine change (so
/// that `stat` reads it without the engine lock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Logical size.
    pub size: u64,
    /// Something is not on the backend yet (buffers, punches, size).
    pub dirty: bool,
    /// The map's holes are known holes.
    pub exact: bool,
    /// 512-byte blocks that may hold data.
    pub blocks: u64,
    /// The index has no hole below the size (every byte may be data).
    pub dense: bool,
    /// When the application last wrote, while that write is not yet on the backend.
    pub written: Option<SystemTime>,
}

/// How an open proceeds (see [`NodeState::plan_open`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenPlan<T> {
    /// An ordinary handle.
    Ordinary,
    /// Join the passthrough handles with `token`. `bypass`: this is the first writer to
    /// join, so the engine is flushed and reset from the backend, then
    /// [`NodeState::bypass`] is called, before the handle is counted.
    Join {
        /// The registered backing file.
        token: T,
        /// The engine is to be bypassed from now on.
        bypass: bool,
    },
    /// The open may be the file's first passthrough handle: register the backing file
    /// and count the handle with it, or count it as ordinary if that fails.
    Passthrough,
}

/// What a release leaves to do (see [`NodeState::released`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// That was the last handle of the file.
    pub last: bool,
    /// The file is bypassed and no passthrough handle is left: flush and reset the
    /// engine from the backend, then call [`NodeState::bypass_ended`].
    pub end_bypass: bool,
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct NodeState<T> {
    opens: u32,
    access: Access<T>,
    record: Record,
    stamp: Option<Stamp>,
    /// Tickets of stamp recorders: the stamp of the latest ticket wins (see
    /// [`NodeState::stamp_ticket`]).
    tickets: u64,
    stamp_ticket: u64,
    setid: bool,
    view: View,
    /// Whether the kernel's page cache of the file may be kept at an open whose fresh
    /// stat shows the stamp unchanged: nothing changed the file behind the kernel since
    /// an open last made the kernel drop that cache (see [`NodeState::keep_kernel_cache`]).
    cache_trusted: bool,
    /// When (seconds since the epoch) an open last made the kernel drop that cache: what
    /// it holds was read since.
    cache_since: i64,
}

impl<T: Clone> NodeState<T> {
    /// A node just made from a stat of its file (`stamp`, `mode`), with its record as
    /// the map load found it and the engine's first view.
    pub fn new(stamp: Stamp, mode: u32, record: Record, view: View) -> Self {
        Self {
            opens: 0,
            access: Access::Ordinary,
            record,
            stamp: Some(stamp),
            tickets: 0,
            stamp_ticket: 0,
            setid: setid_to_clear(mode) != 0,
            view,
            cache_trusted: false,
            cache_since: 0,
        }
    }

    /// At an ordinary open (not passthrough): whether the kernel may keep the file's
    /// page cache (`FOPEN_KEEP_CACHE`), given that the open's fresh stat showed the stamp
    /// this mount knows (`unchanged`). Yes only when nothing changed the file behind the
    /// kernel since an open last dropped that cache: not for a node just made (the
    /// kernel may hold pages from before it), not after the engine was reset from the
    /// backend (a change outside the mount) or passthrough writers wrote the backing file
    /// directly; and not unless the file had been unchanged for [`crate::stamp::SETTLED`] when
    /// the cache was last dropped. Either way the cache holds nothing stale once this
    /// open is answered, so later opens may keep it. `now`: seconds since the epoch.
    pub fn keep_kernel_cache(&mut self, unchanged: bool, now: i64) -> bool {
        let ordinary = matches!(self.access, Access::Ordinary);
        let settled = self.stamp.is_some_and(|s| s.settled_at(self.cache_since));
        let keep = unchanged && self.cache_trusted && ordinary && settled;
        if !keep {
            self.cache_since = now;
        }
        // With passthrough writers still open (a bypassed file's ordinary handle) the
        // backing file may change behind the kernel after this open too.
        self.cache_trusted = ordinary;
        keep
    }

    /// Open handles.
    pub fn opens(&self) -> u32 {
        self.opens
    }

    /// The access mode.
    pub fn access(&self) -> &Access<T> {
        &self.access
    }

    /// The engine is bypassed (see [`Access::Bypassed`]).
    pub fn bypassed(&self) -> bool {
        matches!(self.access, Access::Bypassed { .. })
    }

    /// The map record state.
    pub fn record(&self) -> Record {
        self.record
    }

    /// A record may exist on the backend.
    pub fn recorded(&self) -> bool {
        !matches!(
            self.record,
            Record::None | Record::NeedsStore { replaces: false }
        )
    }

    /// The engine's last published view.
    pub fn view(&self) -> View {
        self.view
    }

    /// The backend's stamp when the state was last known to match it.
    pub fn stamp(&self) -> Option<Stamp> {
        self.stamp
    }

    /// The mode was last seen with set-id bits a write by an unprivileged caller clears.
    pub fn setid(&self) -> bool {
        self.setid
    }

    // ---- opens and releases -------------------------------------------------------

    /// How an open proceeds. `passthrough_ok`: the open itself qualifies (the mount
    /// wants passthrough, the kernel granted it, read-only, not `O_DIRECT`); it becomes
    /// the first passthrough handle only when no handle is open and the engine is clean
    /// with no known hole (reads of holes are served from the index without backend I/O;
    /// passthrough would read them from the backend).
    pub fn plan_open(&self, writable: bool, passthrough_ok: bool) -> OpenPlan<T> {
        match &self.access {
            Access::Passthrough { token, .. } => OpenPlan::Join {
                token: token.clone(),
                bypass: writable,
            },
            Access::Bypassed {
                token: Some(token), ..
            } => OpenPlan::Join {
                token: token.clone(),
                bypass: false,
            },
            Access::Bypassed { token: None, .. } => OpenPlan::Ordinary,
            Access::Ordinary => {
                if passthrough_ok && self.opens == 0 && !self.view.dirty && self.view.dense {
                    OpenPlan::Passthrough
                } else {
                    OpenPlan::Ordinary
                }
            }
        }
    }

    /// A writer joins passthrough handles: `Passthrough` becomes `Bypassed` (the engine
    /// has just been flushed and reset from the backend).
    pub fn bypass(&mut self) {
        self.cache_trusted = false;
        if let Access::Passthrough { handles, token } = &self.access {
            self.access = Access::Bypassed {
                handles: *handles,
                token: Some(token.clone()),
            };
        }
    }

    /// Counts an opened handle: `pt` is the backing file it passes through to (a joined
    /// token, or a first registration), `None` for an ordinary handle.
    pub fn opened(&mut self, pt: Option<T>) {
        self.opens += 1;
        let Some(t) = pt else { return };
        match &mut self.access {
            Access::Ordinary => {
                self.access = Access::Passthrough {
                    handles: 1,
                    token: t,
                }
            }
            Access::Passthrough { handles, .. } | Access::Bypassed { handles, .. } => *handles += 1,
        }
    }

    /// Counts a released handle (`pt`: it was a passthrough handle).
    pub fn released(&mut self, pt: bool) -> Released {
        self.opens = self.opens.saturating_sub(1);
        if pt {
            match &mut self.access {
                Access::Passthrough { handles, .. } => {
                    *handles = handles.saturating_sub(1);
                    if *handles == 0 {
                        self.access = Access::Ordinary;
                    }
                }
                Access::Bypassed { handles, token } => {
                    *handles = handles.saturating_sub(1);
                    if *handles == 0 {
                        *token = None;
                    }
                }
                Access::Ordinary => {}
            }
        }
        Released {
            last: self.opens == 0,
            end_bypass: matches!(self.access, Access::Bypassed { handles: 0, .. }),
        }
    }

    /// The engine of a bypassed file with no passthrough handle left was flushed and
    /// reset from the backend: it owns the file again. What the passthrough writers did
    /// is not described by any map, so nothing is stored for it (a record that may exist
    /// is stale by its stamp).
    pub fn bypass_ended(&mut self) {
        self.cache_trusted = false;
        if matches!(self.access, Access::Bypassed { handles: 0, .. }) {
            self.access = Access::Ordinary;
            if let Record::NeedsStore { replaces } = self.record {
                self.record = if replaces {
                    Record::Stored
                } else {
                    Record::None
                };
            }
        }
    }

    // ---- staleness and stamps -------------------------------------------------------

    /// Whether an open must drop the engine's state: nobody has the file open, nothing
    /// is unflushed, and the backend's stamp (`backend`, from a fresh stat) is not the one
    /// last known to match (close-to-open: another node changed the file).
    pub fn stale(&self, backend: &Stamp) -> bool {
        self.opens == 0 && !self.view.dirty && self.stamp != Some(*backend)
    }

    /// Whether an open may drop the engine's state although the stamp matches (the
    /// map's witness says another node stored a later map): nobody has it open and
    /// nothing is unflushed.
    pub fn idle_clean(&self) -> bool {
        self.opens == 0 && !self.view.dirty
    }

    /// The engine was reset from the backend whose stat showed `backend` (taken after
    /// `ticket`), and its record was loaded as `record`.
    pub fn refreshed(&mut self, ticket: u64, backend: Stamp, record: Record) {
        self.cache_trusted = false;
        self.record_stamp(ticket, backend);
        self.record = record;
    }

    /// A ticket for a stamp about to be taken. Recorders take a ticket, stat the backend
    /// without any lock, then [`Self::record_stamp`]: of racing recorders, the one whose
    /// ticket is latest wins, and its stat began after every change that completed
    /// before any earlier ticket.
    pub fn stamp_ticket(&mut self) -> u64 {
        self.tickets += 1;
        self.tickets
    }

    /// Records `stamp` (stat after `ticket`) as "known to match", unless a later ticket
    /// already recorded one.
    pub fn record_stamp(&mut self, ticket: u64, stamp: Stamp) {
        if ticket > self.stamp_ticket {
            self.stamp_ticket = ticket;
            self.stamp = Some(stamp);
        }
    }

    /// Whether a stat of the backing file showing `backend` is to be reshaped by the
    /// engine's view (its size, blocks and unflushed write time): the file is open
    /// through the mount, has unflushed changes, or the backend still shows the stamp
    /// the engine last matched. A bypassed engine is never trusted (passthrough writers
    /// change the file behind it); a file changed elsewhere shows the backend's stat.
    pub fn stat_view(&self, backend: &Stamp) -> Option<View> {
        let trust =
            !self.bypassed() && (self.opens > 0 || self.view.dirty || self.stamp == Some(*backend));
        trust.then_some(self.view)
    }

    // ---- map record ---------------------------------------------------------------

    /// The file changed through this mount.
    pub fn changed(&mut self) {
        self.record = Record::NeedsStore {
            replaces: self.recorded(),
        };
    }

    /// A scan found zero blocks (or dug holes): the map is stored at close even where
    /// it shows no hole, replacing whatever record exists.
    pub fn scanned(&mut self) {
        self.record = Record::NeedsStore { replaces: true };
    }

    /// At close: whether the map is to be stored (`Some(replaces)`); the record is
    /// `Stored` from now on until [`Self::stored`] says otherwise.
    pub fn take_store(&mut self) -> Option<bool> {
        match self.record {
            Record::NeedsStore { replaces } => {
                self.record = Record::Stored;
                Some(replaces)
            }
            _ => None,
        }
    }

    /// The outcome of storing: `Some(true)` a record now exists, `Some(false)` none
    /// exists (removed, or the file has no hole and none existed), `None` the store
    /// failed (a record may exist).
    pub fn stored(&mut self, exists: Option<bool>) {
        self.record = match exists {
            Some(false) => Record::None,
            _ => Record::Stored,
        };
    }

    /// A map load found a record (`true`: one exists, valid or not).
    pub fn loaded(&mut self, found: bool) {
        self.record = if found { Record::Stored } else { Record::None };
    }

    // ---- set-id and view ------------------------------------------------------------

    /// A stat of the file showed `mode`.
    pub fn saw_mode(&mut self, mode: u32) {
        self.setid = setid_to_clear(mode) != 0;
    }

    /// The set-id bits were cleared.
    pub fn setid_cleared(&mut self) {
        self.setid = false;
    }

    /// The engine's view after a change.
    pub fn publish(&mut self, view: View) {
        self.view = view;
    }
}

#[cfg(test)]
mod tests;
