//! The audit's decisions: what of the standby's listing is compared, removed
//! or left alone, and how the index is corrected to what the standby has.
//!
//! Sans-IO: the worker lists the standby's folders as [`Listing`] asks for
//! them, removes what it says, and hands the result to [`correct_index`].

use std::collections::HashSet;

use super::sftp::Attrs;
use super::tree::{Entry, Kind, TEMP_DIR, Tree, in_temp_dir, join};
use crate::layout::CONTROL_DIR;

/// The standby's tree being listed, folder by folder.
#[derive(Debug)]
pub struct Listing {
    found: Found,
    /// Folders still to list.
    folders: Vec<Vec<u8>>,
}

/// What the listing of the standby found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Everything there to compare with the index.
    pub tree: Tree,
    /// Unfinished temporaries in [`TEMP_DIR`]: nothing of ours is in flight
    /// during an audit (it runs between transfers), so they are what an
    /// interrupted transfer, or a crash of either host, left behind.
    pub temporaries: Vec<Vec<u8>>,
    /// Links and special files: the master never sends one, and root on the
    /// standby must never act through one a user planted.
    pub planted: Vec<Vec<u8>>,
}

impl Default for Listing {
    fn default() -> Self {
        Listing::new()
    }
}

impl Listing {
    /// A listing that starts at the top of the data dir.
    pub fn new() -> Listing {
        Listing {
            found: Found::default(),
            folders: vec![Vec::new()],
        }
    }

    /// The next folder to list, `None` once all are.
    pub fn next_folder(&mut self) -> Option<Vec<u8>> {
        self.folders.pop()
    }

    /// Takes in the entries of `folder` as the standby listed them.
    pub fn add(&mut self, folder: &[u8], entries: Vec<(Vec<u8>, Attrs)>) {
        for (name, a) in entries {
            let path = join(folder, &name);
            if in_temp_dir(folder) {
                // In the folder of temporaries: the sessions' folders are
                // listed in turn, any file is an unfinished temporary, and
                // nothing else there is ours (nor can a user reach it).
                match a.mode.unwrap_or(0) & 0o170000 {
                    0o040000 if folder == TEMP_DIR => self.folders.push(path),
                    0o100000 => self.found.temporaries.push(path),
                    _ => {}
                }
                continue;
            }
            // The peer's own role and claims: never compared, never removed.
            if path.as_slice() == CONTROL_DIR.as_bytes() {
                continue;
            }
            let mode = a.mode.unwrap_or(0);
            let kind = match mode & 0o170000 {
                0o040000 if path.as_slice() == TEMP_DIR => {
                    self.folders.push(path);
                    continue;
                }
                0o040000 => Kind::Dir,
                0o100000 => Kind::File,
                // The standby's own SFTP log socket in each chroot.
                0o140000 if is_log_socket(&path) => continue,
                _ => {
                    self.found.planted.push(path);
                    continue;
                }
            };
            if kind == Kind::Dir {
                self.folders.push(path.clone());
            }
            self.found.tree.insert(path, entry(kind, mode, &a));
        }
    }

    /// What was found; call once [`Listing::next_folder`] has no more.
    pub fn finish(self) -> Found {
        self.found
    }
}

/// An entry as the standby's attributes give it; what they leave out gets
/// placeholder values (owner `u32::MAX`, mtime -1, size 0).
fn entry(kind: Kind, mode: u32, a: &Attrs) -> Entry {
    let (uid, gid) = a.owner.unwrap_or((u32::MAX, u32::MAX));
    let mtime = a.times.map_or(-1, |(_, m)| i64::from(m));
    Entry {
        kind,
        size: a.size.unwrap_or(0),
        mtime,
        mtime_nsec: 0,
        mode: super::tree::mode_bits(mode),
        uid,
        gid,
        ino: 0,
        ctime: 0,
    }
}

/// True if what the standby has is what was confirmed (or what the master
/// has): a folder by kind, mode and owner, a file also by size and mtime
/// (whole seconds: SFTP v3 has no more).
pub fn agrees(confirmed: &Entry, there: &Entry) -> bool {
    confirmed.kind == there.kind
        && confirmed.mode == there.mode
        && confirmed.uid == there.uid
        && confirmed.gid == there.gid
        && (confirmed.kind == Kind::Dir
            || (confirmed.size == there.size && confirmed.mtime == there.mtime))
}

/// Corrects the index (what the standby confirmed) to what the standby has
/// (`remote`), so the plan that follows repairs every difference with the
/// master's tree (`current`): confirmed entries the standby lost or changed
/// are dropped; entries the index lacks are recorded as they are there,
/// except those already as the master has them (a lost index: confirmed as
/// is, nothing sent again); `differing` paths (same size and mtime, other
/// bytes, as the reconciliation found) are marked unconfirmed, so this
/// host's version is sent. The host-local status files each host writes for
/// itself are left out.
///
/// Returns the number of repairs: differences the next round has to send.
/// An index merely older than the standby (it is written every few seconds,
/// a crash loses the rest) differs too, but is only corrected here.
pub fn correct_index(
    index: &mut Tree,
    remote: Tree,
    current: &Tree,
    differing: HashSet<Vec<u8>>,
) -> usize {
    let mut repairs = 0;
    index.retain(|path, confirmed| {
        let there = remote.get(path);
        let ok = there.is_some_and(|there| agrees(confirmed, there));
        // Gone from the standby while the master has it; a changed one is
        // counted below, where it is recorded as it is there.
        repairs += usize::from(!ok && there.is_none() && current.contains_key(path));
        ok
    });
    for (path, there) in remote {
        if index.contains_key(&path) || host_local(&path) {
            continue;
        }
        // Already there as the master has it (a lost index): confirmed as is.
        // Anything else is recorded as it is, so the plan replaces or deletes it.
        match current.get(&path) {
            Some(mine) if agrees(mine, &there) => {
                index.insert(path, *mine);
            }
            _ => {
                repairs += 1;
                index.insert(path, there);
            }
        }
    }
    // Same size and mtime, other bytes: never taken as confirmed, so the
    // plan sends this host's version.
    for path in differing {
        if let Some(e) = index.get_mut(&path) {
            e.mtime = -1;
            repairs += 1;
        }
    }
    repairs
}

/// The host's own SFTP log socket: at the top of the data dir, and linked
/// into every chroot as `<user>/dev/log`.
pub fn is_log_socket(path: &[u8]) -> bool {
    let parts: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
    match parts.as_slice() {
        [name] => *name == crate::layout::LOG_SOCKET.as_bytes(),
        [_, dev, log] => dev == b"dev" && log == b"log",
        _ => false,
    }
}

/// The outcome files of a users.yaml apply: each host writes its own, so
/// they are not drift for the audit to repair.
pub fn host_local(path: &[u8]) -> bool {
    let parts: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
    matches!(parts.as_slice(), [_, admin, status] if *admin == b"admin" && *status == crate::accounts::STATUS_FILE.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::tree::{Op, plan};

    const UID: u32 = 1000;

    /// A file on the master, as a local stat gives it (nanoseconds, inode).
    fn file(size: u64, mtime: i64) -> Entry {
        Entry {
            kind: Kind::File,
            size,
            mtime,
            mtime_nsec: 123_456_789,
            mode: 0o644,
            uid: UID,
            gid: UID,
            ino: 42,
            ctime: 0,
        }
    }

    fn dir() -> Entry {
        Entry {
            kind: Kind::Dir,
            size: 0,
            mtime: 1_000,
            mtime_nsec: 5,
            mode: 0o755,
            uid: UID,
            gid: UID,
            ino: 7,
            ctime: 0,
        }
    }

    /// The same entry as the standby's listing gives it (whole seconds, no inode).
    fn there(e: Entry) -> Entry {
        Entry {
            mtime_nsec: 0,
            ino: 0,
            ..e
        }
    }

    fn attrs(mode: u32, size: u64, mtime: u32) -> Attrs {
        Attrs {
            size: Some(size),
            owner: Some((UID, UID)),
            mode: Some(mode),
            times: Some((mtime, mtime)),
        }
    }

    fn tree(entries: &[(&str, Entry)]) -> Tree {
        entries
            .iter()
            .map(|(p, e)| (p.as_bytes().to_vec(), *e))
            .collect()
    }

    fn paths(list: &[Vec<u8>]) -> Vec<&str> {
        list.iter()
            .map(|p| std::str::from_utf8(p).unwrap_or("?"))
            .collect()
    }

    /// Lists a fake standby: folder → its entries, as `read_dir` returns them.
    fn list(standby: &[(&str, Vec<(&str, Attrs)>)]) -> (Found, Vec<String>) {
        let mut listing = Listing::new();
        let mut listed = Vec::new();
        while let Some(folder) = listing.next_folder() {
            let name = String::from_utf8(folder.clone()).unwrap_or_default();
            let entries = standby
                .iter()
                .find(|(f, _)| *f == name)
                .map(|(_, e)| e.iter().map(|(n, a)| (n.as_bytes().to_vec(), *a)).collect())
                .unwrap_or_default();
            listed.push(name);
            listing.add(&folder, entries);
        }
        listed.sort();
        (listing.finish(), listed)
    }

    #[test]
    fn the_listing_descends_into_folders_and_takes_files_and_folders_as_they_are() {
        let (found, listed) = list(&[
            ("", vec![("u", attrs(0o040755, 4096, 1_000))]),
            (
                "u",
                vec![
                    ("upload", attrs(0o040755, 4096, 1_000)),
                    ("a.txt", attrs(0o100644, 5, 2_000)),
                ],
            ),
            ("u/upload", vec![("b.bin", attrs(0o104755, 9, 3_000))]),
        ]);
        assert_eq!(listed, ["", "u", "u/upload"]);
        // A folder keeps the size and mtime the standby gives it: neither is
        // compared (see `agrees`).
        let folder = Entry {
            size: 4096,
            mtime: 1_000,
            ..there(dir())
        };
        assert_eq!(
            found.tree,
            tree(&[
                ("u", folder),
                ("u/a.txt", there(file(5, 2_000))),
                ("u/upload", folder),
                // The set-uid bit is not part of what is compared.
                (
                    "u/upload/b.bin",
                    Entry {
                        mode: 0o755,
                        ..there(file(9, 3_000))
                    }
                ),
            ])
        );
        assert!(found.temporaries.is_empty());
        assert!(found.planted.is_empty());
    }

    #[test]
    fn what_the_attributes_leave_out_gets_placeholders() {
        let mut listing = Listing::new();
        let bare = Attrs {
            mode: Some(0o100600),
            ..Attrs::default()
        };
        listing.add(b"", vec![(b"f".to_vec(), bare)]);
        let found = listing.finish();
        let e = found.tree.get(b"f".as_slice()).copied();
        assert_eq!(
            e,
            Some(Entry {
                kind: Kind::File,
                size: 0,
                mtime: -1,
                mtime_nsec: 0,
                mode: 0o600,
                uid: u32::MAX,
                gid: u32::MAX,
                ino: 0,
                ctime: 0,
            })
        );
    }

    #[test]
    fn temporaries_are_found_in_the_temp_folder_only_and_never_compared() {
        let (found, listed) = list(&[
            (
                "",
                vec![
                    (".sftp-ha-tmp", attrs(0o040700, 4096, 1)),
                    ("u", attrs(0o040755, 4096, 1)),
                ],
            ),
            (
                ".sftp-ha-tmp",
                vec![
                    ("t1", attrs(0o100600, 3, 1)),
                    ("t2", attrs(0o100600, 0, 1)),
                    ("s0", attrs(0o040700, 4096, 1)),
                ],
            ),
            // A session's folder: its files are temporaries, nothing else
            // there is listed or removed.
            (
                ".sftp-ha-tmp/s0",
                vec![
                    ("t3", attrs(0o100600, 9, 1)),
                    ("odd", attrs(0o040700, 4096, 1)),
                    ("link", attrs(0o120777, 4, 1)),
                ],
            ),
            // A user's file of a temporary-looking name is a file like any other.
            ("u", vec![(".sftp-ha-tmp", attrs(0o100644, 1, 1))]),
        ]);
        assert_eq!(listed, ["", ".sftp-ha-tmp", ".sftp-ha-tmp/s0", "u"]);
        assert_eq!(
            paths(&found.temporaries),
            [".sftp-ha-tmp/t1", ".sftp-ha-tmp/t2", ".sftp-ha-tmp/s0/t3"]
        );
        assert!(found.planted.is_empty());
        let compared: Vec<&[u8]> = found.tree.keys().collect();
        assert_eq!(compared, [b"u".as_slice(), b"u/.sftp-ha-tmp"]);
    }

    #[test]
    fn the_control_folder_is_neither_compared_nor_removed_nor_listed() {
        let (found, listed) = list(&[(
            "",
            vec![
                (".sftp-ha-ctl", attrs(0o040700, 4096, 1)),
                ("u", attrs(0o040755, 4096, 1)),
            ],
        )]);
        assert_eq!(listed, ["", "u"]);
        assert!(!found.tree.contains_key(b".sftp-ha-ctl".as_slice()));
        assert!(found.planted.is_empty() && found.temporaries.is_empty());
        // Even when it is not a folder.
        let (found, _) = list(&[("", vec![(".sftp-ha-ctl", attrs(0o120777, 4, 1))])]);
        assert_eq!(found, Found::default());
    }

    #[test]
    fn links_and_special_files_are_removed_but_the_hosts_log_sockets_are_left_alone() {
        let (found, _) = list(&[
            (
                "",
                vec![
                    (".sftp-ha-log.sock", attrs(0o140666, 0, 1)),
                    ("u", attrs(0o040755, 4096, 1)),
                ],
            ),
            (
                "u",
                vec![
                    ("dev", attrs(0o040755, 4096, 1)),
                    ("evil", attrs(0o120777, 11, 1)),
                    ("fifo", attrs(0o010644, 0, 1)),
                    ("sock", attrs(0o140666, 0, 1)),
                    ("nomode", Attrs::default()),
                ],
            ),
            ("u/dev", vec![("log", attrs(0o140666, 0, 1))]),
        ]);
        let mut planted = paths(&found.planted);
        planted.sort();
        assert_eq!(planted, ["u/evil", "u/fifo", "u/nomode", "u/sock"]);
        let compared: Vec<&[u8]> = found.tree.keys().collect();
        assert_eq!(compared, [b"u".as_slice(), b"u/dev"]);
        // A log socket where no log socket belongs is planted.
        let (found, _) = list(&[
            ("", vec![("u", attrs(0o040755, 4096, 1))]),
            ("u", vec![(".sftp-ha-log.sock", attrs(0o140666, 0, 1))]),
        ]);
        assert_eq!(paths(&found.planted), ["u/.sftp-ha-log.sock"]);
    }

    #[test]
    fn only_the_hosts_own_log_sockets_are_left_alone_by_the_audit() {
        assert!(is_log_socket(b".sftp-ha-log.sock"));
        assert!(is_log_socket(b"EPuser/dev/log"));
        assert!(!is_log_socket(b"EPuser/upload/log"));
        assert!(!is_log_socket(b"EPuser/dev/log/x"));
        assert!(!is_log_socket(b"EPuser/.sftp-ha-log.sock"));
        assert!(host_local(b"admin/admin/users.yaml.status"));
        assert!(!host_local(b"admin/upload/users.yaml"));
        // A user's own file of that name is a file like any other.
        assert!(!host_local(b"EPuser/upload/admin/users.yaml.status"));
    }

    #[test]
    fn agreement_is_by_kind_mode_and_owner_and_for_files_size_and_whole_second_mtime() {
        let f = file(5, 2_000);
        assert!(agrees(&f, &there(f)));
        assert!(!agrees(&f, &there(file(6, 2_000))));
        assert!(!agrees(&f, &there(file(5, 2_001))));
        assert!(!agrees(&f, &Entry { mode: 0o600, ..f }));
        assert!(!agrees(&f, &Entry { uid: 0, ..f }));
        assert!(!agrees(&f, &Entry { gid: 0, ..f }));
        assert!(!agrees(&f, &dir()));
        // A folder's size and mtime are not replicated, so not compared.
        let d = dir();
        assert!(agrees(
            &d,
            &Entry {
                size: 4096,
                mtime: 9,
                ..d
            }
        ));
        assert!(!agrees(&d, &Entry { mode: 0o700, ..d }));
    }

    #[test]
    fn a_standby_that_matches_needs_no_repair_and_nothing_is_planned() {
        let current = tree(&[("u", dir()), ("u/a", file(5, 2_000))]);
        let mut index = current.clone();
        let remote = tree(&[("u", there(dir())), ("u/a", there(file(5, 2_000)))]);
        assert_eq!(
            correct_index(&mut index, remote, &current, HashSet::new()),
            0
        );
        assert_eq!(index, current);
        assert!(plan(&current, &index, true).is_empty());
    }

    #[test]
    fn a_lost_index_confirms_what_is_already_there_as_the_master_has_it() {
        let current = tree(&[
            ("u", dir()),
            ("u/a", file(5, 2_000)),
            ("u/b", file(1, 3_000)),
        ]);
        let mut index = Tree::new();
        // u/b never arrived.
        let remote = tree(&[("u", there(dir())), ("u/a", there(file(5, 2_000)))]);
        assert_eq!(
            correct_index(&mut index, remote, &current, HashSet::new()),
            0
        );
        // Confirmed as the master has it (inode and all), so nothing is re-sent.
        assert_eq!(index, tree(&[("u", dir()), ("u/a", file(5, 2_000))]));
        assert_eq!(
            plan(&current, &index, true),
            [Op::Put(b"u/b".to_vec(), file(1, 3_000))]
        );
    }

    #[test]
    fn an_index_older_than_the_standby_is_corrected_without_repairs() {
        // Sent and confirmed after the index was last written, then a crash:
        // u/a in a newer version, u/new created, u/gone deleted.
        let current = tree(&[
            ("u", dir()),
            ("u/a", file(7, 2_500)),
            ("u/new", file(1, 2_600)),
        ]);
        let mut index = tree(&[
            ("u", dir()),
            ("u/a", file(5, 2_000)),
            ("u/gone", file(3, 1_500)),
        ]);
        let remote = tree(&[
            ("u", there(dir())),
            ("u/a", there(file(7, 2_500))),
            ("u/new", there(file(1, 2_600))),
        ]);
        assert_eq!(
            correct_index(&mut index, remote, &current, HashSet::new()),
            0
        );
        assert_eq!(index, current);
        assert!(plan(&current, &index, true).is_empty());
    }

    #[test]
    fn changes_behind_the_masters_back_are_repaired() {
        let current = tree(&[
            ("u", dir()),
            ("u/changed", file(5, 2_000)),
            ("u/deleted", file(5, 2_000)),
            ("u/chmod", file(5, 2_000)),
        ]);
        let mut index = current.clone();
        let changed = there(file(99, 2_100));
        let added = there(file(1, 2_200));
        let chmod = Entry {
            mode: 0o666,
            ..there(file(5, 2_000))
        };
        let remote = tree(&[
            ("u", there(dir())),
            ("u/changed", changed),
            ("u/chmod", chmod),
            ("u/added", added),
        ]);
        assert_eq!(
            correct_index(&mut index, remote, &current, HashSet::new()),
            4
        );
        // Recorded as they are there (or dropped), so the plan puts the
        // master's version back and deletes what the master does not have.
        assert_eq!(
            index,
            tree(&[
                ("u", dir()),
                ("u/added", added),
                ("u/changed", changed),
                ("u/chmod", chmod),
            ])
        );
        let ops = plan(&current, &index, true);
        assert!(ops.contains(&Op::Delete(b"u/added".to_vec(), Kind::File)));
        assert!(ops.contains(&Op::Put(b"u/changed".to_vec(), file(5, 2_000))));
        assert!(ops.contains(&Op::Put(b"u/deleted".to_vec(), file(5, 2_000))));
        assert!(ops.contains(&Op::Put(b"u/chmod".to_vec(), file(5, 2_000))));
        assert_eq!(ops.len(), 4);
    }

    #[test]
    fn a_file_gone_from_both_hosts_is_dropped_without_a_repair() {
        let current = tree(&[("u", dir())]);
        let mut index = tree(&[("u", dir()), ("u/old", file(5, 2_000))]);
        let remote = tree(&[("u", there(dir()))]);
        assert_eq!(
            correct_index(&mut index, remote, &current, HashSet::new()),
            0
        );
        assert_eq!(index, current);
    }

    #[test]
    fn the_hosts_own_status_files_are_not_drift() {
        let status = "admin/admin/users.yaml.status";
        let current = tree(&[
            ("admin", dir()),
            ("admin/admin", dir()),
            (status, file(10, 2_000)),
        ]);
        let mut index = tree(&[("admin", dir()), ("admin/admin", dir())]);
        let remote = tree(&[
            ("admin", there(dir())),
            ("admin/admin", there(dir())),
            (status, there(file(20, 2_100))),
        ]);
        assert_eq!(
            correct_index(&mut index, remote, &current, HashSet::new()),
            0
        );
        assert!(!index.contains_key(status.as_bytes()));
    }

    #[test]
    fn differing_paths_are_unconfirmed_and_sent_again() {
        let current = tree(&[
            ("u", dir()),
            ("u/a", file(5, 2_000)),
            ("u/b", file(5, 2_000)),
        ]);
        let mut index = current.clone();
        let remote = tree(&[
            ("u", there(dir())),
            ("u/a", there(file(5, 2_000))),
            ("u/b", there(file(5, 2_000))),
        ]);
        // Same size and mtime second, other bytes (found by the reconciliation);
        // a path the standby does not have is nothing to unconfirm.
        let differing: HashSet<Vec<u8>> = [b"u/a".to_vec(), b"u/none".to_vec()].into();
        assert_eq!(correct_index(&mut index, remote, &current, differing), 1);
        assert_eq!(index.get(b"u/a".as_slice()).map(|e| e.mtime), Some(-1));
        assert_eq!(index.get(b"u/b".as_slice()), current.get(b"u/b".as_slice()));
        assert!(!index.contains_key(b"u/none".as_slice()));
        assert_eq!(
            plan(&current, &index, true),
            [Op::Put(b"u/a".to_vec(), file(5, 2_000))]
        );
    }
}
