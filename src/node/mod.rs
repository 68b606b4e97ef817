//! A regular file's sparse state behind its three locks ([`FileNode`]), and that state's
//! pure part ([`state::NodeState`]): open count, access mode, map record, stamp, set-id and
//! the engine's published view.

pub mod state;

pub use state::{
    Access, NodeState, OpenPlan, Record, Released, Stamp, View, setid_to_clear, stamp_of,
};

use crate::file::SparseFile;
use crate::lock::{Mutex, Rank, RwLock};
use std::io;
use std::sync::Arc;

/// What the kernel reads and writes directly for a token's handle (FUSE passthrough: a
/// backing file registered with the kernel; the adapter's type, opaque here).
pub type PassToken = Arc<dyn std::any::Any + Send + Sync>;

/// One regular file's sparse state, shared by all its handles: three locks, taken in
/// rank order through the methods below (never handed out).
///
/// ```text
///  gate (NodeGate)  ─>  engine (Engine)  ─>  state (NodeState, leaf)
///  opens/last closes    reads, writes,       counts, access, record, stamp,
///  of this file         seeks, flushes       set-id, the engine's view
/// ```
pub struct FileNode {
    /// Rank `NodeGate`, held across backend calls: serialises the open and last-close
    /// transitions of this file (staleness check, passthrough join and end) with each
    /// other; nothing else waits for it.
    gate: Mutex<()>,
    /// Rank `Engine`, held across backend calls: the file's backend writes and the index
    /// changes made with them happen in order. Never taken while `state` is held.
    engine: RwLock<SparseFile>,
    /// Rank `NodeState`, a leaf, never held across a backend call: the state `stat`,
    /// open and release read and change together, and the engine's published [`View`].
    state: Mutex<NodeState<PassToken>>,
    /// The backend file under the engine, whose fd is closed while idle past a budget.
    pub data: Arc<crate::backend::reopen::Reopening>,
}

/// The node's state, reachable from inside an engine section (the state lock ranks
/// after the engine's).
pub struct StateRef<'a>(&'a Mutex<NodeState<PassToken>>);

impl StateRef<'_> {
    /// Runs `f` on the state (a leaf lock: `f` must not call the backend).
    pub fn with<R>(&self, f: impl FnOnce(&mut NodeState<PassToken>) -> R) -> R {
        f(&mut self.0.lock())
    }
}

impl FileNode {
    /// A node over `engine`, with its first state.
    pub fn new(
        mut engine: SparseFile,
        mut state: NodeState<PassToken>,
        data: Arc<crate::backend::reopen::Reopening>,
    ) -> Self {
        state.publish(engine.view());
        Self {
            gate: Mutex::new(Rank::NodeGate, ()),
            engine: RwLock::new(Rank::Engine, engine),
            state: Mutex::new(Rank::NodeState, state),
            data,
        }
    }

    /// Runs `f` on the state alone (a leaf lock: `f` must not call the backend).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut NodeState<PassToken>) -> R) -> R {
        f(&mut self.state.lock())
    }

    /// Runs an open or last-close transition of this file: one at a time per file.
    /// Inside, `f` may use the engine and the state (both rank after the gate).
    pub fn transition<R>(&self, f: impl FnOnce(&Self) -> R) -> R {
        let _g = self.gate.lock();
        f(self)
    }

    /// Runs `f` on the engine as it is (flushes, the flusher, fsync) and publishes the
    /// engine's view afterwards.
    pub fn with_engine<R>(&self, f: impl FnOnce(&mut SparseFile, &StateRef<'_>) -> R) -> R {
        let mut e = self.engine.write();
        let st = StateRef(&self.state);
        let r = f(&mut e, &st);
        // Flights done since are settled here, under the engine only (a failed one calls
        // the backend), and the view is taken before the state lock.
        e.reap();
        let v = e.view();
        st.with(|s| s.publish(v));
        r
    }

    /// Runs a change through the engine: for a bypassed file (see
    /// [`crate::node::Access::Bypassed`]) the engine first takes size and map from the
    /// backend (after flushing what it holds) and flushes the change at once afterwards,
    /// so that it is ordered with the passthrough writers' own writes. An error of that
    /// final flush wins over `f`'s result.
    pub fn change<R>(
        &self,
        f: impl FnOnce(&mut SparseFile, &StateRef<'_>) -> io::Result<R>,
    ) -> io::Result<R> {
        self.with_engine(|e, st| {
            let bypassed = st.with(|s| s.bypassed());
            if bypassed {
                e.flush(crate::file::Depth::Full, crate::stats::Trigger::Sync)?;
                e.reset_from_backend()?;
            }
            let r = f(e, st);
            if bypassed {
                e.flush(crate::file::Depth::Full, crate::stats::Trigger::Sync)?;
            }
            r
        })
    }

    /// Runs `f` on the engine for reading (shared with other readers). A bypassed file's
    /// engine is resynced first, so that read goes through [`Self::change`].
    pub fn read<R>(&self, f: impl FnOnce(&SparseFile) -> io::Result<R>) -> io::Result<R> {
        if self.with_state(|s| s.bypassed()) {
            return self.change(|e, _| f(e));
        }
        f(&self.engine.read())
    }

    /// Stops the file's read-ahead (its last close): chunks dropped, reads in flight
    /// waited for, so nothing read before the next open is served after it and no reader
    /// thread holds the backend file.
    pub fn stop_prefetch(&self) {
        self.engine.read().prefetch().stop();
    }

    /// The engine's last published view.
    pub fn view(&self) -> View {
        self.with_state(|s| s.view())
    }
}
