use super::*;

const STAMP: Stamp = Stamp {
    size: 10,
    mtime: (1, 2),
    ctime: (3, 4),
    ino: 9,
    birth: 0,
};
const OTHER: Stamp = Stamp {
    size: 10,
    mtime: (1, 2),
    ctime: (3, 5),
    ino: 9,
    birth: 0,
};

fn clean_dense() -> View {
    View {
        size: 10,
        dirty: false,
        exact: false,
        blocks: 1,
        dense: true,
        written: None,
    }
}

fn node() -> NodeState<&'static str> {
    NodeState::new(STAMP, 0o644, Record::None, clean_dense())
}

#[test]
fn ordinary_opens_and_releases_count_handles() {
    let mut n = node();
    assert_eq!(n.plan_open(true, false), OpenPlan::Ordinary);
    n.opened(None);
    n.opened(None);
    assert_eq!(n.opens(), 2);
    assert_eq!(
        n.released(false),
        Released {
            last: false,
            end_bypass: false
        }
    );
    assert!(n.released(false).last);
    assert_eq!(n.access(), &Access::Ordinary);
}

#[test]
fn a_first_read_only_open_of_a_clean_dense_file_may_pass_through() {
    let mut n = node();
    assert_eq!(n.plan_open(false, true), OpenPlan::Passthrough);
    n.opened(Some("t"));
    assert_eq!(
        n.access(),
        &Access::Passthrough {
            handles: 1,
            token: "t"
        }
    );
}

#[test]
fn passthrough_is_refused_while_another_handle_is_open_or_data_is_unflushed_or_holes_are_known() {
    let mut n = node();
    n.opened(None);
    assert_eq!(n.plan_open(false, true), OpenPlan::Ordinary);
    let mut n = node();
    n.publish(View {
        dirty: true,
        ..clean_dense()
    });
    assert_eq!(n.plan_open(false, true), OpenPlan::Ordinary);
    let mut n = node();
    n.publish(View {
        dense: false,
        ..clean_dense()
    });
    assert_eq!(n.plan_open(false, true), OpenPlan::Ordinary);
    let n = node();
    assert_eq!(n.plan_open(false, false), OpenPlan::Ordinary);
}

#[test]
fn a_reader_joining_passthrough_handles_passes_through_too() {
    let mut n = node();
    n.opened(Some("t"));
    assert_eq!(
        n.plan_open(false, false),
        OpenPlan::Join {
            token: "t",
            bypass: false
        }
    );
    n.opened(Some("t"));
    assert_eq!(
        n.access(),
        &Access::Passthrough {
            handles: 2,
            token: "t"
        }
    );
}

#[test]
fn a_writer_joining_passthrough_handles_bypasses_the_engine() {
    let mut n = node();
    n.opened(Some("t"));
    assert_eq!(
        n.plan_open(true, false),
        OpenPlan::Join {
            token: "t",
            bypass: true
        }
    );
    n.bypass();
    n.opened(Some("t"));
    assert!(n.bypassed());
    assert_eq!(
        n.access(),
        &Access::Bypassed {
            handles: 2,
            token: Some("t")
        }
    );
    // A second writer joins without another reset.
    assert_eq!(
        n.plan_open(true, false),
        OpenPlan::Join {
            token: "t",
            bypass: false
        }
    );
}

#[test]
fn the_last_passthrough_release_returns_to_ordinary() {
    let mut n = node();
    n.opened(Some("t"));
    n.opened(Some("t"));
    assert!(!n.released(true).last);
    let r = n.released(true);
    assert!(r.last && !r.end_bypass);
    assert_eq!(n.access(), &Access::Ordinary);
}

#[test]
fn the_last_release_of_a_bypassed_file_ends_the_bypass_once_the_engine_is_reset() {
    let mut n = node();
    n.opened(Some("t"));
    n.bypass();
    n.changed();
    let r = n.released(true);
    assert_eq!(
        r,
        Released {
            last: true,
            end_bypass: true
        }
    );
    assert_eq!(
        n.access(),
        &Access::Bypassed {
            handles: 0,
            token: None
        }
    );
    // A failed reset leaves it bypassed: an ordinary open meanwhile does not join,
    // and its release asks again.
    assert_eq!(n.plan_open(true, true), OpenPlan::Ordinary);
    n.opened(None);
    assert!(n.released(false).end_bypass);
    n.bypass_ended();
    assert_eq!(n.access(), &Access::Ordinary);
    assert_eq!(n.record(), Record::None, "nothing to store after a bypass");
}

#[test]
fn a_stat_trusts_the_engine_only_while_open_dirty_or_unchanged_and_never_when_bypassed() {
    let mut n = node();
    assert!(n.stat_view(&STAMP).is_some());
    assert!(n.stat_view(&OTHER).is_none(), "changed elsewhere");
    n.opened(None);
    assert!(n.stat_view(&OTHER).is_some(), "open");
    n.released(false);
    n.publish(View {
        dirty: true,
        ..clean_dense()
    });
    assert!(n.stat_view(&OTHER).is_some(), "dirty");
    let mut n = node();
    n.opened(Some("t"));
    n.bypass();
    assert!(n.stat_view(&STAMP).is_none(), "bypassed");
}

#[test]
fn a_file_is_stale_only_when_closed_clean_and_stamped_differently() {
    let mut n = node();
    assert!(!n.stale(&STAMP));
    assert!(n.stale(&OTHER));
    n.opened(None);
    assert!(!n.stale(&OTHER), "open");
    n.released(false);
    n.publish(View {
        dirty: true,
        ..clean_dense()
    });
    assert!(!n.stale(&OTHER), "dirty");
    let mut n = node();
    let t = n.stamp_ticket();
    n.refreshed(t, OTHER, Record::Stored);
    assert!(!n.stale(&OTHER));
    assert_eq!(n.record(), Record::Stored);
}

#[test]
fn of_racing_stamp_recorders_the_latest_ticket_wins() {
    let mut n = node();
    let early = n.stamp_ticket();
    let late = n.stamp_ticket();
    n.record_stamp(late, OTHER);
    n.record_stamp(early, STAMP);
    assert_eq!(n.stamp(), Some(OTHER));
}

#[test]
fn a_change_needs_a_store_that_replaces_only_an_existing_record() {
    let mut n = node();
    n.changed();
    assert_eq!(n.record(), Record::NeedsStore { replaces: false });
    assert!(!n.recorded());
    let mut n = node();
    n.loaded(true);
    n.changed();
    assert_eq!(n.record(), Record::NeedsStore { replaces: true });
    assert!(n.recorded());
}

#[test]
fn a_close_stores_once_and_the_outcome_sets_the_record() {
    let mut n = node();
    assert_eq!(n.take_store(), None, "nothing changed");
    n.changed();
    assert_eq!(n.take_store(), Some(false));
    assert_eq!(n.take_store(), None, "taken once");
    n.stored(Some(true));
    assert_eq!(n.record(), Record::Stored);
    n.changed();
    assert_eq!(n.take_store(), Some(true));
    n.stored(Some(false));
    assert_eq!(n.record(), Record::None);
    n.changed();
    n.take_store();
    n.stored(None);
    assert!(n.recorded(), "a failed store may have left a record");
}

#[test]
fn a_scan_stores_at_close_replacing_any_record() {
    let mut n = node();
    n.scanned();
    assert_eq!(n.take_store(), Some(true));
}

#[test]
fn a_load_sets_whether_a_record_exists() {
    let mut n = node();
    n.loaded(true);
    assert_eq!(n.record(), Record::Stored);
    n.loaded(false);
    assert_eq!(n.record(), Record::None);
}

#[test]
fn set_id_follows_the_last_mode_seen_and_clearing() {
    let mut n = NodeState::<()>::new(STAMP, 0o4755, Record::None, View::default());
    assert!(n.setid());
    n.setid_cleared();
    assert!(!n.setid());
    n.saw_mode(0o2070);
    assert!(n.setid(), "setgid with group exec");
    n.saw_mode(0o2060);
    assert!(!n.setid(), "setgid without group exec is mandatory locking");
}

#[test]
fn the_kernel_keeps_its_page_cache_only_where_nothing_changed_the_file_behind_it() {
    let mut n = node();
    // A node just made: the kernel may hold pages from before it.
    assert!(!n.keep_kernel_cache(true, 100));
    n.opened(None);
    n.released(false);
    assert!(n.keep_kernel_cache(true, 100));
    assert!(
        !n.keep_kernel_cache(false, 100),
        "the open saw another stamp"
    );
    assert!(
        n.keep_kernel_cache(true, 100),
        "that open dropped the cache"
    );
    // A reset from the backend (a change outside the mount) at a stat other than an
    // open's (getattr): the next open drops the cache, even seeing the new stamp.
    let t = n.stamp_ticket();
    n.refreshed(t, OTHER, Record::None);
    assert!(!n.keep_kernel_cache(true, 100));
    assert!(n.keep_kernel_cache(true, 100));
    // Passthrough writers write the backing file behind the kernel.
    n.opened(Some("t"));
    n.bypass();
    assert!(matches!(n.access(), Access::Bypassed { .. }));
    assert!(n.released(true).end_bypass);
    n.bypass_ended();
    assert_eq!(n.access(), &Access::Ordinary);
    assert!(!n.keep_kernel_cache(true, 100));
    assert!(n.keep_kernel_cache(true, 100));
    // A stamp that changed less than stamp::SETTLED before the cache was dropped: a
    // change in the same timestamp tick could hide behind it.
    let t = n.stamp_ticket();
    let recent = Stamp {
        ctime: (99, 0),
        ..OTHER
    };
    n.refreshed(t, recent, Record::None);
    assert!(!n.keep_kernel_cache(true, 100));
    assert!(
        !n.keep_kernel_cache(true, 101),
        "dropped at 100, changed at 99"
    );
    assert!(n.keep_kernel_cache(true, 102), "dropped at 101: settled");
}
