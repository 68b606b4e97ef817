//! Integration tests through real FUSE mounts of the real binary: real tools (dd, cp,
//! rsync, tar, qemu-img), SEEK_DATA maps, allocation on the backend, errnos, backend
//! call counts, bad input. One binary; each test mounts its own temp directories.
//!
//! A test that cannot mount fails when `SPARSEFS_REQUIRE_FUSE=1` (CI sets it) and says
//! it skipped otherwise. `SPARSEFS_TEST_BACKINGS` (default `dir,bindfs`) picks the
//! backings of the matrix tests; `gluster` uses `SPARSEFS_GLUSTER_DIR` (see
//! scripts/test-gluster.sh).

#[path = "mount/budgets.rs"]
mod budgets;
#[path = "mount/cli.rs"]
mod cli;
#[path = "mount/concurrency.rs"]
mod concurrency;
#[path = "mount/durability.rs"]
mod durability;
#[path = "mount/harness.rs"]
mod harness;
#[path = "mount/images.rs"]
mod images;
#[path = "mount/kernel_cache.rs"]
mod kernel_cache;
#[path = "mount/maps.rs"]
mod maps;
#[path = "mount/metrics.rs"]
mod metrics;
#[path = "mount/posix.rs"]
mod posix;
#[path = "mount/readahead.rs"]
mod readahead;
#[path = "mount/resources.rs"]
mod resources;
#[path = "mount/send.rs"]
mod send;
#[path = "mount/sparse.rs"]
mod sparse;
#[path = "mount/torture.rs"]
mod torture;
#[path = "mount/turns.rs"]
mod turns;
