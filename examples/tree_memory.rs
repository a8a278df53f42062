//! How much memory the sync worker's two trees take, and what one unchanged
//! walk and plan of the whole tree costs: no test bed needed.
//!
//! ```text
//! cargo run --release --example tree_memory -- 100000 1000000
//! ```
//!
//! For each count N it makes N empty files in N/100 folders (ten chroots)
//! under /dev/shm (tmpfs, kept between runs, removed with `--clean`; or
//! under `$SFTP_HA_TREE_DIR`, to measure on a disk or an overlayfs), then
//! does what the worker holds at steady state: the master's tree from a
//! walk (`current`) and the standby's confirmed index equal to it, as the
//! worker reads it back from its index file after a full sync. It prints
//! the heap bytes each holds (glibc's count of bytes in use, after the
//! freed memory is given back), the process's resident size, and the CPU
//! time of one more walk of the unchanged tree plus the plan against the
//! index (which must plan nothing), with the peak resident size over both,
//! and the CPU time of sharing the trees anew after 1 % of the files
//! changed on both sides.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sftp_ha::sync::tree;

const FILES_PER_FOLDER: usize = 100;
const CHROOTS: usize = 10;

/// Bytes the heap has handed out and not got back (small blocks and mmapped
/// big ones), after giving what is free back to the system.
fn heap_in_use() -> u64 {
    // SAFETY: malloc_trim and mallinfo2 only read and tidy glibc's own heap
    // bookkeeping; mallinfo2 returns a plain struct by value and no pointer
    // of ours is involved.
    let info = unsafe {
        nix::libc::malloc_trim(0);
        nix::libc::mallinfo2()
    };
    (info.uordblks + info.hblkhd) as u64
}

/// The resident size of this process (`VmRSS`), or its peak since the
/// last [`reset_peak`] (`VmHWM`), from /proc/self/status (KiB there).
fn rss_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Starts the peak resident size over from the current one (Linux 4.0 on).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", b"5");
}

/// User plus system CPU time this process has used so far.
fn cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map_or(Duration::ZERO, Duration::from)
}

/// The data dir with `count` files, made unless a previous run left it.
fn data_dir(base: &Path, count: usize) -> std::io::Result<PathBuf> {
    let root = base.join(format!("data-{count}"));
    let done = base.join(format!("data-{count}.done"));
    if done.exists() {
        return Ok(root);
    }
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    let folders = count.div_ceil(FILES_PER_FOLDER);
    for folder in 0..folders {
        let dir = root.join(format!("u{:02}/upload/d{folder:05}", folder % CHROOTS));
        std::fs::create_dir_all(&dir)?;
        let first = folder * FILES_PER_FOLDER;
        for n in first..count.min(first + FILES_PER_FOLDER) {
            std::fs::File::create(dir.join(format!("f{n:07}.dat")))?;
        }
    }
    std::fs::write(&done, b"")?;
    Ok(root)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Where the trees are made: tmpfs unless SFTP_HA_TREE_DIR names another
    // file system (a disk, an overlayfs as on the test bed).
    let base = std::env::var_os("SFTP_HA_TREE_DIR").map_or_else(
        || PathBuf::from("/dev/shm/sftp-ha-tree-memory"),
        PathBuf::from,
    );
    if args.iter().any(|a| a == "--clean") {
        if base.exists() {
            std::fs::remove_dir_all(&base)?;
        }
        return Ok(());
    }
    let counts: Vec<usize> = if args.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        args.iter()
            .map(|a| a.replace(['_', ','], "").parse())
            .collect::<Result<_, _>>()?
    };
    std::fs::create_dir_all(&base)?;
    println!(
        "| files | paths | tree (MiB) | index on top (MiB) | both, bytes/path | RSS (MiB) | walk CPU (s) | plan CPU (s) | peak RSS in walk (MiB) | share after 1 % changed, CPU (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for count in counts {
        let root = data_dir(&base, count)?;
        let before = heap_in_use();
        let (mut current, _) = tree::scan(&root, &mut |_| {})?;
        let with_current = heap_in_use();
        // After a full sync the worker's index equals the tree; a restarted
        // worker reads it back from the file it saves after each round, and
        // shares one copy of what both agree on after each walk.
        let index_file = base.join(format!("index-{count}"));
        tree::save_index(&index_file, &current)?;
        let mut index = tree::load_index(&index_file);
        tree::share(&mut current, &mut index);
        let with_both = heap_in_use();
        let rss = rss_bytes("VmRSS:");
        anyhow::ensure!(index.len() == current.len(), "the index did not read back");
        let paths = current.len() as u64;

        // One fallback walk of the unchanged tree and its plan.
        reset_peak();
        let start = cpu_time();
        // As the worker does: the walk builds on the last one's base, and
        // the index is shared anew only if it no longer stands on it.
        let (mut again, _) = tree::rescan(&root, &current, &mut |_| {})?;
        drop(current);
        if !tree::same_base(&again, &index) || tree::drifted(&again, &index) {
            tree::share(&mut again, &mut index);
        }
        let walked = cpu_time();
        let ops = tree::plan(&again, &index, true);
        let planned = cpu_time();
        anyhow::ensure!(
            ops.is_empty(),
            "{} operations for an unchanged tree",
            ops.len()
        );
        let peak = rss_bytes("VmHWM:");

        // Events change 1 % of the files and the standby confirms them: both
        // trees drift from their shared base until the worker shares anew.
        let changed: Vec<(Vec<u8>, tree::Entry)> = again
            .iter()
            .step_by(100)
            .map(|(p, e)| {
                let mut e = *e;
                e.size += 1;
                (p.to_vec(), e)
            })
            .collect();
        for (p, e) in changed {
            again.insert(p.clone(), e);
            index.insert(p, e);
        }
        anyhow::ensure!(tree::drifted(&again, &index), "not drifted");
        let drift_start = cpu_time();
        tree::share(&mut again, &mut index);
        let shared_again = cpu_time();
        drop(again);

        println!(
            "| {count} | {paths} | {:.1} | {:.1} | {} | {:.1} | {:.2} | {:.2} | {:.1} | {:.2} |",
            mib(with_current - before),
            mib(with_both - with_current),
            (with_both - before) / paths.max(1),
            mib(rss),
            (walked - start).as_secs_f64(),
            (planned - walked).as_secs_f64(),
            mib(peak),
            (shared_again - drift_start).as_secs_f64(),
        );
        drop(index);
        let _ = std::fs::remove_file(&index_file);
    }
    Ok(())
}
