//! The MON page's routes, under the MON service's credentials: its files, and the JSON it asks
//! for (see [`super`]). A thin shell: the supervisor answers the overview and the series; the
//! views are files of [`super::views::ViewStore`], read and written off the async threads.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Redirect, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::Serialize;
use tokio::sync::oneshot;

use super::views::{self, View, ViewError};
use super::{Answer, Ask, SeriesAsk};
use crate::mon::http::{ask, text, MonCall, Shared};

/// The page's routes, for the MON service's router.
pub(in crate::mon) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/mon", get(|| async { Redirect::permanent("/mon/") }))
        .route("/mon/", get(index))
        .route("/mon/{file}", get(file))
        .route("/mon/api/overview", get(overview))
        .route("/mon/api/series", post(series))
        .route("/mon/api/views", get(list_views))
        .route("/mon/api/views/{name}", put(save_view).delete(delete_view))
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let mut r = Response::new(Body::from(
        serde_json::to_vec(value).expect("the page's answers serialize"),
    ));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn asset(path: &str) -> Response {
    let Some((content_type, bytes)) = super::asset(path) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("/mon/{path}: no such file\n"),
        );
    };
    let mut r = Response::new(Body::from(bytes));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Nothing of the page comes from elsewhere, and nothing runs that it did not bring.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn index(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(refused) = shared.refused(&headers) {
        return refused;
    }
    asset("")
}

async fn file(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(file): Path<String>,
) -> Response {
    if let Some(refused) = shared.refused(&headers) {
        return refused;
    }
    asset(&file)
}

async fn supervisor(shared: &Shared, what: Ask) -> Response {
    let (tx, rx) = oneshot::channel();
    match ask(shared, MonCall::Page(what, tx), rx).await {
        Ok(answer) => json::<Answer>(StatusCode::OK, &answer),
        Err(r) => r,
    }
}

async fn overview(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(refused) = shared.refused(&headers) {
        return refused;
    }
    supervisor(&shared, Ask::Overview).await
}

async fn series(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = shared.refused(&headers) {
        return refused;
    }
    let what: SeriesAsk = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("the series asked for: {e}\n"),
            )
        }
    };
    // A chart's counters, a view's charts: bounded like a view.
    let most = views::MAX_CHARTS * views::MAX_SERIES;
    if what.counters.len() > most {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "{} counters asked for; at most {most}\n",
                what.counters.len()
            ),
        );
    }
    supervisor(&shared, Ask::Series(what)).await
}

fn view_error(e: ViewError) -> Response {
    let status = match e {
        ViewError::BadName(_) | ViewError::Invalid { .. } => StatusCode::BAD_REQUEST,
        ViewError::NotFound(_) => StatusCode::NOT_FOUND,
        ViewError::Io { .. } | ViewError::Parse { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "MON page: views");
    }
    text(status, format!("{e}\n"))
}

/// Runs a view store operation off the async threads.
async fn blocking<T: Send + 'static>(
    shared: &Shared,
    op: impl FnOnce(&views::ViewStore) -> Result<T, ViewError> + Send + 'static,
) -> Result<T, Response> {
    let store = shared.views.clone();
    match tokio::task::spawn_blocking(move || op(&store)).await {
        Ok(r) => r.map_err(view_error),
        Err(e) => Err(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the views' task failed: {e}\n"),
        )),
    }
}

async fn list_views(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(refused) = shared.refused(&headers) {
        return refused;
    }
    match blocking(&shared, |s| s.list()).await {
        Ok(listing) => json(StatusCode::OK, &listing),
        Err(r) => r,
    }
}

async fn save_view(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(refused) = shared.refused(&headers) {
        return refused;
    }
    let view: View = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("view {name:?}: {e}\n")),
    };
    if view.name != name {
        return text(
            StatusCode::BAD_REQUEST,
            format!("the URL names view {name:?}, the body {:?}\n", view.name),
        );
    }
    match blocking(&shared, move |s| s.save(&view)).await {
        Ok(()) => text(StatusCode::OK, "saved\n".into()),
        Err(r) => r,
    }
}

async fn delete_view(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Some(refused) = shared.refused(&headers) {
        return refused;
    }
    match blocking(&shared, move |s| s.delete(&name)).await {
        Ok(()) => text(StatusCode::OK, "deleted\n".into()),
        Err(r) => r,
    }
}
