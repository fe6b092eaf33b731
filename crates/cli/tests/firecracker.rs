//! The Firecracker comparison (`bench/vm_firecracker.py`) runs end to end, in a few runs, with
//! the Firecracker binary `FIRECRACKER` names: every measurement completes on both monitors and
//! the results carry every figure. Timing ratios are noisy at three runs and are not judged;
//! the snapshot's size is (an idle guest's pages with data against all of its RAM).

mod common;

use std::path::Path;
use std::process::Command;

/// Runs a side-by-side bench (`cmd`, told to write its results to `out`), fails with its
/// output if it fails, and returns the results' figures line, checking that each of `keys`
/// is a positive number.
fn bench_figures(mut cmd: Command, out: &Path, keys: &[&str]) -> serde_json::Value {
    let run = cmd.env("OUT", out).output().expect("the bench starts");
    assert!(
        run.status.success(),
        "the bench failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(out).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("<!-- figures "))
        .and_then(|l| l.strip_suffix(" -->"))
        .unwrap_or_else(|| panic!("no figures line in:\n{text}"));
    let figures: serde_json::Value = serde_json::from_str(line).unwrap();
    for key in keys {
        let v = figures[key].as_f64();
        assert!(v.is_some_and(|v| v > 0.0), "{key}: {figures}");
    }
    figures
}

#[test]
fn firecracker_comparison_runs_end_to_end() {
    let Some(fc) = std::env::var_os("FIRECRACKER").filter(|v| !v.is_empty()) else {
        // CI machines have no Firecracker and cannot fetch its source: a part no machine of
        // this kind runs. docs/ARCHITECTURE.md says how to build one.
        starling_testkit::skip_part(
            "FIRECRACKER is not set: the side-by-side bench with Firecracker did not run \
             (build one as docs/ARCHITECTURE.md, \"Benchmarks against Firecracker\", says)",
        );
        return;
    };
    if let Some(why) = starling_vmm::test_guest::missing() {
        starling_testkit::skip(&why);
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_starling")).parent().unwrap();
    assert!(
        bin.join("starling-vmm").is_file(),
        "starling-vmm is not built beside {}",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vm-firecracker.md");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut bench = Command::new("python3");
    bench
        .arg(root.join("bench/vm_firecracker.py"))
        .arg(bin)
        .env("FIRECRACKER", &fc)
        .env("RUNS", "3")
        .env("COPIES", "3")
        .env("COPY_ROUNDS", "1");
    let figures = bench_figures(
        bench,
        &out,
        &[
            "boot_vs_fc",
            "snapshot_faster",
            "snapshot_smaller",
            "restore_vs_fc",
            "copies_vs_fc",
            "memory_vs_fc",
            "private_memory_vs_fc",
        ],
    );
    let smaller = figures["snapshot_smaller"].as_f64().unwrap();
    assert!(
        smaller >= 100.0,
        "an idle guest's snapshot is only {smaller}x smaller than Firecracker's"
    );
}

/// The tier-2 side by side (`bench/vm_firecracker_tier2.sh`): Debian's kernel booted by both
/// monitors inside the QEMU test host, and a booted guest restored by both; every figure is
/// there. One round: the test host is slow, and the ratios are the bench's business.
#[test]
fn firecracker_comparison_in_the_test_host_runs_end_to_end() {
    let Some(fc) = std::env::var_os("FIRECRACKER").filter(|v| !v.is_empty()) else {
        starling_testkit::skip_part(
            "FIRECRACKER is not set: the tier-2 side by side with Firecracker did not run \
             (build one as docs/ARCHITECTURE.md, \"Benchmarks against Firecracker\", says)",
        );
        return;
    };
    if let Some(why) = common::tier2_missing() {
        starling_testkit::skip(&why);
        return;
    }
    let starling = Path::new(env!("CARGO_BIN_EXE_starling"));
    assert!(
        starling.with_file_name("starling-vmm").is_file(),
        "starling-vmm is not built beside {}",
        starling.display()
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vm-firecracker-tier2.md");
    let mut bench = Command::new("bash");
    bench
        .arg(root.join("bench/vm_firecracker_tier2.sh"))
        .arg(starling)
        .env("FIRECRACKER", &fc)
        .env("ROUNDS", "1")
        .env("WORK", dir.path().join("work"));
    bench_figures(
        bench,
        &out,
        &["boot_vs_fc", "restore_vs_fc", "memory_vs_fc"],
    );
}
