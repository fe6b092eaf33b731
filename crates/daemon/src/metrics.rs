//! The daemon's metrics in Prometheus' text format, at `GET /metrics` on the API socket and,
//! with `--metrics-listen ADDR`, on a TCP port a scraper reaches: the host cache's counters
//! and sizes, each mount's counters, VMs by state, and the latency of every fetch from a
//! repository (a histogram) with the failures among them. Values are read at scrape time
//! from the counters `cache stats` and `mounts` show, so the three always agree.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use starling_store::{ObjectId, ObjectSource, Origin};

use crate::api::{MountInfo, VmState};

/// What the daemon measures as it goes (the rest is read from its state at scrape time).
#[derive(Debug, Clone)]
pub struct FetchMetrics {
    /// Seconds per object fetched from a repository, failed fetches included.
    pub latency: Histogram,
    pub failures: Counter,
}

impl Default for FetchMetrics {
    fn default() -> Self {
        FetchMetrics {
            // 1 ms to ~16 s.
            latency: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            failures: Counter::default(),
        }
    }
}

/// A repository's objects, each fetch timed and each failure counted and logged.
pub struct Timed {
    pub inner: Arc<dyn ObjectSource>,
    pub metrics: Arc<FetchMetrics>,
}

impl ObjectSource for Timed {
    fn envelope(&self, id: &ObjectId, max_len: u64) -> starling_store::Result<(Vec<u8>, Origin)> {
        let start = Instant::now();
        let r = self.inner.envelope(id, max_len);
        self.metrics.latency.observe(start.elapsed().as_secs_f64());
        if let Err(e) = &r {
            self.metrics.failures.inc();
            tracing::warn!(
                repository = %self.inner.describe(),
                object = %id.to_hex(),
                error = %e,
                "fetch failed"
            );
        }
        r
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// The state read at scrape time.
#[derive(Debug)]
struct Snapshot {
    cache: starling_store::cache::CacheStats,
    mounts: Vec<MountInfo>,
    vms: Vec<(&'static str, u64)>,
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.cache;
        counter(
            &mut e,
            "cache_hits",
            "Object reads the host cache answered",
            c.hits,
        )?;
        counter(
            &mut e,
            "cache_misses",
            "Object reads the host cache fetched from the origin",
            c.misses,
        )?;
        counter(
            &mut e,
            "cache_fetched_bytes",
            "Bytes fetched into the host cache (compressed, as transferred)",
            c.fetched_bytes,
        )?;
        counter(
            &mut e,
            "cache_evicted",
            "Objects evicted to stay under the quota",
            c.evicted,
        )?;
        counter(
            &mut e,
            "cache_refused",
            "Fetched objects refused (hash or size wrong)",
            c.refused,
        )?;
        gauge(
            &mut e,
            "cache_objects",
            "Objects in the host cache",
            c.objects as i64,
        )?;
        gauge(
            &mut e,
            "cache_bytes",
            "Bytes in the host cache",
            c.bytes as i64,
        )?;
        gauge(
            &mut e,
            "cache_quota_bytes",
            "The host cache's quota",
            c.quota as i64,
        )?;
        gauge(
            &mut e,
            "cache_pinned",
            "Objects an open file holds in the cache",
            c.pinned as i64,
        )?;
        type Per = fn(&crate::api::MountInfo) -> u64;
        let per_mount: [(&str, &str, Per); 4] = [
            (
                "mount_served_bytes",
                "File bytes a mount returned to readers",
                |m| m.counters.served,
            ),
            (
                "mount_fetched_bytes",
                "Object bytes a mount read from its source (decompressed)",
                |m| m.counters.fetched,
            ),
            ("mount_reads", "Read requests a mount answered", |m| {
                m.counters.reads
            }),
            ("mount_errors", "Reads a mount failed (EIO)", |m| {
                m.counters.errors
            }),
        ];
        for (name, help, get) in per_mount {
            let probe = ConstCounter::new(0u64);
            let mut me = e.encode_descriptor(name, help, None, probe.metric_type())?;
            for m in &self.mounts {
                let labels = [
                    (
                        "mountpoint",
                        label_value(&m.mountpoint.display().to_string()),
                    ),
                    ("image", label_value(&m.image)),
                ];
                ConstCounter::new(get(m)).encode(me.encode_family(&labels)?)?;
            }
        }
        gauge(&mut e, "mounts", "Live mounts", self.mounts.len() as i64)?;
        let probe = ConstGauge::new(0i64);
        let mut ve = e.encode_descriptor(
            "vms",
            "VMs the daemon keeps, by state",
            None,
            probe.metric_type(),
        )?;
        for (state, n) in &self.vms {
            ConstGauge::new(*n as i64).encode(ve.encode_family(&[("state", *state)])?)?;
        }
        Ok(())
    }
}

/// A label value as the exposition format quotes it: prometheus-client writes values as
/// given, and one mountpoint with a `"` or a newline would spoil the whole scrape.
fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The metrics as Prometheus' text exposition format (OpenMetrics flavour, which
/// Prometheus and its parsers read).
pub fn render(d: &crate::server::Daemon) -> String {
    let mut states: std::collections::BTreeMap<&'static str, u64> = [
        VmState::Starting,
        VmState::Running,
        VmState::Paused,
        VmState::Exited,
        VmState::Dead,
    ]
    .iter()
    .map(|s| (s.word(), 0))
    .collect();
    for v in d.vms.list() {
        *states.entry(v.state.word()).or_insert(0) += 1;
    }
    let snap = Snapshot {
        cache: d.objects.cache.stats(),
        mounts: d.mounts.list().into_iter().filter(|m| m.live).collect(),
        vms: states.into_iter().collect(),
    };
    let mut reg = Registry::with_prefix("starling");
    reg.register(
        "fetch_seconds",
        "Time to fetch one object from a repository",
        d.objects.fetch.latency.clone(),
    );
    reg.register(
        "fetch_failures",
        "Fetches from a repository that failed",
        d.objects.fetch.failures.clone(),
    );
    reg.register_collector(Box::new(snap));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_as_the_format_says() {
        assert_eq!(label_value("/mnt/plain"), "/mnt/plain");
        assert_eq!(label_value("/mnt/a\"b\\c\nd"), "/mnt/a\\\"b\\\\c\\nd");
    }
}
