//! The ways to one repository: its own URL and its mirrors (plain copies of the repository
//! directory, as CernVM-FS's stratum 1s), each directly or through HTTP caching proxies, in
//! the order the user gave them. A route that fails (no connection, a timeout, a server error,
//! a file that does not verify) is set aside for a back-off that doubles with each failure
//! (1 s up to a minute) and the next one is used, so a dead mirror or proxy costs seconds, not
//! an outage. Everything is verified by the one TUF root of the repository whichever route
//! served it: metadata by tough, objects by their content address.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use url::Url;

use crate::error::{innermost, invalid, Error, Result};
use crate::pull::{ClientOptions, Remote};

/// No byte from the server for this long fails the request.
const STALL: Duration = Duration::from_secs(5);
/// The back-off after a route's first failure; it doubles with each further one.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How a route reaches its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxy {
    /// As the environment says (`http_proxy`, `https_proxy`, `no_proxy`), else directly.
    Environment,
    /// Directly, whatever the environment says (`DIRECT` in a proxy list, as in CernVM-FS).
    Direct,
    /// Through this HTTP proxy.
    Via(Url),
}

impl Proxy {
    /// `DIRECT` or a proxy URL (`http://squid:3128`).
    pub fn parse(s: &str) -> Result<Proxy> {
        if s.eq_ignore_ascii_case("direct") {
            return Ok(Proxy::Direct);
        }
        let u = Url::parse(s).map_err(|e| {
            invalid(
                format!("proxy {s:?}"),
                format!("{e}: give http://HOST:PORT or DIRECT"),
            )
        })?;
        if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
            return Err(invalid(
                format!("proxy {s:?}"),
                "give http://HOST:PORT (or https://) or DIRECT; SOCKS proxies are not supported",
            ));
        }
        Ok(Proxy::Via(u))
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proxy::Environment => f.write_str("environment's proxy"),
            Proxy::Direct => f.write_str("DIRECT"),
            Proxy::Via(u) => write!(f, "{u}"),
        }
    }
}

/// One way to the repository: a base URL through a proxy.
#[derive(Debug)]
pub struct Route {
    pub base: Url,
    pub proxy: Proxy,
    pub(crate) client: reqwest::Client,
    health: Mutex<Health>,
}

#[derive(Debug, Default)]
struct Health {
    failures: u32,
    down_until: Option<Instant>,
}

impl Route {
    pub(crate) fn is_file(&self) -> bool {
        self.base.scheme() == "file"
    }

    /// For messages: the URL, and the proxy when there is one.
    pub fn describe(&self) -> String {
        match &self.proxy {
            Proxy::Via(p) => format!("{} through {p}", self.base),
            Proxy::Direct | Proxy::Environment => self.base.to_string(),
        }
    }
}

/// Every route to one repository, shared by all the requests of a client.
#[derive(Debug)]
pub struct Routes {
    /// The repository's own URL: what its trust state and every URL tough asks for are under.
    identity: Url,
    routes: Vec<Route>,
    notify: Option<fn(&str)>,
}

impl Routes {
    /// The routes of `remote` (its URL, then its mirrors), each through each of the options'
    /// proxies in turn (or as the environment says, when the options name none).
    pub fn new(remote: &Remote, opts: &ClientOptions) -> Result<Arc<Routes>> {
        let proxies = if opts.proxies.is_empty() {
            vec![Proxy::Environment]
        } else {
            opts.proxies.clone()
        };
        let mut clients: Vec<(Proxy, reqwest::Client)> = Vec::new();
        for p in &proxies {
            if clients.iter().any(|(q, _)| q == p) {
                continue;
            }
            let b = reqwest::Client::builder()
                .timeout(opts.timeout)
                // A server that stops sending (stalled, its host gone) fails a read in
                // seconds, while a slow but moving download has the whole timeout.
                .read_timeout(STALL.min(opts.timeout))
                .connect_timeout(opts.connect_timeout.min(opts.timeout));
            let b = match p {
                Proxy::Environment => b,
                Proxy::Direct => b.no_proxy(),
                Proxy::Via(u) => b.proxy(
                    reqwest::Proxy::all(u.as_str())
                        .map_err(|e| invalid(format!("proxy {u}"), e.to_string()))?,
                ),
            };
            let client = b
                .build()
                .map_err(|e| invalid("HTTP client", e.to_string()))?;
            clients.push((p.clone(), client));
        }
        let mut routes = Vec::new();
        for base in std::iter::once(&remote.base).chain(&remote.mirrors) {
            for (proxy, client) in &clients {
                // A directory needs no proxy: one route each.
                if base.scheme() == "file" && routes.iter().any(|r: &Route| r.base == *base) {
                    continue;
                }
                routes.push(Route {
                    base: base.clone(),
                    proxy: proxy.clone(),
                    client: client.clone(),
                    health: Mutex::new(Health::default()),
                });
            }
        }
        Ok(Arc::new(Routes {
            identity: remote.base.clone(),
            routes,
            notify: opts.notify,
        }))
    }

    /// The routes of `remote` with these options, shared by every client of it in this
    /// process (metadata, objects, every mount of the daemon), so that what one request learnt
    /// about a dead mirror the next one knows too, and connections are reused.
    pub fn shared(remote: &Remote, opts: &ClientOptions) -> Result<Arc<Routes>> {
        static SHARED: OnceLock<Mutex<HashMap<String, Arc<Routes>>>> = OnceLock::new();
        let key = format!(
            "{} {:?} {:?} {:?} {:?} {}",
            remote.base,
            remote.mirrors,
            opts.proxies,
            opts.timeout,
            opts.connect_timeout,
            opts.notify.is_some()
        );
        let mut g = SHARED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(r) = g.get(&key) {
            return Ok(r.clone());
        }
        // Only a cache: a client naming ever new repositories does not grow it without end.
        if g.len() >= 256 {
            g.clear();
        }
        let r = Routes::new(remote, opts)?;
        g.insert(key, r.clone());
        Ok(r)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn route(&self, i: usize) -> &Route {
        &self.routes[i]
    }

    /// The order to try the routes in now: those not backing off as configured, then those
    /// backing off, soonest back first (when every route failed lately, one is still tried).
    pub fn order(&self) -> Vec<usize> {
        let now = Instant::now();
        let mut up = Vec::new();
        let mut down = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            let h = r.health.lock().unwrap_or_else(|p| p.into_inner());
            match h.down_until {
                Some(t) if t > now => down.push((t, i)),
                _ => up.push(i),
            }
        }
        down.sort();
        up.extend(down.into_iter().map(|(_, i)| i));
        up
    }

    /// `url` (under the repository's own URL) as route `i` serves it.
    pub fn rebase(&self, i: usize, url: &Url) -> Url {
        let base = &self.routes[i].base;
        match url.as_str().strip_prefix(self.identity.as_str()) {
            Some(rel) if base != &self.identity => base.join(rel).unwrap_or_else(|_| url.clone()),
            _ => url.clone(),
        }
    }

    /// Route `i` failed: set it aside for a while. True when this failure took it out of
    /// line (not when it was already set aside by a request running beside this one).
    pub fn failed(&self, i: usize) -> bool {
        let r = &self.routes[i];
        let mut h = r.health.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let was_up = h.down_until.is_none_or(|t| t <= now);
        // Requests failing together on one blip count once: the back-off doubles per failure
        // of the route, not per request that met it.
        if was_up {
            h.failures = h.failures.saturating_add(1);
            let backoff = FIRST_BACKOFF
                .saturating_mul(1 << (h.failures - 1).min(6))
                .min(MAX_BACKOFF);
            h.down_until = Some(now + backoff);
        }
        was_up
    }

    /// Route `served` answered after the routes in `failed` did not: say so, once per route
    /// that went out of line, to whoever listens (a pull goes on; the operator wants to know).
    pub(crate) fn took_over(&self, served: usize, failed: &[(usize, String)]) {
        let Some(say) = self.notify else { return };
        for (i, reason) in failed {
            let backoff = {
                let h = self.routes[*i]
                    .health
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                h.down_until.map_or(0, |t| {
                    t.saturating_duration_since(Instant::now()).as_secs() + 1
                })
            };
            say(&format!(
                "{}: {reason}; {} serves instead (the failed one is set aside for {backoff}s)",
                self.routes[*i].describe(),
                self.routes[served].describe(),
            ));
        }
    }

    /// Route `i` answered: it is first in line again.
    pub fn succeeded(&self, i: usize) {
        let mut h = self.routes[i]
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if h.failures != 0 {
            *h = Health::default();
        }
    }

    /// The error for a request every route failed: each route's reason, once.
    pub(crate) fn all_failed(&self, url: &Url, reasons: Vec<(usize, String)>) -> Error {
        let mut it = reasons.into_iter();
        let Some((first, reason)) = it.next() else {
            return Error::Fetch {
                url: url.to_string(),
                reason: "no route to the repository".into(),
            };
        };
        let mut reason = if self.routes[first].proxy == Proxy::Environment
            || self.routes[first].proxy == Proxy::Direct
        {
            reason
        } else {
            format!("through {}: {reason}", self.routes[first].proxy)
        };
        for (i, r) in it {
            reason.push_str(&format!("; {}: {r}", self.routes[i].describe()));
        }
        Error::Fetch {
            url: self.rebase(first, url).to_string(),
            reason,
        }
    }
}

/// tough's transport over the routes: each file from the first route that answers. A server
/// that says the file is not there (404, 403, 410) is an answer (TUF asks for the next root
/// version expecting that), not a failure.
#[derive(Debug, Clone)]
pub(crate) struct RoutedTransport {
    routes: Arc<Routes>,
    /// The route that served the last file: the one to blame when it does not verify.
    last: Arc<AtomicUsize>,
    /// Whether a request found no route that answered.
    exhausted: Arc<AtomicBool>,
}

impl RoutedTransport {
    pub(crate) fn new(routes: Arc<Routes>) -> RoutedTransport {
        RoutedTransport {
            routes,
            last: Arc::new(AtomicUsize::new(usize::MAX)),
            exhausted: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(crate) fn exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Relaxed)
    }

    pub(crate) fn last_served(&self) -> Option<usize> {
        Some(self.last.load(Ordering::Relaxed)).filter(|&i| i != usize::MAX)
    }
}

#[tough::async_trait]
impl tough::Transport for RoutedTransport {
    async fn fetch(&self, url: Url) -> Result<tough::TransportStream, tough::TransportError> {
        use futures::StreamExt;
        use tough::{TransportError, TransportErrorKind as K};
        let mut reasons = Vec::new();
        let mut newly_down = Vec::new();
        let mut network = true;
        for i in self.routes.order() {
            let route = self.routes.route(i);
            let u = self.routes.rebase(i, &url);
            if route.is_file() {
                self.last.store(i, Ordering::Relaxed);
                self.routes.took_over(i, &newly_down);
                return tough::FilesystemTransport.fetch(u).await;
            }
            let resp = match route.client.get(u.clone()).send().await {
                Ok(r) => r,
                Err(e) => {
                    let why = innermost(&e);
                    network &= e.is_connect() || e.is_timeout();
                    if self.routes.failed(i) {
                        newly_down.push((i, why.clone()));
                    }
                    reasons.push((i, why));
                    continue;
                }
            };
            let status = resp.status().as_u16();
            if matches!(status, 403 | 404 | 410) {
                self.last.store(i, Ordering::Relaxed);
                self.routes.took_over(i, &newly_down);
                return Err(TransportError::new(K::FileNotFound, u.as_str()));
            }
            if !resp.status().is_success() {
                let why = format!("HTTP {}", resp.status());
                network = false;
                if self.routes.failed(i) {
                    newly_down.push((i, why.clone()));
                }
                reasons.push((i, why));
                continue;
            }
            self.last.store(i, Ordering::Relaxed);
            self.routes.succeeded(i);
            self.routes.took_over(i, &newly_down);
            let shown = u.to_string();
            let body = resp.bytes_stream().map(move |r| {
                r.map_err(|e| TransportError::new_with_cause(K::Other, shown.as_str(), e))
            });
            return Ok(Box::pin(body));
        }
        self.exhausted.store(true, Ordering::Relaxed);
        let e = self.routes.all_failed(&url, reasons);
        let (shown, reason) = match e {
            Error::Fetch { url, reason } => (url, reason),
            other => (url.to_string(), other.to_string()),
        };
        // As an error of the stream, not of the request: tough takes a request that fails
        // for the next root version as "no newer root" and goes on; a repository that cannot
        // be reached at all must fail there, as with tough's own HTTP transport.
        let e = TransportError::new_with_cause(K::Other, shown, NoRoute { reason, network });
        Ok(Box::pin(futures::stream::once(async move { Err(e) })))
    }
}

/// Why no route served a file: every route's reason, and whether they were all failures to
/// reach the server (refused, reset, timed out) rather than wrong answers.
#[derive(Debug)]
pub struct NoRoute {
    pub reason: String,
    pub network: bool,
}

impl std::fmt::Display for NoRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for NoRoute {}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(base: &str, mirrors: &[&str]) -> Remote {
        Remote::parse(base)
            .unwrap()
            .with_mirrors(mirrors.iter().map(|s| s.to_string()))
            .unwrap()
    }

    #[test]
    fn routes_are_each_mirror_through_each_proxy_in_order() {
        let opts = ClientOptions {
            proxies: vec![
                Proxy::parse("http://squid-a:3128").unwrap(),
                Proxy::parse("DIRECT").unwrap(),
            ],
            ..ClientOptions::default()
        };
        let r = Routes::new(&remote("http://origin/repo", &["http://m1/r/"]), &opts).unwrap();
        let shown: Vec<String> = (0..r.len()).map(|i| r.route(i).describe()).collect();
        assert_eq!(
            shown,
            [
                "http://origin/repo/ through http://squid-a:3128/",
                "http://origin/repo/",
                "http://m1/r/ through http://squid-a:3128/",
                "http://m1/r/",
            ]
        );
        let u = Url::parse("http://origin/repo/metadata/timestamp.json").unwrap();
        assert_eq!(
            r.rebase(2, &u).as_str(),
            "http://m1/r/metadata/timestamp.json"
        );
        assert_eq!(r.rebase(0, &u), u);
    }

    #[test]
    fn a_failed_route_goes_last_for_a_doubling_while_and_comes_back_on_success() {
        let r = Routes::new(
            &remote("http://a/", &["http://b/", "http://c/"]),
            &ClientOptions::default(),
        )
        .unwrap();
        assert_eq!(r.order(), [0, 1, 2]);
        assert!(r.failed(0), "out of line");
        assert_eq!(r.order(), [1, 2, 0]);
        assert!(r.failed(1));
        // Both back off; the one back sooner (the first to fail) comes before.
        assert_eq!(r.order(), [2, 0, 1]);
        assert!(!r.failed(0), "already out of line");
        // Counted once while out of line: still the first back-off.
        {
            let h = r.route(0).health.lock().unwrap();
            assert_eq!(h.failures, 1);
        }
        // Its back-off over and failing again: twice as long.
        r.route(0).health.lock().unwrap().down_until = Some(Instant::now());
        assert!(r.failed(0), "out of line again");
        {
            let h = r.route(0).health.lock().unwrap();
            assert_eq!(h.failures, 2);
            let left = h.down_until.unwrap() - Instant::now();
            assert!(left > Duration::from_millis(1500), "{left:?}");
        }
        assert_eq!(r.order(), [2, 1, 0]);
        r.succeeded(0);
        assert_eq!(r.order(), [0, 2, 1]);
    }

    #[test]
    fn proxies_are_direct_or_urls() {
        assert_eq!(Proxy::parse("direct").unwrap(), Proxy::Direct);
        assert!(Proxy::parse("squid:3128")
            .unwrap_err()
            .to_string()
            .contains("http://HOST:PORT"));
        assert!(Proxy::parse("ftp://x/").is_err());
    }
}
