//! The daemon's log: structured events (tracing) for every mount, unmount, failed fetch,
//! eviction and VM, one line each on stderr. Under systemd (`JOURNAL_STREAM` set) they go to
//! the journal natively, with their fields and levels; elsewhere as timestamped text
//! (colours only on a terminal). `STARLING_LOG` filters (`info` by default; e.g. `debug`,
//! `starling_store=debug`).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the log once per process (`starling daemon` and `starlingd` both call it; tests
/// that run a daemon in-process may call it again).
pub fn init() {
    let filter = EnvFilter::try_from_env("STARLING_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journal) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(journal.with_syslog_identifier("starlingd".into()))
                .try_init();
            return;
        }
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init();
}
