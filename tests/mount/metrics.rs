//! Prometheus metrics: `--metrics` over TCP and a Unix socket and `stats --prometheus`
//! parse strictly, count a known workload exactly, and a bad address mounts nothing.

use crate::harness::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse::<f64>().map_err(|_| format!("bad value {v:?}")),
    }
}

/// A strict parser of the text format 0.0.4 as sparsefs writes it: every family has
/// one `# HELP` then one `# TYPE` before its samples, samples are `name{labels} value`
/// (no timestamps, no blank lines), label values escape only `\\`, `\"` and `\n`,
/// histogram samples are `_bucket` (with `le`), `_sum` and `_count`, counters end in
/// `_total`, and no series appears twice.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<(String, String)> = None;
    let mut series = BTreeSet::new();
    if !text.ends_with('\n') {
        return Err("does not end with a newline".into());
    }
    for (no, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", no + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').ok_or_else(|| err("HELP".into()))?;
            if !valid_name(name) || help.is_empty() || !helped.insert(name.into()) {
                return Err(err("bad or repeated HELP".into()));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(|| err("TYPE".into()))?;
            if !valid_name(name)
                || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                || typed.insert(name.into(), kind.into()).is_some()
                || !helped.contains(name)
            {
                return Err(err("bad or repeated TYPE, or no HELP before it".into()));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(err("a counter not named _total".into()));
            }
            current = Some((name.into(), kind.into()));
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(err("blank line or unknown comment".into()));
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(err("bad metric name".into()));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            loop {
                let start = chars.peek().map(|c| c.0).ok_or_else(|| err("eol".into()))?;
                let mut eq = None;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        eq = Some(i);
                        break;
                    }
                }
                let eq = eq.ok_or_else(|| err("label without =".into()))?;
                let lname = &r[start..eq];
                if !valid_name(lname) || lname.starts_with("__") {
                    return Err(err(format!("bad label name {lname:?}")));
                }
                if chars.next().map(|c| c.1) != Some('"') {
                    return Err(err("label value not quoted".into()));
                }
                let mut v = String::new();
                loop {
                    match chars.next().map(|c| c.1) {
                        None => return Err(err("unterminated label value".into())),
                        Some('"') => break,
                        Some('\\') => match chars.next().map(|c| c.1) {
                            Some('\\') => v.push('\\'),
                            Some('"') => v.push('"'),
                            Some('n') => v.push('\n'),
                            _ => return Err(err("bad escape".into())),
                        },
                        Some(c) => v.push(c),
                    }
                }
                if labels.insert(lname.to_string(), v).is_some() {
                    return Err(err("repeated label".into()));
                }
                match chars.next() {
                    Some((_, ',')) => continue,
                    Some((i, '}')) => {
                        rest = &r[i + 1..];
                        break;
                    }
                    _ => return Err(err("expected , or }".into())),
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("no space before the value".into()))?;
        if value.contains(' ') {
            return Err(err("a timestamp or trailing text".into()));
        }
        let value = parse_value(value).map_err(err)?;
        let (family, kind) = current
            .clone()
            .ok_or_else(|| err("sample before any TYPE".into()))?;
        let ok = match kind.as_str() {
            "histogram" => {
                (name == format!("{family}_bucket") && labels.contains_key("le"))
                    || name == format!("{family}_sum")
                    || name == format!("{family}_count")
            }
            _ => name == family,
        };
        if !ok {
            return Err(err(format!("sample outside its family {family}")));
        }
        if !series.insert(format!("{name}{labels:?}")) {
            return Err(err("repeated series".into()));
        }
        out.push(Sample {
            name: name.into(),
            labels,
            value,
        });
    }
    if out.is_empty() {
        return Err("no samples".into());
    }
    Ok(out)
}

/// The value of the one series `name` whose labels include `want`.
fn value(s: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let hits: Vec<&Sample> = s
        .iter()
        .filter(|x| {
            x.name == name
                && want
                    .iter()
                    .all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(hits.len(), 1, "{name} {want:?}: {hits:?}");
    hits[0].value
}

/// As [`value`], 0 when the series is absent (series that exist only once non-zero).
fn value_or_0(s: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let present = s.iter().any(|x| {
        x.name == name
            && want
                .iter()
                .all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))
    });
    if present { value(s, name, want) } else { 0.0 }
}

/// Checks every histogram: buckets cumulative and ascending in `le`, `+Inf` equal to
/// `_count`.
fn check_histograms(s: &[Sample]) {
    let mut by_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for x in s.iter().filter(|x| x.name.ends_with("_bucket")) {
        let mut l = x.labels.clone();
        let le = parse_value(&l.remove("le").unwrap()).unwrap();
        by_series
            .entry(format!("{}{l:?}", x.name.trim_end_matches("_bucket")))
            .or_default()
            .push((le, x.value));
    }
    assert!(!by_series.is_empty(), "no histogram");
    for (k, b) in &by_series {
        assert!(
            b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{k}: not cumulative: {b:?}"
        );
        assert_eq!(b.last().unwrap().0, f64::INFINITY, "{k}: ends with +Inf");
    }
    for x in s.iter().filter(|x| x.name.ends_with("_count")) {
        let key = format!("{}{:?}", x.name.trim_end_matches("_count"), x.labels);
        assert_eq!(by_series[&key].last().unwrap().1, x.value, "{key}: count");
    }
}

/// Also parses with the reference parser (prometheus_client) when it is installed.
fn python_parses(text: &str) {
    python_parses_with(text, "prometheus_client.parser");
}

/// The same with the reference OpenMetrics parser (`prometheus_client.openmetrics.parser`).
fn python_parses_openmetrics(text: &str) {
    python_parses_with(text, "prometheus_client.openmetrics.parser");
}

fn python_parses_with(text: &str, module: &str) {
    // The distribution's python3 (python3-prometheus-client) may not be first in PATH.
    let python = ["python3", "/usr/bin/python3"].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import prometheus_client"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let Some(python) = python else {
        eprintln!("prometheus_client not installed: reference parse skipped");
        return;
    };
    let mut c = Command::new(python)
        .args([
            "-c",
            &format!(
                "import sys\nfrom {module} import text_string_to_metric_families as p\n\
                 n = sum(len(f.samples) for f in p(sys.stdin.read()))\nprint(n)"
            ),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    // The strict parser here reads the 0.0.4 text (OpenMetrics names counter families
    // without `_total`).
    if module == "prometheus_client.parser" {
        assert_eq!(
            n,
            parse_exposition(text).unwrap().len(),
            "same sample count"
        );
    } else {
        assert!(n > 0, "samples in the OpenMetrics text");
    }
}

/// Splits an HTTP/1.0 response into (status line, headers, body).
fn http_parts(resp: &str) -> (String, String, String) {
    let (head, body) = resp.split_once("\r\n\r\n").expect("a header/body split");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.into(), headers.to_ascii_lowercase(), body.into())
}

fn http_get_accept(mut s: impl Read + Write, accept: &str) -> (String, String, String) {
    write!(s, "GET /metrics HTTP/1.0\r\nAccept: {accept}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    http_parts(&resp)
}

fn http_get(mut s: impl Read + Write, path: &str) -> (String, String, String) {
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    http_parts(&resp)
}

fn scrape_tcp(port: u16, path: &str) -> (String, String, String) {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    http_get(s, path)
}

fn scrape_unix(sock: &Path) -> (String, String, String) {
    let s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    http_get(s, "/metrics")
}

fn metrics_ok((status, headers, body): (String, String, String)) -> Vec<Sample> {
    assert_eq!(status, "HTTP/1.0 200 OK");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `n` bytes of `chunk`-sized writes of `byte` (or of random data) and closes.
fn write_file(p: &Path, n: u64, zeros: bool) {
    let mut f = File::create(p).unwrap();
    let chunk = MIB as usize;
    for i in 0..n / MIB {
        if zeros {
            f.write_all(&vec![0u8; chunk]).unwrap();
        } else {
            f.write_all(&random_bytes(chunk, i + 1)).unwrap();
        }
    }
}

const W: &[(&str, &str)] = &[("kind", "write")];

#[test]
fn metrics_over_http_count_a_known_workload_exactly_and_parse_strictly() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = Mount::new(b.path(), &["--metrics", &addr]);
    let before = metrics_ok(scrape_tcp(port, "/metrics"));
    let mp = std::fs::canonicalize(m.path()).unwrap();
    let fsname = std::fs::canonicalize(b.path()).unwrap();
    for s in &before {
        assert_eq!(s.labels["mount"], mp.display().to_string(), "{s:?}");
        assert_eq!(s.labels["fsname"], fsname.display().to_string(), "{s:?}");
    }
    write_file(&m.p("zeros"), 64 * MIB, true);
    write_file(&m.p("data"), 8 * MIB, false);
    let after = metrics_ok(scrape_tcp(port, "/metrics"));
    let d = |name: &str, l: &[(&str, &str)]| value(&after, name, l) - value(&before, name, l);
    assert_eq!(
        d("sparsefs_app_written_bytes_total", &[]),
        (72 * MIB) as f64
    );
    assert_eq!(
        d("sparsefs_zero_bytes_elided_total", &[]),
        (64 * MIB) as f64
    );
    assert_eq!(d("sparsefs_backend_bytes_total", W), (8 * MIB) as f64);
    assert!(d("sparsefs_app_writes_total", &[]) >= 72.0);
    let calls = d("sparsefs_backend_calls_total", W);
    assert!(calls >= 2.0, "8 MiB of data reached the backend: {calls}");
    assert_eq!(d("sparsefs_backend_call_seconds_count", W), calls);
    assert!(d("sparsefs_backend_call_seconds_sum", W) > 0.0);
    assert_eq!(value(&after, "sparsefs_dirty_bytes", &[]), 0.0, "closed");
    assert_eq!(
        value(&after, "sparsefs_dirty_limit_bytes", &[]),
        (256 * MIB) as f64
    );
    assert!(value(&after, "sparsefs_fd_pool_high_mark", &[]) >= 16.0);
    assert!(d("sparsefs_flushes_total", &[("trigger", "close")]) >= 1.0);
    // Both files are closed (the kernel's release is asynchronous: wait for it); the
    // all-zero file has holes, so its map was stored; every write request is timed (when
    // its thread is done with it, just after the reply: under load the application may
    // have closed the file before the last write's thread got that far).
    let t = std::time::Instant::now();
    let settled = loop {
        let now = metrics_ok(scrape_tcp(port, "/metrics"));
        let open = value(&now, "sparsefs_open_handles", &[]);
        let stored = value(&now, "sparsefs_maps_stored_total", &[])
            - value(&before, "sparsefs_maps_stored_total", &[]);
        let dn = |name: &str, l: &[(&str, &str)]| value(&now, name, l) - value(&before, name, l);
        let timed = dn("sparsefs_fuse_request_seconds_count", &[("op", "write")]);
        let writes = dn("sparsefs_app_writes_total", &[]);
        if open == 0.0 && stored >= 1.0 && timed == writes {
            break now;
        }
        assert!(
            t.elapsed().as_secs() < 5,
            "open handles after every close: {open}, maps stored: {stored}, \
             write requests timed {timed} of {writes}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // (At least once: the background flusher may store the map of a file being written
    // before its close stores it again.)
    let stored = value(&settled, "sparsefs_maps_stored_total", &[])
        - value(&before, "sparsefs_maps_stored_total", &[]);
    assert!((1.0..=8.0).contains(&stored), "maps stored: {stored}");
    check_histograms(&after);
    // OpenMetrics where the scraper asks for it (as Prometheus does).
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (status, headers, om) = http_get_accept(s, "application/openmetrics-text;version=1.0.0");
    assert_eq!(status, "HTTP/1.0 200 OK");
    assert!(
        headers.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{headers}"
    );
    assert!(om.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert!(
        om.contains("# TYPE sparsefs_app_written_bytes counter\n"),
        "{om}"
    );
    python_parses_openmetrics(&om);
    // Every application write is one timed FUSE write request (and never more: the
    // settled sample waited for them to be equal, this checks it held).
    let ds = |name: &str, l: &[(&str, &str)]| value(&settled, name, l) - value(&before, name, l);
    assert_eq!(
        ds("sparsefs_fuse_request_seconds_count", &[("op", "write")]),
        ds("sparsefs_app_writes_total", &[])
    );
    // A failed lookup is counted by operation and errno (only non-zero series exist),
    // before the reply the application sees: a scrape made after it shows the count.
    assert!(fs::metadata(m.p("no-such-file")).is_err());
    let errs = metrics_ok(scrape_tcp(port, "/metrics"));
    let enoent = [("op", "lookup"), ("errno", "ENOENT")];
    assert_eq!(
        value_or_0(&errs, "sparsefs_fuse_errors_total", &enoent)
            - value_or_0(&after, "sparsefs_fuse_errors_total", &enoent),
        1.0
    );

    // Anything but /metrics is 404; the listener keeps serving after it.
    let (status, _, _) = scrape_tcp(port, "/");
    assert_eq!(status, "HTTP/1.0 404 Not Found");
    let (status, _, _) = scrape_tcp(port, "/metrics/x");
    assert_eq!(status, "HTTP/1.0 404 Not Found");

    // `stats --prometheus` prints the same series (same names and labels).
    let out = sh(&format!("{BIN} stats --prometheus {}", m.path().display()));
    let text = String::from_utf8(out.stdout).unwrap();
    let once = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let keys = |s: &[Sample]| -> BTreeSet<String> {
        s.iter()
            .map(|x| format!("{}{:?}", x.name, x.labels))
            .collect()
    };
    let (_, _, body) = scrape_tcp(port, "/metrics");
    let now = parse_exposition(&body).unwrap();
    assert_eq!(keys(&once), keys(&now));
    assert_eq!(
        value(&once, "sparsefs_app_written_bytes_total", &[]),
        value(&now, "sparsefs_app_written_bytes_total", &[])
    );
    python_parses(&body);
    python_parses(&text);
}

#[test]
fn metrics_over_a_unix_socket_count_a_known_workload_exactly() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("metrics.sock");
    let m = Mount::new(
        b.path(),
        &["-o", &format!("metrics=unix:{}", sock.display())],
    );
    let before = metrics_ok(scrape_unix(&sock));
    write_file(&m.p("zeros"), 16 * MIB, true);
    write_file(&m.p("data"), 4 * MIB, false);
    let after = metrics_ok(scrape_unix(&sock));
    let d = |name: &str, l: &[(&str, &str)]| value(&after, name, l) - value(&before, name, l);
    assert_eq!(
        d("sparsefs_app_written_bytes_total", &[]),
        (20 * MIB) as f64
    );
    assert_eq!(
        d("sparsefs_zero_bytes_elided_total", &[]),
        (16 * MIB) as f64
    );
    assert_eq!(d("sparsefs_backend_bytes_total", W), (4 * MIB) as f64);
    check_histograms(&after);
    python_parses(
        &String::from_utf8(sh(&format!("{BIN} stats --prometheus {}", m.path().display())).stdout)
            .unwrap(),
    );
}

#[test]
fn a_bad_or_busy_metrics_address_fails_with_one_line_and_mounts_nothing() {
    let b = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let (bp, mp) = (
        b.path().display().to_string(),
        mnt.path().display().to_string(),
    );
    for args in [
        vec!["mount", &bp, &mp, "--metrics", "localhost:9464"],
        vec!["mount", &bp, &mp, "--metrics", "127.0.0.1"],
        vec!["mount", &bp, &mp, "-o", "metrics=unix:"],
        vec![&bp, &mp, "-o", "metrics=9464"],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("sparsefs: error: invalid metrics address"),
            "{args:?}: {err}"
        );
        assert!(!is_mountpoint(mnt.path()));
    }
    if !fuse_available() {
        return;
    }
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = run(&["mount", &bp, &mp, "--metrics", &addr]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "sparsefs: error: cannot serve metrics on {addr}: "
        )),
        "{err}"
    );
    assert!(!is_mountpoint(mnt.path()), "nothing mounted");
}

#[test]
fn the_strict_parser_refuses_what_the_format_forbids() {
    let ok = "# HELP a_total h\n# TYPE a_total counter\na_total{x=\"1\"} 2\n";
    assert!(parse_exposition(ok).is_ok());
    for bad in [
        "a_total 1\n",
        "# HELP a_total h\n# TYPE a_total counter\na_total 1 123\n",
        "# HELP a_total h\n# TYPE a_total counter\na_total{x=1} 1\n",
        "# HELP a_total h\n# TYPE a_total counter\nb_total 1\n",
        "# HELP a h\n# TYPE a counter\na 1\n",
        "# HELP a_total h\n# TYPE a_total counter\na_total{x=\"\\t\"} 1\n",
        "# HELP a_total h\n# TYPE a_total counter\na_total 1\na_total 2\n",
        "# HELP a_total h\n# TYPE a_total counter\na_total one\n",
        "# HELP a_total h\n# TYPE a_total counter\n\na_total 1\n",
        "# HELP a_total h\n# TYPE a_total counter\na_total 1",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

/// The endpoint answers while the mount is under write load (its own thread renders from
/// atomics; no FUSE request waits for it, and it waits for none): two writers stream
/// random data and zeros with an fsync every 16 MiB while /metrics is scraped 30 times;
/// every scrape answers within 2 s and the application bytes never go back.
#[test]
fn metrics_answer_while_the_mount_is_under_write_load() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = Mount::new(b.path(), &["--metrics", &addr]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (p, stop) = (m.p(&format!("load{w}")), stop.clone());
            std::thread::spawn(move || {
                let mut f = File::create(&p).unwrap();
                let data = random_bytes(MIB as usize, w + 7);
                let zeros = vec![0u8; MIB as usize];
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 4096 {
                    f.write_all(if n % 2 == w { &data } else { &zeros })
                        .unwrap();
                    n += 1;
                    if n.is_multiple_of(16) {
                        f.sync_data().unwrap();
                        f.set_len(0).unwrap();
                        std::io::Seek::rewind(&mut f).unwrap();
                    }
                }
                n
            })
        })
        .collect();
    let mut last = 0.0;
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let t = std::time::Instant::now();
        let s = metrics_ok(scrape_tcp(port, "/metrics"));
        slowest = slowest.max(t.elapsed());
        let written = value(&s, "sparsefs_app_written_bytes_total", &[]);
        assert!(
            written >= last,
            "application bytes went back: {last} -> {written}"
        );
        last = written;
        std::thread::sleep(Duration::from_millis(30));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let wrote: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(wrote > 0 && last > 0.0, "the writers wrote while scraped");
    assert!(
        slowest < Duration::from_secs(2),
        "a scrape under write load took {slowest:?}"
    );
}
