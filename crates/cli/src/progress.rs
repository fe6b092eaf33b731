//! Progress on a terminal (files, bytes, rate), silent when stderr is not one.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use starling_image::chunk::Progress;

pub struct Display {
    bar: Option<ProgressBar>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

/// Runs `work` with a fresh set of counters shown as `verb`, `things`, bytes and rate on a
/// terminal; the display is gone when `work` returns, before any summary or error is said.
pub fn showing<T>(
    verb: &'static str,
    things: &'static str,
    work: impl FnOnce(&Arc<Progress>) -> T,
) -> T {
    let counters = Arc::new(Progress::default());
    let _display = Display::start(verb, things, counters.clone());
    work(&counters)
}

impl Display {
    /// A spinner saying `verb`, how many `things` (files, objects) and bytes so far, and the rate.
    fn start(verb: &'static str, things: &'static str, counters: Arc<Progress>) -> Display {
        let Some(mut d) = Display::bar("{spinner} {prefix} {msg} [{elapsed}]") else {
            return Display::silent();
        };
        let Some(bar) = d.bar.clone() else {
            return d;
        };
        bar.set_prefix(verb);
        let s = d.stop.clone();
        let started = std::time::Instant::now();
        d.ticker = Some(std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let files = counters.files.load(Ordering::Relaxed);
                let bytes = counters.bytes.load(Ordering::Relaxed);
                let rate = bytes as f64 / started.elapsed().as_secs_f64().max(0.001);
                bar.set_message(format!(
                    "{files} {things}, {}, {}/s",
                    crate::format::bytes(bytes),
                    crate::format::bytes(rate as u64)
                ));
                bar.tick();
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
        d
    }

    /// A spinner saying `what` with the time it has taken, for a long step that has nothing
    /// to count (a pool's first boot).
    pub fn spinner(what: String) -> Display {
        let Some(d) = Display::bar("{spinner} {msg} [{elapsed}]") else {
            return Display::silent();
        };
        if let Some(bar) = &d.bar {
            bar.set_message(what);
            bar.enable_steady_tick(Duration::from_millis(100));
        }
        d
    }

    /// A spinner in `template`, or `None` when stderr is not a terminal.
    fn bar(template: &str) -> Option<Display> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        let mut d = Display::silent();
        d.bar = Some(bar);
        Some(d)
    }

    fn silent() -> Display {
        Display {
            bar: None,
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            ticker: None,
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
