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
}
