//! Concurrent writers, readers and seekers of one file match a serial model.

use crate::harness::*;

#[test]
fn concurrent_writers_readers_and_seekers_match_a_serial_model() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let m = Mount::new(b.path(), &["--sparse-block", "4K", "--write-size", "64K"]);
    let path = m.p("shared");
    let chunk = 300_001usize; // unaligned on purpose
    let writers = 4;
    let per = 12;
    File::create(&path).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::scope(|s| {
        for w in 0..writers {
            let path = path.clone();
            s.spawn(move || {
                let f = OpenOptions::new().write(true).open(&path).unwrap();
                for k in 0..per {
                    let idx = k * writers + w;
                    // every third chunk is zeros: becomes holes
                    let data = if idx % 3 == 0 {
                        vec![0u8; chunk]
                    } else {
                        random_bytes(chunk, idx as u64 + 1)
                    };
                    f.write_all_at(&data, (idx * chunk) as u64).unwrap();
                }
            });
        }
        for _ in 0..2 {
            let (path, stop) = (path.clone(), stop.clone());
            s.spawn(move || {
                let mut buf = vec![0u8; 200_000];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let f = File::open(&path).unwrap();
                    let _ = f.read_at(&mut buf, rand_u64() % (writers * per * chunk) as u64);
                    let _ = lseek(&f, (rand_u64() % 4_000_000) as i64, libc::SEEK_DATA);
                    let _ = lseek(&f, (rand_u64() % 4_000_000) as i64, libc::SEEK_HOLE);
                }
            });
        }
        let (p2, stop2) = (m.p("trunc"), stop.clone());
        s.spawn(move || {
            let f = OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(true)
                .open(&p2)
                .unwrap();
            let mut n = 0u64;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) && n < 2000 {
                f.write_all_at(&random_bytes(10_000, n), n * 777).unwrap();
                f.set_len(n * 500).unwrap();
                n += 1;
            }
        });
        // writers finish on their own; then stop the others
        let t = Instant::now();
        while Instant::now().duration_since(t) < Duration::from_secs(60) {
            let done =
                fs::metadata(&path).map(|m| m.len()).unwrap_or(0) >= (writers * per * chunk) as u64;
            if done {
                break;
            }
            std::thread::park_timeout(Duration::from_millis(20));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let mut model = vec![0u8; writers * per * chunk];
    for idx in 0..writers * per {
        if idx % 3 != 0 {
            model[idx * chunk..(idx + 1) * chunk]
                .copy_from_slice(&random_bytes(chunk, idx as u64 + 1));
        }
    }
    assert!(
        fs::read(&path).unwrap() == model,
        "contents match the serial model"
    );
    let map = seek_map(&path);
    let mut pos = 0u64;
    for &(d, h) in map
        .iter()
        .chain(std::iter::once(&(model.len() as u64, model.len() as u64)))
    {
        assert!(
            model[pos as usize..d as usize].iter().all(|&x| x == 0),
            "hole [{pos},{d}) holds data"
        );
        pos = h;
    }
    drop(m);
    assert!(
        fs::read(b.path().join("shared")).unwrap() == model,
        "backend matches after unmount"
    );
}
