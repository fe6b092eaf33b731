//! Shell completions and man pages, generated from the command line's own definitions (so
//! they can never describe commands that are not there).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
pub fn completions(shell: clap_complete::Shell) -> Result<ExitCode> {
    let mut cmd = crate::cli_command();
    clap_complete::generate(shell, &mut cmd, "starling", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

pub fn man(dir: &Path) -> Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    clap_mangen::generate_to(crate::cli_command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    let pages = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("starling") && name.ends_with(".1")
        })
        .count();
    eprintln!("{pages} man pages in {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    /// Every argument of every command a user can see says what it is (`--help`, the man
    /// pages and the completions' descriptions all come from it).
    #[test]
    fn every_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        let mut cmd = crate::cli_command();
        cmd.build();
        walk(&cmd, "starling", &mut missing);
        assert!(
            missing.is_empty(),
            "arguments without help text:\n{}",
            missing.join("\n")
        );
    }

    /// `--store` is offered by the commands that open a store and by no other, and given after
    /// one of them it is the store used.
    #[test]
    fn only_commands_that_use_a_store_offer_it() {
        fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, bool)>) {
            let has = cmd.get_arguments().any(|a| a.get_id() == "store");
            out.push((path.to_string(), has));
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                walk(sub, &format!("{path} {}", sub.get_name()), out);
            }
        }
        let mut cmd = crate::cli_command();
        cmd.build();
        let mut all = Vec::new();
        walk(&cmd, "starling", &mut all);
        let offers = |p: &str| {
            all.iter()
                .find(|(q, _)| q == p)
                .unwrap_or_else(|| panic!("no command {p}"))
                .1
        };
        for p in [
            "starling",
            "starling image ls",
            "starling image import",
            "starling pull",
            "starling run",
            "starling repo ls",
            "starling repo trust ls",
            "starling repo trust rm",
            "starling vm kernel fetch",
            "starling vm initramfs",
            "starling pool create",
        ] {
            assert!(offers(p), "{p} uses a store and should offer --store");
        }
        for p in [
            "starling ps",
            "starling exec",
            "starling mounts",
            "starling repo serve",
            "starling repo init",
            "starling vm run",
            "starling vm fork",
            "starling pool run",
            "starling completions",
        ] {
            assert!(!offers(p), "{p} never opens a store but offers --store");
        }
        let m = crate::cli_command()
            .try_get_matches_from(["starling", "--store", "/a", "image", "ls", "--store", "/b"])
            .unwrap();
        assert_eq!(crate::store_given(&m), Some("/b".into()));
        let m = crate::cli_command()
            .try_get_matches_from(["starling", "--store", "/a", "image", "ls"])
            .unwrap();
        assert_eq!(crate::store_given(&m), Some("/a".into()));
        let e = crate::cli_command()
            .try_get_matches_from(["starling", "ps", "--store", "/a"])
            .expect_err("ps takes no --store");
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
    }
}
