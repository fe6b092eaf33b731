//! Shell completions and man pages, judged by their owners: bash completes from the script
//! `starling completions bash` prints, and groff formats every page `starling man` writes
//! without a warning.

use std::path::Path;
use std::process::Command;

fn starling(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(args)
        .output()
        .unwrap()
}

/// What bash offers after `starling WORDS…` (the last word being completed).
fn bash_completes(script: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let probe = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE='{}'\nCOMP_POINT=${{#COMP_LINE}}\n\
         _starling starling '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
        words.join(" "),
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let out = Command::new("bash").arg("-c").arg(probe).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn bash_completes_commands_and_flags_from_the_generated_script() {
    let dir = tempfile::tempdir().unwrap();
    let out = starling(&["completions", "bash"]);
    assert!(out.status.success());
    let script = dir.path().join("starling.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    assert_eq!(
        bash_completes(&script, &["starling", "ima"]),
        ["image"],
        "a command"
    );
    let vm = bash_completes(&script, &["starling", "vm", "f"]);
    assert_eq!(vm, ["fork"], "a subcommand");
    let flags = bash_completes(&script, &["starling", "vm", "fork", "--"]);
    assert!(flags.iter().any(|f| f == "--dir"), "{flags:?}");
    // The hidden helper is not offered.
    let all = bash_completes(&script, &["starling", "n"]);
    assert!(!all.iter().any(|c| c == "net-helper"), "{all:?}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = starling(&["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    // A shell it does not know: clap's one line with the ones it does, usage status.
    let out = starling(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid value 'tcsh'") && err.contains("bash"),
        "{err}"
    );
}

#[test]
fn man_pages_for_every_command_format_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man1");
    let out = starling(&["man", man.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pages: Vec<String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for want in [
        "starling.1",
        "starling-image-import.1",
        "starling-vm-fork.1",
        "starling-run.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "{want} not in {pages:?}");
    }
    assert!(!pages.iter().any(|p| p.contains("net-helper")), "{pages:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("{} man pages in", pages.len())),
        "{said}"
    );
    // groff, warnings on, formats each page without complaint (-k: through preconv, as man
    // does, for the UTF-8 in help texts).
    for p in &pages {
        let out = Command::new("groff")
            .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
            .arg(man.join(p))
            .output();
        let out = match out {
            Ok(o) => o,
            Err(_) => return starling_testkit::skip("groff is not installed (Debian: groff-base)"),
        };
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{p}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A page says what its command does and lists its options (plain text: no overstrikes).
    let text = Command::new("groff")
        .args(["-k", "-man", "-Tutf8", "-P-cbou"])
        .arg(man.join("starling-vm-fork.1"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("--dir"), "{text}");
    assert!(text.contains("How many clones"), "{text}");
    assert!(text.contains("Fork a running VM"), "{text}");
}
