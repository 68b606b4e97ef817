use super::*;

#[test]
fn locks_taken_in_rank_order_pass_and_are_released_in_any_order() {
    let a = Mutex::new(Rank::NodeGate, 1);
    let b = RwLock::new(Rank::Engine, 2);
    let c = Mutex::new(Rank::NodeState, 3);
    let ga = a.lock();
    let gb = b.write();
    let gc = c.lock();
    drop(gb);
    drop(ga);
    drop(gc);
    // Everything released: any order may start again.
    let _c = c.lock();
    drop(_c);
    let _a = a.lock();
}

#[test]
#[should_panic(expected = "taking Engine while holding NodeState")]
fn an_inversion_fails_on_the_first_run_that_takes_both_locks() {
    // The stat-versus-open hang: stat took engine then stamp, open stamp then engine.
    // One thread taking both in the wrong order is enough to be caught.
    let engine = RwLock::new(Rank::Engine, ());
    let state = Mutex::new(Rank::NodeState, ());
    let _s = state.lock();
    let _e = engine.read();
}

#[test]
#[should_panic(expected = "taking Engine while holding Engine")]
fn two_locks_of_one_rank_are_never_held_together() {
    let a = RwLock::new(Rank::Engine, ());
    let b = RwLock::new(Rank::Engine, ());
    let _a = a.write();
    let _b = b.read();
}

#[test]
#[should_panic(expected = "backend call pwrite while holding NodeState")]
fn a_backend_call_under_a_lock_not_marked_for_it_is_caught() {
    let state = Mutex::new(Rank::NodeState, ());
    let _s = state.lock();
    let _io = io("pwrite");
}

#[test]
fn a_backend_call_under_the_engine_is_allowed_and_reported() {
    let engine = RwLock::new(Rank::Engine, ());
    let _e = engine.write();
    let _io = io("fsync");
    let me = std::thread::current().name().unwrap_or("?").to_string();
    let r = report();
    let mine = r
        .iter()
        .find(|t| t.name == me)
        .expect("this thread reported");
    assert_eq!(mine.held, vec![Rank::Engine]);
    assert_eq!(mine.io.map(|x| x.0), Some("fsync"));
    assert!(mine.to_string().contains("in backend call fsync"));
}

#[test]
fn a_thread_blocked_on_a_lock_is_reported_as_waiting_for_it() {
    let m = Arc::new(Mutex::new(Rank::Engine, ()));
    let g = m.lock();
    let m2 = m.clone();
    let t = std::thread::Builder::new()
        .name("waiter-under-test".into())
        .spawn(move || drop(m2.lock()))
        .unwrap();
    let t0 = Instant::now();
    loop {
        let r = report();
        if r.iter()
            .any(|t| t.name == "waiter-under-test" && matches!(t.waiting, Some((Rank::Engine, _))))
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "waiter never reported"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(g);
    t.join().unwrap();
}
