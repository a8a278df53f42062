//! Checking users.yaml against the host's accounts and deciding what to change.
//! Pure: it reads a [`Snapshot`] of the account database and returns either
//! every problem in the file, or a [`Plan`]. Nothing is changed here, which is
//! what makes "a file with any error changes no account" hold.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::crypt::{self, Method};
use super::users_file::{Entry, Place, Problem, Secret};

use crate::layout::OWN_NAMES;
pub use crate::layout::{ADMIN_GROUP, MANAGED_GROUP};

/// System names never accepted, whether or not they exist on this host.
const RESERVED: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "nobody",
    "sshd",
    "messagebus",
    "_apt",
];

/// One account as the host has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Member of [`MANAGED_GROUP`]: ours to change.
    pub managed: bool,
    pub admin: bool,
    /// The shadow hash without a lock marker, if any.
    pub hash: Option<String>,
    /// Password locked (`!` before the hash).
    pub locked: bool,
    /// Account expired (shadow expire date set and past).
    pub expired: bool,
}

/// What the plan needs to know of the host.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub accounts: BTreeMap<String, Account>,
    /// Every uid in use, including those of unmanaged accounts.
    pub uids: BTreeSet<u32>,
    /// Every group name and gid in use.
    pub groups: BTreeMap<String, u32>,
    pub uid_min: u32,
    pub uid_max: u32,
    /// Installed public keys of managed users, by name.
    pub keys: BTreeMap<String, Vec<String>>,
}

/// What happens to one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create,
    /// Existing and managed; the list says what changes (empty: unchanged).
    Update(Vec<Change>),
    /// In the system but no longer in the file: locked and expired, files kept.
    Remove,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Password,
    MadeAdmin,
    NoLongerAdmin,
    Locked,
    Unlocked,
    Keys,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Password => "password changed",
            Change::MadeAdmin => "made admin",
            Change::NoLongerAdmin => "no longer admin",
            Change::Locked => "disabled",
            Change::Unlocked => "unlocked",
            Change::Keys => "public keys changed",
        })
    }
}

/// The desired state of one user and how to get there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPlan {
    pub name: String,
    pub uid: u32,
    pub action: Action,
    /// The hash to set, when the password is new or changed.
    pub new_hash: Option<String>,
    /// The hash the user ends up with (written back to users.yaml).
    pub hash: String,
    pub admin: bool,
    pub disabled: bool,
    pub keys: Vec<String>,
    /// Whether users.yaml must be rewritten for this entry (plaintext or missing uid).
    pub rewrite: bool,
}

impl UserPlan {
    /// One word or phrase for the status file.
    pub fn outcome(&self) -> String {
        match &self.action {
            Action::Create if self.disabled => "created (disabled)".into(),
            Action::Create => "created".into(),
            Action::Remove => "locked (no longer in users.yaml; files kept)".into(),
            Action::Update(c) if c.is_empty() => "unchanged".into(),
            Action::Update(c) => {
                let words: Vec<String> = c.iter().map(ToString::to_string).collect();
                format!("updated: {}", words.join(", "))
            }
        }
    }

    pub fn changes_anything(&self) -> bool {
        !matches!(&self.action, Action::Update(c) if c.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// In file order, then removed users by name.
    pub users: Vec<UserPlan>,
}

/// Checks `entries` against `snapshot` and plans the changes. Every problem in
/// the file is reported, not just the first.
pub fn plan(entries: &[Entry], snapshot: &Snapshot, method: Method) -> Result<Plan, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut names = BTreeMap::new();
    let mut fixed_uids = BTreeMap::new();
    for e in entries {
        check_entry(e, snapshot, &mut problems);
        if let Some(first) = names.insert(e.name.as_str(), e.name_place) {
            problems.push(Problem::new(
                Some(e.name_place),
                format!("the name `{}` is also used at {first}", e.name),
                "give each user a different name",
            ));
        }
        if let Some((uid, place)) = e.uid
            && let Some(first) = fixed_uids.insert(uid, place)
        {
            problems.push(Problem::new(
                Some(place),
                format!("uid {uid} is also used at {first}"),
                "give each user a different uid, or leave uid out",
            ));
        }
    }
    if !entries.iter().any(|e| e.admin && !e.disabled) {
        problems.push(Problem::new(
            None,
            "no enabled admin: nobody could upload the next users.yaml",
            "mark at least one user with `admin: true`",
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    // Uids for new users: the lowest free ones, leaving alone those the file fixes.
    let mut taken: BTreeSet<u32> = snapshot.uids.clone();
    taken.extend(fixed_uids.keys());
    taken.extend(snapshot.groups.values());
    let mut next_uid = snapshot.uid_min;
    let mut plan = Plan::default();
    for e in entries {
        let existing = snapshot.accounts.get(&e.name);
        let uid = match (e.uid, existing) {
            (Some((uid, _)), _) => uid,
            (None, Some(a)) => a.uid,
            (None, None) => {
                while taken.contains(&next_uid) {
                    next_uid += 1;
                }
                taken.insert(next_uid);
                next_uid
            }
        };
        if uid > snapshot.uid_max {
            return Err(vec![Problem::new(
                Some(e.place),
                format!("no free uid left below UID_MAX ({})", snapshot.uid_max),
                "remove unused accounts or raise UID_MAX in /etc/login.defs",
            )]);
        }
        let (new_hash, hash) = match (&e.secret, existing.and_then(|a| a.hash.as_deref())) {
            (Some(Secret::Password(p)), Some(current)) if crypt::verify_password(p, current) => {
                (None, current.to_string())
            }
            (Some(Secret::Password(p)), _) => {
                let h = crypt::hash_password(p, method).map_err(|err| {
                    vec![Problem::new(
                        Some(e.secret_place),
                        format!("cannot hash this password: {err}"),
                        "use another password",
                    )]
                })?;
                (Some(h.clone()), h)
            }
            (Some(Secret::Hash(h)), Some(current)) if h == current => (None, h.clone()),
            (Some(Secret::Hash(h)), _) => (Some(h.clone()), h.clone()),
            // Refused by check_entry already; kept as an error rather than a panic.
            (None, _) => {
                return Err(vec![Problem::new(
                    Some(e.place),
                    format!("`{}` has no password", e.name),
                    "add `password` or `password_hash`",
                )]);
            }
        };
        let keys: Vec<String> = e
            .public_keys
            .iter()
            .map(|(k, _)| normalise_key(k))
            .collect();
        let action = match existing {
            None => Action::Create,
            Some(a) => {
                let mut changes = Vec::new();
                if new_hash.is_some() {
                    changes.push(Change::Password);
                }
                match (a.admin, e.admin) {
                    (false, true) => changes.push(Change::MadeAdmin),
                    (true, false) => changes.push(Change::NoLongerAdmin),
                    _ => {}
                }
                let is_locked = a.locked || a.expired;
                if e.disabled && !is_locked {
                    changes.push(Change::Locked);
                } else if !e.disabled && is_locked {
                    changes.push(Change::Unlocked);
                }
                if snapshot.keys.get(&e.name).map_or(&[][..], Vec::as_slice) != keys.as_slice() {
                    changes.push(Change::Keys);
                }
                Action::Update(changes)
            }
        };
        plan.users.push(UserPlan {
            name: e.name.clone(),
            uid,
            action,
            rewrite: matches!(e.secret, Some(Secret::Password(_))) || e.uid.is_none(),
            new_hash,
            hash,
            admin: e.admin,
            disabled: e.disabled,
            keys,
        });
    }
    for a in snapshot.accounts.values() {
        if a.managed && !names.contains_key(a.name.as_str()) {
            let already = a.locked && a.expired;
            plan.users.push(UserPlan {
                name: a.name.clone(),
                uid: a.uid,
                action: if already {
                    Action::Update(Vec::new())
                } else {
                    Action::Remove
                },
                new_hash: None,
                hash: a.hash.clone().unwrap_or_default(),
                admin: false,
                disabled: true,
                keys: Vec::new(),
                rewrite: false,
            });
        }
    }
    Ok(plan)
}

fn check_entry(e: &Entry, snapshot: &Snapshot, problems: &mut Vec<Problem>) {
    let mut refuse = |place: Place, message: String, fix: &str| {
        problems.push(Problem::new(Some(place), message, fix));
    };
    if let Err(why) = check_name(&e.name) {
        refuse(
            e.name_place,
            format!("`{}` is not a valid user name: {why}", e.name),
            "use 1-32 letters, digits, `_`, `-` or `.`, starting with a letter or `_`",
        );
    } else if OWN_NAMES.contains(&e.name.as_str()) {
        refuse(
            e.name_place,
            format!(
                "`{}` is reserved by sftp-ha, for its own account or group",
                e.name
            ),
            "choose another name",
        );
    } else if RESERVED.contains(&e.name.as_str()) || e.name.starts_with("systemd-") {
        refuse(
            e.name_place,
            format!("`{}` is a system account name", e.name),
            "choose another name",
        );
    } else if let Some(a) = snapshot.accounts.get(&e.name) {
        if !a.managed {
            refuse(
                e.name_place,
                format!(
                    "`{}` is an existing account (uid {}) that sftp-ha does not manage",
                    e.name, a.uid
                ),
                "choose another name; sftp-ha only changes accounts in the group sftp-ha",
            );
        } else if let Some((uid, place)) = e.uid
            && uid != a.uid
        {
            refuse(
                place,
                format!(
                    "`{}` already has uid {}; a uid cannot change",
                    e.name, a.uid
                ),
                "write the current uid, or leave uid out",
            );
        }
    } else if snapshot.groups.contains_key(&e.name) {
        refuse(
            e.name_place,
            format!("a group named `{}` already exists", e.name),
            "choose another name",
        );
    }
    if let Some((uid, place)) = e.uid {
        let owner = snapshot.accounts.values().find(|a| a.uid == uid);
        if uid < snapshot.uid_min || uid > snapshot.uid_max {
            refuse(
                place,
                format!(
                    "uid {uid} is outside the range for users ({}-{}, UID_MIN/UID_MAX in /etc/login.defs)",
                    snapshot.uid_min, snapshot.uid_max
                ),
                "choose a uid in that range, or leave uid out",
            );
        } else if let Some(owner) = owner.filter(|o| o.name != e.name) {
            refuse(
                place,
                format!("uid {uid} belongs to the account `{}`", owner.name),
                "choose a free uid, or leave uid out",
            );
        } else if !snapshot.accounts.contains_key(&e.name)
            && snapshot.groups.values().any(|g| *g == uid)
        {
            refuse(
                place,
                format!("gid {uid} is taken by a group, and each user's group gets the user's uid"),
                "choose another uid, or leave uid out",
            );
        }
    }
    match &e.secret {
        None => refuse(
            e.place,
            format!(
                "`{}` needs exactly one of `password` and `password_hash`",
                e.name
            ),
            "keep one of them",
        ),
        Some(Secret::Password(p)) if p.is_empty() => refuse(
            e.secret_place,
            format!("`{}` has an empty password", e.name),
            "set a password",
        ),
        Some(Secret::Password(p)) if p.contains('\0') || p.contains('\n') => refuse(
            e.secret_place,
            format!("the password of `{}` contains a NUL or newline", e.name),
            "use printable characters",
        ),
        // A hash already in /etc/shadow was accepted before, and is never hashed
        // again here (the plan compares it as a string), so it is not checked.
        Some(Secret::Hash(h))
            if snapshot.accounts.get(&e.name).and_then(|a| a.hash.as_ref()) != Some(h) =>
        {
            // The method and cost bounds come first: nothing expensive reaches crypt_r.
            if let Err(err) = crypt::check_usable_hash(h) {
                refuse(
                    e.secret_place,
                    format!("the password_hash of `{}` is refused: {err}", e.name),
                    err.fix(),
                );
            }
        }
        Some(_) => {}
    }
    for (key, place) in &e.public_keys {
        if let Err(why) = check_public_key(key) {
            refuse(
                *place,
                format!("not an OpenSSH public key: {why}"),
                "paste one line of a .pub file, e.g. `ssh-ed25519 AAAA... user@host`",
            );
        }
    }
}

/// 1-32 characters of `[A-Za-z0-9_.-]`, starting with a letter or `_`.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 32 {
        return Err("it must be 1 to 32 characters long");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        return Err("it must start with a letter or `_`");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err("it may only contain letters, digits, `_`, `-` and `.`");
    }
    Ok(())
}

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// A bare key line: `TYPE BASE64 [COMMENT]`. Options (`command=`, `from=`, ...)
/// are refused: they belong to whoever runs sshd, not to users.yaml.
pub fn check_public_key(line: &str) -> Result<(), String> {
    if line.contains('\n') || line.contains('\r') {
        return Err("it spans several lines".into());
    }
    let mut parts = line.split_whitespace();
    let kind = parts.next().ok_or("it is empty")?;
    if !KEY_TYPES.contains(&kind) {
        return Err(format!(
            "unknown key type `{kind}` (options before the key are not allowed)"
        ));
    }
    let body = parts.next().ok_or("the key data is missing")?;
    if body.len() < 16
        || !body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
    {
        return Err("the key data is not base64".into());
    }
    Ok(())
}

fn normalise_key(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::users_file::parse;

    fn snapshot() -> Snapshot {
        let mut s = Snapshot {
            uid_min: 1000,
            uid_max: 60000,
            ..Snapshot::default()
        };
        for (name, uid) in [("root", 0), ("daemon", 1), ("alice", 1000)] {
            s.accounts.insert(
                name.into(),
                Account {
                    name: name.into(),
                    uid,
                    gid: uid,
                    managed: false,
                    admin: false,
                    hash: None,
                    locked: false,
                    expired: false,
                },
            );
            s.uids.insert(uid);
            s.groups.insert(name.into(), uid);
        }
        s.groups.insert(MANAGED_GROUP.into(), 999);
        s
    }

    fn managed(s: &mut Snapshot, name: &str, uid: u32, password: &str, admin: bool) {
        s.accounts.insert(
            name.into(),
            Account {
                name: name.into(),
                uid,
                gid: uid,
                managed: true,
                admin,
                hash: Some(crypt::hash_password(password, Method::Sha512).unwrap()),
                locked: false,
                expired: false,
            },
        );
        s.uids.insert(uid);
        s.groups.insert(name.into(), uid);
    }

    const SAMPLE: &str = "users:\n  ADMIN: {name: admin, password: \"35oi3g4l3he\", admin: true}\n  1: {name: EPuser, password: \"1234\"}\n";

    fn problems(text: &str, s: &Snapshot) -> Vec<String> {
        plan(&parse(text).unwrap(), s, Method::Sha512)
            .expect_err("should be refused")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn fresh_host_creates_both_with_free_uids() {
        let p = plan(&parse(SAMPLE).unwrap(), &snapshot(), Method::Sha512).unwrap();
        assert_eq!(p.users.len(), 2);
        assert_eq!(p.users[0].action, Action::Create);
        assert_eq!(p.users[0].uid, 1001, "1000 is alice's");
        assert_eq!(p.users[1].uid, 1002);
        assert!(p.users[0].admin && !p.users[1].admin);
        assert!(crypt::verify_password(
            "35oi3g4l3he",
            p.users[0].new_hash.as_ref().unwrap()
        ));
        assert!(p.users.iter().all(|u| u.rewrite));
    }

    #[test]
    fn same_file_again_changes_and_rehashes_nothing() {
        let mut s = snapshot();
        managed(&mut s, "admin", 1001, "35oi3g4l3he", true);
        managed(&mut s, "EPuser", 1002, "1234", false);
        let p = plan(&parse(SAMPLE).unwrap(), &s, Method::Sha512).unwrap();
        assert!(p.users.iter().all(|u| !u.changes_anything()), "{p:?}");
        assert!(p.users.iter().all(|u| u.new_hash.is_none()));
        assert_eq!(p.users[0].hash, s.accounts["admin"].hash.clone().unwrap());
    }

    #[test]
    fn changes_removals_and_relocks() {
        let mut s = snapshot();
        managed(&mut s, "admin", 1001, "35oi3g4l3he", false);
        managed(&mut s, "EPuser", 1002, "old", false);
        managed(&mut s, "gone", 1003, "x", false);
        let p = plan(&parse(SAMPLE).unwrap(), &s, Method::Sha512).unwrap();
        assert_eq!(p.users[0].action, Action::Update(vec![Change::MadeAdmin]));
        assert_eq!(p.users[1].action, Action::Update(vec![Change::Password]));
        assert_eq!(p.users[2].name, "gone");
        assert_eq!(p.users[2].action, Action::Remove);
        // Back in the file: unlocked.
        s.accounts.get_mut("gone").unwrap().locked = true;
        s.accounts.get_mut("gone").unwrap().expired = true;
        let text = format!("{SAMPLE}  3: {{name: gone, password: \"x\"}}\n");
        let p = plan(&parse(&text).unwrap(), &s, Method::Sha512).unwrap();
        assert_eq!(p.users[2].action, Action::Update(vec![Change::Unlocked]));
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let text = "users:\n  a: {name: root, password: \"x\"}\n  b: {name: alice, password: \"x\"}\n  c: {name: 9lives, password: \"x\"}\n  d: {name: dup, password: \"\"}\n  e: {name: dup, password: \"y\", uid: 5}\n";
        let p = problems(text, &snapshot());
        let all = p.join("\n");
        assert!(
            all.contains("line 2, column 13: `root` is a system account name"),
            "{all}"
        );
        assert!(
            all.contains("`alice` is an existing account (uid 1000) that sftp-ha does not manage"),
            "{all}"
        );
        assert!(all.contains("`9lives` is not a valid user name"), "{all}");
        assert!(all.contains("empty password"), "{all}");
        assert!(
            all.contains("the name `dup` is also used at line 5"),
            "{all}"
        );
        assert!(all.contains("uid 5 is outside the range"), "{all}");
        assert!(all.contains("no enabled admin"), "{all}");
    }

    #[test]
    fn names() {
        assert!(check_name("EPuser").is_ok());
        assert!(check_name("_svc.x-1").is_ok());
        assert!(check_name(&"a".repeat(32)).is_ok());
        assert!(check_name(&"a".repeat(33)).is_err());
        assert!(check_name("").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("é").is_err());
    }

    #[test]
    fn keys() {
        assert!(check_public_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG bob@x").is_ok());
        assert!(
            check_public_key("command=\"/bin/sh\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG").is_err()
        );
        assert!(check_public_key("ssh-ed25519").is_err());
        assert!(check_public_key("ssh-ed25519 not*base64!!!!!!!!!!!").is_err());
    }

    #[test]
    fn fixed_uid_conflicts() {
        let text = "users:\n  a: {name: admin, password: \"x\", admin: true, uid: 1000}\n";
        assert!(
            problems(text, &snapshot())
                .join("")
                .contains("uid 1000 belongs to the account `alice`")
        );
        let mut s = snapshot();
        managed(&mut s, "admin", 1001, "x", true);
        let text = "users:\n  a: {name: admin, password: \"x\", admin: true, uid: 1005}\n";
        assert!(problems(text, &s).join("").contains("a uid cannot change"));
    }

    #[test]
    fn names_sftp_ha_uses_itself_are_reserved() {
        for name in ["sftp-ha-sync", "sftp-ha", "sftp-ha-admin"] {
            let text = format!(
                "users:\n  a: {{name: admin, password: \"x\", admin: true}}\n  b: {{name: {name}, password: \"x\"}}\n"
            );
            let all = problems(&text, &snapshot()).join("\n");
            assert!(
                all.contains(&format!(
                    "line 3, column 13: `{name}` is reserved by sftp-ha, for its own account or group; fix: choose another name"
                )),
                "{all}"
            );
        }
        assert!(OWN_NAMES.contains(&crate::pair::SYNC_USER));
    }

    #[test]
    fn an_expensive_hash_is_refused_with_its_place_without_hashing() {
        // Minutes of CPU if it reached crypt_r: the test would hang, not fail.
        let text = "users:\n  a: {name: admin, password: \"x\", admin: true}\n  b: {name: bob, password_hash: \"$6$rounds=999999999$abc$def\"}\n";
        let all = problems(text, &snapshot()).join("\n");
        assert!(
            all.contains("line 3, column 33: the password_hash of `bob` is refused: SHA-512 with rounds=999999999 costs too much to check; at most rounds=500000 is accepted; fix: "),
            "{all}"
        );
    }

    #[test]
    fn password_hash_methods() {
        let with_hash = |hash: &str| {
            format!(
                "users:\n  a: {{name: admin, password: \"x\", admin: true}}\n  b: {{name: bob, password_hash: \"{hash}\"}}\n"
            )
        };
        for method in [Method::Yescrypt, Method::Sha512, Method::Sha256] {
            let hash = crypt::hash_password("1234", method).unwrap();
            let p = plan(
                &parse(&with_hash(&hash)).unwrap(),
                &snapshot(),
                Method::Sha512,
            )
            .unwrap();
            assert_eq!(p.users[1].new_hash.as_deref(), Some(hash.as_str()));
        }
        for (hash, says) in [
            (
                "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/",
                "MD5-crypt (`$1$`) is too weak",
            ),
            (
                "$2b$31$abcdefghijklmnopqrstuu5Wz0Z.8ac1XEQ4Ln5fXvLHG8xKjEy5e",
                "bcrypt (`$2b$`) is not accepted",
            ),
            ("abJnggxhB/yWI", "traditional DES"),
            (
                "$y$jFT$abcdefghijklmnopqrstuv$abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ",
                "yescrypt with N=2^18, r=32, p=1, t=0 costs too much",
            ),
            ("$6$", "malformed SHA-512 hash"),
        ] {
            let all = problems(&with_hash(hash), &snapshot()).join("\n");
            assert!(all.contains(says), "{hash}: {all}");
            assert!(
                all.contains("the password_hash of `bob` is refused"),
                "{all}"
            );
            assert!(all.contains("fix: "), "{all}");
        }
    }

    #[test]
    fn an_expensive_hash_in_shadow_is_replaced_never_verified() {
        let expensive = format!("$6$rounds=999999999$abcdefgh${}", "a".repeat(86));
        let mut s = snapshot();
        managed(&mut s, "admin", 1001, "35oi3g4l3he", true);
        managed(&mut s, "EPuser", 1002, "1234", false);
        s.accounts.get_mut("EPuser").unwrap().hash = Some(expensive.clone());
        // `password:`: not compared with the old hash, re-hashed with the host's method.
        let p = plan(&parse(SAMPLE).unwrap(), &s, Method::Sha512).unwrap();
        assert_eq!(p.users[1].action, Action::Update(vec![Change::Password]));
        assert!(p.users[1].new_hash.as_ref().unwrap().starts_with("$6$"));
        // The same hash as in shadow, given as password_hash: unchanged, as before.
        let text = format!(
            "users:\n  a: {{name: admin, password: \"35oi3g4l3he\", admin: true}}\n  b: {{name: EPuser, password_hash: \"{expensive}\"}}\n"
        );
        let p = plan(&parse(&text).unwrap(), &s, Method::Sha512).unwrap();
        assert_eq!(p.users[1].action, Action::Update(vec![]));
    }
}
