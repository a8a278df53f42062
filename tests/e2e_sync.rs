//! End-to-end tests of replication on the test bed: files uploaded to the
//! master with the stock sftp client reach the standby intact, users.yaml
//! travels too and the same users log in there. Run by `tests/run-all`.

mod util;

use util::{MASTER, STANDBY, Testbed, converged, describe, replicating_pair, stdout, wait_for};

/// `stat` of a path on a host: size, owner, group, mode, mtime (seconds).
fn stat(tb: &Testbed, host: &str, path: &str) -> Option<String> {
    let out = tb.sh(host, &format!("stat -c '%s %u %g %a %Y' '{path}'"));
    out.status
        .success()
        .then(|| stdout(&out).trim().to_string())
}

fn same_on_standby(tb: &Testbed, path: &str) -> String {
    let want = stat(tb, MASTER, path).unwrap_or_else(|| panic!("{path} missing on the master"));
    wait_for(&format!("{path} on the standby"), || {
        (stat(tb, STANDBY, path).as_deref() == Some(want.as_str())).then_some(())
    });
    let sums = format!("sha256sum '{path}' | cut -d' ' -f1");
    assert_eq!(
        tb.ok(MASTER, &sums),
        tb.ok(STANDBY, &sums),
        "{path}: content differs"
    );
    want
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn uploads_reach_the_standby_and_the_same_users_log_in_there() {
    let tb = replicating_pair("");

    // users.yaml travels and the standby applies it: same uids, same hashes.
    wait_for("EPuser on the standby", || {
        tb.sh(STANDBY, "id EPuser").status.success().then_some(())
    });
    assert_eq!(
        tb.ok(STANDBY, "id -u EPuser"),
        tb.ok(MASTER, "id -u EPuser")
    );
    assert_eq!(
        tb.ok(STANDBY, "getent shadow EPuser | cut -d: -f2"),
        tb.ok(MASTER, "getent shadow EPuser | cut -d: -f2")
    );

    // A user uploads with the stock sftp client; the file arrives intact.
    let local = tb.path(MASTER, "/var/tmp/report.bin");
    std::fs::write(
        &local,
        (0..200_000u32)
            .flat_map(|i| i.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let out = tb.sftp(
        MASTER,
        "10.231.0.1",
        "EPuser",
        "1234",
        &format!("put {} report.bin\n", local.display()),
    );
    assert!(out.status.success(), "{}", describe(&out));
    same_on_standby(&tb, "/srv/sftp-ha/EPuser/upload/report.bin");

    // After a failover the user logs in to the standby with the same password and finds it.
    let out = tb.sftp(STANDBY, "10.231.0.2", "EPuser", "1234", "ls -l\n");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("report.bin"), "{}", describe(&out));

    // Folders, empty files, awkward names, a rename and a delete.
    tb.ok(
        MASTER,
        "cd /srv/sftp-ha/EPuser/upload && mkdir -p 'a dir/nested/empty' && : > zero && \
         printf x > 'with space' && printf y > 'ünïcødé' && printf z > \"$(printf 'new\\nline')\" && \
         printf w > 'a dir/nested/deep' && chown -R EPuser:EPuser . && chmod 600 zero",
    );
    converged(&tb, "identical trees");

    // Renames of a file and of a folder are renames on the standby: same inodes there,
    // nothing re-sent.
    let inode = |path: &str| tb.ok(STANDBY, &format!("stat -c %i '{path}'"));
    let up = "/srv/sftp-ha/EPuser/upload";
    let (file_inode, dir_inode) = (
        inode(&format!("{up}/report.bin")),
        inode(&format!("{up}/a dir/nested/deep")),
    );
    tb.ok(
        MASTER,
        &format!("cd {up} && mv report.bin renamed.bin && mv 'a dir' 'b dir'"),
    );
    converged(&tb, "identical trees after renames");
    assert_eq!(
        inode(&format!("{up}/renamed.bin")),
        file_inode,
        "the renamed file was re-sent"
    );
    assert_eq!(
        inode(&format!("{up}/b dir/nested/deep")),
        dir_inode,
        "the renamed folder was re-sent"
    );
    assert!(
        tb.sh(STANDBY, "test -e /srv/sftp-ha/EPuser/upload/report.bin")
            .status
            .code()
            == Some(1)
    );
    tb.ok(
        MASTER,
        "rm -r '/srv/sftp-ha/EPuser/upload/b dir' /srv/sftp-ha/EPuser/upload/zero",
    );
    converged(&tb, "deletes mirrored");

    // Symlinks are not replicated (and never followed).
    tb.ok(MASTER, "ln -s /etc/shadow /srv/sftp-ha/EPuser/upload/evil && touch /srv/sftp-ha/EPuser/upload/after-link");
    same_on_standby(&tb, "/srv/sftp-ha/EPuser/upload/after-link");
    assert!(
        tb.sh(
            STANDBY,
            "test -e /srv/sftp-ha/EPuser/upload/evil -o -L /srv/sftp-ha/EPuser/upload/evil"
        )
        .status
        .code()
            == Some(1)
    );

    let status = wait_for("the audit and the lag in sftp-ha status", || {
        let s = tb.ok(MASTER, "sftp-ha status");
        (s.contains("ms after its change") && s.contains("audit:")).then_some(s)
    });
    assert!(status.contains("reachable since"), "{status}");
    // The watches the tree needs, against the kernel's limit.
    assert!(
        status.contains("folders watched, one watch each (fs.inotify.max_user_watches = "),
        "{status}"
    );
    // A round may be under way at the moment of a look (the master's
    // published users.yaml, say): the queue must drain, not be empty at once.
    let json = wait_for("the queue drained", || {
        let json: serde_json::Value =
            serde_json::from_str(&tb.ok(MASTER, "sftp-ha status --json")).unwrap();
        (json["status"]["sync"]["pending"] == 0).then_some(json)
    });
    assert_eq!(json["status"]["sync"]["connected"], true);
    let watches = &json["status"]["sync"]["watches"];
    assert_eq!(watches["watched"], watches["folders"], "{watches}");
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn a_cut_off_standby_catches_up_without_waiting_for_the_fallback_scan() {
    let tb = replicating_pair("");
    tb.ok(MASTER, "echo first > /srv/sftp-ha/EPuser/upload/first && chown EPuser: /srv/sftp-ha/EPuser/upload/first");
    same_on_standby(&tb, "/srv/sftp-ha/EPuser/upload/first");

    tb.cut(STANDBY);
    tb.ok(
        MASTER,
        "cd /srv/sftp-ha/EPuser/upload && for i in $(seq 1 200); do echo $i > f$i; done && chown EPuser: f*",
    );
    wait_for("the master to notice the standby is gone", || {
        let s = tb.ok(MASTER, "sftp-ha status");
        s.contains("UNREACHABLE").then_some(())
    });
    tb.uncut(STANDBY);
    converged(&tb, "all 200 files on the standby");
    // Partial uploads lived under temporary names only, and are gone.
    let temps = tb.ok(
        STANDBY,
        "find /srv/sftp-ha/.sftp-ha-tmp -type f 2>/dev/null | wc -l",
    );
    assert_eq!(temps.trim(), "0");
    // The status catches up within a tick of the daemon's main loop.
    wait_for("the status to show the standby back", || {
        let s = tb.ok(MASTER, "sftp-ha status");
        (s.contains("reachable since") && s.contains(", 0 pending")).then_some(())
    });

    // Drift on the standby behind the master's back (changed, deleted, extra files)
    // is repaired by the audit that follows every connect.
    tb.ok(
        STANDBY,
        "cd /srv/sftp-ha/EPuser/upload && echo tampered > f1 && rm f2 && echo extra > extra && chmod 666 f3",
    );
    tb.ok(MASTER, "systemctl restart sftp-ha");
    converged(&tb, "the audit to repair the standby");
    assert!(
        tb.journal(MASTER, "")
            .contains("difference(s) on the standby, repairing")
    );

    // A standby with another host key is never trusted silently: replication stops
    // with a clear error until an admin pins the new key.
    tb.ok(
        STANDBY,
        "rm /etc/ssh/ssh_host_* && ssh-keygen -A && systemctl restart ssh",
    );
    tb.ok(
        MASTER,
        "systemctl restart sftp-ha && echo after > /srv/sftp-ha/EPuser/upload/after-rekey",
    );
    let status = wait_for("the host key error in sftp-ha status", || {
        let s = tb.ok(MASTER, "sftp-ha status");
        s.contains("not the pinned one").then_some(s)
    });
    assert!(
        status.contains("UNREACHABLE") && status.contains("trust-peer --replace"),
        "{status}"
    );
    assert!(
        tb.sh(STANDBY, "test -e /srv/sftp-ha/EPuser/upload/after-rekey")
            .status
            .code()
            == Some(1)
    );
    assert!(tb.journal(MASTER, "").contains("not the pinned one"));
    tb.ok(MASTER, "sftp-ha pair trust-standby --replace");
    converged(&tb, "replication to resume with the new key");
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn a_burst_of_10000_files_and_a_1_gib_file_arrive_identical() {
    let tb = replicating_pair("");
    tb.ok(
        MASTER,
        "cd /srv/sftp-ha/EPuser/upload && mkdir -p burst/empty/deeper && cd burst && \
         for d in $(seq 1 100); do mkdir d$d; (cd d$d && seq 1 100 | xargs -I{} sh -c 'head -c 4096 /dev/urandom > f{}'); done && \
         : > zero-bytes && cd .. && head -c 1073741824 /dev/urandom > big.part && mv big.part big.bin && \
         chown -R EPuser: /srv/sftp-ha/EPuser/upload",
    );
    let count = "find /srv/sftp-ha/EPuser/upload/burst -type f | wc -l";
    assert_eq!(tb.ok(MASTER, count).trim(), "10001");
    converged(&tb, "the burst and the big file on the standby");

    // A renamed 1 GiB file is not re-sent: same inode on the standby.
    let inode = |p: &str| tb.ok(STANDBY, &format!("stat -c %i {p}"));
    let before = inode("/srv/sftp-ha/EPuser/upload/big.bin");
    tb.ok(
        MASTER,
        "mv /srv/sftp-ha/EPuser/upload/big.bin /srv/sftp-ha/EPuser/upload/burst/moved.bin",
    );
    converged(&tb, "the rename on the standby");
    assert_eq!(inode("/srv/sftp-ha/EPuser/upload/burst/moved.bin"), before);

    // A big file uploaded on its own goes over every session at once, in
    // stripes of one temporary: it arrives whole (the listings compare
    // sha256 sums), and nothing of it is left in the temporaries.
    tb.ok(
        MASTER,
        "head -c 104857601 /dev/urandom > /var/tmp/striped.bin",
    );
    let local = tb.path(MASTER, "/var/tmp/striped.bin");
    let out = tb.sftp(
        MASTER,
        "10.231.0.1",
        "EPuser",
        "1234",
        &format!("put {} /upload/striped.bin\n", local.display()),
    );
    assert!(out.status.success(), "{}", describe(&out));
    converged(&tb, "the striped file on the standby");
    assert_eq!(
        tb.ok(STANDBY, "find /srv/sftp-ha/.sftp-ha-tmp -type f | wc -l")
            .trim(),
        "0"
    );
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn names_modes_and_accounts_the_standby_can_hold() {
    let tb = replicating_pair("");
    let local = |name: &str, body: &str| {
        let p = tb.path(MASTER, &format!("/var/tmp/{name}"));
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    // A user's file that looks like one of our temporaries is a file like any
    // other: it arrives, and survives a full walk and the standby's sweep.
    let blob = local("blob", "mine\n");
    let evil = local("evil.sh", "#!/bin/sh\nid\n");
    let out = tb.sftp(
        MASTER,
        "10.231.0.1",
        "EPuser",
        "1234",
        &format!(
            "put {blob} /upload/.sftp-ha-tmp.blob\nput {evil} /upload/evil.sh\nchmod 4755 /upload/evil.sh\n"
        ),
    );
    assert!(out.status.success(), "{}", describe(&out));
    // Set-uid and set-gid bits: cleared on the master, never on the standby.
    let mode = wait_for("the set-uid bit cleared on the master", || {
        let m = stat(&tb, MASTER, "/srv/sftp-ha/EPuser/upload/evil.sh")?;
        (!m.contains(" 4755 ")).then_some(m)
    });
    assert!(mode.contains(" 755 "), "{mode}");
    same_on_standby(&tb, "/srv/sftp-ha/EPuser/upload/evil.sh");
    same_on_standby(&tb, "/srv/sftp-ha/EPuser/upload/.sftp-ha-tmp.blob");
    tb.ok(MASTER, "systemctl restart sftp-ha");
    converged(&tb, "the trees after a full walk");
    let journal = tb.journal(MASTER, "");
    assert!(
        journal.contains("cleared the set-uid/set-gid bits"),
        "{journal}"
    );
    // Nothing is sent again for a difference the standby cannot hold.
    let sent = |tb: &Testbed| {
        let status = tb.ok(MASTER, "sftp-ha status --json");
        let v: serde_json::Value = serde_json::from_str(&status).unwrap();
        v["sync"]["files_synced"].as_u64().unwrap_or(0)
    };
    let before = sent(&tb);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(sent(&tb), before);
    assert!(
        tb.sh(STANDBY, "find /srv/sftp-ha -perm /6000 -type f | grep -q .")
            .status
            .code()
            == Some(1),
        "a set-id file on the standby"
    );

    // A users.yaml that names sftp-ha's own sync account is refused on the
    // master, whole: no half-applied file for the standby to refuse.
    let users = local(
        "users.yaml",
        "users:\n  ADMIN: {name: admin, password: \"35oi3g4l3he\", admin: true}\n  1: {name: EPuser, password: \"1234\"}\n  2: {name: sftp-ha-sync, password: \"x\"}\n  3: {name: newguy, password: \"y\"}\n",
    );
    let out = tb.sftp(
        MASTER,
        "10.231.0.1",
        "admin",
        "35oi3g4l3he",
        &format!("put {users} /admin/users.yaml\n"),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let status = wait_for("the refusal", || {
        let s = tb.ok(MASTER, "cat /srv/sftp-ha/admin/admin/users.yaml.status");
        s.contains("ERROR").then_some(s)
    });
    assert!(status.contains("sftp-ha-sync"), "{status}");
    assert!(status.contains("reserved"), "{status}");
    for host in [MASTER, STANDBY] {
        assert!(
            !tb.sh(host, "id newguy").status.success(),
            "{host}: newguy made"
        );
    }
    // The sync account exists on both hosts (paired both ways), but
    // users.yaml never made it a managed user.
    let groups = tb.ok(MASTER, "id -nG sftp-ha-sync");
    assert!(
        !groups.split_whitespace().any(|g| g == "sftp-ha"),
        "{groups}"
    );
}

/// A file rewritten with the same size and the same mtime (WinSCP keeps
/// timestamps by default, so does `sftp put -p`) reaches the standby: `stat`
/// alone cannot tell it changed.
#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn a_rewrite_that_keeps_size_and_mtime_reaches_the_standby() {
    let tb = replicating_pair("");
    for content in ["version-1\n", "version-2\n"] {
        // The client runs on this machine, where the file is this path.
        let local = tb.path(MASTER, "/var/tmp/same.txt");
        std::fs::write(&local, content).unwrap();
        tb.ok(MASTER, "touch -d @1700000000 /var/tmp/same.txt");
        let out = tb.sftp(
            MASTER,
            "10.231.0.1",
            "EPuser",
            "1234",
            &format!("put -p {} /upload/same.txt\n", local.display()),
        );
        assert!(out.status.success(), "{}", describe(&out));
        let there = tb.path(STANDBY, "/srv/sftp-ha/EPuser/upload/same.txt");
        wait_for(&format!("{content:?} on the standby"), || {
            (std::fs::read_to_string(&there).ok()? == content).then_some(())
        });
    }
}
