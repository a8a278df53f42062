//! End-to-end tests on the test bed: the real .deb/.rpm installed into
//! Debian containers booted with systemd, driven with systemctl, journalctl and
//! the stock ssh/sftp clients.
//!
//! They need root and the packages from `tests/build-packages`, so plain
//! `cargo test` skips them; `tests/run-all` runs them one at a time with
//! `cargo test --test e2e -- --ignored --test-threads=1`.

mod util;

use std::process::Output;

use util::{MASTER, STANDBY, Testbed, WITNESS, describe, package, stderr, stdout, wait_for};

const MASTER_CONFIG: &str = "role = \"master\"\n[sync]\nstandby = \"10.231.0.2:22\"\n";
const STANDBY_CONFIG: &str = "role = \"standby\"\n";

fn install_and_wait_active(tb: &Testbed, host: &str) {
    tb.install(host, &package("current", "deb"));
    wait_active(tb, host);
}

fn wait_active(tb: &Testbed, host: &str) -> String {
    wait_for(&format!("sftp-ha active on {host}"), || {
        let out = tb.sh(host, "systemctl is-active sftp-ha");
        (stdout(&out).trim() == "active").then_some(())
    });
    tb.unit_property(host, "sftp-ha", "MainPID")
}

/// Options that make the stock ssh client non-interactive against the test hosts.
fn ssh_opts() -> Vec<String> {
    util::key_options(&util::client_key())
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn testbed_hosts_are_separate_linked_and_can_be_cut_and_powered_off() {
    let tb = Testbed::up();
    // Own hostnames, own account databases.
    assert_eq!(tb.ok(MASTER, "hostname").trim(), "master");
    assert_eq!(tb.ok(STANDBY, "hostname").trim(), "standby");
    tb.ok(MASTER, "useradd -M only-on-master");
    assert!(
        !tb.sh(STANDBY, "getent passwd only-on-master")
            .status
            .success()
    );
    assert_eq!(
        tb.ok(MASTER, "systemctl is-system-running").trim(),
        "running"
    );

    // The private link, with the stock ssh and sftp clients from the master's side.
    let mut ssh: Vec<String> = vec!["ssh".into()];
    ssh.extend(ssh_opts());
    ssh.extend(["root@10.231.0.2".into(), "hostname".into()]);
    let ssh: Vec<&str> = ssh.iter().map(String::as_str).collect();
    let out = tb.client(MASTER, &ssh, None);
    assert!(out.status.success(), "ssh to standby: {}", describe(&out));
    assert_eq!(stdout(&out).trim(), "standby");

    let mut sftp: Vec<String> = vec!["sftp".into(), "-b".into(), "-".into()];
    sftp.extend(ssh_opts());
    sftp.push("root@10.231.0.2".into());
    let sftp: Vec<&str> = sftp.iter().map(String::as_str).collect();
    let out = tb.client(MASTER, &sftp, Some(b"ls /etc/hostname\n"));
    assert!(out.status.success(), "sftp to standby: {}", describe(&out));

    // Cut off: connections time out; restored: they work again.
    tb.cut(STANDBY);
    let out = tb.client(MASTER, &ssh, None);
    assert!(!out.status.success(), "ssh went through a cut link");
    tb.uncut(STANDBY);
    assert!(tb.client(MASTER, &ssh, None).status.success());

    // Powered off and booted again, with its state.
    tb.ok(STANDBY, "echo kept > /var/tmp/marker");
    tb.poweroff(STANDBY);
    assert!(!tb.client(MASTER, &ssh, None).status.success());
    tb.boot(STANDBY);
    assert_eq!(tb.ok(STANDBY, "cat /var/tmp/marker").trim(), "kept");
    wait_for("sshd on the rebooted standby", || {
        tb.client(MASTER, &ssh, None).status.success().then_some(())
    });
}

/// `command` as root on `addr` over ssh, from `from`'s network namespace: a
/// login, so with the host's own capabilities (`Testbed::sh` has this machine's).
fn root_ssh(tb: &Testbed, from: &str, addr: &str, command: &str) -> Output {
    let mut args: Vec<String> = vec!["ssh".into()];
    args.extend(ssh_opts());
    args.extend([format!("root@{addr}"), command.into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tb.client(from, &args, None)
}

/// The ICMP echo requests `host`'s network stack has received so far.
fn echo_requests_in(tb: &Testbed, host: &str) -> u64 {
    let out = tb.client(host, &["cat", "/proc/net/snmp"], None);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    let mut icmp = text.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let at = names.split_whitespace().position(|n| n == "InEchos");
    let value = at.and_then(|i| values.split_whitespace().nth(i));
    value
        .and_then(|v| v.parse().ok())
        .expect("InEchos in /proc/net/snmp")
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn testbed_has_a_witness_one_way_blocks_and_an_address_that_moves() {
    let tb = Testbed::up();
    assert_eq!(tb.ok(WITNESS, "hostname").trim(), "witness");
    for host in [MASTER, STANDBY, WITNESS] {
        let out = tb.ok(host, "getent hosts witness");
        assert_eq!(out.split_whitespace().next(), Some("10.231.0.3"), "{host}");
    }
    let hosts = [
        (MASTER, "10.231.0.1"),
        (STANDBY, "10.231.0.2"),
        (WITNESS, "10.231.0.3"),
    ];
    let reaches = |from: &str, addr: &str| root_ssh(&tb, from, addr, "true").status.success();
    for (from, _) in hosts {
        for (to, addr) in hosts {
            let out = root_ssh(&tb, from, addr, "hostname");
            assert!(out.status.success(), "{from} to {to}: {}", describe(&out));
            assert_eq!(stdout(&out).trim(), to);
        }
    }

    // A block of one pair, both ways, leaves the other pairs alone.
    tb.block(MASTER, WITNESS, "both");
    assert!(
        !reaches(MASTER, "10.231.0.3"),
        "master reached a blocked witness"
    );
    assert!(
        !reaches(WITNESS, "10.231.0.1"),
        "witness reached a blocked master"
    );
    assert!(reaches(MASTER, "10.231.0.2") && reaches(WITNESS, "10.231.0.2"));
    tb.unblock(MASTER);
    assert!(reaches(MASTER, "10.231.0.3"));

    // One way: the requests arrive, the replies are lost, in either direction.
    for (dir, sender, receiver, addr) in [
        ("in", MASTER, STANDBY, "10.231.0.2"),
        ("out", STANDBY, MASTER, "10.231.0.1"),
    ] {
        tb.block(MASTER, STANDBY, dir);
        let before = echo_requests_in(&tb, receiver);
        let out = tb.client(sender, &["ping", "-c", "1", "-W", "1", addr], None);
        assert!(!out.status.success(), "a reply came through `block {dir}`");
        wait_for(&format!("the ping of {sender} on {receiver}"), || {
            (echo_requests_in(&tb, receiver) > before).then_some(())
        });
        tb.unblock(MASTER);
    }

    // A virtual address added by root inside the master, moved to the standby
    // and announced with a gratuitous ARP: the witness follows it.
    let vip = |host: &str, op: &str| {
        let out = root_ssh(
            &tb,
            WITNESS,
            hosts.iter().find(|h| h.0 == host).unwrap().1,
            &format!("ip addr {op} 10.231.0.10/24 dev eth0"),
        );
        assert!(
            out.status.success(),
            "ip addr {op} on {host}: {}",
            describe(&out)
        );
    };
    vip(MASTER, "add");
    assert_eq!(
        stdout(&root_ssh(&tb, WITNESS, "10.231.0.10", "hostname")).trim(),
        "master"
    );
    vip(MASTER, "del");
    vip(STANDBY, "add");
    let mac = tb.client(STANDBY, &["cat", "/sys/class/net/eth0/address"], None);
    let mac = stdout(&mac).trim().to_string();
    let garp = ["arping", "-q", "-U", "-c", "1", "-I", "eth0", "10.231.0.10"];
    let out = tb.client(STANDBY, &garp, None);
    assert!(out.status.success(), "{}", describe(&out));
    // No traffic to the address meanwhile: only the announcement can change the entry.
    wait_for("the witness's ARP entry for the moved address", || {
        let out = tb.client(WITNESS, &["ip", "neigh", "show", "10.231.0.10"], None);
        stdout(&out).contains(&mac).then_some(())
    });
    assert_eq!(
        stdout(&root_ssh(&tb, WITNESS, "10.231.0.10", "hostname")).trim(),
        "standby"
    );
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn deb_installs_starts_and_reports_status_and_journal_fields() {
    let tb = Testbed::up();
    install_and_wait_active(&tb, MASTER);
    install_and_wait_active(&tb, STANDBY);

    // The shipped config runs as a master without standby, and says so.
    let status = tb.unit_property(MASTER, "sftp-ha", "StatusText");
    assert!(status.contains("master serving /srv/sftp-ha"), "{status}");
    assert!(status.contains("no standby configured"), "{status}");

    // Configure the pair and restart both.
    tb.write(MASTER, "/etc/sftp-ha/config.toml", MASTER_CONFIG);
    tb.write(STANDBY, "/etc/sftp-ha/config.toml", STANDBY_CONFIG);
    tb.ok(MASTER, "systemctl restart sftp-ha");
    tb.ok(STANDBY, "systemctl restart sftp-ha");
    let status = tb.unit_property(MASTER, "sftp-ha", "StatusText");
    assert!(status.contains("standby 10.231.0.2:22"), "{status}");
    let status = tb.unit_property(STANDBY, "sftp-ha", "StatusText");
    assert!(status.contains("standby keeping /srv/sftp-ha"), "{status}");

    // `systemctl status` shows the status line; `sftp-ha status` shows the rest.
    let out = tb.sh(MASTER, "systemctl status sftp-ha --no-pager");
    assert!(
        stdout(&out).contains("Status: \"master serving"),
        "{}",
        describe(&out)
    );
    let text = tb.ok(MASTER, "sftp-ha status");
    assert!(text.contains("(master) - running since"), "{text}");
    assert!(text.contains("standby:     10.231.0.2:22"), "{text}");
    let json = tb.ok(STANDBY, "sftp-ha status --json");
    let json: serde_json::Value = serde_json::from_str(&json).expect("status --json is JSON");
    assert_eq!(json["running"], true);
    assert_eq!(json["status"]["role"], "standby");
    assert_eq!(json["status"]["phase"], "running");

    // Structured journal fields, filterable with journalctl.
    let journal = tb.journal(MASTER, "SFTP_HA_ROLE=master -o verbose");
    assert!(journal.contains("SFTP_HA_ROLE=master"), "{journal}");
    assert!(
        journal.contains("SFTP_HA_CONFIG=/etc/sftp-ha/config.toml"),
        "{journal}"
    );
    assert!(
        journal.contains("MESSAGE=sftp-ha 0.1.0 starting"),
        "{journal}"
    );

    // `sftp-ha --version`, and the unit file verifies without a word.
    assert!(tb.ok(MASTER, "sftp-ha --version").starts_with("sftp-ha "));
    let out = tb.sh(
        MASTER,
        "systemd-analyze verify /lib/systemd/system/sftp-ha.service 2>&1",
    );
    assert!(
        out.status.success() && stdout(&out).trim().is_empty(),
        "{}",
        describe(&out)
    );

    // A clean stop: SIGTERM ends it within TimeoutStopSec (else Result would be 'timeout').
    tb.ok(MASTER, "systemctl stop sftp-ha");
    assert_eq!(tb.unit_property(MASTER, "sftp-ha", "Result"), "success");
    assert!(tb.journal(MASTER, "").contains("stopped"));
    let out = tb.sh(MASTER, "sftp-ha status");
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(stdout(&out).contains("not running"));
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn config_error_fails_the_unit_with_file_line_and_key() {
    let tb = Testbed::up();
    install_and_wait_active(&tb, MASTER);
    tb.write(
        MASTER,
        "/etc/sftp-ha/config.toml",
        "role = \"master\"\n[sync]\nfallback_interval = \"soon\"\n",
    );
    let out = tb.sh(MASTER, "systemctl restart sftp-ha");
    assert!(
        !out.status.success(),
        "restart with a broken config succeeded"
    );
    assert_eq!(tb.unit_property(MASTER, "sftp-ha", "ActiveState"), "failed");
    // Exit 78 (config) is not retried: restarting cannot fix a config.
    assert_eq!(tb.unit_property(MASTER, "sftp-ha", "ExecMainStatus"), "78");
    assert_eq!(tb.unit_property(MASTER, "sftp-ha", "NRestarts"), "0");

    let expected =
        "config error in /etc/sftp-ha/config.toml, line 3, column 21: key `sync.fallback_interval`";
    let journal = tb.journal(MASTER, "");
    assert!(
        journal.contains(expected),
        "journal lacks the error:\n{journal}"
    );
    assert!(journal.contains("fix:"), "{journal}");

    let out = tb.sh(MASTER, "sftp-ha check-config");
    assert_eq!(out.status.code(), Some(78), "{}", describe(&out));
    assert!(stderr(&out).contains(expected), "{}", describe(&out));

    // Fixed: it starts again.
    tb.write(MASTER, "/etc/sftp-ha/config.toml", MASTER_CONFIG);
    let out = tb.sh(MASTER, "sftp-ha check-config");
    assert!(out.status.success(), "{}", describe(&out));
    tb.ok(MASTER, "systemctl restart sftp-ha");
    wait_active(&tb, MASTER);
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn reload_refuses_a_broken_config_and_applies_a_fixed_one() {
    let tb = Testbed::up();
    install_and_wait_active(&tb, MASTER);
    let pid = tb.unit_property(MASTER, "sftp-ha", "MainPID");

    // Broken: `systemctl reload` fails (ExecReload checks first), the daemon runs on.
    tb.write(
        MASTER,
        "/etc/sftp-ha/config.toml",
        "role = \"master\"\nstandby = \"x\"\n",
    );
    let out = tb.sh(MASTER, "systemctl reload sftp-ha");
    assert!(!out.status.success(), "reload of a broken config succeeded");
    assert_eq!(tb.unit_property(MASTER, "sftp-ha", "ActiveState"), "active");
    assert_eq!(tb.unit_property(MASTER, "sftp-ha", "MainPID"), pid);
    assert!(
        tb.journal(MASTER, "")
            .contains("line 2, column 1: key `standby`: unknown key")
    );

    // A SIGHUP that bypasses ExecReload: the daemon itself refuses and keeps the old config.
    tb.ok(MASTER, "systemctl kill -s HUP sftp-ha");
    let status = wait_for("the refused reload in sftp-ha status", || {
        let text = tb.ok(MASTER, "sftp-ha status");
        text.contains("REFUSED").then_some(text)
    });
    assert!(status.contains("key `standby`"), "{status}");
    assert!(
        status.contains("no standby configured"),
        "old config kept: {status}"
    );
    assert!(
        tb.journal(MASTER, "")
            .contains("reload refused, still running on the previous config")
    );
    assert_eq!(tb.unit_property(MASTER, "sftp-ha", "MainPID"), pid);
    assert_eq!(tb.unit_property(MASTER, "sftp-ha", "ActiveState"), "active");

    // Fixed: the reload applies, in the same process.
    tb.write(MASTER, "/etc/sftp-ha/config.toml", MASTER_CONFIG);
    tb.ok(MASTER, "systemctl reload sftp-ha");
    let status = wait_for("the new standby in the status line", || {
        let s = tb.unit_property(MASTER, "sftp-ha", "StatusText");
        s.contains("standby 10.231.0.2:22").then_some(s)
    });
    assert!(!status.contains("refused"), "{status}");
    assert!(tb.ok(MASTER, "sftp-ha status").contains("applied"));
    assert_eq!(tb.unit_property(MASTER, "sftp-ha", "MainPID"), pid);
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn watchdog_restarts_a_hung_main_loop() {
    let tb = Testbed::up();
    install_and_wait_active(&tb, MASTER);
    // A short watchdog so the test does not wait the shipped 30 s.
    tb.ok(
        MASTER,
        "mkdir -p /etc/systemd/system/sftp-ha.service.d && printf '[Service]\\nWatchdogSec=3s\\n' > /etc/systemd/system/sftp-ha.service.d/test.conf && systemctl daemon-reload && systemctl restart sftp-ha",
    );
    let pid = wait_active(&tb, MASTER);
    tb.ok(MASTER, &format!("kill -STOP {pid}"));
    let new_pid = wait_for("the watchdog to restart sftp-ha", || {
        let now = tb.unit_property(MASTER, "sftp-ha", "MainPID");
        let active = tb.unit_property(MASTER, "sftp-ha", "ActiveState") == "active";
        (active && now != pid && now != "0").then_some(now)
    });
    assert_ne!(new_pid, pid);
    assert_eq!(tb.unit_property(MASTER, "sftp-ha", "NRestarts"), "1");
    assert!(tb.journal(MASTER, "").contains("Watchdog timeout"));
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn deb_upgrade_keeps_edited_config_and_purge_keeps_data() {
    let tb = Testbed::up();
    install_and_wait_active(&tb, MASTER);
    tb.write(MASTER, "/etc/sftp-ha/config.toml", MASTER_CONFIG);
    tb.ok(MASTER, "systemctl restart sftp-ha");
    let pid = wait_active(&tb, MASTER);
    tb.ok(
        MASTER,
        "echo precious > /srv/sftp-ha/user-file && touch /var/lib/sftp-ha/index",
    );

    tb.install(MASTER, &package("next", "deb"));
    let new_pid = wait_active(&tb, MASTER);
    assert_ne!(new_pid, pid, "the upgrade did not restart the service");
    assert!(tb.ok(MASTER, "dpkg-query -W sftp-ha").contains("0.1.0.1-1"));
    assert_eq!(tb.ok(MASTER, "cat /etc/sftp-ha/config.toml"), MASTER_CONFIG);

    tb.ok(
        MASTER,
        "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q sftp-ha",
    );
    assert!(
        !tb.sh(MASTER, "test -e /etc/sftp-ha").status.success(),
        "/etc/sftp-ha survived purge"
    );
    assert!(
        !tb.sh(MASTER, "test -e /var/lib/sftp-ha").status.success(),
        "/var/lib/sftp-ha survived purge"
    );
    assert_eq!(
        tb.ok(MASTER, "cat /srv/sftp-ha/user-file").trim(),
        "precious"
    );
    assert!(
        !tb.sh(MASTER, "systemctl is-active sftp-ha")
            .status
            .success()
    );
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn rpm_scriptlets_enable_restart_on_upgrade_and_stop_on_erase() {
    let tb = Testbed::up();
    tb.install(MASTER, &package("current", "rpm"));
    tb.ok(MASTER, "systemctl enable --now sftp-ha");
    let pid = wait_active(&tb, MASTER);
    tb.write(MASTER, "/etc/sftp-ha/config.toml", MASTER_CONFIG);

    let next = package("next", "rpm");
    let name = next.file_name().and_then(|n| n.to_str()).expect("rpm name");
    std::fs::copy(&next, tb.path(MASTER, &format!("/var/tmp/{name}"))).expect("copy rpm");
    tb.ok(MASTER, &format!("rpm -U --nodeps /var/tmp/{name}"));
    let new_pid = wait_active(&tb, MASTER);
    assert_ne!(new_pid, pid, "rpm -U did not restart the service");
    assert_eq!(
        tb.ok(MASTER, "cat /etc/sftp-ha/config.toml"),
        MASTER_CONFIG,
        "noreplace config was replaced"
    );
    assert!(tb.ok(MASTER, "rpm -q sftp-ha").contains("0.1.0.1"));

    tb.ok(MASTER, "rpm -e --nodeps sftp-ha");
    assert_eq!(
        tb.unit_property(MASTER, "sftp-ha", "ActiveState"),
        "inactive"
    );
    let enabled = tb.sh(MASTER, "systemctl is-enabled sftp-ha 2>&1");
    assert!(
        !enabled.status.success(),
        "still enabled: {}",
        describe(&enabled)
    );
    assert!(!tb.sh(MASTER, "test -e /usr/bin/sftp-ha").status.success());
}
