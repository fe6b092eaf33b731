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

impl Display {
    /// A spinner saying `verb`, how many `things` (files, objects) and bytes so far, and the rate.
    pub fn start(verb: &'static str, things: &'static str, counters: Arc<Progress>) -> Display {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Display {
                bar: None,
                stop,
                ticker: None,
            };
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(verb);
        let (b, s) = (bar.clone(), stop.clone());
        let started = std::time::Instant::now();
        let ticker = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let files = counters.files.load(Ordering::Relaxed);
                let bytes = counters.bytes.load(Ordering::Relaxed);
                let rate = bytes as f64 / started.elapsed().as_secs_f64().max(0.001);
                b.set_message(format!(
                    "{files} {things}, {}, {}/s",
                    crate::format::bytes(bytes),
                    crate::format::bytes(rate as u64)
                ));
                b.tick();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Display {
            bar: Some(bar),
            stop,
            ticker: Some(ticker),
        }
    }
}

impl Display {
    /// A spinner saying `what` with the time it has taken, for a long step that has nothing
    /// to count (a pool's first boot); silent when stderr is not a terminal.
    pub fn spinner(what: String) -> Display {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Display {
                bar: None,
                stop,
                ticker: None,
            };
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(what);
        bar.enable_steady_tick(Duration::from_millis(100));
        Display {
            bar: Some(bar),
            stop,
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
