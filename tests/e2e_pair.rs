//! End-to-end tests of pairing on the test bed: the master's sync key reaches
//! the standby's data dir over SFTP and nothing else; the standby's host key is
//! pinned and a changed one is refused. Run by `tests/run-all`.

mod util;

use util::{MASTER, STANDBY, Testbed, describe, package, stdout, wait_for};

fn paired() -> (Testbed, String) {
    let tb = Testbed::up();
    for host in [MASTER, STANDBY] {
        tb.install(host, &package("current", "deb"));
    }
    tb.write(
        MASTER,
        "/etc/sftp-ha/config.toml",
        "role = \"master\"\n[sync]\nstandby = \"10.231.0.2\"\n",
    );
    tb.write(STANDBY, "/etc/sftp-ha/config.toml", "role = \"standby\"\n");
    for host in [MASTER, STANDBY] {
        tb.ok(host, "systemctl restart sftp-ha");
        wait_for("sftp-ha active", || {
            (tb.unit_property(host, "sftp-ha", "ActiveState") == "active").then_some(())
        });
    }
    let key = tb.ok(MASTER, "sftp-ha pair show-key").trim().to_string();
    assert!(key.starts_with("ssh-ed25519 "), "{key}");
    assert_eq!(
        tb.ok(MASTER, "sftp-ha pair show-key").trim(),
        key,
        "show-key must be stable"
    );
    let out = tb.ok(STANDBY, &format!("sftp-ha pair accept-master '{key}'"));
    assert!(out.contains("accepted"), "{out}");
    // Idempotent.
    tb.ok(STANDBY, &format!("sftp-ha pair accept-master '{key}'"));
    (tb, key)
}

/// The stock client with the master's sync key, from the master's side.
fn as_master(
    tb: &Testbed,
    program: &str,
    extra: &[&str],
    input: Option<&[u8]>,
) -> std::process::Output {
    let key = tb.path(MASTER, "/var/lib/sftp-ha/sync_key");
    let options = util::key_options(key.to_str().expect("UTF-8 path"));
    let mut args: Vec<&str> = vec![program];
    args.extend(options.iter().map(String::as_str));
    args.extend_from_slice(extra);
    tb.client(MASTER, &args, input)
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn the_master_key_reaches_the_data_dir_over_sftp_and_nothing_else() {
    let (tb, _) = paired();
    let target = "sftp-ha-sync@10.231.0.2";

    // SFTP into the data dir, chrooted, able to give files their owners.
    let probe = tb.path(MASTER, "/var/tmp/probe.txt");
    std::fs::write(&probe, "probe\n").unwrap();
    let batch = format!(
        "pwd\nput {} /probe.txt\nchown 1234 /probe.txt\nls -1 /\n",
        probe.display()
    );
    let out = as_master(&tb, "sftp", &["-b", "-", target], Some(batch.as_bytes()));
    assert!(
        out.status.success(),
        "sftp as the master: {}",
        describe(&out)
    );
    assert!(
        stdout(&out).contains("Remote working directory: /"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        tb.ok(STANDBY, "stat -c %u /srv/sftp-ha/probe.txt").trim(),
        "1234"
    );

    // Nothing outside the data dir, no shell, no forwarding, no password.
    let out = as_master(&tb, "sftp", &["-b", "-", target], Some(b"ls /etc\n"));
    assert!(
        !out.status.success(),
        "sees outside the data dir: {}",
        describe(&out)
    );
    let out = as_master(&tb, "ssh", &[target, "id"], None);
    assert!(
        !stdout(&out).contains("uid="),
        "got a shell: {}",
        describe(&out)
    );
    let out = as_master(&tb, "ssh", &["-W", "127.0.0.1:22", target], None);
    assert!(
        !out.status.success(),
        "forwarding worked: {}",
        describe(&out)
    );
    let out = tb.sftp(MASTER, "10.231.0.2", "sftp-ha-sync", "", "pwd\n");
    assert!(
        !out.status.success(),
        "a password login worked: {}",
        describe(&out)
    );
    // The account cannot be claimed through users.yaml.
    assert!(
        tb.ok(STANDBY, "getent passwd sftp-ha-sync")
            .starts_with("sftp-ha-sync:x:0:0:")
    );
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn the_standby_host_key_is_pinned_and_a_changed_one_refused() {
    let (tb, _) = paired();
    let out = tb.ok(MASTER, "sftp-ha pair trust-standby");
    let on_standby = tb.ok(STANDBY, "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub");
    let fingerprint = on_standby
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_string();
    assert!(out.contains(&fingerprint), "{out} vs {on_standby}");
    assert!(out.contains("10.231.0.2:22"), "{out}");
    // Trusting the same key again is fine.
    tb.ok(MASTER, "sftp-ha pair trust-standby 10.231.0.2:22");

    // The standby is "reinstalled": new host keys. Never re-learnt silently.
    tb.ok(
        STANDBY,
        "rm /etc/ssh/ssh_host_* && ssh-keygen -A && systemctl restart ssh",
    );
    let out = tb.sh(MASTER, "sftp-ha pair trust-standby");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("now has the host key") && err.contains("--replace"),
        "{err}"
    );
    let out = tb.ok(MASTER, "sftp-ha pair trust-standby --replace");
    assert!(
        !out.contains(&fingerprint),
        "the new key should differ: {out}"
    );
}
