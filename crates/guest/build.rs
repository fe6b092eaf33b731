//! Compiles the guest agent (agent/starling-agent.c) with the system C compiler, statically
//! (it runs in a busybox initramfs and in images of any libc), for `starling_guest::AGENT`.

use std::path::PathBuf;
use std::process::Command;

fn fail(msg: &str) -> ! {
    eprintln!("error: building the guest agent: {msg}");
    std::process::exit(1);
}

fn main() {
    let src = "agent/starling-agent.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=STARLING_AGENT_CC");
    let out_dir = std::env::var_os("OUT_DIR").unwrap_or_else(|| fail("OUT_DIR is not set"));
    let out = PathBuf::from(out_dir).join("starling-agent");
    let cc = std::env::var("STARLING_AGENT_CC").unwrap_or_else(|_| "cc".into());
    let result = Command::new(&cc)
        .args(["-static", "-O2", "-s", "-Wall", "-o"])
        .arg(&out)
        .arg(src)
        .output();
    let output = match result {
        Ok(o) => o,
        Err(e) => fail(&format!(
            "cannot run the C compiler `{cc}`: {e} (install the Debian packages gcc and libc6-dev)"
        )),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let hint = if stderr.contains("-lc") || stderr.contains("crt1.o") {
            " (static linking needs libc.a: install the Debian package libc6-dev)"
        } else {
            ""
        };
        fail(&format!(
            "`{cc} -static -O2 {src}` failed ({}){hint}:\n{stderr}",
            output.status
        ));
    }
    for line in stderr.lines().filter(|l| l.contains("warning")) {
        println!("cargo:warning={line}");
    }
}
