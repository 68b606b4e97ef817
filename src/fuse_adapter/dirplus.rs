//! readdirplus: a listing with attributes, and what it costs the backend.

use super::*;

impl Adapter {
    /// Answers a readdirplus request from the handle's snapshot (see the first batch's
    /// rule below).
    pub(super) fn send_dir_plus(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        // The kernel (READDIRPLUS_AUTO) asks for the first batch of every listing with
        // attributes, also for `find` or `ls -f` that never look at them, and each
        // attribute costs a backend lookup (0.4 ms per cold inode here; a round trip on a
        // networked backend). So the first reply carries names only: node id 0, which the
        // kernel takes as "no attributes for this entry" (fuse_direntplus_link skips it)
        // while listing the name and type. Answering `.` and `..` alone instead cost every
        // listing one more request (6 against bindfs's 5 per directory under `find`). The
        // kernel asks with attributes again only once the caller stats entries while
        // reading (a lookup sets FUSE_I_ADVISE_RDPLUS), as `ls -l` does.
        let names_only = offset == 0;
        // More entries than a reply holds: about 25 a page with attributes, 200 in the
        // 32 KiB a getdents of glibc asks for (Linux 6.16 on sizes its buffer to the call;
        // before, a page).
        let want = if names_only { 256 } else { 128 };
        match self.fs.readdir(Fh(fh.0), offset as usize, want) {
            Ok(entries) => {
                let mut sent = 0usize;
                for (i, e) in entries.iter_from(offset as usize) {
                    let is_dot = e.name == "." || e.name == "..";
                    if names_only || is_dot {
                        // No attributes the kernel uses: only the inode number and type
                        // reach the caller.
                        let mut a = attr(&dot_stat(e.kind));
                        a.ino = INodeNo(e.ino);
                        if reply.add(INodeNo(0), (i + 1) as u64, e.name, &TTL, &a, Generation(0)) {
                            break;
                        }
                        sent += 1;
                        continue;
                    }
                    let looked = match self.fs.lookup_entry(Ino(ino.0), &e) {
                        Ok(l) => l,
                        // Never an entry with made-up attributes: stop the batch here
                        // (the kernel asks again from this entry) or fail it if empty.
                        Err(err) if sent == 0 => {
                            fail!("readdirplus", reply, err);
                            return;
                        }
                        Err(_) => break,
                    };
                    // Vanished since the snapshot: left out.
                    let Some(l) = looked else { continue };
                    if reply.add(
                        INodeNo(l.ino.0),
                        (i + 1) as u64,
                        e.name,
                        &TTL,
                        &attr(&l.attr),
                        Generation(l.generation),
                    ) {
                        // Did not fit: the kernel never saw it, so undo its lookup.
                        self.fs.forget(l.ino, 1);
                        break;
                    }
                    sent += 1;
                }
                reply.ok();
            }
            Err(e) => fail!("readdirplus", reply, e),
        }
    }
}
