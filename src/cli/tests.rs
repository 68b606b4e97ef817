use super::*;

#[test]
fn sizes_parse_with_binary_suffixes() {
    assert_eq!(parse_size("x", "4096").unwrap(), 4096);
    assert_eq!(parse_size("x", "32K").unwrap(), 32 << 10);
    assert_eq!(parse_size("x", "32k").unwrap(), 32 << 10);
    assert_eq!(parse_size("x", "4MiB").unwrap(), 4 << 20);
    assert_eq!(parse_size("x", "1G").unwrap(), 1 << 30);
    for bad in [
        "",
        "K",
        "-1",
        "0",
        "12Q",
        "1.5M",
        "99999999999999999999",
        "16777216T",
    ] {
        assert!(parse_size("x", bad).is_err(), "{bad}");
    }
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("x", "5s").unwrap(), Duration::from_secs(5));
    assert_eq!(
        parse_duration("x", "500ms").unwrap(),
        Duration::from_millis(500)
    );
    assert_eq!(parse_duration("x", "2").unwrap(), Duration::from_secs(2));
    for bad in ["", "0", "5x", "-1s", "abc"] {
        assert!(parse_duration("x", bad).is_err(), "{bad}");
    }
}

#[test]
fn fstab_form_becomes_mount() {
    let v = normalize_args(vec![
        "sparsefs".into(),
        "/a".into(),
        "/b".into(),
        "-o".into(),
        "rw".into(),
    ]);
    assert_eq!(v[1], "mount");
    let v = normalize_args(vec!["sparsefs".into(), "stats".into(), "/b".into()]);
    assert_eq!(v[1], "stats");
}
