//! Accounts from users.yaml: parsing, validation and planning (pure), and
//! applying a plan to the host's real account database (system).

pub mod crypt;
pub mod plan;
pub mod system;
pub mod users_file;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::timefmt::{format_utc, unix_now};
use crypt::Method;
use plan::Plan;
use users_file::{MAX_FILE_BYTES, Problem, Secret};

/// Name of the file admins upload, and of the outcome written next to it.
pub const USERS_FILE: &str = "users.yaml";
pub const STATUS_FILE: &str = "users.yaml.status";

/// Why an apply changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The file is wrong: every problem, with its place.
    Invalid(Vec<Problem>),
    /// The host refused a step (useradd failed, a folder could not be made, ...).
    System(String),
}

/// The outcome of one attempt, for users.yaml.status, the journal and `sftp-ha status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub at: u64,
    pub file: PathBuf,
    pub dry_run: bool,
    /// Per user, in file order: (name, what happened).
    pub outcome: Result<Vec<(String, String)>, Failure>,
    /// The version of the file this outcome is about: as read, or as
    /// rewritten. A newer upload that landed meanwhile is not it.
    pub version: Option<FileVersion>,
}

/// One version of a file, as the kernel tells them apart: an upload either
/// makes a new inode (a rename) or writes in place and moves size and mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileVersion {
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

impl FileVersion {
    pub fn of_meta(m: &fs::Metadata) -> FileVersion {
        FileVersion {
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }

    /// The version at `path` now (without following a link), if any.
    pub fn of(path: &Path) -> Option<FileVersion> {
        fs::symlink_metadata(path)
            .ok()
            .map(|m| FileVersion::of_meta(&m))
    }

    /// Last modified more than a second ago: not in the middle of an upload.
    pub fn settled(&self) -> bool {
        crate::timefmt::unix_now() as i64 > self.mtime + 1
    }
}

impl Report {
    pub fn ok(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The text of users.yaml.status: human-readable, complete.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}: {} {}\n",
            format_utc(self.at),
            if self.dry_run { "checked" } else { "read" },
            self.file.display()
        );
        match &self.outcome {
            Ok(users) => {
                out.push_str(if self.dry_run {
                    "OK: the file is valid. What applying it would do:\n"
                } else {
                    "OK: the accounts now match the file.\n"
                });
                for (name, what) in users {
                    out.push_str(&format!("  {name}: {what}\n"));
                }
            }
            Err(Failure::Invalid(problems)) => {
                out.push_str(&format!(
                    "ERROR: {} problem(s) in the file. Nothing was changed: every account is as before.\n",
                    problems.len()
                ));
                for p in problems {
                    out.push_str(&format!("  {}\n", visible(&p.to_string())));
                }
                out.push_str("Fix the file and upload it again.\n");
            }
            Err(Failure::System(msg)) => {
                out.push_str(&format!(
                    "ERROR: the host refused a change: {msg}\nThe file itself is valid; accounts changed before the error stay changed and the rest follow once it is fixed (upload the file again or run `sftp-ha users apply`).\n"
                ));
            }
        }
        out
    }

    /// One line for the journal.
    pub fn summary(&self) -> String {
        match &self.outcome {
            Ok(users) => {
                let changed = users.iter().filter(|(_, w)| w != "unchanged").count();
                format!("{} users, {changed} changed", users.len())
            }
            Err(Failure::Invalid(p)) => format!(
                "refused, nothing changed: {}",
                p.iter()
                    .map(|p| visible(&p.to_string()))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ),
            Err(Failure::System(m)) => format!("failed: {m}"),
        }
    }
}

/// A problem's text may quote what an admin wrote (a name with a newline, say):
/// control characters are shown as `?`, so no one can forge a line of the
/// status file or the journal.
fn visible(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Reads users.yaml without following a symlink (it sits in a folder a user
/// writes), refusing anything but a regular file within the size limit.
pub fn read_users_file(path: &Path) -> Result<(String, fs::Metadata), Problem> {
    read_users_file_below(path, None)
}

/// Opens a file for reading with O_NOFOLLOW; below `data_dir`, through its
/// folder opened component by component with O_NOFOLLOW too.
fn open_no_follow(path: &Path, data_dir: Option<&Path>) -> std::io::Result<fs::File> {
    let flags = nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK;
    match (data_dir, path.parent(), path.file_name()) {
        (Some(root), Some(dir), Some(name)) if dir.starts_with(root) => {
            let dir = crate::fsutil::open_dir_beneath(root, dir)?;
            let fd = nix::fcntl::openat(
                std::os::fd::AsFd::as_fd(&dir),
                name,
                nix::fcntl::OFlag::from_bits_truncate(
                    flags | nix::libc::O_RDONLY | nix::libc::O_CLOEXEC,
                ),
                nix::sys::stat::Mode::empty(),
            )?;
            Ok(fs::File::from(fd))
        }
        _ => fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path),
    }
}

/// [`read_users_file`], walking the folders below `data_dir` without links.
fn read_users_file_below(
    path: &Path,
    data_dir: Option<&Path>,
) -> Result<(String, fs::Metadata), Problem> {
    let fail = |what: String| Problem::new(None, what, "upload users.yaml as a plain file");
    let mut file = open_no_follow(path, data_dir)
        .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot stat {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(fail(format!("{} is not a regular file", path.display())));
    }
    let mut bytes = Vec::new();
    file.by_ref()
        .take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(Problem::new(
            None,
            format!("the file is larger than {MAX_FILE_BYTES} bytes"),
            "remove what is not a user",
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| Problem::new(None, "the file is not UTF-8 text", "save it as UTF-8"))?;
    Ok((text, meta))
}

/// The hashing method: the config's, else login.defs' ENCRYPT_METHOD, else SHA-512.
fn method(configured: Option<Method>, defs: &system::LoginDefs) -> Method {
    configured.or(defs.encrypt_method).unwrap_or(Method::Sha512)
}

/// What an apply does with the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// Check only: nothing changes.
    Check,
    /// Change the accounts, then rewrite the file without plaintext and with every uid.
    Apply,
    /// Change the accounts and leave the file as it is: on a standby the file
    /// is the master's, and only the master writes it.
    Mirror,
    /// As `Mirror`, but the users' folders are left alone too: on a standby
    /// with shared storage they are the master's folders, made and owned as
    /// the master set them, and only the master changes them.
    Accounts,
}

/// Checks (and unless `Check`, applies) the users.yaml at `path`.
pub fn apply_file(path: &Path, data_dir: &Path, configured: Option<Method>, how: Apply) -> Report {
    let dry_run = how == Apply::Check;
    let mut version = None;
    let outcome = run_apply(path, data_dir, configured, how, &mut version);
    Report {
        at: unix_now(),
        file: path.to_path_buf(),
        dry_run,
        outcome,
        version,
    }
}

fn run_apply(
    path: &Path,
    data_dir: &Path,
    configured: Option<Method>,
    how: Apply,
    version: &mut Option<FileVersion>,
) -> Result<Vec<(String, String)>, Failure> {
    let invalid = |p: Problem| Failure::Invalid(vec![p]);
    let (text, meta) = read_users_file_below(path, Some(data_dir)).map_err(invalid)?;
    *version = Some(FileVersion::of_meta(&meta));
    let entries = users_file::parse(&text).map_err(invalid)?;
    let snapshot = if how == Apply::Check {
        system::snapshot_for_check()
    } else {
        system::snapshot()
    };
    let (snapshot, defs) = snapshot.map_err(|e| Failure::System(e.to_string()))?;
    let plan: Plan =
        plan::plan(&entries, &snapshot, method(configured, &defs)).map_err(Failure::Invalid)?;
    let outcome: Vec<(String, String)> = plan
        .users
        .iter()
        .map(|u| (u.name.clone(), u.outcome()))
        .collect();
    if how == Apply::Check {
        return Ok(outcome);
    }
    let folders = how != Apply::Accounts;
    system::apply(&plan, &snapshot, data_dir, folders)
        .map_err(|e| Failure::System(e.to_string()))?;
    // A newer upload that replaced the file meanwhile is never overwritten
    // with the rewrite of this one: it is applied next instead.
    let replaced = FileVersion::of(path) != *version;
    if replaced {
        tracing::info!(path = %path.display(), "users.yaml was replaced while it was applied: not rewritten; the newer file is applied next");
    }
    if how == Apply::Apply && !replaced && plan.users.iter().any(|u| u.rewrite) {
        let hashes: BTreeMap<String, String> = entries
            .iter()
            .filter(|e| matches!(e.secret, Some(Secret::Password(_))))
            .filter_map(|e| {
                Some((
                    e.name.clone(),
                    plan.users.iter().find(|u| u.name == e.name)?.hash.clone(),
                ))
            })
            .collect();
        let uids: BTreeMap<String, u32> =
            plan.users.iter().map(|u| (u.name.clone(), u.uid)).collect();
        let new_text = users_file::rewrite(&text, &entries, &hashes, &uids).ok_or_else(|| {
            Failure::System(format!(
                "the accounts are applied, but {} could not be rewritten without its plaintext passwords: replace `password:` by `password_hash:` by hand",
                path.display()
            ))
        })?;
        let owner = Some((meta.uid(), meta.gid()));
        let mode = meta.permissions().mode() & 0o777;
        let written = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
            // In an admin folder: through that folder opened without links.
            (Some(dir), Some(name)) if dir.starts_with(data_dir) => {
                crate::fsutil::open_dir_beneath(data_dir, dir).and_then(|dir| {
                    crate::fsutil::write_atomic_at(&dir, name, new_text.as_bytes(), mode, owner)
                })
            }
            // Root's own file (`sftp-ha users apply /root/users.yaml`).
            _ => crate::fsutil::write_atomic(path, new_text.as_bytes(), mode, owner)
                .and_then(|()| fs::symlink_metadata(path)),
        };
        let written = written
            .map_err(|e| Failure::System(format!("cannot rewrite {}: {e}", path.display())))?;
        *version = Some(FileVersion::of_meta(&written));
    }
    Ok(outcome)
}

/// Lines for `sftp-ha users list`: every managed account with its state.
pub fn list() -> Result<Vec<String>, system::SystemError> {
    let (snapshot, _) = system::snapshot()?;
    Ok(snapshot
        .accounts
        .values()
        .filter(|a| a.managed)
        .map(|a| {
            let state = if a.locked || a.expired {
                "locked"
            } else {
                "active"
            };
            format!(
                "{:<32} uid {:<6} {:<7} {}",
                a.name,
                a.uid,
                state,
                if a.admin { "admin" } else { "" }
            )
            .trim_end()
            .to_string()
        })
        .collect())
}

/// One admin folder (`<data_dir>/<admin>/admin`) and the admin who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminDir {
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// The admin folders of the managed admins, where they exist as real folders
/// owned by their admin (never a symlink).
pub fn admin_dirs(data_dir: &Path) -> Vec<AdminDir> {
    let Ok((snapshot, _)) = system::snapshot() else {
        return Vec::new();
    };
    snapshot
        .accounts
        .values()
        .filter(|a| a.managed && a.admin)
        .filter_map(|a| {
            let path = data_dir.join(&a.name).join("admin");
            let meta = fs::symlink_metadata(&path).ok()?;
            (meta.is_dir() && meta.uid() == a.uid).then_some(AdminDir {
                path,
                uid: a.uid,
                gid: a.gid,
            })
        })
        .collect()
}

/// Makes every admin folder show the same thing: `users_text` (when the apply
/// succeeded) as users.yaml, except in the folder it came from, and `status` as
/// users.yaml.status. Each file belongs to the admin whose folder it is in, and
/// is written through the folder opened below `data_dir` without following links.
/// `users_text` also goes to `<data_dir>/.sftp-ha-users.yaml` (root's, 0600):
/// the copy the standby applies, which no user can write.
pub fn publish(
    data_dir: &Path,
    dirs: &[AdminDir],
    source: &Path,
    users_text: Option<&str>,
    status: &str,
) {
    let write = |dir: &AdminDir, name: &str, text: &str| {
        let written = crate::fsutil::open_dir_beneath(data_dir, &dir.path).and_then(|fd| {
            crate::fsutil::write_atomic_at(
                &fd,
                name,
                text.as_bytes(),
                0o640,
                Some((dir.uid, dir.gid)),
            )
        });
        if let Err(err) = written {
            tracing::warn!(path = %dir.path.join(name).display(), "cannot write: {err}");
        }
    };
    if let Some(text) = users_text {
        let path = data_dir.join(crate::layout::PUBLISHED_USERS);
        // Left alone when it already says this (an unchanged apply, every
        // start): a new copy would be replicated again and applied again on
        // every standby for nothing. (Root's file in root's folder: no user
        // can put a link there.)
        let same = std::fs::read(&path).is_ok_and(|now| now == text.as_bytes());
        if !same
            && let Err(err) =
                crate::fsutil::write_atomic(&path, text.as_bytes(), 0o600, Some((0, 0)))
        {
            tracing::warn!(path = %path.display(), "cannot write the users.yaml for the standby: {err}");
        }
    }
    for dir in dirs {
        if let Some(text) = users_text
            && dir.path.join(USERS_FILE) != source
        {
            write(dir, USERS_FILE, text);
        }
        write(dir, STATUS_FILE, status);
    }
}

/// What the master adds to users.yaml.status after the apply's own report,
/// each a line starting with its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// What the standby made of the users.yaml.
    Standby,
    /// A former master had another users.yaml, kept as a conflict copy.
    Conflict,
}

impl Note {
    fn tag(self) -> &'static str {
        match self {
            Note::Standby => "STANDBY:",
            Note::Conflict => "CONFLICT:",
        }
    }
}

/// On the master: adds `note` to every admin's users.yaml.status, replacing
/// an earlier note of the same kind; `None` removes it. Written like
/// [`publish`] writes, never through a link.
pub fn note_status(data_dir: &Path, kind: Note, note: Option<&str>) {
    for dir in admin_dirs(data_dir) {
        let changed = crate::fsutil::open_dir_beneath(data_dir, &dir.path).and_then(|fd| {
            let current = read_at(&fd, STATUS_FILE)?;
            let text = with_note(&current, kind.tag(), note);
            if text == current {
                return Ok(());
            }
            crate::fsutil::write_atomic_at(
                &fd,
                STATUS_FILE,
                text.as_bytes(),
                0o640,
                Some((dir.uid, dir.gid)),
            )
            .map(|_| ())
        });
        if let Err(err) = changed {
            tracing::warn!(path = %dir.path.join(STATUS_FILE).display(), "cannot write: {err}");
        }
    }
}

/// A file in an open folder, read without following a link; missing: empty.
fn read_at(dir: &std::os::fd::OwnedFd, name: &str) -> std::io::Result<String> {
    use nix::fcntl::{OFlag, openat};
    use std::io::Read as _;
    let fd = match openat(
        std::os::fd::AsFd::as_fd(dir),
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(String::new()),
        Err(e) => return Err(e.into()),
    };
    let mut file = fs::File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.by_ref().take(1 << 20).read_to_string(&mut text)?;
    Ok(text)
}

/// `status` with its note tagged `tag` replaced by `note` (or removed).
/// A note is one line (control characters in it are shown as `?`).
fn with_note(status: &str, tag: &str, note: Option<&str>) -> String {
    let mut text: String = status
        .split_inclusive('\n')
        .filter(|line| !line.starts_with(tag))
        .collect();
    if let Some(note) = note {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{tag} {}\n", visible(note)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standbys_copy_of_users_yaml_is_rewritten_only_when_it_changes() {
        let data = tempfile::tempdir().unwrap();
        let copy = data.path().join(crate::layout::PUBLISHED_USERS);
        let source = data.path().join("admin/admin/users.yaml");
        let inode = || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&copy).unwrap());
        publish(data.path(), &[], &source, Some("users: {}\n"), "OK");
        let first = inode();
        publish(data.path(), &[], &source, Some("users: {}\n"), "OK");
        assert_eq!(inode(), first, "the same text: not written again");
        publish(data.path(), &[], &source, Some("users: {a: 1}\n"), "OK");
        assert_ne!(inode(), first, "replaced, atomically");
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), "users: {a: 1}\n");
    }

    #[test]
    fn notes_are_added_replaced_and_removed_by_kind() {
        let (s, c) = (Note::Standby.tag(), Note::Conflict.tag());
        let base = "OK: the accounts now match the file.\n";
        let one = with_note(base, s, Some("the standby s did NOT follow: uid taken"));
        assert_eq!(
            one,
            format!("{base}STANDBY: the standby s did NOT follow: uid taken\n")
        );
        let two = with_note(&one, s, Some("still not:\nforged"));
        assert_eq!(two, format!("{base}STANDBY: still not:?forged\n"));
        let both = with_note(&two, c, Some("kept as users.x.yaml"));
        assert_eq!(both, format!("{two}CONFLICT: kept as users.x.yaml\n"));
        assert_eq!(
            with_note(&both, s, None),
            format!("{base}CONFLICT: kept as users.x.yaml\n")
        );
        assert_eq!(with_note("", s, Some("x")), "STANDBY: x\n");
    }

    #[test]
    fn a_problem_cannot_forge_a_line_of_the_status_or_the_journal() {
        let report = Report {
            at: 0,
            file: PathBuf::from("/srv/sftp-ha/admin/admin/users.yaml"),
            dry_run: false,
            outcome: Err(Failure::Invalid(vec![Problem::new(
                None,
                "bad name `x\nOK: the accounts now match the file.`",
                "fix it",
            )])),
            version: None,
        };
        let text = report.render();
        assert!(!text.contains("\nOK:"), "{text}");
        assert!(text.contains("bad name `x?OK: the accounts"), "{text}");
        assert!(!report.summary().contains('\n'));
    }
}
