//! `/proc/self/mountinfo` parsed: finds a mount by its mount point without touching it
//! (a stat of a wedged FUSE mount would hang the caller too).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount id.
    pub id: u64,
    /// Device numbers (`major:minor`); a FUSE mount's minor names its fusectl connection.
    pub dev: (u32, u32),
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Filesystem type (`fuse.sparsefs`, `ext4`, ...).
    pub fstype: String,
    /// Mount source (for sparsefs: the backing directory).
    pub source: String,
}

/// Decodes the octal escapes of mountinfo (`\040` is a space).
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one mountinfo line: `id parent major:minor root mountpoint opts [tags] - type
/// source superopts`.
pub fn parse_line(l: &str) -> Option<MountEntry> {
    let f: Vec<&str> = l.split(' ').collect();
    let (maj, min) = f.get(2)?.split_once(':')?;
    let dash = f.iter().position(|x| *x == "-")?;
    Some(MountEntry {
        id: f.first()?.parse().ok()?,
        dev: (maj.parse().ok()?, min.parse().ok()?),
        mountpoint: PathBuf::from(unescape(f.get(4)?)),
        fstype: f.get(dash + 1)?.to_string(),
        source: unescape(f.get(dash + 2)?),
    })
}

/// Every mount of `text` (mountinfo's contents), in order.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// Every mount of this process's namespace (empty if mountinfo cannot be read).
pub fn mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// The topmost mount at `mountpoint` (absolute), if any.
pub fn find(mountpoint: &Path) -> Option<MountEntry> {
    mounts()
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == mountpoint)
}

/// The mount `path` (absolute) lies on: the deepest mount point that is a prefix of it.
pub fn containing(path: &Path) -> Option<MountEntry> {
    let mut best: Option<MountEntry> = None;
    for m in mounts() {
        if path.starts_with(&m.mountpoint)
            && best
                .as_ref()
                .is_none_or(|b| m.mountpoint.as_os_str().len() >= b.mountpoint.as_os_str().len())
        {
            best = Some(m);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fuse_line_gives_its_connection_minor_type_and_escaped_mount_point() {
        let l =
            "45 27 0:40 / /tmp/a\\040b rw,relatime shared:1 - fuse.sparsefs /data/x rw,user_id=0";
        let m = parse_line(l).unwrap();
        assert_eq!(m.id, 45);
        assert_eq!(m.dev, (0, 40));
        assert_eq!(m.mountpoint, PathBuf::from("/tmp/a b"));
        assert_eq!(m.fstype, "fuse.sparsefs");
        assert_eq!(m.source, "/data/x");
    }

    #[test]
    fn escapes_are_decoded_and_incomplete_ones_kept() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/mnt/tab\011x\134"), "/mnt/tab\tx\\");
        assert_eq!(unescape(r"/plain\04"), r"/plain\04");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert!(parse_line("").is_none());
        assert!(parse_line("1 2 3").is_none());
        assert_eq!(
            parse("garbage\n1 0 8:1 / / rw - ext4 /dev/sda1 rw\n").len(),
            1
        );
    }
}
