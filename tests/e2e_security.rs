//! End-to-end attacks on the test bed, tried as a user or an admin would,
//! with the stock `sftp` client on both hosts: links planted to make root on
//! the standby write through them, a folder swapped for a link to another
//! chroot, an operation the standby refuses, a demoted admin's old users.yaml,
//! and a password hash that costs hours. Each must fail, the standby's accounts
//! and admin files must stay what the master's users.yaml says, and
//! replication of other files must go on. Run by `tests/run-all`.

mod util;

use util::{MASTER, STANDBY, Testbed, converged, describe, replicating_pair, wait_for};

const MASTER_ADDR: &str = "10.231.0.1";
const STANDBY_ADDR: &str = "10.231.0.2";
const DATA: &str = "/srv/sftp-ha";

/// One sftp batch as EPuser; true if every command succeeded.
fn as_epuser(tb: &Testbed, addr: &str, batch: &str) -> std::process::Output {
    tb.sftp(MASTER, addr, "EPuser", "1234", batch)
}

/// One sftp batch as admin.
fn as_admin(tb: &Testbed, addr: &str, batch: &str) -> std::process::Output {
    tb.sftp(MASTER, addr, "admin", "35oi3g4l3he", batch)
}

/// A file on the master's side of the client (the host's view of its root).
fn local_file(tb: &Testbed, name: &str, contents: &str) -> String {
    let path = tb.path(MASTER, &format!("/var/tmp/{name}"));
    std::fs::write(&path, contents).unwrap();
    path.to_str().expect("UTF-8 path").to_string()
}

/// The groups of `user` on `host`.
fn groups(tb: &Testbed, host: &str, user: &str) -> String {
    tb.ok(host, &format!("id -nG {user}")).trim().to_string()
}

/// What a user who wants to be admin uploads: a users.yaml that makes them
/// admin and sets the admin's password.
const EVIL_USERS: &str = "users:\n  ADMIN: {name: admin, password: \"owned-by-epuser\", admin: true}\n  1: {name: EPuser, password: \"1234\", admin: true}\n";

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn users_cannot_make_links_anywhere_and_the_standby_is_read_only_for_them() {
    let tb = replicating_pair("");
    let x = local_file(&tb, "x.txt", "x\n");
    let out = as_epuser(&tb, MASTER_ADDR, &format!("put {x} /upload/x.txt\n"));
    assert!(out.status.success(), "{}", describe(&out));
    util::wait_on_standby(&tb, "-f", &format!("{DATA}/EPuser/upload/x.txt"));
    // No links on either host: neither symbolic nor hard.
    for addr in [MASTER_ADDR, STANDBY_ADDR] {
        for attack in [
            "symlink /admin/admin/users.yaml /upload/.sftp-ha-tmp.report.txt\n",
            "symlink / /upload/root\n",
            "ln /upload/x.txt /upload/hard\n",
        ] {
            let out = as_epuser(&tb, addr, attack);
            assert!(!out.status.success(), "{addr}: `{attack}` worked");
        }
    }
    // On the standby users log in and download, and change nothing.
    let got = tb.path(MASTER, "/var/tmp/got.txt");
    let out = as_epuser(
        &tb,
        STANDBY_ADDR,
        &format!("ls -l /upload\nget /upload/x.txt {}\n", got.display()),
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "x\n");
    for attack in [
        format!("put {x} /upload/new.txt\n"),
        "mkdir /upload/d\n".to_string(),
        "rm /upload/x.txt\n".to_string(),
        "rename /upload/x.txt /upload/y.txt\n".to_string(),
        "chmod 777 /upload/x.txt\n".to_string(),
    ] {
        let out = as_epuser(&tb, STANDBY_ADDR, &attack);
        assert!(!out.status.success(), "standby: `{attack}` worked");
    }
    let admin_put = local_file(&tb, "users.yaml", EVIL_USERS);
    let out = as_admin(
        &tb,
        STANDBY_ADDR,
        &format!("put {admin_put} /admin/users.yaml\n"),
    );
    assert!(!out.status.success(), "an admin wrote on the standby");
    assert_eq!(
        tb.ok(STANDBY, &format!("ls -A {DATA}/EPuser/upload"))
            .trim(),
        "x.txt"
    );
    assert!(!groups(&tb, STANDBY, "EPuser").contains("sftp-ha-admin"));
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn links_on_the_standby_never_lead_root_anywhere() {
    let tb = replicating_pair("");
    let admin_file = format!("{DATA}/admin/admin/users.yaml");
    let before = tb.ok(STANDBY, &format!("sha256sum < {admin_file}"));

    // (1) The attack as reported: a link at the temporary name, then an
    // upload of that name on the master. The link cannot be made any more...
    let out = as_epuser(
        &tb,
        STANDBY_ADDR,
        "symlink /admin/admin/users.yaml /upload/.sftp-ha-tmp.report.txt\n",
    );
    assert!(!out.status.success(), "the link was made");
    // ...and one made before this version (here by root) leads nowhere: the
    // temporaries are elsewhere, made with O_EXCL, and the audit removes links.
    tb.ok(
        STANDBY,
        &format!(
            "ln -s /admin/admin/users.yaml {DATA}/EPuser/upload/.sftp-ha-tmp.report.txt; \
             ln -s /admin/admin/users.yaml {DATA}/EPuser/upload/report.txt; \
             mkdir -p {DATA}/EPuser/upload/sub && rmdir {DATA}/EPuser/upload/sub && \
             ln -s /admin {DATA}/EPuser/upload/sub; ln -s / {DATA}/EPuser/upload/root; \
             mkfifo {DATA}/EPuser/upload/fifo"
        ),
    );
    // A restart reconnects, and every connect starts with an audit.
    tb.ok(MASTER, "systemctl restart sftp-ha");
    let evil = local_file(&tb, "report.txt", EVIL_USERS);
    let out = as_epuser(
        &tb,
        MASTER_ADDR,
        &format!(
            "put {evil} /upload/report.txt\nput {evil} /upload/.sftp-ha-tmp.report.txt\n\
             mkdir /upload/sub\nmkdir /upload/sub/deeper\nput {evil} /upload/sub/deeper/f\n"
        ),
    );
    assert!(out.status.success(), "{}", describe(&out));
    converged(&tb, "the uploads on the standby, the links gone");
    assert_eq!(
        tb.ok(STANDBY, &format!("find {DATA} -type l -o -type p")),
        "",
        "links or FIFOs left on the standby"
    );
    // Every upload is a plain file of EPuser's, in EPuser's folder.
    let owners = tb.ok(
        STANDBY,
        &format!(
            "cd {DATA}/EPuser/upload && stat -c '%n %F %U' report.txt .sftp-ha-tmp.report.txt sub sub/deeper sub/deeper/f"
        ),
    );
    for line in owners.lines() {
        assert!(line.ends_with(" EPuser"), "{owners}");
        assert!(!line.contains("symbolic"), "{owners}");
    }
    // Nothing reached the admin's folder or the admin chroot.
    assert_eq!(
        tb.ok(STANDBY, &format!("sha256sum < {admin_file}")),
        before,
        "the admin's users.yaml changed on the standby"
    );
    assert_eq!(
        tb.ok(
            STANDBY,
            &format!("stat -c '%U %U' {DATA}/admin {DATA}/admin/admin | tr '\\n' ' '")
        )
        .trim(),
        "root root admin admin"
    );
    assert_eq!(
        tb.ok(STANDBY, &format!("ls -A {DATA}/admin")).trim(),
        "admin\ndev\nupload"
    );
    assert_eq!(tb.ok(STANDBY, &format!("stat -c %U {DATA}")).trim(), "root");
    assert!(!groups(&tb, STANDBY, "EPuser").contains("sftp-ha-admin"));
    let journal = tb.journal(STANDBY, "");
    assert!(!journal.contains("made admin"), "{journal}");
    let journal = tb.journal(MASTER, "");
    assert!(
        journal.contains("audit: removed a link or special file"),
        "{journal}"
    );
    // The admin can still log in to the standby: the chroot is intact.
    let out = as_admin(&tb, STANDBY_ADDR, "ls /admin\n");
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn an_operation_the_standby_refuses_is_reported_once_and_never_stalls_the_queue() {
    let tb = replicating_pair("");
    let out = as_epuser(&tb, MASTER_ADDR, "mkdir /upload/d\n");
    assert!(out.status.success(), "{}", describe(&out));
    util::wait_on_standby(&tb, "-d", &format!("{DATA}/EPuser/upload/d"));
    // What only the standby has in d: a link, a FIFO (removed to let the rmdir
    // through) and a regular file (kept: the rmdir is refused, nothing lost).
    tb.ok(
        STANDBY,
        &format!("cd {DATA}/EPuser/upload/d && ln -s x l && mkfifo p && echo mine > only-here.txt"),
    );
    let out = as_epuser(&tb, MASTER_ADDR, "rmdir /upload/d\n");
    assert!(out.status.success(), "{}", describe(&out));
    // Other uploads go on at once.
    let after = local_file(&tb, "after.txt", "after\n");
    let mut batch = String::new();
    for i in 0..5 {
        batch.push_str(&format!("put {after} /upload/after-{i}.txt\n"));
    }
    let out = as_epuser(&tb, MASTER_ADDR, &batch);
    assert!(out.status.success(), "{}", describe(&out));
    util::wait_on_standby(&tb, "-f", &format!("{DATA}/EPuser/upload/after-4.txt"));
    let status = wait_for("the refusal in the status", || {
        let s = tb.ok(MASTER, "sftp-ha status");
        s.contains("REFUSED by the standby").then_some(s)
    });
    assert!(status.contains("reachable since"), "{status}");
    assert_eq!(
        tb.ok(STANDBY, &format!("ls -A {DATA}/EPuser/upload/d"))
            .trim(),
        "only-here.txt",
        "the standby's own file must be kept, the link and the FIFO removed"
    );
    // Said once, and the session was never dropped for it.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let journal = tb.journal(MASTER, "");
    assert_eq!(
        journal.matches("the standby refused an operation").count(),
        1,
        "{journal}"
    );
    assert_eq!(
        journal.matches("connected to the standby").count(),
        1,
        "{journal}"
    );

    // An admin folder only the standby has (its status file is host-local,
    // never replicated) is removed by the audit's plan, not looped on.
    tb.ok(
        STANDBY,
        &format!("mkdir -p {DATA}/ghost/admin && echo x > {DATA}/ghost/admin/users.yaml.status"),
    );
    tb.ok(MASTER, "systemctl restart sftp-ha");
    wait_for("the ghost folder gone from the standby", || {
        (!tb.sh(STANDBY, &format!("test -e {DATA}/ghost"))
            .status
            .success())
        .then_some(())
    });
    // One connection since the restart: the folder was no reason to reconnect.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let journal = tb.journal(MASTER, "");
    let since_restart = journal.rsplit("sync started").next().unwrap_or_default();
    assert_eq!(
        since_restart.matches("connected to the standby").count(),
        1,
        "{journal}"
    );
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn a_demoted_admins_old_users_yaml_never_comes_back_on_the_standby() {
    let tb = replicating_pair("");
    // EPuser is made admin, and while admin uploads a users.yaml dated 2100
    // that keeps them admin (as published: hashes and uids, so the master
    // applies it without rewriting it, and the date stays).
    let both = "users:\n  ADMIN: {name: admin, password: \"35oi3g4l3he\", admin: true}\n  1: {name: EPuser, password: \"1234\", admin: true}\n";
    tb.write(MASTER, "/root/users.yaml", both);
    tb.ok(MASTER, "sftp-ha users apply /root/users.yaml");
    wait_for("EPuser admin on the standby", || {
        groups(&tb, STANDBY, "EPuser")
            .contains("sftp-ha-admin")
            .then_some(())
    });
    let published = tb.ok(MASTER, &format!("cat {DATA}/admin/admin/users.yaml"));
    assert!(!published.contains("password:"), "{published}");
    let future = local_file(&tb, "future.yaml", &published);
    std::process::Command::new("touch")
        .args(["-d", "2100-01-01", &future])
        .status()
        .unwrap();
    let out = tb.sftp(
        MASTER,
        MASTER_ADDR,
        "EPuser",
        "1234",
        &format!("put -p {future} /admin/users.yaml\n"),
    );
    assert!(out.status.success(), "{}", describe(&out));
    // The admin demotes EPuser.
    let demote = local_file(&tb, "demote.yaml", util::USERS);
    let out = as_admin(
        &tb,
        MASTER_ADDR,
        &format!("put {demote} /admin/users.yaml\n"),
    );
    assert!(out.status.success(), "{}", describe(&out));
    wait_for("EPuser no longer admin on the standby", || {
        (!groups(&tb, STANDBY, "EPuser").contains("sftp-ha-admin")).then_some(())
    });
    converged(&tb, "the demotion on the standby");
    // The old file, dated 2100, is still in EPuser's (now root's) folder.
    let old = tb.ok(
        STANDBY,
        &format!("stat -c '%U %y' {DATA}/EPuser/admin {DATA}/EPuser/admin/users.yaml"),
    );
    assert!(old.starts_with("root "), "{old}");
    assert!(old.contains("2100-01-01"), "{old}");
    // Restarts do not bring it back.
    for _ in 0..2 {
        tb.ok(STANDBY, "systemctl restart sftp-ha");
        std::thread::sleep(std::time::Duration::from_secs(2));
        assert!(
            !groups(&tb, STANDBY, "EPuser").contains("sftp-ha-admin"),
            "the old users.yaml made EPuser admin again"
        );
    }
    // The standby applies only what the master published after its own apply.
    let published = tb.ok(MASTER, &format!("cat {DATA}/.sftp-ha-users.yaml"));
    assert_eq!(
        tb.ok(STANDBY, &format!("cat {DATA}/.sftp-ha-users.yaml")),
        published
    );
    let epuser = published
        .lines()
        .find(|l| l.contains("name: EPuser"))
        .unwrap_or_default();
    assert!(!epuser.contains("admin: true"), "{published}");
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn a_hash_that_costs_hours_is_refused_and_both_daemons_keep_running() {
    let tb = replicating_pair("");
    let costly = "users:\n  ADMIN: {name: admin, password: \"35oi3g4l3he\", admin: true}\n  1: {name: EPuser, password: \"1234\"}\n  2: {name: slow, password_hash: \"$6$rounds=999999999$abcdefgh$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}\n";
    let file = local_file(&tb, "costly.yaml", costly);
    let out = as_admin(&tb, MASTER_ADDR, &format!("put {file} /admin/users.yaml\n"));
    assert!(out.status.success(), "{}", describe(&out));
    let status = wait_for("the refusal", || {
        let s = tb.ok(MASTER, &format!("cat {DATA}/admin/admin/users.yaml.status"));
        s.contains("ERROR").then_some(s)
    });
    assert!(status.contains("rounds"), "{status}");
    assert!(
        !tb.sh(MASTER, "id slow").status.success(),
        "an account was made from a refused file"
    );
    // The standby gets the uploaded file too, as a file, and applies nothing
    // from it: it applies only what the master published after its own apply.
    converged(&tb, "the refused file on the standby");
    assert!(!tb.sh(STANDBY, "id slow").status.success());
    assert!(!tb.journal(STANDBY, "").contains("account slow"));
    for host in [MASTER, STANDBY] {
        assert_eq!(tb.unit_property(host, "sftp-ha", "ActiveState"), "active");
        assert_eq!(tb.unit_property(host, "sftp-ha", "NRestarts"), "0");
    }
    // Replication goes on.
    let f = local_file(&tb, "later.txt", "later\n");
    let out = as_epuser(&tb, MASTER_ADDR, &format!("put {f} /upload/later.txt\n"));
    assert!(out.status.success(), "{}", describe(&out));
    converged(&tb, "later.txt on the standby");
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn one_chatty_user_cannot_crowd_others_out_of_the_journal() {
    let tb = replicating_pair("");
    let small = local_file(&tb, "small.txt", "s\n");
    let out = as_epuser(
        &tb,
        MASTER_ADDR,
        &format!("put {small} /upload/small.txt\n"),
    );
    assert!(out.status.success(), "{}", describe(&out));
    // EPuser downloads the same small file 3,000 times in one session, while
    // the admin uploads a file in the middle of it.
    let sink = tb.path(MASTER, "/var/tmp/sink.txt");
    let mut flood = String::new();
    for _ in 0..3000 {
        flood.push_str(&format!("get /upload/small.txt {}\n", sink.display()));
    }
    std::thread::scope(|s| {
        let flooder = s.spawn(|| as_epuser(&tb, MASTER_ADDR, &flood));
        std::thread::sleep(std::time::Duration::from_secs(3));
        let out = as_admin(
            &tb,
            MASTER_ADDR,
            &format!("put {small} /upload/during-the-flood.txt\n"),
        );
        assert!(out.status.success(), "{}", describe(&out));
        let out = flooder.join().unwrap();
        assert!(out.status.success(), "{}", describe(&out));
    });
    let admin = tb.journal(MASTER, "SFTP_HA_USER=admin");
    assert!(
        admin.contains("upload: admin wrote /upload/during-the-flood.txt"),
        "{admin}"
    );
    let all = wait_for("the summary of what was not logged", || {
        let j = tb.journal(MASTER, "");
        j.contains("SFTP log of EPuser rate-limited:").then_some(j)
    });
    assert!(all.contains("rate-limited from now on"), "{all}");
    let downloads = all.matches("download: EPuser").count();
    assert!(
        downloads < 1000,
        "{downloads} download lines of one user logged"
    );
}
