//! What Starling's tests share about the machine they run on: skips that cannot go unseen.
//!
//! `cargo test` hides everything a passing test prints, so a test that returned early because
//! something was missing would read "ok". Instead such a test calls [`skip`]:
//!
//! - with `CI=true` it fails: CI must have everything the tests need (KVM, a C compiler for
//!   the test guest, FUSE, root, network namespaces, the Debian fixtures, the judges from
//!   Debian and PyPI);
//! - elsewhere it prints one loud line and appends it to the file named by
//!   `STARLING_SKIP_LOG`, which `test.sh` prints at the end of the run.
//!
//! [`skip_part`] is for what no machine of this kind can do (booting Linux on a software
//! KVM): recorded the same way, never a failure. [`note`] records what must be seen even when
//! the test passes (a tier-2 test host that died and was replaced).
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Whether this run is CI's (`CI=true`, as CI sets it and `.ci/run` exports it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The test cannot run here because `why`. Fails under CI; otherwise recorded loudly and the
/// caller returns.
#[track_caller]
pub fn skip(why: &str) {
    if in_ci() {
        panic!("CI=true and this test cannot run: {why}");
    }
    record("SKIP", why);
}

/// Part of a test that no machine of this kind can run (said by `why`): recorded, never a
/// failure, also under CI.
pub fn skip_part(why: &str) {
    record("SKIP-PART", why);
}

/// Something a passing test did that must still be seen (`kind` is one word, e.g. RETRY).
pub fn note(kind: &str, what: &str) {
    record(kind, what);
}

/// Starts `cmd` whose program this test process has just written. Until another test
/// thread's child execs, it holds every descriptor the process had open when it forked,
/// the new program's write descriptor included, and exec fails with ETXTBSY: retried for a
/// few seconds, as that child execs or exits within microseconds.
pub fn spawn_written(cmd: &mut Command) -> std::io::Result<Child> {
    let started = Instant::now();
    loop {
        match cmd.spawn() {
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && started.elapsed() < Duration::from_secs(5) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// `KIND test-binary::test-name: what` on stderr and in the skip log.
fn record(kind: &str, what: &str) {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| match s.rsplit_once('-') {
            // Cargo names test binaries NAME-HASH.
            Some((name, hash)) if hash.len() == 16 => name.to_owned(),
            _ => s,
        })
        .unwrap_or_default();
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let what = what.trim().replace('\n', " | ");
    let line = format!("{kind} {binary}::{test}: {what}");
    eprintln!("\n*** {line} ***\n");
    if let Some(path) = std::env::var_os("STARLING_SKIP_LOG") {
        // One append per line: tests run in parallel threads and processes.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            eprintln!(
                "cannot append to STARLING_SKIP_LOG {}: {e}",
                path.to_string_lossy()
            );
        }
    }
}

/// Certificates for tests of what goes between hosts, made with openssl in `dir` (keys 0600):
/// a CA (`ca.pem`), a host certificate for 127.0.0.1 (`host.pem`, `host.key`; server and
/// client use) and a client certificate (`client.*`) it signed, and a client certificate of
/// another CA (`stranger.*`).
pub fn tls_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            o.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (key, pem, subj) = (
            format!("{ca}.key"),
            format!("{ca}.pem"),
            format!("/CN={ca}"),
        );
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        a.extend(["-keyout", &key, "-out", &pem, "-subj", &subj, "-days", "2"]);
        run(&a);
    }
    for (name, ca, ext) in [
        (
            "host",
            "ca",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth",
        ),
        ("client", "ca", "extendedKeyUsage=clientAuth"),
        ("stranger", "other-ca", "extendedKeyUsage=clientAuth"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let mut a = vec!["req"];
        a.extend(ec);
        let (key, csr, subj) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("/CN={name}"),
        );
        a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        run(&a);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
        std::fs::set_permissions(
            dir.join(&key),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }
}

/// Polls `f` until it holds, failing the test naming `what` after `secs` seconds.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_land_in_the_log_named_by_the_environment() {
        let dir = std::env::temp_dir().join(format!("starling-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips");
        std::env::set_var("STARLING_SKIP_LOG", &log);
        super::skip_part("two\nlines");
        super::note("RETRY", "a dead host");
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("SKIP-PART starling_testkit::tests::lines_land")
                && lines[0].ends_with(": two | lines"),
            "{text}"
        );
        assert!(lines[1].starts_with("RETRY "), "{text}");
    }
}
