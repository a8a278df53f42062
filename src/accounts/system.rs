//! The host's account database: reading it into a [`Snapshot`] (the parsers are
//! pure and unit-tested) and applying a [`Plan`] with the host's own tools
//! (groupadd, useradd, usermod, gpasswd, chpasswd), so PAM, nscd and SELinux see
//! every change the way they expect. Hashes go to `chpasswd -e` on stdin, in one
//! batch: never on a command line, where /proc would show them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};

use super::crypt::Method;
use super::plan::{ADMIN_GROUP, Account, Action, Change, MANAGED_GROUP, Plan, Snapshot, UserPlan};

/// Where users' public keys live: root-owned, outside every chroot, readable by
/// sshd when it checks a key as the user.
pub const KEYS_DIR: &str = "/etc/sftp-ha/authorized_keys";
const NOLOGIN: &str = "/usr/sbin/nologin";

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Command(#[from] crate::command::CommandError),
    #[error("cannot prepare {path}: {source}")]
    Folder {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What login.defs says about new accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginDefs {
    pub uid_min: u32,
    pub uid_max: u32,
    pub encrypt_method: Option<Method>,
}

/// Parses the keys sftp-ha needs from /etc/login.defs (defaults as in shadow-utils).
pub fn parse_login_defs(text: &str) -> LoginDefs {
    let mut defs = LoginDefs {
        uid_min: 1000,
        uid_max: 60000,
        encrypt_method: None,
    };
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("UID_MIN"), Some(v)) => defs.uid_min = v.parse().unwrap_or(defs.uid_min),
            (Some("UID_MAX"), Some(v)) => defs.uid_max = v.parse().unwrap_or(defs.uid_max),
            (Some("ENCRYPT_METHOD"), Some(v)) => defs.encrypt_method = Method::from_name(v),
            _ => {}
        }
    }
    defs
}

/// `name:x:uid:gid:gecos:home:shell` lines → (name, uid, gid).
pub fn parse_passwd(text: &str) -> Vec<(String, u32, u32)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                f.first()?.to_string(),
                f.get(2)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
            ))
        })
        .collect()
}

/// `name:x:gid:members` lines → (name, gid, members).
pub fn parse_group(text: &str) -> Vec<(String, u32, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let members = f
                .get(3)?
                .split(',')
                .filter(|m| !m.is_empty())
                .map(String::from)
                .collect();
            Some((f.first()?.to_string(), f.get(2)?.parse().ok()?, members))
        })
        .collect()
}

/// Shadow state of one account: hash without lock marks, locked, expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowEntry {
    pub hash: Option<String>,
    pub locked: bool,
    pub expired: bool,
}

/// `name:hash:last:min:max:warn:inactive:expire:` lines, judged on `today` (days since 1970).
pub fn parse_shadow(text: &str, today: u64) -> BTreeMap<String, ShadowEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let raw = *f.get(1)?;
            let locked = raw.starts_with('!');
            let bare = raw.trim_start_matches('!');
            let hash = bare.starts_with('$').then(|| bare.to_string());
            let expired = f
                .get(7)
                .and_then(|e| e.parse::<u64>().ok())
                .is_some_and(|e| e <= today);
            Some((
                f.first()?.to_string(),
                ShadowEntry {
                    hash,
                    locked,
                    expired,
                },
            ))
        })
        .collect()
}

/// Reads the host's accounts, groups, shadow and login.defs.
pub fn snapshot() -> Result<(Snapshot, LoginDefs), SystemError> {
    read_snapshot(false)
}

/// As [`snapshot`], for a check that changes nothing: when /etc/shadow cannot
/// be read (`users check` as another user than root), it counts as empty, so
/// the file is still checked in full; only what would change is less exact.
pub fn snapshot_for_check() -> Result<(Snapshot, LoginDefs), SystemError> {
    read_snapshot(true)
}

fn read_snapshot(shadow_optional: bool) -> Result<(Snapshot, LoginDefs), SystemError> {
    let read = |path: &str| {
        fs::read_to_string(path).map_err(|source| SystemError::Read {
            path: path.into(),
            source,
        })
    };
    let defs = parse_login_defs(&fs::read_to_string("/etc/login.defs").unwrap_or_default());
    let today = crate::timefmt::unix_now() / 86_400;
    let shadow_text = match read("/etc/shadow") {
        Err(SystemError::Read { source, .. })
            if shadow_optional && source.kind() == io::ErrorKind::PermissionDenied =>
        {
            String::new()
        }
        other => other?,
    };
    let shadow = parse_shadow(&shadow_text, today);
    let groups = parse_group(&read("/etc/group")?);
    let members = |group: &str| -> BTreeSet<String> {
        groups
            .iter()
            .find(|(n, _, _)| n == group)
            .map(|(_, _, m)| m.iter().cloned().collect())
            .unwrap_or_default()
    };
    let managed = members(MANAGED_GROUP);
    let admins = members(ADMIN_GROUP);
    let mut snap = Snapshot {
        uid_min: defs.uid_min,
        uid_max: defs.uid_max,
        groups: groups.iter().map(|(n, g, _)| (n.clone(), *g)).collect(),
        ..Snapshot::default()
    };
    for (name, uid, gid) in parse_passwd(&read("/etc/passwd")?) {
        let s = shadow.get(&name);
        let is_managed = managed.contains(&name);
        if is_managed {
            let keys = fs::read_to_string(Path::new(KEYS_DIR).join(&name))
                .map(|t| {
                    t.lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            snap.keys.insert(name.clone(), keys);
        }
        snap.uids.insert(uid);
        snap.accounts.insert(
            name.clone(),
            Account {
                admin: admins.contains(&name),
                managed: is_managed,
                hash: s.and_then(|s| s.hash.clone()),
                locked: s.is_some_and(|s| s.locked),
                expired: s.is_some_and(|s| s.expired),
                name,
                uid,
                gid,
            },
        );
    }
    Ok((snap, defs))
}

/// Runs a tool for its effect (see [`crate::command::run`]).
fn run(program: &str, args: &[&str], input: Option<&[u8]>) -> Result<(), SystemError> {
    crate::command::run(program, args, input)?;
    Ok(())
}

/// Applies `plan`: accounts, passwords, groups, locks, folders (unless
/// `folders` is false: a standby on shared storage) and keys.
/// Steps are idempotent, so an apply cut short converges on the next one.
pub fn apply(
    plan: &Plan,
    snapshot: &Snapshot,
    data_dir: &Path,
    folders: bool,
) -> Result<(), SystemError> {
    for group in [MANAGED_GROUP, ADMIN_GROUP] {
        if !snapshot.groups.contains_key(group) {
            run("groupadd", &["-r", group], None)?;
        }
    }
    for u in &plan.users {
        if u.action == Action::Create {
            let uid = u.uid.to_string();
            if !snapshot.groups.contains_key(&u.name) {
                run("groupadd", &["-g", &uid, &u.name], None)?;
            }
            let groups = if u.admin {
                format!("{MANAGED_GROUP},{ADMIN_GROUP}")
            } else {
                MANAGED_GROUP.to_string()
            };
            run(
                "useradd",
                &[
                    "-u", &uid, "-g", &uid, "-G", &groups, "-M", "-N", "-d", "/upload", "-s",
                    NOLOGIN, "-c", "sftp-ha", &u.name,
                ],
                None,
            )?;
        }
    }
    // One chpasswd for every new hash, on stdin.
    let batch: String = plan
        .users
        .iter()
        .filter_map(|u| u.new_hash.as_ref().map(|h| format!("{}:{h}\n", u.name)))
        .collect();
    if !batch.is_empty() {
        run("chpasswd", &["-e"], Some(batch.as_bytes()))?;
    }
    for u in &plan.users {
        let changes: &[Change] = match &u.action {
            Action::Update(c) => c,
            _ => &[],
        };
        if changes.contains(&Change::MadeAdmin) {
            run("gpasswd", &["-a", &u.name, ADMIN_GROUP], None)?;
        }
        if changes.contains(&Change::NoLongerAdmin) {
            run("gpasswd", &["-d", &u.name, ADMIN_GROUP], None)?;
        }
        let lock = u.action == Action::Remove
            || (u.action == Action::Create && u.disabled)
            || changes.contains(&Change::Locked);
        if lock {
            // Locked password and an expiry in the past: no password and no key logs in.
            run("usermod", &["-L", "-e", "1", &u.name], None)?;
        } else if changes.contains(&Change::Unlocked) {
            run("usermod", &["-U", "-e", "", &u.name], None)?;
        }
        if u.action != Action::Remove {
            if folders {
                prepare_folders(u, data_dir)?;
            }
            write_keys(u)?;
        }
    }
    Ok(())
}

fn folder_error(path: &Path) -> impl Fn(io::Error) -> SystemError + '_ {
    move |source| SystemError::Folder {
        path: path.to_path_buf(),
        source,
    }
}

/// A folder with the given owner and mode. An existing symlink is an error,
/// never followed: the daemon is root and these folders sit in users' reach.
fn ensure_dir(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), SystemError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(SystemError::Folder {
                path: path.to_path_buf(),
                source: io::Error::other("exists and is not a folder (a symlink or a file)"),
            });
        }
        Err(_) => fs::DirBuilder::new()
            .mode(mode)
            .create(path)
            .map_err(folder_error(path))?,
    }
    chown(path, Some(uid), Some(gid)).map_err(folder_error(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(folder_error(path))
}

/// `<data_dir>/<name>` (root, 0755: sshd's chroot rule), `upload/` (the user's),
/// and for admins `admin/` (where users.yaml lives).
fn prepare_folders(u: &UserPlan, data_dir: &Path) -> Result<(), SystemError> {
    let root = data_dir.join(&u.name);
    ensure_dir(&root, 0, 0, 0o755)?;
    ensure_dir(&root.join("upload"), u.uid, u.uid, 0o700)?;
    let admin = root.join("admin");
    if u.admin {
        ensure_dir(&admin, u.uid, u.uid, 0o700)?;
    } else if fs::symlink_metadata(&admin).is_ok_and(|m| m.is_dir()) {
        // A former admin keeps the folder but can no longer open it.
        ensure_dir(&admin, 0, 0, 0o700)?;
    }
    Ok(())
}

fn write_keys(u: &UserPlan) -> Result<(), SystemError> {
    let dir = Path::new(KEYS_DIR);
    let path = dir.join(&u.name);
    if u.keys.is_empty() {
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(folder_error(&path)(e)),
            _ => Ok(()),
        };
    }
    ensure_dir(dir, 0, 0, 0o755)?;
    let text: String = u.keys.iter().map(|k| format!("{k}\n")).collect();
    crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644, None).map_err(folder_error(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_defs() {
        let d = parse_login_defs("# c\nUID_MIN\t\t 2000\nUID_MAX 3000\nENCRYPT_METHOD YESCRYPT\n");
        assert_eq!(
            (d.uid_min, d.uid_max, d.encrypt_method),
            (2000, 3000, Some(Method::Yescrypt))
        );
        let d = parse_login_defs("");
        assert_eq!(
            (d.uid_min, d.uid_max, d.encrypt_method),
            (1000, 60000, None)
        );
    }

    #[test]
    fn passwd_group_shadow() {
        assert_eq!(
            parse_passwd("root:x:0:0:root:/root:/bin/bash\nbad line\n"),
            vec![("root".into(), 0, 0)]
        );
        let g = parse_group("sftp-ha:x:999:a,b\nempty:x:5:\n");
        assert_eq!(g[0], ("sftp-ha".into(), 999, vec!["a".into(), "b".into()]));
        assert!(g[1].2.is_empty());
        let s = parse_shadow(
            "a:!$6$x$y:1::::::\nb:$y$j$z:1:0:99999:7::1:\nc:*:1::::::\n",
            20000,
        );
        assert_eq!(
            s["a"],
            ShadowEntry {
                hash: Some("$6$x$y".into()),
                locked: true,
                expired: false
            }
        );
        assert_eq!(
            s["b"],
            ShadowEntry {
                hash: Some("$y$j$z".into()),
                locked: false,
                expired: true
            }
        );
        assert_eq!(s["c"].hash, None);
    }
}
