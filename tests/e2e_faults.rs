//! End-to-end fault tests of replication on the test bed: a standby cut off
//! during a burst, the master's daemon killed mid-burst, the standby powered
//! off, the master's data dir unmounted, an inotify queue overflow, and a
//! folder swapped for a symlink while the daemon walks it. Each ends with
//! identical trees, or with the standby's files kept and the reason in
//! `sftp-ha status`. Run by `tests/run-all`.

mod util;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use util::{MASTER, STANDBY, Testbed, converged, describe, replicating_pair, stdout, wait_for};

const UPLOAD: &str = "/srv/sftp-ha/EPuser/upload";

/// Files on the standby (outside temporaries) whose size is not `size`:
/// what a reader there would see half-written.
fn partial_files(tb: &Testbed, folder: &str, size: u64) -> String {
    let out = tb.sh(
        STANDBY,
        &format!("[ -d '{folder}' ] || exit 0; find '{folder}' -type f ! -size {size}c"),
    );
    stdout(&out)
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn a_standby_cut_off_for_30_s_during_a_burst_gets_everything_and_never_a_partial_file() {
    // A fallback scan this far away cannot be what brings the files over.
    let tb = replicating_pair("fallback_interval = \"1h\"\n");
    const SIZE: u64 = 256 * 1024;
    let local = tb.path(MASTER, "/var/tmp/burst");
    std::fs::create_dir_all(&local).unwrap();
    for i in 0..600 {
        let body: Vec<u8> = (0..SIZE).map(|b| (b as u8) ^ (i as u8)).collect();
        std::fs::write(local.join(format!("b{}-f{i:04}", i / 100)), body).unwrap();
    }
    let out = tb.sftp(MASTER, "10.231.0.1", "EPuser", "1234", "mkdir burst\n");
    assert!(out.status.success(), "{}", describe(&out));

    let watching = AtomicBool::new(true);
    std::thread::scope(|s| {
        // A reader on the standby, all along: never a file of the wrong size.
        // (Bounded in time, so a failing assertion below cannot leave it running.)
        let reader = s.spawn(|| {
            let mut seen = String::new();
            let start = std::time::Instant::now();
            while watching.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(150) {
                seen.push_str(&partial_files(&tb, &format!("{UPLOAD}/burst"), SIZE));
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        });
        // The burst: six batches of 100 files through the stock sftp client.
        let uploader = s.spawn(|| {
            for batch in 0..6 {
                let script = format!(
                    "put {}/b{batch}-* burst/\n",
                    tb.path(MASTER, "/var/tmp/burst").display()
                );
                let out = tb.sftp(MASTER, "10.231.0.1", "EPuser", "1234", &script);
                assert!(out.status.success(), "{}", describe(&out));
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        std::thread::sleep(Duration::from_secs(2));
        tb.cut(STANDBY);
        uploader.join().unwrap();
        std::thread::sleep(Duration::from_secs(28));
        let status = tb.ok(MASTER, "sftp-ha status");
        assert!(
            status.contains("UNREACHABLE"),
            "{status}\n{}",
            tb.journal(MASTER, "-n 40 -o short-precise")
        );
        tb.uncut(STANDBY);
        converged(&tb, "all 600 files on the standby");
        watching.store(false, Ordering::Relaxed);
        let seen = reader.join().unwrap();
        assert!(
            seen.is_empty(),
            "partial files seen on the standby:\n{seen}"
        );
    });
    let count = format!("find {UPLOAD}/burst -type f | wc -l");
    assert_eq!(tb.ok(STANDBY, &count).trim(), "600");
    let temps = tb.ok(
        STANDBY,
        "find /srv/sftp-ha/.sftp-ha-tmp -type f 2>/dev/null | wc -l",
    );
    assert_eq!(temps.trim(), "0");
    assert!(
        !tb.journal(MASTER, "").contains("full scan"),
        "the catch-up needed an inotify overflow scan"
    );
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn a_killed_master_daemon_and_a_powered_off_standby_converge() {
    let tb = replicating_pair("");
    let restarts = || tb.unit_property(MASTER, "sftp-ha", "NRestarts");
    let before = restarts();
    std::thread::scope(|s| {
        let burst = s.spawn(|| {
            tb.ok(
                MASTER,
                &format!(
                    "mkdir {UPLOAD}/killed && cd {UPLOAD}/killed && \
                     for i in $(seq 1 3000); do head -c 8192 /dev/urandom > f$i; done && chown -R EPuser: ."
                ),
            )
        });
        std::thread::sleep(Duration::from_secs(2));
        tb.ok(
            MASTER,
            "kill -9 $(systemctl show -p MainPID --value sftp-ha)",
        );
        burst.join().unwrap();
    });
    wait_for("systemd to restart the killed daemon", || {
        (restarts() != before && tb.unit_property(MASTER, "sftp-ha", "ActiveState") == "active")
            .then_some(())
    });
    converged(&tb, "the trees after the kill");

    // The standby powered off: files keep arriving on the master, and reach the
    // standby once it is back.
    tb.poweroff(STANDBY);
    tb.ok(
        MASTER,
        &format!(
            "mkdir {UPLOAD}/while-off && cd {UPLOAD}/while-off && \
             for i in $(seq 1 300); do head -c 4096 /dev/urandom > f$i; done && chown -R EPuser: ."
        ),
    );
    wait_for("the master to notice the standby is gone", || {
        tb.ok(MASTER, "sftp-ha status")
            .contains("UNREACHABLE")
            .then_some(())
    });
    tb.boot(STANDBY);
    converged(&tb, "the trees after the standby's reboot");
    let temps = tb.ok(
        STANDBY,
        "find /srv/sftp-ha/.sftp-ha-tmp -type f 2>/dev/null | wc -l",
    );
    assert_eq!(temps.trim(), "0");
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn an_unmounted_data_dir_on_the_master_deletes_nothing_on_the_standby() {
    let tb = replicating_pair("fallback_interval = \"2s\"\n");
    tb.ok(
        MASTER,
        &format!(
            "for i in 1 2 3; do echo $i > {UPLOAD}/keep$i; done && chown EPuser: {UPLOAD}/keep*"
        ),
    );
    converged(&tb, "the files on the standby");

    // The data disk goes away: the master sees an empty folder where its tree was.
    tb.ok(MASTER, "mount -t tmpfs emptied /srv/sftp-ha");
    let status = wait_for("the held-back deletes in sftp-ha status", || {
        let s = tb.ok(MASTER, "sftp-ha status");
        s.contains("DELETES HELD BACK").then_some(s)
    });
    assert!(status.contains("unmounted"), "{status}");
    // Several fallback scans later the standby still has everything.
    std::thread::sleep(Duration::from_secs(6));
    for i in 1..=3 {
        tb.ok(STANDBY, &format!("test -s {UPLOAD}/keep{i}"));
    }
    assert!(
        tb.journal(MASTER, "")
            .contains("deletes are NOT mirrored; check that the data dir is mounted")
    );

    // Mounted again: nothing to do, and the status is clear again.
    tb.ok(MASTER, "umount /srv/sftp-ha");
    wait_for("the status to clear", || {
        let s = tb.ok(MASTER, "sftp-ha status");
        (!s.contains("DELETES HELD BACK") && s.contains(", 0 pending")).then_some(())
    });
    converged(&tb, "the trees after the remount");
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn a_folder_swapped_for_a_symlink_while_syncing_never_leaks_outside_files() {
    let tb = replicating_pair("");
    // A user keeps swapping a busy folder for a symlink to /etc and back, and
    // plants links to /etc/shadow, while files keep arriving in it.
    tb.ok(
        MASTER,
        &format!(
            "cd {UPLOAD} && mkdir box && \
             end=$(( $(date +%s) + 15 )); i=0; \
             while [ $(date +%s) -lt $end ]; do \
               i=$((i+1)); echo $i > box/f$i; \
               mv box box.real && ln -s /etc box && sleep 0.01 && rm box && mv box.real box; \
               ln -sf /etc/shadow box/shadow-link$i; \
             done; rm -f box/shadow-link*; chown -R EPuser: box"
        ),
    );
    converged(&tb, "the trees after the symlink games");
    let leaked = tb.ok(
        STANDBY,
        "find /srv/sftp-ha \\( -name shadow -o -name passwd -o -name 'shadow-link*' -o -type l \\) -print; \
         grep -rlE '^(root|daemon|bin):' /srv/sftp-ha || true",
    );
    assert!(
        leaked.trim().is_empty(),
        "outside files reached the standby:\n{leaked}"
    );
}

/// Sets a sysctl on this machine (the containers share its kernel) and puts
/// the old value back when dropped, also when the test fails.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Sysctl {
        let old = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, value).unwrap();
        Sysctl { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, self.old.trim());
    }
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn an_inotify_queue_overflow_is_caught_up_by_a_full_scan_and_nothing_is_missed() {
    // A fallback scan this far away cannot be what brings the files over.
    let tb = replicating_pair("fallback_interval = \"1h\"\n");
    {
        // The queue length is read when the daemon sets up inotify: a tiny one
        // for the restarted daemon, the usual one again for everything else.
        let _tiny = Sysctl::set("/proc/sys/fs/inotify/max_queued_events", "32");
        tb.ok(MASTER, "systemctl restart sftp-ha");
        wait_for("the restarted daemon to connect", || {
            tb.ok(MASTER, "sftp-ha status")
                .contains("reachable since")
                .then_some(())
        });
    }
    tb.ok(
        MASTER,
        &format!(
            "mkdir {UPLOAD}/flood && cd {UPLOAD}/flood && \
             for i in $(seq 1 2000); do echo $i > f$i; done && chown -R EPuser: ."
        ),
    );
    converged(&tb, "the flood on the standby");
    let journal = tb.journal(MASTER, "");
    let overflows = journal.matches("inotify queue overflowed").count();
    assert!(overflows >= 1, "no overflow happened:\n{journal}");
}
