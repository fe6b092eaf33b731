//! `starling repo serve`: the repository directory over HTTP. Static files only (any web
//! server can do the same; the tests check nginx does): Range and conditional requests from
//! tower-http, `Cache-Control: immutable` on content-addressed files (objects, consistent
//! snapshot targets and versioned metadata), a short max-age on `timestamp.json`, ETags on
//! content-addressed files (their name is their hash), and an access log on stderr.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tower_http::services::ServeDir;

use crate::error::{invalid, IoContext, Result};

pub fn router(dir: &Path) -> Router {
    // Hidden files (.lock, .staging) are not part of the repository.
    let files = ServeDir::new(dir).append_index_html_on_directories(false);
    Router::new()
        .fallback_service(files)
        .layer(middleware::from_fn(headers))
}

async fn headers(req: Request<Body>, next: Next) -> Response {
    let started = Instant::now();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let hidden = path.split('/').any(|c| c.starts_with('.'));
    let mut resp = if hidden {
        Response::builder()
            .status(404)
            .body(Body::empty())
            .unwrap_or_default()
    } else {
        next.run(req).await
    };
    let name = path.rsplit('/').next().unwrap_or("");
    let immutable = path.starts_with("/objects/")
        || path.starts_with("/targets/")
        || (path.starts_with("/metadata/")
            && name
                .split('.')
                .next()
                .is_some_and(|v| v.parse::<u64>().is_ok()));
    let ok = resp.status().is_success();
    let h = resp.headers_mut();
    if ok {
        if immutable {
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!(
                "\"{}\"",
                path.trim_start_matches('/').replace('/', "")
            )) {
                h.insert(header::ETAG, v);
            }
        } else {
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=10"),
            );
        }
    }
    eprintln!(
        "{method} {path}{} {} {}ms",
        range.map(|r| format!(" [{r}]")).unwrap_or_default(),
        resp.status().as_u16(),
        started.elapsed().as_millis()
    );
    resp
}

/// Serves `dir` on `listen` until the process is stopped; prints the address bound.
pub async fn serve(dir: PathBuf, listen: &str) -> Result<()> {
    crate::meta::Repo::open(crate::backend::Backend::Dir(dir.clone())).await?;
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| invalid(format!("--listen {listen:?}"), format!("{e}")))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .at(format!("listening on {addr}"))?;
    let local = listener.local_addr().at("listener")?;
    println!("serving {} on http://{local}/", dir.display());
    // Without TCP_NODELAY, small responses on a kept-alive connection wait ~40 ms for the
    // peer's delayed ACK.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(&dir)).await.at("HTTP server")
}
