//! Images and maps: building test files, reading SEEK maps and allocation, checking maps against extents, shared mappings.

use crate::harness::*;

pub(crate) fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A sparse VM-like image: `size` bytes, data extents (offset, len) of random bytes.
pub(crate) fn make_image(path: &Path, size: u64, extents: &[(u64, u64)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(off, len)) in extents.iter().enumerate() {
        f.write_all_at(&random_bytes(len as usize, i as u64 + 7), off)
            .unwrap();
    }
}

/// About 3% data in 24 scattered extents of 64 KiB .. 1 MiB (some unaligned).
pub(crate) fn vm_extents(size: u64) -> Vec<(u64, u64)> {
    let n = 24u64;
    (0..n)
        .map(|i| {
            let len = [64 << 10, 256 << 10, 1 << 20, 100_000][(i % 4) as usize];
            let off = (i * size / n + (i * 12_345) % 65_536).min(size - len);
            (off, len)
        })
        .collect()
}

pub(crate) fn files_equal(a: &Path, b: &Path) -> bool {
    let (fa, fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut x, mut y) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut off = 0;
    loop {
        let n = fa.read_at(&mut x, off).unwrap();
        let m = fb.read_at(&mut y, off).unwrap();
        if n != m || x[..n] != y[..m] {
            return false;
        }
        if n == 0 {
            return true;
        }
        off += n as u64;
    }
}

pub(crate) fn lseek(f: &File, off: i64, whence: i32) -> Result<u64, i32> {
    // SAFETY: plain syscall on an open fd.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(r as u64)
    }
}

/// The SEEK_DATA/SEEK_HOLE map of a file.
/// The DATA runs SEEK_DATA/SEEK_HOLE report for `path` (the crate's one walker), checked:
/// every answer consistent, no error but ENXIO.
pub(crate) fn seek_map(path: &Path) -> Vec<(u64, u64)> {
    let f = File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    let seek = |off: u64, w: sparsefs::backend::Whence| {
        let whence = match w {
            sparsefs::backend::Whence::Data => libc::SEEK_DATA,
            sparsefs::backend::Whence::Hole => libc::SEEK_HOLE,
        };
        match lseek(&f, off as i64, whence) {
            Ok(x) => {
                // Linux semantics: data below the size, holes at most at the size.
                assert!(
                    (whence == libc::SEEK_DATA && x >= off && x < size)
                        || (whence == libc::SEEK_HOLE && x >= off && x <= size),
                    "lseek({off}, {whence}) = {x} in size {size}: {}",
                    path.display()
                );
                Ok(Some(x))
            }
            Err(libc::ENXIO) => Ok(None),
            Err(e) => panic!("lseek({off}, {whence}) of {}: errno {e}", path.display()),
        }
    };
    sparsefs::extents::walk(size, seek)
        .unwrap()
        .unwrap_or_else(|| panic!("inconsistent SEEK answers for {}", path.display()))
        .iter()
        .collect()
}

pub(crate) fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// Checks a map against the image's extents: every data byte is inside reported data,
/// every reported hole is zero in `reference`, and data is within one block of ideal
/// per extent.
pub(crate) fn check_map(map: &[(u64, u64)], extents: &[(u64, u64)], block: u64, reference: &Path) {
    for &(off, len) in extents {
        assert!(
            map.iter().any(|&(d, h)| d <= off && off + len <= h) || covered(map, off, off + len),
            "extent {off}+{len} not in data map {map:?}"
        );
    }
    let data: u64 = map.iter().map(|(d, h)| h - d).sum();
    let ideal: u64 = extents.iter().map(|&(_, l)| l).sum();
    assert!(
        data <= ideal + 2 * block * extents.len() as u64,
        "data map {data} too far above ideal {ideal}"
    );
    let f = File::open(reference).unwrap();
    let size = f.metadata().unwrap().len();
    let mut pos = 0;
    for &(d, h) in map.iter().chain(std::iter::once(&(size, size))) {
        let mut buf = vec![0u8; (d - pos) as usize];
        f.read_exact_at(&mut buf, pos).unwrap();
        assert!(
            buf.iter().all(|&b| b == 0),
            "reported hole [{pos},{d}) holds data"
        );
        pos = h;
    }
}

pub(crate) fn covered(map: &[(u64, u64)], s: u64, e: u64) -> bool {
    let mut pos = s;
    for &(d, h) in map {
        if d <= pos && h > pos {
            pos = h;
        }
    }
    pos >= e
}

pub(crate) fn image_through_mount(
    m: &Mount,
    name: &str,
    size: u64,
    extents: &[(u64, u64)],
) -> PathBuf {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("src.img");
    make_image(&src, size, extents);
    sh(&format!(
        "cp --sparse=never {} {}",
        src.display(),
        m.p(name).display()
    ));
    let keep = std::env::temp_dir().join(format!(
        "sparsefs-ref-{}-{}",
        std::process::id(),
        rand_u64()
    ));
    fs::rename(&src, &keep).unwrap_or_else(|_| {
        fs::copy(&src, &keep).unwrap();
    });
    keep
}

/// A shared mapping of a whole file, unmapped on drop.
pub(crate) struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    pub(crate) fn new(f: &File, len: usize, prot: i32) -> std::io::Result<Mapping> {
        // SAFETY: a fresh mapping of a valid fd; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is valid for len bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }

    pub(crate) fn write(&mut self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len);
        // SAFETY: in bounds of a writable mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), (self.ptr as *mut u8).add(off), data.len())
        }
    }

    /// Pages of the mapping resident in the page cache (mincore).
    pub(crate) fn resident_pages(&self) -> usize {
        let page = 4096;
        let mut v = vec![0u8; self.len.div_ceil(page)];
        // SAFETY: v holds one byte per page of the mapping.
        assert_eq!(
            unsafe { libc::mincore(self.ptr, self.len, v.as_mut_ptr()) },
            0
        );
        v.iter().filter(|b| *b & 1 != 0).count()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what new mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Writes `data` to a new file through a write-only open (as cp, dd and tar -x do) and
/// returns how many of its pages the page cache then holds, seen through a mapping made
/// before the write (a later open would drop the cache: FUSE opens invalidate it).
pub(crate) fn pages_cached_by_a_write_only_stream(path: &Path, data: &[u8]) -> usize {
    File::create(path).unwrap();
    let r = File::open(path).unwrap();
    let map = Mapping::new(&r, data.len(), libc::PROT_READ).unwrap();
    let mut w = OpenOptions::new().write(true).open(path).unwrap();
    w.write_all(data).unwrap();
    drop(w);
    map.resident_pages()
}
