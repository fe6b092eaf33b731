//! The daemon's command line, shared by `starlingd` and `starling daemon`.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Checked, ConfigError};
use crate::{Config, DEFAULT_SOCKET, DEFAULT_STATE};

#[derive(Debug, Clone, clap::Args)]
pub struct DaemonArgs {
    /// Configuration file (TOML; docs/config.md) [default: /etc/starling/starlingd.toml when
    /// it exists]. Flags given here win over it
    #[arg(long, env = "STARLING_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration (the file, its repositories' root metadata, the flags), print
    /// the settings that would be used, and exit
    #[arg(long)]
    pub check_config: bool,
    /// State directory (host cache, mount list) [default: /var/lib/starling]
    #[arg(long, env = "STARLING_STATE")]
    pub state: Option<PathBuf>,
    /// API socket [default: /run/starling/starlingd.sock]
    #[arg(long, env = "STARLING_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Host cache size limit (e.g. 20G); least recently used objects are evicted beyond it
    /// [default: 10G]
    #[arg(long, value_parser = parse_size)]
    pub quota: Option<u64>,
    /// How long a request to a repository may take before it counts as failed (reads then
    /// fail with EIO), e.g. 20s, 2m [default: 20s]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<u64>,
    /// Serve the Prometheus metrics (`GET /metrics`, read-only) on this TCP address too,
    /// e.g. 127.0.0.1:9464; the API socket always serves them
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl DaemonArgs {
    /// The flags over the configuration file over the defaults.
    pub fn config(&self) -> Result<(Config, Checked), ConfigError> {
        let file = crate::config::load(self.config.as_deref())?;
        let config = Config {
            state: self
                .state
                .clone()
                .or_else(|| file.state.clone())
                .unwrap_or_else(|| DEFAULT_STATE.into()),
            socket: self
                .socket
                .clone()
                .or_else(|| file.socket.clone())
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            quota: self.quota.or(file.cache_size).unwrap_or(10 << 30),
            timeout: Duration::from_secs(self.timeout.or(file.timeout).unwrap_or(20).max(1)),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            proxies: file.proxies.clone(),
            repositories: file.repositories.clone(),
            config_file: file.path.clone(),
            labels: file.labels.clone(),
            groups: file.groups.clone(),
            remote_api: file.remote_api.clone(),
            users: file.users.clone(),
        };
        Ok((config, file))
    }

    /// What `starlingd` and `starling daemon` do: check the configuration, then run (or,
    /// with `--check-config`, say what would be used).
    pub fn run(&self, program: &str) -> std::process::ExitCode {
        use std::process::ExitCode;
        let (config, file) = match self.config() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{program}: configuration {e}");
                return ExitCode::from(2);
            }
        };
        if self.check_config {
            print!("{}", file.summary(&config));
            return ExitCode::SUCCESS;
        }
        match crate::server::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{program}: {e:#}");
                ExitCode::FAILURE
            }
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

/// A duration as people write it, in whole seconds: `90` (seconds), `90s`, `5m`, `2h`, `7d`,
/// `1w`, `1h 30m`. Zero and anything under a second are refused (nothing here means "no
/// time at all").
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let d = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        std::time::Duration::from_secs(t.parse().map_err(|_| format!("{s:?} is out of range"))?)
    } else {
        humantime::parse_duration(t)
            .map_err(|e| format!("{s:?} is not a duration (e.g. 90s, 5m, 2h, 7d): {e}"))?
    };
    if d.as_secs() == 0 {
        return Err(format!("{s:?}: a duration must be at least a second"));
    }
    if d.subsec_nanos() != 0 {
        return Err(format!("{s:?}: give whole seconds"));
    }
    Ok(d.as_secs())
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

    #[test]
    fn durations_parse() {
        use super::parse_duration as d;
        assert_eq!(d("90"), Ok(90));
        assert_eq!(d("90s"), Ok(90));
        assert_eq!(d("5m"), Ok(300));
        assert_eq!(d("1h 30m"), Ok(5400));
        assert_eq!(d("7d"), Ok(7 * 86400));
        assert_eq!(d("1w"), Ok(7 * 86400));
        assert!(d("0").unwrap_err().contains("at least a second"));
        assert!(d("500ms").unwrap_err().contains("at least a second"));
        assert!(d("1.5s").is_err());
        assert!(d("soon").unwrap_err().contains("is not a duration"));
        assert!(d("").is_err());
    }
}
