//! sparsefs: a FUSE overlay that coalesces writes into large aligned chunks, turns
//! all-zero chunks into holes, and answers SEEK_DATA/SEEK_HOLE from its own extent
//! index, for big-I/O filesystems where every backend call is a round trip.
//!
//! ```text
//!  kernel FUSE ──> fuse_adapter (decode, reply, log)     thin, the only fuser user
//!                      │
//!                      v
//!                  fs::SparseFs (inodes, handles, metadata ops via sys)
//!                      │ per regular file
//!                      v
//!                  file::SparseFile ── coalescer (pure plan) ── extents (pure index)
//!                      │                                  └── zero (pure detection)
//!                      v
//!                  backend::BackendFile  (fd | mem | counting | fault)
//! ```
// `unsafe` lives in sys.rs only (it allows it for itself); every other module is denied.
#![deny(
    unsafe_code,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks
)]
#![warn(missing_docs)]

pub mod backend;
pub mod cli;
pub mod coalescer;
pub mod daemon;
pub mod demo;
pub mod extents;
pub mod fdpool;
pub mod file;
pub mod flight;
pub mod fs;
pub mod fuse_adapter;
pub mod ids;
pub mod inodes;
pub mod lock;
pub mod mapfile;
pub mod metrics;
pub mod mountinfo;
pub mod node;
pub mod persist;
pub mod prefetch;
pub mod send;
pub mod stamp;
pub mod stats;
pub mod sys;
pub mod tools;
pub mod zero;
