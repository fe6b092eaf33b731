//! The benchmark figures README.md and docs/ARCHITECTURE.md quote are those in bench/results:
//! `bench/figures.py --check` compares every marked figure with its results file and refuses
//! performance numbers typed outside a marker.

use std::path::Path;
use std::process::Command;

#[test]
fn documented_figures_match_bench_results() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/figures.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--check")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}{}(`python3 bench/figures.py --write` puts the results' figures in)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
