//! `sftp-ha users check` on a machine without the daemon's config: what an
//! admin runs anywhere before uploading a users.yaml. Needs no root and no test
//! bed; as root (how CI runs) it also reads /etc/shadow, and changes nothing.

mod util;

use std::path::Path;
use std::process::{Command, Output};

use util::{describe, stderr, stdout};

const NO_CONFIG: &str = "/nonexistent/config.toml";

fn sftp_ha(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sftp-ha"))
        .args(args)
        .env_remove("SFTP_HA_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run sftp-ha")
}

fn users_file(dir: &Path, text: &str) -> String {
    let path = dir.join("users.yaml");
    std::fs::write(&path, text).expect("write users.yaml");
    path.to_str().expect("UTF-8 path").to_string()
}

/// Names no test host has, so the check plans them as new accounts.
const VALID: &str = "users:\n  ADMIN: {name: zzcheckadmin, password: \"35oi3g4l3he\", admin: true}\n  1: {name: zzcheckuser, password: \"1234\"}\n";

#[test]
fn a_valid_file_is_checked_against_the_defaults_without_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = users_file(dir.path(), VALID);
    let out = sftp_ha(&["--config", NO_CONFIG, "users", "check", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let err = stderr(&out);
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("checking against the defaults"))
        .collect();
    assert_eq!(
        said,
        [
            "sftp-ha: no /nonexistent/config.toml; checking against the defaults (data_dir /srv/sftp-ha, hash method from /etc/login.defs)"
        ],
        "{}",
        describe(&out)
    );
    assert!(
        stdout(&out).contains("OK: the file is valid"),
        "{}",
        describe(&out)
    );
    assert!(
        stdout(&out).contains("zzcheckadmin: created"),
        "{}",
        describe(&out)
    );
    // A check changes nothing, not even the file's plaintext.
    assert_eq!(std::fs::read_to_string(&file).unwrap(), VALID);
}

#[test]
fn an_expensive_hash_is_refused_with_its_line_without_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = users_file(
        dir.path(),
        "users:\n  ADMIN: {name: zzcheckadmin, password: \"35oi3g4l3he\", admin: true}\n  1: {name: zzcheckuser, password_hash: \"$6$rounds=999999999$abc$def\"}\n",
    );
    // Minutes of CPU if the hash were ever computed; refused on its cost alone.
    let out = sftp_ha(&["--config", NO_CONFIG, "users", "check", &file]);
    assert_eq!(out.status.code(), Some(65), "{}", describe(&out));
    let text = stdout(&out);
    assert!(
        text.contains("line 3, column 41: the password_hash of `zzcheckuser` is refused: SHA-512 with rounds=999999999 costs too much to check; at most rounds=500000 is accepted; fix: "),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_config_that_exists_but_is_broken_is_still_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = users_file(dir.path(), VALID);
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "role = \"primary\"\n").unwrap();
    let out = sftp_ha(&[
        "--config",
        config.to_str().unwrap(),
        "users",
        "check",
        &file,
    ]);
    assert_eq!(out.status.code(), Some(78), "{}", describe(&out));
    assert!(stderr(&out).contains("config error"), "{}", describe(&out));
}

#[test]
fn users_apply_still_needs_the_config() {
    let dir = tempfile::tempdir().unwrap();
    // Invalid on purpose (no admin): even a regression could change no account.
    let file = users_file(
        dir.path(),
        "users:\n  1: {name: zzcheckuser, password: \"1234\"}\n",
    );
    let out = sftp_ha(&["--config", NO_CONFIG, "users", "apply", &file]);
    let root = stdout_of("id", &["-u"]).trim() == "0";
    // Not root: refused before the config is read (77); root: no config (78).
    assert_eq!(
        out.status.code(),
        Some(if root { 78 } else { 77 }),
        "{}",
        describe(&out)
    );
}

fn stdout_of(program: &str, args: &[&str]) -> String {
    stdout(&Command::new(program).args(args).output().expect("run id"))
}
