//! `starling vm run` as a program: exit statuses that follow the guest, the JSON config file,
//! Ctrl-C (SIGINT) stopping the VM cleanly, and input errors before the guest starts. Uses the
//! tier-1 test guest on this host's /dev/kvm.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn guest(dir: &Path) -> Option<std::path::PathBuf> {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP: no /dev/kvm");
        return None;
    }
    match starling_vmm::test_guest::build(dir) {
        Ok(g) => Some(g.pvh),
        Err(e) => {
            eprintln!("SKIP: {e}");
            None
        }
    }
}

fn starling() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_starling"));
    c.env("STARLING_HOME", "/nonexistent-store-not-needed");
    c
}

#[test]
fn exit_status_follows_the_guest_and_config_files_work() {
    let dir = tempfile::tempdir().unwrap();
    let Some(kernel) = guest(dir.path()) else {
        return;
    };
    let out = starling()
        .args([
            "vm",
            "run",
            "--console",
            "off",
            "--mem",
            "32M",
            "--cmdline",
            "exit=9",
            "--kernel",
        ])
        .arg(&kernel)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("GuestExit(9)"));

    // The same VM as a config file; relative paths are taken from the file's directory.
    std::fs::copy(&kernel, dir.path().join("k.elf")).unwrap();
    let log = dir.path().join("console.txt");
    std::fs::write(
        dir.path().join("vm.json"),
        format!(
            r#"{{"kernel": "k.elf", "cmdline": "rng poweroff", "mem_mib": 32, "vcpus": 2, "console": {{"file": "{}"}}}}"#,
            log.display()
        ),
    )
    .unwrap();
    let out = starling()
        .args(["vm", "run", "--config"])
        .arg(dir.path().join("vm.json"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let console = std::fs::read_to_string(&log).unwrap();
    assert!(console.contains("rng: 16 bytes"), "{console}");
}

#[test]
fn ctrl_c_stops_the_vm_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let Some(kernel) = guest(dir.path()) else {
        return;
    };
    let log = dir.path().join("console.txt");
    let child = starling()
        .args([
            "vm",
            "run",
            "--mem",
            "32M",
            "--cmdline",
            "spin",
            "--console",
        ])
        .arg(&log)
        .arg("--kernel")
        .arg(&kernel)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("tick")
    {
        assert!(Instant::now() < deadline, "the guest never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Stopped(Some(2))"));
}

#[test]
fn input_errors_come_before_the_guest_with_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let Some(kernel) = guest(dir.path()) else {
        return;
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--kernel".into(), "/nonexistent/vmlinuz".into()],
            "/nonexistent/vmlinuz",
        ),
        (
            vec![
                "--kernel".into(),
                kernel.display().to_string(),
                "--disk".into(),
                "/nonexistent/root.img".into(),
            ],
            "/nonexistent/root.img",
        ),
        (
            vec![
                "--kernel".into(),
                kernel.display().to_string(),
                "--mem".into(),
                "8M".into(),
            ],
            "too little",
        ),
        (
            vec![
                "--kernel".into(),
                kernel.display().to_string(),
                "--disk".into(),
                "x.img,bogus".into(),
            ],
            "unknown disk option",
        ),
    ];
    for (args, needle) in cases {
        let out = starling().args(["vm", "run"]).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
