//! End-to-end: shared-storage mode (`[sync] storage = "shared"`). One folder
//! of the machine running the test bed is `/srv/sftp-ha` on both master and
//! standby, as an NFS or CephFS mount would be. sftp-ha copies nothing, but
//! the accounts (same names, same uids) are on both hosts, users on the
//! standby may only read, and a promotion moves the right to write without
//! moving, deleting or copying a file. Run by `tests/run-all`.

mod util;

use util::{
    MASTER, STANDBY, Testbed, describe, package, role_of, status_json, upload, upload_ok, wait_for,
};

const DIR: &str = "/srv/sftp-ha/EPuser/upload";

/// The first admin, applied on the master by root.
const FIRST_ADMIN: &str =
    "users:\n  ADMIN: {name: admin, password: \"35oi3g4l3he\", admin: true}\n";

/// What the admin uploads over SFTP: two more users, one with a fixed uid.
const UPLOADED: &str = "users:\n  ADMIN: {name: admin, password: \"35oi3g4l3he\", admin: true}\n  1: {name: EPuser, password: \"1234\"}\n  2: {name: bob, password: \"b0bpass\", uid: 2345}\n";

fn config(role: &str, peer: &str) -> String {
    format!("role = \"{role}\"\n[sync]\npeer = \"{peer}\"\nstorage = \"shared\"\n")
}

/// Like [`wait_for`], but a timeout shows both hosts' status and journal.
fn wait_or_dump(tb: &Testbed, what: &str, probe: impl FnMut() -> Option<()>) {
    if util::wait_for_or(what, probe).is_none() {
        let dump = |host: &str| {
            util::stdout(&tb.sh(
                host,
                "sftp-ha status; journalctl -u sftp-ha --no-pager -n 80 -o short-precise",
            ))
        };
        panic!(
            "gave up waiting for {what}\n--- master:\n{}\n--- standby:\n{}",
            dump(MASTER),
            dump(STANDBY)
        );
    }
}

/// `name:uid:gid` of a user on a host, or `None` if there is no such user.
fn account(tb: &Testbed, host: &str, name: &str) -> Option<String> {
    let out = tb.sh(host, &format!("getent passwd {name} | cut -d: -f1,3,4"));
    let line = util::stdout(&out).trim().to_string();
    (out.status.success() && !line.is_empty()).then_some(line)
}

/// Every user file under the data dir with its size and SHA-256 (what a
/// promotion must leave exactly as it was), and nothing of sftp-ha's own.
fn user_files(tb: &Testbed, host: &str) -> String {
    tb.ok(
        host,
        "cd /srv/sftp-ha && find . -path './.*' -prune -o -path './*/dev' -prune -o -type f ! -name 'users.yaml.status' -print0 | sort -z | xargs -0 -r sha256sum",
    )
}

/// Master and standby on one shared data dir, paired both ways, the first
/// admin applied on the master. A local account made on the master first
/// (uid 1000) makes the master's next free uid differ from the standby's.
fn shared_pair() -> Testbed {
    let tb = Testbed::up_shared();
    for host in [MASTER, STANDBY] {
        tb.install(host, &package("current", "deb"));
    }
    tb.ok(MASTER, "useradd -u 1000 -M localonly");
    tb.write(
        STANDBY,
        "/etc/sftp-ha/config.toml",
        &config("standby", "10.231.0.1"),
    );
    tb.ok(STANDBY, "systemctl restart sftp-ha");
    let key = tb.ok(MASTER, "sftp-ha pair show-key").trim().to_string();
    tb.ok(STANDBY, &format!("sftp-ha pair accept-peer '{key}'"));
    tb.ok(MASTER, "sftp-ha pair trust-peer 10.231.0.2");
    let key = tb.ok(STANDBY, "sftp-ha pair show-key").trim().to_string();
    tb.ok(MASTER, &format!("sftp-ha pair accept-peer '{key}'"));
    tb.ok(STANDBY, "sftp-ha pair trust-peer 10.231.0.1");
    tb.write(
        MASTER,
        "/etc/sftp-ha/config.toml",
        &config("master", "10.231.0.2"),
    );
    tb.ok(MASTER, "systemctl restart sftp-ha");
    // The same data dir: a file made on one host is there on the other.
    tb.ok(MASTER, "touch /srv/sftp-ha/.shared-probe");
    tb.ok(
        STANDBY,
        "test -f /srv/sftp-ha/.shared-probe && rm /srv/sftp-ha/.shared-probe",
    );
    let check = tb.ok(MASTER, "sftp-ha check-config");
    assert!(check.contains("storage shared"), "{check}");
    tb.write(MASTER, "/root/users.yaml", FIRST_ADMIN);
    tb.ok(MASTER, "sftp-ha users apply /root/users.yaml");
    wait_or_dump(&tb, "the admin on the standby", || {
        account(&tb, STANDBY, "admin").map(|_| ())
    });
    wait_or_dump(&tb, "the standby to follow epoch 1", || {
        (role_of(&tb, STANDBY) == ("standby".into(), 1)).then_some(())
    });
    tb
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn shared_storage_same_accounts_read_only_standby_and_a_promotion_moves_the_writer() {
    let tb = shared_pair();
    for host in [MASTER, STANDBY] {
        let status = tb.ok(host, "sftp-ha status");
        assert!(!status.contains("ERROR"), "{host}: {status}");
        assert!(status.contains("storage:"), "{host}: {status}");
    }
    // The master reaches its standby (for the role protocol only).
    wait_or_dump(&tb, "the master to reach the standby", || {
        let s = status_json(&tb, MASTER);
        (s["status"]["sync"]["connected"] == true).then_some(())
    });
    // The peer's sync key sees the host's own folder, not the data.
    let drop_in = tb.ok(STANDBY, "cat /etc/ssh/sshd_config.d/50-sftp-ha.conf");
    assert!(
        drop_in.contains("ChrootDirectory /var/lib/sftp-ha/peer\n"),
        "{drop_in}"
    );
    assert!(!tb.path(MASTER, "/var/lib/sftp-ha/sync-index").exists());

    // (1) A users.yaml uploaded by the admin with the stock sftp client.
    let local = tb.path(MASTER, "/var/tmp/users.yaml");
    std::fs::write(&local, UPLOADED).unwrap();
    let out = tb.sftp(
        MASTER,
        "10.231.0.1",
        "admin",
        "35oi3g4l3he",
        &format!("put {} /admin/users.yaml\n", local.display()),
    );
    assert!(out.status.success(), "{}", describe(&out));
    for name in ["admin", "EPuser", "bob"] {
        wait_or_dump(&tb, &format!("{name} on both hosts, with one uid"), || {
            let m = account(&tb, MASTER, name)?;
            let s = account(&tb, STANDBY, name)?;
            assert_eq!(m, s, "{name}: master and standby differ");
            Some(())
        });
    }
    let bob = account(&tb, STANDBY, "bob").unwrap();
    assert_eq!(bob, "bob:2345:2345");
    // The master skipped uid 1000 (its local account); the standby, where
    // 1000 is free, took the master's uids from the file all the same.
    let admin = account(&tb, STANDBY, "admin").unwrap();
    assert_ne!(admin, "admin:1000:1000", "{admin}");
    assert!(account(&tb, STANDBY, "localonly").is_none());
    // The outcome is the master's; the standby wrote nothing into the folder
    // (its own would name the file it read, the published one).
    wait_or_dump(&tb, "the standby to apply the uploaded users.yaml", || {
        tb.journal(STANDBY, "")
            .contains("users.yaml applied (arrived from the master): 3 users")
            .then_some(())
    });
    let status = tb.ok(MASTER, "cat /srv/sftp-ha/admin/admin/users.yaml.status");
    assert!(status.contains("EPuser: created"), "{status}");
    assert!(
        status.contains("read /srv/sftp-ha/admin/admin/users.yaml"),
        "{status}"
    );
    assert!(!status.contains(".sftp-ha-users.yaml"), "{status}");
    let journal = tb.journal(STANDBY, "");
    assert!(!journal.contains("cannot write"), "{journal}");

    // Root on the standby cannot apply a users.yaml over the master's.
    tb.write(STANDBY, "/root/users.yaml", FIRST_ADMIN);
    let out = tb.sh(STANDBY, "sftp-ha users apply /root/users.yaml");
    assert!(
        !out.status.success() && util::stderr(&out).contains("standby on shared storage"),
        "{}",
        describe(&out)
    );
    assert!(account(&tb, STANDBY, "EPuser").is_some());

    // The standby's users log in and may only read.
    let listed = tb.sftp(STANDBY, "10.231.0.2", "EPuser", "1234", "ls /upload\n");
    assert!(listed.status.success(), "{}", describe(&listed));

    // (2) An upload on the master is on the standby at once: the same storage.
    upload_ok(&tb, MASTER, "10.231.0.1", "A.txt", "from the master\n");
    let got = tb.path(STANDBY, "/var/tmp/A.got");
    let out = tb.sftp(
        STANDBY,
        "10.231.0.2",
        "EPuser",
        "1234",
        &format!("get /upload/A.txt {}\n", got.display()),
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "from the master\n");
    let owner = tb.ok(STANDBY, &format!("stat -c %U {DIR}/A.txt"));
    assert_eq!(owner.trim(), "EPuser");
    let out = upload(&tb, STANDBY, "10.231.0.2", "refused.txt", "no\n");
    assert!(
        !out.status.success(),
        "a standby took an upload: {}",
        describe(&out)
    );
    assert!(!tb.path(STANDBY, &format!("{DIR}/refused.txt")).exists());
    let out = tb.sftp(
        STANDBY,
        "10.231.0.2",
        "EPuser",
        "1234",
        "rm /upload/A.txt\n",
    );
    assert!(!out.status.success(), "a standby user deleted a file");
    upload_ok(&tb, MASTER, "10.231.0.1", "B.txt", "also from the master\n");
    let before = user_files(&tb, MASTER);
    assert!(before.contains("./EPuser/upload/A.txt"), "{before}");
    assert_eq!(before, user_files(&tb, STANDBY));

    // (3) A planned switchover: `promote` on the standby.
    let out = tb.sh(STANDBY, "sftp-ha promote");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(util::stdout(&out).contains("epoch 2"), "{}", describe(&out));
    assert_eq!(role_of(&tb, STANDBY), ("master".into(), 2));
    wait_or_dump(&tb, "the old master to step down", || {
        (role_of(&tb, MASTER) == ("standby".into(), 2)).then_some(())
    });

    // The new master's users write; the old master's may not.
    wait_or_dump(&tb, "an upload to the new master", || {
        upload(&tb, STANDBY, "10.231.0.2", "C.txt", "from the new master\n")
            .status
            .success()
            .then_some(())
    });
    let out = upload(&tb, MASTER, "10.231.0.1", "late.txt", "no\n");
    assert!(
        !out.status.success(),
        "the old master took an upload: {}",
        describe(&out)
    );
    assert!(!tb.path(MASTER, &format!("{DIR}/late.txt")).exists());
    assert_eq!(
        tb.ok(MASTER, &format!("cat {DIR}/C.txt")),
        "from the new master\n"
    );

    // Nothing lost, moved or deleted, no conflict copies: what was there is
    // there unchanged, plus C.txt; and nothing was reconciled.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let after = user_files(&tb, STANDBY);
    for line in before.lines() {
        assert!(after.contains(line), "{line} changed or went:\n{after}");
    }
    assert_eq!(after.lines().count(), before.lines().count() + 1, "{after}");
    let conflicts = tb.ok(STANDBY, "find /srv/sftp-ha -name '*sftp-ha-conflict*'");
    assert_eq!(conflicts.trim(), "", "conflict copies: {conflicts}");
    for host in [MASTER, STANDBY] {
        let journal = tb.journal(host, "");
        assert!(!journal.contains("brought back"), "{host}:\n{journal}");
        assert!(
            !tb.path(host, "/var/lib/sftp-ha/baseline").exists(),
            "{host} saved a baseline"
        );
    }
    assert!(
        tb.journal(STANDBY, "")
            .contains("shared storage: nothing to reconcile"),
        "{}",
        tb.journal(STANDBY, "")
    );

    // The new master applies an admin's upload; the old master follows it,
    // with the new master's uid for carol (its lowest free one: 1000, which
    // the old master's local account must give up first, or the old master
    // refuses the file and the new master reports it).
    tb.ok(MASTER, "userdel localonly");
    let local = tb.path(STANDBY, "/var/tmp/users.yaml");
    std::fs::write(
        &local,
        format!("{UPLOADED}  3: {{name: carol, password: \"c4rol\"}}\n"),
    )
    .unwrap();
    let out = tb.sftp(
        STANDBY,
        "10.231.0.2",
        "admin",
        "35oi3g4l3he",
        &format!("put {} /admin/users.yaml\n", local.display()),
    );
    assert!(out.status.success(), "{}", describe(&out));
    wait_or_dump(&tb, "carol on both hosts, with one uid", || {
        let m = account(&tb, MASTER, "carol")?;
        let s = account(&tb, STANDBY, "carol")?;
        assert_eq!(m, s);
        Some(())
    });
}

/// The master dies; a plain promote is refused, `promote --force` fails over;
/// the old master boots with its config unchanged (role = "master"). It
/// steps down by itself, its users are read-only, and nothing is compared,
/// brought back, moved or deleted: both hosts had the one tree all along.
#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn shared_storage_failover_and_the_old_master_rejoins_without_touching_a_file() {
    let tb = shared_pair();
    tb.write(MASTER, "/root/users.yaml", UPLOADED);
    tb.ok(MASTER, "sftp-ha users apply /root/users.yaml");
    wait_or_dump(&tb, "EPuser on the standby", || {
        account(&tb, STANDBY, "EPuser").map(|_| ())
    });
    upload_ok(&tb, MASTER, "10.231.0.1", "A.txt", "before the failure\n");

    tb.poweroff(MASTER);
    // Without the handover, on one shared tree: refused, and says how.
    let out = tb.sh(STANDBY, "sftp-ha promote");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        util::stderr(&out).contains("promote --force"),
        "{}",
        describe(&out)
    );
    assert_eq!(role_of(&tb, STANDBY).0, "standby");
    let out = tb.sh(STANDBY, "sftp-ha promote --force");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(util::stdout(&out).contains("epoch 2"), "{}", describe(&out));
    wait_for("an upload to the promoted host", || {
        upload(&tb, STANDBY, "10.231.0.2", "B.txt", "after the failover\n")
            .status
            .success()
            .then_some(())
    });
    let before = user_files(&tb, STANDBY);
    assert!(before.contains("./EPuser/upload/A.txt"), "{before}");
    assert!(before.contains("./EPuser/upload/B.txt"), "{before}");

    tb.boot(MASTER);
    wait_or_dump(&tb, "the old master to step down", || {
        (role_of(&tb, MASTER) == ("standby".into(), 2)).then_some(())
    });
    let out = upload(&tb, MASTER, "10.231.0.1", "late.txt", "no\n");
    assert!(
        !out.status.success(),
        "a stepped-down master took an upload: {}",
        describe(&out)
    );
    wait_or_dump(
        &tb,
        "the new master to answer the old one as reconciled",
        || {
            tb.journal(STANDBY, "")
                .contains("shared storage: nothing to reconcile")
                .then_some(())
        },
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(user_files(&tb, STANDBY), before, "a user file changed");
    let conflicts = tb.ok(STANDBY, "find /srv/sftp-ha -name '*sftp-ha-conflict*'");
    assert_eq!(conflicts.trim(), "", "conflict copies: {conflicts}");
    for host in [MASTER, STANDBY] {
        assert!(
            !tb.path(host, "/var/lib/sftp-ha/baseline").exists(),
            "{host} saved a baseline"
        );
    }
    // The old master took the answer: it publishes (in its own folder, which
    // the peer reads) that it has nothing left to reconcile.
    wait_or_dump(&tb, "the old master to be reconciled", || {
        let text = tb.ok(MASTER, "cat /var/lib/sftp-ha/peer/.sftp-ha-ctl/role.json");
        let published: serde_json::Value = serde_json::from_str(&text).ok()?;
        (published["role"] == "standby" && published["unreconciled"].is_null()).then_some(())
    });
    upload_ok(&tb, STANDBY, "10.231.0.2", "C.txt", "still writable\n");

    // The master set to replicate next to a standby on shared storage: it
    // would copy the whole tree into the standby's own folder (its sync
    // key's chroot). It stops working with it instead, and says why.
    tb.write(
        STANDBY,
        "/etc/sftp-ha/config.toml",
        "role = \"master\"\n[sync]\npeer = \"10.231.0.1\"\n",
    );
    tb.ok(STANDBY, "systemctl restart sftp-ha");
    wait_or_dump(&tb, "the master to refuse a shared-storage peer", || {
        let s = status_json(&tb, STANDBY);
        let error = s["status"]["sync"]["last_error"].as_str()?.to_string();
        error.contains("storage = \"shared\"").then_some(())
    });
    // Its control folder and the (empty) folders of its write probes only.
    let copied = tb.ok(
        MASTER,
        "find /var/lib/sftp-ha/peer -mindepth 1 ! -path '*/.sftp-ha-ctl*' ! -path '*/.sftp-ha-tmp*' -o -path '*/.sftp-ha-tmp/*' -type f",
    );
    assert_eq!(copied.trim(), "", "copied into the standby's own folder");
    let files = user_files(&tb, STANDBY);
    assert!(files.contains("./EPuser/upload/C.txt"), "{files}");
    assert_eq!(files.lines().count(), before.lines().count() + 1, "{files}");
}
