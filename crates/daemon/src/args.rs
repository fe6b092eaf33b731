//! The daemon's command line, shared by `starlingd` and `starling daemon`.

use std::path::PathBuf;
use std::time::Duration;

use crate::{Config, DEFAULT_SOCKET, DEFAULT_STATE};

#[derive(Debug, Clone, clap::Args)]
pub struct DaemonArgs {
    /// State directory (host cache, mount list)
    #[arg(long, env = "STARLING_STATE", default_value = DEFAULT_STATE)]
    pub state: PathBuf,
    /// API socket
    #[arg(long, env = "STARLING_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Host cache size limit (e.g. 20G); least recently used objects are evicted beyond it
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    pub quota: u64,
    /// Seconds before a request to a repository counts as failed (reads then fail with EIO)
    #[arg(long, default_value_t = 20)]
    pub timeout: u64,
}

impl DaemonArgs {
    pub fn config(&self) -> Config {
        Config {
            state: self.state.clone(),
            socket: self.socket.clone(),
            quota: self.quota,
            timeout: Duration::from_secs(self.timeout.max(1)),
        }
    }
}

/// A size such as `4096`, `512M`, `2G` or `1.5GiB` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4096, 512M, 2G)"))?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => {
            return Err(format!(
                "{s:?}: unknown size unit {unit:?} (use K, M, G or T)"
            ))
        }
    };
    let v = n * mult as f64;
    if !(1.0..1.8e19).contains(&v) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_parse() {
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert_eq!(super::parse_size("512M"), Ok(512 << 20));
        assert_eq!(super::parse_size("1.5GiB"), Ok(3 << 29));
        assert!(super::parse_size("12Q")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(super::parse_size("big").is_err());
    }
}
