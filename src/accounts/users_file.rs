//! `users.yaml`: the format admins already have, parsed strictly and safely.
//!
//! ```yaml
//! users:
//!   ADMIN: {name: admin, password: "35oi3g4l3he", admin: true}
//!   1: {name: EPuser, password: "1234"}
//! ```
//!
//! Labels (`ADMIN`, `1`) are free. Each entry has `name` and exactly one of
//! `password` / `password_hash`; optional `public_keys`, `uid`, `admin`,
//! `disabled`. Unknown fields, duplicate keys, oversized files and alias bombs
//! are refused with the line and column of the problem.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

/// Larger files are refused before parsing.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// At most this many users in one file.
pub const MAX_USERS: usize = 100_000;

/// A place in the file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Place {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// How an entry's password is given.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// Plaintext, to be hashed and then replaced in the file by its hash.
    Password(String),
    /// A crypt string, used as is.
    Hash(String),
}

// Never print a password or a hash, not even in debug output.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Secret::Password(_) => "Password(<redacted>)",
            Secret::Hash(_) => "Hash(<redacted>)",
        })
    }
}

/// One user as written in the file (not yet checked against the system).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub label: String,
    pub place: Place,
    pub name: String,
    pub name_place: Place,
    pub secret: Option<Secret>,
    pub secret_place: Place,
    pub public_keys: Vec<(String, Place)>,
    pub uid: Option<(u32, Place)>,
    pub admin: bool,
    pub disabled: bool,
    /// Byte ranges used to rewrite the file: the `name` value and the `password` value.
    pub name_span: Option<(usize, usize)>,
    pub password_span: Option<(usize, usize)>,
    pub uid_given: bool,
}

/// A problem found in the file: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub place: Option<Place>,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.place {
            Some(p) => write!(f, "{p}: {}; fix: {}", self.message, self.fix),
            None => write!(f, "{}; fix: {}", self.message, self.fix),
        }
    }
}

impl Problem {
    pub fn new(
        place: Option<Place>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Problem {
        Problem {
            place,
            message: message.into(),
            fix: fix.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    users: Spanned<Labelled>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: Spanned<String>,
    password: Option<Spanned<String>>,
    password_hash: Option<Spanned<String>>,
    public_keys: Option<Vec<Spanned<String>>>,
    uid: Option<Spanned<u32>>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    disabled: bool,
}

/// The `users:` mapping in file order, with labels that may be strings or numbers.
struct Labelled(Vec<(String, Spanned<RawEntry>)>);

impl<'de> Deserialize<'de> for Labelled {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Labelled;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of labels to users, like `ADMIN: {name: admin, password: \"...\", admin: true}`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Labelled, A::Error> {
                let mut out = Vec::new();
                while let Some(label) = map.next_key::<Label>()? {
                    if out.len() >= MAX_USERS {
                        return Err(de::Error::custom(format!("more than {MAX_USERS} users")));
                    }
                    out.push((label.0, map.next_value()?));
                }
                Ok(Labelled(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A label: any scalar, kept as text.
struct Label(String);

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Label;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a label (a word or a number)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Label, E> {
                Ok(Label(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Label, E> {
                Ok(Label(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Label, E> {
                Ok(Label(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Label, E> {
                Ok(Label(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

fn place_of(loc: &serde_saphyr::Location) -> Place {
    Place {
        line: usize::try_from(loc.line()).unwrap_or(usize::MAX),
        column: usize::try_from(loc.column()).unwrap_or(usize::MAX),
    }
}

fn byte_span(loc: &serde_saphyr::Location) -> Option<(usize, usize)> {
    let span = loc.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    Some((start, start + len))
}

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    // users.yaml has no use for anchors and aliases; a handful is tolerated,
    // an alias bomb is not.
    budget.max_aliases = 64;
    budget.max_anchors = 64;
    budget.max_reader_input_bytes = Some(MAX_FILE_BYTES);
    budget.max_total_scalar_bytes = MAX_FILE_BYTES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.with_snippet = false;
    options
}

/// Parses users.yaml text. Only the shape is checked here; names, uids and the
/// rest are checked by [`super::plan`] against the host's accounts.
pub fn parse(text: &str) -> Result<Vec<Entry>, Problem> {
    if text.len() > MAX_FILE_BYTES {
        return Err(Problem::new(
            None,
            format!(
                "the file is {} bytes, more than the limit of {MAX_FILE_BYTES}",
                text.len()
            ),
            "split it or remove what is not a user",
        ));
    }
    let raw: RawFile = serde_saphyr::from_str_with_options(text, options()).map_err(|err| {
        let place = err.location().map(|l| place_of(&l));
        let message = err.without_snippet().to_string();
        // The library's message repeats the place; keep the first line only.
        let mut message = message.lines().next().unwrap_or("").trim().to_string();
        // ... and may end with the place again, which the Problem already gives.
        if let Some(at) = message.rfind(" at line ")
            && message[at..].contains(", column ")
        {
            message.truncate(at);
        }
        let fix = fix_for(&message);
        Problem::new(place, message, fix)
    })?;
    Ok(raw
        .users
        .value
        .0
        .into_iter()
        .map(|(label, entry)| {
            let e = entry.value;
            let (secret, secret_loc) = match (e.password, e.password_hash) {
                (Some(p), None) => (Some(Secret::Password(p.value)), Some(p.referenced)),
                (None, Some(h)) => (Some(Secret::Hash(h.value)), Some(h.referenced)),
                (Some(p), Some(_)) => (None, Some(p.referenced)),
                (None, None) => (None, None),
            };
            Entry {
                label,
                place: place_of(&entry.referenced),
                name_place: place_of(&e.name.referenced),
                name_span: byte_span(&e.name.referenced),
                name: e.name.value,
                password_span: match &secret {
                    Some(Secret::Password(_)) => secret_loc.as_ref().and_then(byte_span),
                    _ => None,
                },
                secret_place: secret_loc
                    .as_ref()
                    .map(place_of)
                    .unwrap_or_else(|| place_of(&entry.referenced)),
                secret,
                public_keys: e
                    .public_keys
                    .unwrap_or_default()
                    .into_iter()
                    .map(|k| (k.value, place_of(&k.referenced)))
                    .collect(),
                uid_given: e.uid.is_some(),
                uid: e.uid.map(|u| (u.value, place_of(&u.referenced))),
                admin: e.admin,
                disabled: e.disabled,
            }
        })
        .collect())
}

fn fix_for(message: &str) -> String {
    if message.contains("unknown field") {
        "remove or correct that field; an entry knows name, password, password_hash, public_keys, uid, admin, disabled".into()
    } else if message.contains("duplicate") {
        "each label and each field may appear only once".into()
    } else if message.contains("missing field") {
        "every entry needs a name, e.g. `1: {name: EPuser, password: \"1234\"}`".into()
    } else if message.contains("budget") || message.contains("alias") || message.contains("limit") {
        "users.yaml needs no anchors or aliases (&, *); write each user out".into()
    } else if message.contains("invalid type") {
        "quote passwords and names (\"1234\"), write uid as a number and admin/disabled as true or false".into()
    } else {
        "correct the YAML at that place (an example: `users:` then one line per user, `1: {name: EPuser, password: \"1234\"}`)".into()
    }
}

/// The file with every plaintext `password` replaced by `password_hash` and a
/// `uid` added where missing. Edits are made in the text itself, so comments,
/// labels, order and style (flow or block) stay as the admin wrote them.
/// `hashes` and `uids` are by user name; entries not in them are left alone.
pub fn rewrite(
    text: &str,
    entries: &[Entry],
    hashes: &std::collections::BTreeMap<String, String>,
    uids: &std::collections::BTreeMap<String, u32>,
) -> Option<String> {
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for e in entries {
        if let (Some((start, end)), Some(hash)) = (e.password_span, hashes.get(&e.name)) {
            let key = key_before(text, start, "password")?;
            edits.push((key, key + "password".len(), "password_hash".into()));
            edits.push((start, end, format!("\"{hash}\"")));
        }
        if let (false, Some((start, end)), Some(uid)) =
            (e.uid_given, e.name_span, uids.get(&e.name))
        {
            let key = key_before(text, start, "name")?;
            let before = text.get(..key)?.trim_end_matches([' ', '\t']);
            let insertion = if before.ends_with('{') || before.ends_with(',') {
                format!(", uid: {uid}")
            } else {
                let line_start = text.get(..key)?.rfind('\n').map_or(0, |i| i + 1);
                format!("\n{}uid: {uid}", " ".repeat(key - line_start))
            };
            edits.push((end, end, insertion));
        }
    }
    edits.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    let mut out = text.to_string();
    for (start, end, replacement) in edits {
        out.replace_range(start..end, &replacement);
    }
    Some(out)
}

/// Offset of `key` written just before a value at `value_start` (`key: value`).
fn key_before(text: &str, value_start: usize, key: &str) -> Option<usize> {
    let head = text.get(..value_start)?;
    let at = head.rfind(key)?;
    let between = head.get(at + key.len()..)?;
    (between.trim() == ":").then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "users:\n  ADMIN: {name: admin, password: \"35oi3g4l3he\", admin: true}\n  1: {name: EPuser, password: \"1234\"}\n";

    #[test]
    fn the_existing_format_parses() {
        let entries = parse(SAMPLE).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].label, "ADMIN");
        assert_eq!(entries[0].name, "admin");
        assert!(entries[0].admin);
        assert_eq!(
            entries[0].secret,
            Some(Secret::Password("35oi3g4l3he".into()))
        );
        assert_eq!(entries[1].label, "1");
        assert_eq!(entries[1].name, "EPuser");
        assert!(!entries[1].admin);
        assert_eq!(
            entries[1].name_place,
            Place {
                line: 3,
                column: 13
            }
        );
        let (s, e) = entries[0].password_span.unwrap();
        assert_eq!(&SAMPLE[s..e], "\"35oi3g4l3he\"");
        let (s, e) = entries[1].name_span.unwrap();
        assert_eq!(&SAMPLE[s..e], "EPuser");
    }

    #[test]
    fn block_style_and_all_fields() {
        let text = "users:\n  bob:\n    name: bob\n    password_hash: \"$6$abc$def\"\n    uid: 2001\n    disabled: true\n    public_keys:\n      - ssh-ed25519 AAAA bob@laptop\n";
        let e = &parse(text).unwrap()[0];
        assert_eq!(e.secret, Some(Secret::Hash("$6$abc$def".into())));
        assert_eq!(e.uid.map(|u| u.0), Some(2001));
        assert!(e.disabled);
        assert_eq!(e.public_keys.len(), 1);
        assert_eq!(e.public_keys[0].1.line, 8);
    }

    #[test]
    fn unknown_field_is_named_with_place() {
        let p = parse("users:\n  1: {name: a, password: \"x\", shell: /bin/sh}\n").unwrap_err();
        assert!(p.message.contains("shell"), "{p}");
        assert_eq!(p.place.map(|p| p.line), Some(2), "{p}");
    }

    #[test]
    fn duplicate_labels_and_fields_are_refused() {
        assert!(
            parse("users:\n  1: {name: a, password: \"x\"}\n  1: {name: b, password: \"y\"}\n")
                .is_err()
        );
        assert!(parse("users:\n  1: {name: a, name: b, password: \"x\"}\n").is_err());
    }

    #[test]
    fn broken_yaml_has_a_place() {
        let p = parse("users:\n  1: {name: a, password: \"x\"\n").unwrap_err();
        assert!(p.place.is_some(), "{p}");
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut text = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let names = ["b", "c", "d", "e", "f", "g", "h", "i"];
        let mut prev = "a";
        for n in names {
            text.push_str(&format!("{n}: &{n} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
            prev = n;
        }
        text.push_str("users: {}\n");
        assert!(parse(&text).is_err());
    }

    #[test]
    fn oversized_file_is_refused() {
        let text = format!("users: {{}}\n#{}\n", "x".repeat(MAX_FILE_BYTES));
        assert!(parse(&text).unwrap_err().message.contains("limit"));
    }

    #[test]
    fn rewrite_replaces_plaintext_and_adds_uids_keeping_the_rest() {
        let text = "# our users\nusers:\n  ADMIN: {name: admin, password: \"35oi3g4l3he\", admin: true}  # boss\n  1: {name: EPuser, password: \"1234\"}\n  bob:\n    name: bob\n    password: secret\n";
        let entries = parse(text).unwrap();
        let hashes = [("admin", "$y$h1"), ("EPuser", "$y$h2"), ("bob", "$y$h3")]
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .into_iter()
            .collect();
        let uids = [("admin", 1001), ("EPuser", 1002), ("bob", 1003)]
            .map(|(n, u)| (n.to_string(), u))
            .into_iter()
            .collect();
        let out = rewrite(text, &entries, &hashes, &uids).unwrap();
        assert_eq!(
            out,
            "# our users\nusers:\n  ADMIN: {name: admin, uid: 1001, password_hash: \"$y$h1\", admin: true}  # boss\n  1: {name: EPuser, uid: 1002, password_hash: \"$y$h2\"}\n  bob:\n    name: bob\n    uid: 1003\n    password_hash: \"$y$h3\"\n"
        );
        let again = parse(&out).unwrap();
        assert_eq!(again[0].secret, Some(Secret::Hash("$y$h1".into())));
        assert_eq!(again[2].uid.map(|u| u.0), Some(1003));
        assert!(!out.contains("1234") && !out.contains("secret") && !out.contains("35oi3g4l3he"));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let e = &parse(SAMPLE).unwrap()[0];
        let text = format!("{e:?}");
        assert!(!text.contains("35oi3g4l3he"), "{text}");
    }
}
