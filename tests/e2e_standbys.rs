//! End-to-end tests of a master with two standbys on the test bed: the bed's
//! third host (10.231.0.3, usually the witness) runs as a second standby.
//! Run by `tests/run-all`.

mod util;

use util::{
    MASTER, STANDBY, Testbed, USERS, WITNESS, converged_with, describe, listing, package, role_of,
    stdout, upload, wait_for,
};

/// The third host, here a standby.
const SECOND: &str = WITNESS;
const UPLOAD: &str = "/srv/sftp-ha/EPuser/upload";

/// A master replicating to the standby (10.231.0.2) and to the third host
/// (10.231.0.3), users.yaml applied and arrived on both.
fn master_with_two_standbys() -> Testbed {
    let tb = Testbed::up();
    for host in [MASTER, STANDBY, SECOND] {
        tb.install(host, &package("current", "deb"));
    }
    let key = tb.ok(MASTER, "sftp-ha pair show-key").trim().to_string();
    for (host, addr) in [(STANDBY, "10.231.0.2"), (SECOND, "10.231.0.3")] {
        tb.write(
            host,
            "/etc/sftp-ha/config.toml",
            "role = \"standby\"\n[sync]\npeer = \"10.231.0.1\"\n",
        );
        tb.ok(host, "systemctl restart sftp-ha");
        tb.ok(host, &format!("sftp-ha pair accept-peer '{key}'"));
        tb.ok(MASTER, &format!("sftp-ha pair trust-peer {addr}"));
    }
    tb.write(
        MASTER,
        "/etc/sftp-ha/config.toml",
        "role = \"master\"\n[sync]\npeer = [\"10.231.0.2\", \"10.231.0.3\"]\n",
    );
    tb.ok(MASTER, "systemctl restart sftp-ha");
    tb.write(MASTER, "/root/users.yaml", USERS);
    tb.ok(MASTER, "sftp-ha users apply /root/users.yaml");
    for host in [STANDBY, SECOND] {
        wait_for(&format!("EPuser on {host}"), || {
            tb.sh(host, "id EPuser").status.success().then_some(())
        });
    }
    tb
}

/// Files in the burst folder on `host`.
fn burst_count(tb: &Testbed, host: &str) -> usize {
    stdout(&tb.sh(host, &format!("ls {UPLOAD}/burst 2>/dev/null | wc -l")))
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Two standbys get every upload; one cut off in the middle of a burst does
/// not hold up the other, catches up by itself once back, and all three end
/// identical.
#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn two_standbys_get_everything_and_a_cut_off_one_catches_up() {
    let tb = master_with_two_standbys();
    // An upload with the stock sftp client reaches both.
    util::upload_ok(&tb, MASTER, "10.231.0.1", "first.txt", "to both\n");
    converged_with(&tb, STANDBY, "first.txt on the standby");
    converged_with(&tb, SECOND, "first.txt on the second standby");
    let status = tb.ok(MASTER, "sftp-ha status");
    for addr in ["10.231.0.2", "10.231.0.3"] {
        assert!(
            status.contains(&format!("standby {addr}")) && status.contains("reachable since"),
            "a sync row for {addr}:\n{status}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&tb.ok(MASTER, "sftp-ha status --json")).unwrap();
    assert_eq!(
        json["status"]["standbys"].as_array().map(Vec::len),
        Some(2),
        "{json}"
    );

    // The second standby is cut off; a burst starts on the master.
    tb.cut(SECOND);
    let burst = tb.sh(
        MASTER,
        &format!(
            "mkdir {UPLOAD}/burst && for i in $(seq 1 400); do echo \"file $i\" > {UPLOAD}/burst/f$i; done \
             && chown -R EPuser: {UPLOAD}/burst"
        ),
    );
    assert!(burst.status.success(), "{}", describe(&burst));
    util::upload_ok(&tb, MASTER, "10.231.0.1", "during.txt", "while cut off\n");
    // The reachable standby gets all of it while the other is away.
    converged_with(&tb, STANDBY, "the burst on the reachable standby");
    assert_eq!(
        burst_count(&tb, SECOND),
        0,
        "the cut-off standby cannot have the burst yet"
    );
    // Its own row says it is behind: unreachable, or files waiting for it.
    wait_for("the cut-off standby's row to show it behind", || {
        let json: serde_json::Value =
            serde_json::from_str(&tb.ok(MASTER, "sftp-ha status --json")).unwrap();
        json["status"]["standbys"]
            .as_array()?
            .iter()
            .find(|s| {
                s["standby"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("10.231.0.3"))
            })
            .filter(|s| s["connected"] == false || s["pending"].as_u64() > Some(0))
            .map(|_| ())
    });

    // Back: it catches up by itself, without waiting for the fallback walk.
    tb.uncut(SECOND);
    converged_with(&tb, SECOND, "the second standby to catch up");
    converged_with(&tb, STANDBY, "the standby still identical");
    assert_eq!(burst_count(&tb, SECOND), 400);

    // A delete reaches both.
    tb.ok(MASTER, &format!("rm {UPLOAD}/first.txt"));
    converged_with(&tb, STANDBY, "the delete on the standby");
    converged_with(&tb, SECOND, "the delete on the second standby");
    // The same users log in on each standby (read-only there).
    for (host, addr) in [(STANDBY, "10.231.0.2"), (SECOND, "10.231.0.3")] {
        let out = tb.sftp(host, addr, "EPuser", "1234", "ls /upload/during.txt\n");
        assert!(out.status.success(), "login on {host}: {}", describe(&out));
    }
}

/// Three file hosts, each paired with each other both ways: the master
/// replicates to both standbys, and each standby lists the master first,
/// then the other standby (the manual-failover set-up of the README).
fn three_file_hosts() -> Testbed {
    let tb = Testbed::up();
    let hosts = [
        (
            MASTER,
            "10.231.0.1",
            "role = \"master\"\n[sync]\npeer = [\"10.231.0.2\", \"10.231.0.3\"]\n",
        ),
        (
            STANDBY,
            "10.231.0.2",
            "role = \"standby\"\n[sync]\npeer = [\"10.231.0.1\", \"10.231.0.3\"]\n",
        ),
        (
            SECOND,
            "10.231.0.3",
            "role = \"standby\"\n[sync]\npeer = [\"10.231.0.1\", \"10.231.0.2\"]\n",
        ),
    ];
    for (host, _, config) in hosts {
        tb.install(host, &package("current", "deb"));
        tb.write(host, "/etc/sftp-ha/config.toml", config);
    }
    for (host, _, _) in hosts {
        let key = tb.ok(host, "sftp-ha pair show-key").trim().to_string();
        for (other, addr, _) in hosts.iter().filter(|(h, _, _)| *h != host) {
            tb.ok(other, &format!("sftp-ha pair accept-peer '{key}'"));
            tb.ok(host, &format!("sftp-ha pair trust-peer {addr}"));
        }
    }
    // Each accepts both others' keys: they add up.
    for (host, _, _) in hosts {
        let keys = tb.ok(host, "sftp-ha pair list-peers");
        assert_eq!(keys.lines().count(), 2, "{host}: {keys}");
    }
    for (host, _, _) in [hosts[1], hosts[2], hosts[0]] {
        tb.ok(host, "systemctl restart sftp-ha");
    }
    tb.write(MASTER, "/root/users.yaml", USERS);
    tb.ok(MASTER, "sftp-ha users apply /root/users.yaml");
    for host in [STANDBY, SECOND] {
        wait_for(&format!("EPuser on {host}"), || {
            tb.sh(host, "id EPuser").status.success().then_some(())
        });
    }
    tb
}

/// How far the master told `host` it is caught up (`through_ms`), if at all.
fn told_through(tb: &Testbed, host: &str) -> Option<u64> {
    let text =
        std::fs::read_to_string(tb.path(host, "/srv/sftp-ha/.sftp-ha-ctl/position.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["through_ms"].as_u64()
}

/// The master dies while one standby is cut off and behind: `promote` on
/// the standby that is behind refuses and names the other one; `promote`
/// there succeeds; the one behind follows the new master and gets all it
/// lacked; users write on the new master only; no file is lost.
#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn failover_with_two_standbys_promotes_the_most_caught_up_and_the_other_follows() {
    let tb = three_file_hosts();
    util::upload_ok(&tb, MASTER, "10.231.0.1", "first.txt", "to both\n");
    converged_with(&tb, STANDBY, "first.txt on the standby");
    converged_with(&tb, SECOND, "first.txt on the second standby");
    wait_for("both standbys told how far they are", || {
        told_through(&tb, STANDBY)
            .zip(told_through(&tb, SECOND))
            .map(|_| ())
    });

    // The second standby is cut off; a burst lands on the master and reaches the first only.
    tb.cut(SECOND);
    let burst = tb.sh(
        MASTER,
        &format!(
            "mkdir {UPLOAD}/burst && for i in $(seq 1 300); do echo \"file $i\" > {UPLOAD}/burst/f$i; done \
             && chown -R EPuser: {UPLOAD}/burst"
        ),
    );
    assert!(burst.status.success(), "{}", describe(&burst));
    util::upload_ok(&tb, MASTER, "10.231.0.1", "during.txt", "while cut off\n");
    converged_with(&tb, STANDBY, "the burst on the reachable standby");
    let behind = told_through(&tb, SECOND).unwrap_or(0);
    wait_for("the reachable standby told it is further", || {
        (told_through(&tb, STANDBY)? > behind).then_some(())
    });

    // The master dies; the cut-off standby is back, still behind.
    let status = tb.ok(STANDBY, "sftp-ha status");
    assert!(
        status.contains("caught up:   everything of master"),
        "{status}"
    );
    tb.poweroff(MASTER);
    tb.uncut(SECOND);
    let out = tb.sh(SECOND, "sftp-ha promote");
    assert!(
        !out.status.success(),
        "the standby behind was promoted: {}",
        describe(&out)
    );
    assert!(
        describe(&out).contains("10.231.0.2:22 is further caught up"),
        "{}",
        describe(&out)
    );
    assert_eq!(role_of(&tb, SECOND).0, "standby");

    // The most caught-up one is promoted.
    let out = tb.sh(STANDBY, "sftp-ha promote");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("compared:"), "{}", describe(&out));
    let (role, epoch) = role_of(&tb, STANDBY);
    assert_eq!(role, "master");

    // The other follows it: the new master's epoch, and everything it lacked.
    wait_for("the second standby to follow the new master", || {
        (role_of(&tb, SECOND) == ("standby".to_string(), epoch)).then_some(())
    });
    let same = || (listing(&tb, STANDBY) == listing(&tb, SECOND)).then_some(());
    wait_for("the second standby to catch up from the new master", same);
    assert_eq!(burst_count(&tb, SECOND), 300);
    assert!(tb.path(SECOND, &format!("{UPLOAD}/during.txt")).exists());

    // Users write on the new master, and it reaches the other; not on the standby.
    util::upload_ok(
        &tb,
        STANDBY,
        "10.231.0.2",
        "after.txt",
        "on the new master\n",
    );
    wait_for("after.txt on the second standby", || {
        tb.path(SECOND, &format!("{UPLOAD}/after.txt"))
            .exists()
            .then_some(())
    });
    let refused = upload(&tb, SECOND, "10.231.0.3", "refused.txt", "no\n");
    assert!(
        !refused.status.success(),
        "a standby took an upload: {}",
        describe(&refused)
    );
    wait_for("both standing hosts identical", same);
    // No conflict copies: nothing differed, nothing was kept twice.
    let conflicts = tb.sh(
        STANDBY,
        "find /srv/sftp-ha -name '*sftp-ha-conflict*' | wc -l",
    );
    assert_eq!(stdout(&conflicts).trim(), "0", "{}", describe(&conflicts));
}
