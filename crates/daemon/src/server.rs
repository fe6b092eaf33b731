//! The daemon process: state directory, host cache, stale-mount cleanup, the API server on
//! a unix socket, and a clean shutdown (SIGTERM, SIGINT or `POST /v1/shutdown`) that
//! unmounts everything.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Extension, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use starling_repo::pull::ClientOptions;

use crate::api::*;
use crate::caller::Caller;
use crate::mounts::Mounts;
use crate::sources::HostObjects;
use crate::{Config, DaemonError};

pub struct Daemon {
    pub config: Config,
    pub vms: crate::vms::Vms,
    pub objects: Arc<HostObjects>,
    pub mounts: Mounts,
    pub groups: Arc<crate::groups::Groups>,
    shutdown: tokio::sync::Notify,
}

impl IntoResponse for DaemonError {
    fn into_response(self) -> Response {
        let status = match &self {
            DaemonError::BadRequest(_) => StatusCode::BAD_REQUEST,
            DaemonError::NotFound(_) => StatusCode::NOT_FOUND,
            DaemonError::Conflict(_) => StatusCode::CONFLICT,
            DaemonError::Upstream(_) => StatusCode::BAD_GATEWAY,
            DaemonError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            DaemonError::Forbidden(_) => StatusCode::FORBIDDEN,
        };
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

type Shared = State<Arc<Daemon>>;

/// Runs blocking work (mounting fetches, FUSE setup, cache walks) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DaemonError> + Send + 'static,
) -> Result<T, DaemonError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DaemonError::Internal(e.to_string()))?
}

async fn status(State(d): Shared) -> Json<Status> {
    Json(Status {
        api: API_VERSION.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        state: d.config.state.clone(),
        mounts: d.mounts.list().len(),
        cache: d.objects.cache.stats(),
    })
}

async fn list_groups(State(d): Shared) -> Json<Vec<GroupStatus>> {
    Json(d.groups.list())
}

/// Over the unix socket each request carries its [`Caller`]; over TCP (other hosts, mutual
/// TLS) there is none and the whole list is answered, as to an administrator.
async fn list_mounts(State(d): Shared, caller: Option<Extension<Caller>>) -> Json<Vec<MountInfo>> {
    Json(d.mounts.list_for(caller.as_ref().map(|c| &c.0)))
}

async fn create_mount(
    State(d): Shared,
    Extension(caller): Extension<Caller>,
    Json(req): Json<MountRequest>,
) -> Result<(StatusCode, Json<MountInfo>), DaemonError> {
    let info = blocking(move || {
        let _place = d.mounts.admit(&caller)?;
        d.mounts.mount(req, &d.objects, &caller)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn delete_mount(
    State(d): Shared,
    Extension(caller): Extension<Caller>,
    Json(req): Json<UnmountRequest>,
) -> Result<Json<MountInfo>, DaemonError> {
    Ok(Json(
        blocking(move || {
            let _place = d.mounts.admit(&caller)?;
            d.mounts.unmount(&req.mountpoint, &caller)
        })
        .await?,
    ))
}

async fn commit(
    State(d): Shared,
    Extension(caller): Extension<Caller>,
    Json(req): Json<CommitRequest>,
) -> Result<(StatusCode, Json<CommitInfo>), DaemonError> {
    let info = blocking(move || d.mounts.commit(req, &caller)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn cache_stats(State(d): Shared) -> Json<CacheStats> {
    Json(d.objects.cache.stats())
}

async fn cache_gc(
    State(d): Shared,
    Json(req): Json<GcRequest>,
) -> Result<Json<CacheStats>, DaemonError> {
    Ok(Json(
        blocking(move || Ok(d.objects.cache.gc(req.target_bytes))).await?,
    ))
}

async fn cache_verify(State(d): Shared) -> Result<Json<VerifyReport>, DaemonError> {
    Ok(Json(blocking(move || Ok(d.objects.cache.verify())).await?))
}

async fn list_vms(State(d): Shared) -> Result<Json<Vec<VmInfo>>, DaemonError> {
    Ok(Json(blocking(move || Ok(d.vms.list())).await?))
}

async fn get_vm(State(d): Shared, Path(name): Path<String>) -> Result<Json<VmInfo>, DaemonError> {
    Ok(Json(blocking(move || d.vms.get(&name)).await?))
}

async fn create_vm(
    State(d): Shared,
    Json(req): Json<RunRequest>,
) -> Result<(StatusCode, Json<VmInfo>), DaemonError> {
    let info = blocking(move || crate::run::create(&d, &req)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn create_pool(
    State(d): Shared,
    Json(req): Json<PoolRequest>,
) -> Result<(StatusCode, Json<starling_vmm::pool::PoolInfo>), DaemonError> {
    let info = blocking(move || crate::pools::create(&d, &req)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn stop_vm(
    State(d): Shared,
    Path(name): Path<String>,
    Json(req): Json<StopRequest>,
) -> Result<Json<VmInfo>, DaemonError> {
    Ok(Json(blocking(move || d.vms.stop(&name, req.force)).await?))
}

async fn remove_vm(
    State(d): Shared,
    Path(name): Path<String>,
    Json(req): Json<StopRequest>,
) -> Result<Json<VmInfo>, DaemonError> {
    Ok(Json(
        blocking(move || d.vms.remove(&name, req.force)).await?,
    ))
}

async fn commit_vm(
    State(d): Shared,
    Path(name): Path<String>,
    Json(req): Json<VmCommitRequest>,
) -> Result<(StatusCode, Json<CommitInfo>), DaemonError> {
    let info = blocking(move || crate::run::commit(&d, &name, &req)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn shutdown(State(d): Shared) -> (StatusCode, Json<serde_json::Value>) {
    d.shutdown.notify_one();
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "stopping": true })),
    )
}

async fn metrics(State(d): Shared) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(&d),
    )
}

/// What the metrics port serves: the metrics, nothing else.
fn metrics_router(d: Arc<Daemon>) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(d)
}

/// What other hosts may ask over TCP (mutual TLS, `remote.rs`): reads only.
fn remote_router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/metrics", get(metrics).fallback(only_reads))
        .route("/v1/status", get(status).fallback(only_reads))
        .route("/v1/groups", get(list_groups).fallback(only_reads))
        .route("/v1/mounts", get(list_mounts).fallback(only_reads))
        .route("/v1/vms", get(list_vms).fallback(only_reads))
        .fallback(only_reads)
        .with_state(d)
}

async fn only_reads() -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(ErrorBody {
            error: "over TCP starlingd answers only GET /v1/status, /v1/groups, /v1/mounts, \
                    /v1/vms and /metrics; the rest is on its unix socket"
                .into(),
        }),
    )
        .into_response()
}

/// What a local user other than the daemon's and root may ask for.
fn user_may(method: &axum::http::Method, path: &str) -> bool {
    use axum::http::Method;
    // Not even the status: it tells the host's cache and every user's mount count.
    path == "/v1/mounts" && [Method::GET, Method::POST, Method::DELETE].contains(method)
}

/// Names each request's caller from its connection's peer credentials and refuses another
/// user what is not theirs to ask, with one line saying what they may do instead.
async fn authorize(mut req: Request, next: axum::middleware::Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<crate::local::Peer>>();
    let caller = match peer {
        Some(ConnectInfo(p)) => Caller::from_peer(p.uid, p.gid),
        // Only a router served without a socket (none is) lacks its peer: nobody's.
        None => Caller::User {
            uid: u32::MAX,
            gid: u32::MAX,
        },
    };
    if let Caller::User { uid, .. } = caller {
        if !user_may(req.method(), req.uri().path()) {
            return DaemonError::Forbidden(format!(
                "user {uid}: {} {} is for starlingd's own user ({}) and root; other users may \
                 mount images read-only onto directories they own, list and unmount their own \
                 mounts",
                req.method(),
                req.uri().path(),
                rustix::process::geteuid().as_raw()
            ))
            .into_response();
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route(
            "/v1/mounts",
            get(list_mounts).post(create_mount).delete(delete_mount),
        )
        .route("/v1/commit", post(commit))
        .route("/v1/cache", get(cache_stats))
        .route("/v1/cache/gc", post(cache_gc))
        .route("/v1/cache/verify", post(cache_verify))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/groups", get(list_groups))
        .route("/v1/vms", get(list_vms).post(create_vm))
        .route("/v1/pools", post(create_pool))
        .route("/v1/vms/{name}", get(get_vm).delete(remove_vm))
        .route("/v1/vms/{name}/stop", post(stop_vm))
        .route("/v1/vms/{name}/commit", post(commit_vm))
        .layer(axum::middleware::from_fn(authorize))
        .with_state(d)
}

/// A mirror or proxy failed and the next is taken: the operator wants to know.
fn log_route_failed(m: &str) {
    tracing::warn!("{m}");
}

/// Runs the daemon until it is told to stop; unmounts everything on the way out.
pub fn run(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    // Before any thread starts: every monitor the daemon starts (a VM's, a pool's first boot
    // and its substrates, their clones) inherits the helper that gives clones on Starling's
    // network addresses of their own.
    crate::vms::name_net_helper();
    crate::log::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    // VM directories (guest memory, consoles), writable layers and the host cache: the
    // daemon's alone.
    starling_store::cache::private_dir(&config.state)
        .with_context(|| format!("state directory {}", config.state.display()))?;
    let opts = ClientOptions {
        timeout: config.timeout,
        proxies: config.proxies.clone(),
        notify: Some(log_route_failed),
        ..ClientOptions::default()
    };
    let objects = HostObjects::open(
        &config.state.join("cache"),
        config.quota,
        opts,
        rt.handle().clone(),
    )
    .with_context(|| format!("host cache in {}", config.state.display()))?
    .with_repositories(config.repositories.clone(), config.config_file.clone());
    let objects = Arc::new(objects);
    let mounts = Mounts::new(&config.state);
    for mp in mounts.clean_stale() {
        tracing::warn!(mountpoint = %mp.display(), "detached a stale mount left by a previous daemon");
    }
    if let Some(dir) = config.socket.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("socket directory {}", dir.display()))?;
    }
    // A socket file left by a daemon that died; a live daemon still answers on it.
    if config.socket.exists() {
        if std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
            anyhow::bail!(
                "another starlingd is listening on {}",
                config.socket.display()
            );
        }
        std::fs::remove_file(&config.socket)
            .with_context(|| format!("removing stale socket {}", config.socket.display()))?;
    }
    let object_socket = config.objects_socket();
    crate::objects::ObjectServer::new(objects.clone())
        .listen(&object_socket)
        .with_context(|| format!("object socket {}", object_socket.display()))?;
    let (vms, said) = crate::vms::Vms::open(&config.state);
    for line in said {
        tracing::info!("{line}");
    }
    let groups = Arc::new(crate::groups::Groups::default());
    groups.follow(
        objects.clone(),
        &config.state,
        config.labels.clone(),
        config.groups.clone(),
    );
    let d = Arc::new(Daemon {
        config: config.clone(),
        vms,
        objects: objects.clone(),
        mounts,
        groups,
        shutdown: tokio::sync::Notify::new(),
    });
    let result = rt.block_on(async {
        let listener = crate::local::bind(&config.socket, &config.users)
            .with_context(|| format!("listening on {}", config.socket.display()))?;
        let metrics_addr = match config.metrics_listen {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("metrics address {addr}"))?;
                let bound = l.local_addr()?;
                let app = metrics_router(d.clone());
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(l, app).await {
                        tracing::error!(error = %e, "metrics listener failed");
                    }
                });
                Some(bound)
            }
            None => None,
        };
        let remote_addr = match &config.remote_api {
            Some(api) => {
                let l = crate::remote::listen(api)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let bound = axum::serve::Listener::local_addr(&l)?;
                let app = remote_router(d.clone());
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(l, app).await {
                        tracing::error!(error = %e, "remote API failed");
                    }
                });
                Some(bound)
            }
            None => None,
        };
        tracing::info!(
            remote_api = %remote_addr.map_or("off".into(), |a| format!("https://{a}/ (mutual TLS)")),
            state = %config.state.display(),
            quota = config.quota,
            socket = %config.socket.display(),
            metrics = %metrics_addr.map_or("the API socket only".into(), |a| format!("http://{a}/metrics")),
            "starlingd ready"
        );
        println!("ready {}", config.socket.display());
        let d2 = d.clone();
        let stop = async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = d2.shutdown.notified() => {},
                _ = tokio::signal::ctrl_c() => {},
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
            }
        };
        axum::serve(
            listener,
            router(d.clone())
                .into_make_service_with_connect_info::<crate::local::Peer>(),
        )
            .with_graceful_shutdown(stop)
            .await
            .context("API server")
    });
    tracing::info!("shutting down; unmounting");
    d.mounts.unmount_all();
    let _ = std::fs::remove_file(&config.socket);
    let _ = std::fs::remove_file(&object_socket);
    result
}
