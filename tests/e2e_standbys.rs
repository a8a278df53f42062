//! End-to-end tests of a master with two standbys on the test bed: the bed's
//! third host (10.231.0.3, usually the witness) runs as a second standby.
//! Run by `tests/run-all`.

mod util;

use util::{
    MASTER, STANDBY, STANDBY2, Testbed, USERS, WITNESS, converged_with, describe, listing, package,
    role_of, stdout, upload, wait_for,
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
            "role = \"master\"\n[sync]\npeer = [\"10.231.0.2\", \"10.231.0.3\"]\n".to_string(),
        ),
        (
            STANDBY,
            "10.231.0.2",
            "role = \"standby\"\n[sync]\npeer = [\"10.231.0.1\", \"10.231.0.3\"]\n".to_string(),
        ),
        (
            SECOND,
            "10.231.0.3",
            "role = \"standby\"\n[sync]\npeer = [\"10.231.0.1\", \"10.231.0.2\"]\n".to_string(),
        ),
    ];
    start_file_hosts(&tb, &hosts);
    tb
}

/// Installs the package on each `(host, address, config)` (the master
/// first), pairs each with each other both ways, starts the standbys, then
/// the master, and applies users.yaml, which arrives on every standby.
fn start_file_hosts(tb: &Testbed, hosts: &[(&str, &str, String)]) {
    for (host, _, config) in hosts {
        tb.install(host, &package("current", "deb"));
        tb.write(host, "/etc/sftp-ha/config.toml", config);
    }
    for (host, _, _) in hosts {
        let key = tb.ok(host, "sftp-ha pair show-key").trim().to_string();
        for (other, addr, _) in hosts.iter().filter(|(h, _, _)| h != host) {
            tb.ok(other, &format!("sftp-ha pair accept-peer '{key}'"));
            tb.ok(host, &format!("sftp-ha pair trust-peer {addr}"));
        }
    }
    // Each accepts every other's key: they add up.
    for (host, _, _) in hosts {
        let keys = tb.ok(host, "sftp-ha pair list-peers");
        assert_eq!(keys.lines().count(), hosts.len() - 1, "{host}: {keys}");
    }
    for (host, _, _) in hosts.iter().skip(1).chain(&hosts[..1]) {
        tb.ok(host, "systemctl restart sftp-ha");
    }
    tb.write(MASTER, "/root/users.yaml", USERS);
    tb.ok(MASTER, "sftp-ha users apply /root/users.yaml");
    for (host, _, _) in &hosts[1..] {
        wait_for(&format!("EPuser on {host}"), || {
            tb.sh(host, "id EPuser").status.success().then_some(())
        });
    }
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

const VIP: &str = "10.231.0.10";

/// `[failover]` in automatic mode with the witness (10.231.0.3) and the virtual IP.
fn auto_failover(role: &str, peers: &str) -> String {
    format!(
        "role = \"{role}\"\n[sync]\npeer = [{peers}]\n[failover]\nmode = \"auto\"\nwitness = \"10.231.0.3\"\nvirtual_ip = \"{VIP}/24\"\nafter = \"3s\"\n"
    )
}

/// Automatic failover with two standbys: the master (10.231.0.1) asks the
/// standby (10.231.0.2) for its vote, the witness is the third vote, and
/// standby2 (10.231.0.4) is a further standby. standby2 runs `mode = "auto"`
/// too, as an admin might by mistake: it must never take over.
///
/// While the voting standby is cut off, a burst reaches standby2 only. The
/// master then dies, the voting standby comes back, behind, and takes over
/// by itself; standby2 follows it, and what only standby2 had is brought
/// back: every file on every host, no conflict copies, one writer.
#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn automatic_failover_with_two_standbys_the_voter_takes_over_and_the_other_follows() {
    let tb = Testbed::up_four();
    let hosts = [
        (
            MASTER,
            "10.231.0.1",
            "master",
            "\"10.231.0.2\", \"10.231.0.4\"",
        ),
        (
            STANDBY,
            "10.231.0.2",
            "standby",
            "\"10.231.0.1\", \"10.231.0.4\"",
        ),
        (
            STANDBY2,
            "10.231.0.4",
            "standby",
            "\"10.231.0.1\", \"10.231.0.2\"",
        ),
    ];
    let manual = hosts.map(|(host, addr, role, peers)| {
        let config = format!("role = \"{role}\"\n[sync]\npeer = [{peers}]\n");
        (host, addr, config)
    });
    start_file_hosts(&tb, &manual);
    tb.install(WITNESS, &package("current", "deb"));
    tb.ok(MASTER, "sftp-ha failover keygen");
    let key = std::fs::read(tb.path(MASTER, "/etc/sftp-ha/failover.key")).unwrap();
    for host in [STANDBY, STANDBY2, WITNESS] {
        std::fs::write(tb.path(host, "/etc/sftp-ha/failover.key"), &key).unwrap();
        tb.ok(host, "chmod 600 /etc/sftp-ha/failover.key");
    }
    tb.write(WITNESS, "/etc/sftp-ha/config.toml", "role = \"witness\"\n");
    for (host, _, role, peers) in hosts {
        tb.write(
            host,
            "/etc/sftp-ha/config.toml",
            &auto_failover(role, peers),
        );
    }
    for host in [WITNESS, STANDBY2, STANDBY, MASTER] {
        tb.ok(host, "sftp-ha check-config && systemctl restart sftp-ha");
    }
    let summary = tb.ok(MASTER, "sftp-ha check-config");
    assert!(
        summary.contains("automatic failover with 10.231.0.2: the others follow"),
        "{summary}"
    );
    wait_for("the master to hold the lease and the virtual IP", || {
        (util::writable(&tb, MASTER) && util::holds_address(&tb, MASTER, VIP)).then_some(())
    });
    util::upload_ok(&tb, WITNESS, VIP, "first.txt", "to all\n");
    converged_with(&tb, STANDBY, "first.txt on the standby");
    converged_with(&tb, STANDBY2, "first.txt on standby2");

    // The status says whose voter each file host is.
    wait_for("the master's status to name its voter", || {
        tb.ok(MASTER, "sftp-ha status")
            .contains("the witness names standby this master's voter at epoch 1")
            .then_some(())
    });
    let status = tb.ok(STANDBY2, "sftp-ha status");
    assert!(
        status.contains("it never takes over automatically"),
        "{status}"
    );
    let status = tb.ok(STANDBY, "sftp-ha status");
    assert!(
        status.contains("last gave its vote to master at epoch 1"),
        "{status}"
    );

    // standby2 is asked by no master: it says so once, and asks nothing.
    wait_for("standby2 to know it is no master's voter", || {
        tb.journal(STANDBY2, "")
            .contains("no master has ever asked this host for its vote")
            .then_some(())
    });

    // The witness cut off from the master: the master keeps its lease
    // through its voter alone, and standby2, which the witness might have
    // let take over, stays a standby (three times `after`).
    tb.block(MASTER, WITNESS, "both");
    std::thread::sleep(std::time::Duration::from_secs(9));
    assert!(util::writable(&tb, MASTER));
    assert_eq!(role_of(&tb, STANDBY2), ("standby".to_string(), 1));
    assert_eq!(role_of(&tb, STANDBY), ("standby".to_string(), 1));
    tb.unblock(MASTER);

    // The voting standby is cut off: the master keeps its lease through the
    // witness; a burst reaches standby2 only.
    tb.cut(STANDBY);
    let burst = tb.sh(
        MASTER,
        &format!(
            "mkdir {UPLOAD}/burst && for i in $(seq 1 200); do echo \"file $i\" > {UPLOAD}/burst/f$i; done \
             && chown -R EPuser: {UPLOAD}/burst"
        ),
    );
    assert!(burst.status.success(), "{}", describe(&burst));
    util::upload_ok(
        &tb,
        WITNESS,
        VIP,
        "during.txt",
        "while the voter was cut off\n",
    );
    converged_with(&tb, STANDBY2, "the burst on standby2");
    assert_eq!(burst_count(&tb, STANDBY), 0);
    assert!(util::writable(&tb, MASTER));

    // The master dies; the voter is back, behind, and takes over by itself.
    tb.cut(MASTER);
    tb.poweroff(MASTER);
    tb.uncut(STANDBY);
    wait_for("the voting standby to take over", || {
        (role_of(&tb, STANDBY) == ("master".to_string(), 2)
            && util::writable(&tb, STANDBY)
            && util::holds_address(&tb, STANDBY, VIP))
        .then_some(())
    });

    // standby2 follows it and nothing it alone had is lost.
    wait_for("standby2 to follow the new master", || {
        (role_of(&tb, STANDBY2) == ("standby".to_string(), 2)).then_some(())
    });
    let same = || (listing(&tb, STANDBY) == listing(&tb, STANDBY2)).then_some(());
    wait_for("the new master and standby2 identical", same);
    assert_eq!(burst_count(&tb, STANDBY), 200);
    assert!(tb.path(STANDBY, &format!("{UPLOAD}/during.txt")).exists());
    util::upload_ok(&tb, WITNESS, VIP, "after.txt", "on the new master\n");
    wait_for("after.txt on standby2", || {
        tb.path(STANDBY2, &format!("{UPLOAD}/after.txt"))
            .exists()
            .then_some(())
    });
    let refused = upload(&tb, WITNESS, "10.231.0.4", "refused.txt", "no\n");
    assert!(
        !refused.status.success(),
        "standby2 took an upload: {}",
        describe(&refused)
    );

    // The old master comes back, follows, and ends identical too.
    tb.uncut(MASTER);
    tb.boot(MASTER);
    wait_for("the old master to follow", || {
        (role_of(&tb, MASTER) == ("standby".to_string(), 2)).then_some(())
    });
    assert!(!util::writable(&tb, MASTER));
    let all_same = || {
        let new = listing(&tb, STANDBY);
        (new == listing(&tb, MASTER) && new == listing(&tb, STANDBY2)).then_some(())
    };
    wait_for("all three file hosts identical", all_same);
    assert_eq!(role_of(&tb, STANDBY2).0, "standby");
    let journal = tb.journal(STANDBY2, "");
    assert!(!journal.contains("asking the witness"), "{journal}");
    let conflicts = tb.sh(
        STANDBY,
        "find /srv/sftp-ha -name '*sftp-ha-conflict*' | wc -l",
    );
    assert_eq!(stdout(&conflicts).trim(), "0", "{}", describe(&conflicts));
}
