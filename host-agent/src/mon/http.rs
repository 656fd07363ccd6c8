//! MON's HTTP service (axum on tokio): `/monapi` and `/metrics`, a thin shell around
//! [`super::query`] and [`super::format`]. A handler checks the credentials, parses the URL (400 with the reason
//! when it is not a `/monapi` call), asks the supervisor, the one owner of every VM's counters,
//! for the answer's tree over a channel ([`MonCall`]), and renders it in the format asked for.
//! It never touches a VM's state itself.
//!
//! `/metrics` is the supervisor's Prometheus exposition, asked for the same way.
//!
//! The MON page (`/mon/`, [`super::page`]) is routed here too, behind the same credentials.
//!
//! HTTP basic auth guards `/monapi` and `/mon/` (not `/metrics`) when a user is configured: the expected header is computed
//! once and compared in constant time; a wrong or missing one is a 401 that does not say which
//! part was wrong.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::cache::{Epoch, RenderCache};
use super::format::{self, Element};
use super::query::{self, Format, MonQuery};
use crate::config::MonConfig;

/// What a handler asks the supervisor, with where its answer goes.
#[derive(Debug)]
pub enum MonCall {
    /// A `/monapi` query: the answer's tree.
    Query(MonQuery, oneshot::Sender<Element>),
    /// `/metrics`: the exposition text.
    Metrics(oneshot::Sender<String>),
    /// The MON page's data (`/mon/api/...`, [`super::page`]).
    Page(super::page::Ask, oneshot::Sender<super::page::Answer>),
}

/// How long a handler waits for the supervisor.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(super) struct Shared {
    supervisor: mpsc::Sender<MonCall>,
    /// The MON page's saved views.
    pub(super) views: super::page::views::ViewStore,
    /// `Basic <base64(user:password)>` when auth is on.
    expected: Option<Vec<u8>>,
    realm: String,
}

/// The service's routes, answering through `supervisor`; the MON page keeps its views in
/// `views`.
pub fn router(
    supervisor: mpsc::Sender<MonCall>,
    config: &MonConfig,
    views: super::page::views::ViewStore,
) -> Router {
    let expected = match (&config.user, &config.password) {
        (Some(user), Some(password)) => {
            Some(format!("Basic {}", base64(format!("{user}:{password}").as_bytes())).into_bytes())
        }
        _ => None,
    };
    let shared = Arc::new(Shared {
        supervisor,
        views,
        expected,
        realm: config.title.replace(['"', '\\'], "_"),
    });
    Router::new()
        .route("/monapi", get(monapi))
        .route("/monapi/", get(monapi))
        .route("/monapi/{*rest}", get(monapi))
        .route("/metrics", get(metrics))
        .merge(super::page::routes::routes())
        .with_state(shared)
}

/// Serves `router` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a: SocketAddr| a.to_string());
    tracing::info!(%addr, "MON HTTP service listening");
    let stop = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(%addr, error = %e, "MON HTTP service failed");
    }
}

pub(super) fn text(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn monapi(
    State(shared): State<Arc<Shared>>,
    cache: Option<Extension<Arc<RenderCache>>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if let Some(refused) = shared.refused(&headers) {
        return refused;
    }
    let query = match query::parse(uri.path(), uri.query()) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let format = query.format;
    let cache = cache.as_ref().map(|Extension(c)| c.as_ref());
    let body = match rendered(&shared, cache, &uri, query).await {
        Ok(body) => body,
        Err(r) => return r,
    };
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    r
}

/// `router` with MON's render cache ([`super::cache`]) on `/monapi`, invalidated through
/// `epoch`, which the supervisor bumps.
pub fn with_render_cache(router: Router, epoch: Epoch) -> Router {
    router.layer(Extension(Arc::new(RenderCache::new(epoch))))
}

/// The rendered answer to `query` (asked as `uri`): from `cache` when it holds a current one,
/// else asked of the supervisor, rendered, and kept.
async fn rendered(
    shared: &Shared,
    cache: Option<&RenderCache>,
    uri: &Uri,
    query: MonQuery,
) -> Result<Bytes, Response> {
    let key = uri
        .path_and_query()
        .map_or_else(|| uri.path(), |p| p.as_str());
    let second = crate::persist::unix_ms_now() / 1000;
    if let Some(body) = cache.and_then(|c| c.get(key, second)) {
        return Ok(body);
    }
    // Read before asking: an answer made while the counters change is kept as stale.
    let epoch = cache.map(RenderCache::epoch);
    let format = query.format;
    let (tx, rx) = oneshot::channel();
    let tree = ask(shared, MonCall::Query(query, tx), rx).await?;
    let body = Bytes::from(match format {
        Format::Xml => format::xml(&tree),
        Format::Json => format::json(&tree),
        Format::Udl => format::udl(&tree),
    });
    if let (Some(cache), Some(epoch)) = (cache, epoch) {
        cache.put(key.to_owned(), epoch, second, body.clone());
    }
    Ok(body)
}

/// `/metrics`, without credentials (Prometheus scrapes it).
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let (tx, rx) = oneshot::channel();
    let body = match ask(&shared, MonCall::Metrics(tx), rx).await {
        Ok(body) => body,
        Err(r) => return r,
    };
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

/// Sends `call` to the supervisor and waits for its answer on `rx`; a 503 when it does not
/// come.
pub(super) async fn ask<T>(
    shared: &Shared,
    call: MonCall,
    rx: oneshot::Receiver<T>,
) -> Result<T, Response> {
    let unavailable = |why: &str| text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
    if shared.supervisor.send(call).await.is_err() {
        return Err(unavailable("the host agent is shutting down"));
    }
    match tokio::time::timeout(ANSWER_LIMIT, rx).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err(unavailable("the host agent is shutting down")),
        Err(_) => Err(unavailable("the host agent did not answer in time")),
    }
}

impl Shared {
    /// The 401 asking for credentials when `headers` lack the right ones; `None` when they are
    /// right or none are configured.
    pub(super) fn refused(&self, headers: &HeaderMap) -> Option<Response> {
        if self.authorized(headers) {
            return None;
        }
        let mut r = text(StatusCode::UNAUTHORIZED, "authentication required\n".into());
        if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{}\"", self.realm)) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        Some(r)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.expected else {
            return true;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        constant_time_eq(given, expected)
    }
}

/// Whether `a == b`, in time that depends only on `b`'s length (the expected value).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, &y) in b.iter().enumerate() {
        diff |= a.get(i).copied().unwrap_or(0) ^ y;
    }
    diff == 0
}

/// Standard base64 with padding (RFC 4648), for the expected basic-auth header.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded, "{plain}");
        }
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"Basic abc", b"Basic abc"));
        assert!(!constant_time_eq(b"Basic abd", b"Basic abc"));
        assert!(!constant_time_eq(b"Basic ab", b"Basic abc"));
        assert!(!constant_time_eq(b"Basic abcd", b"Basic abc"));
        assert!(!constant_time_eq(b"", b"Basic abc"));
    }
}
