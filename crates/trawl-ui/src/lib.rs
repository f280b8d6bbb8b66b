//! `trawl ui`: a local results page over the embedded SQLite store. One
//! search box (digests, names, rules, mime types, addresses, sensors), a
//! page per file (every worker's findings, the sensor's metadata, the
//! archive tree it came from, its replays), an overview, and the same as
//! JSON under `/api/`. The store is opened read-only; the pages carry
//! everything they show and run no script.

mod page;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

pub use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("cannot open {0}: {1}")]
    Open(PathBuf, rusqlite::Error),
    #[error("{0} is not a trawl results store (no results table): {1}")]
    NotAStore(PathBuf, rusqlite::Error),
    #[error("reading the store: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

#[derive(Debug, Deserialize)]
struct Search {
    #[serde(default)]
    q: String,
    page: Option<usize>,
}

/// Run a store query off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, UiError> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure(e.to_string()))?
        .map_err(|e| Failure(e.to_string()))
}

/// A request the store could not answer.
struct Failure(String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        tracing::warn!(error = %self.0, "ui request failed");
        (StatusCode::INTERNAL_SERVER_ERROR, self.0).into_response()
    }
}

async fn home(State(store): State<Store>, Query(s): Query<Search>) -> Result<Response, Failure> {
    let q = s.q.trim().to_owned();
    if q.is_empty() && s.page.is_none() {
        let (overview, recent) =
            blocking(move || Ok((store.overview()?, store.search("", 1)?))).await?;
        return Ok(Html(page::overview(&overview, &recent)).into_response());
    }
    let found = blocking(move || store.search(&q, s.page.unwrap_or(1))).await?;
    Ok(Html(page::search(&found)).into_response())
}

async fn file(State(store): State<Store>, Path(sha256): Path<String>) -> Result<Response, Failure> {
    let wanted = sha256.clone();
    Ok(match blocking(move || store.file(&wanted)).await? {
        Some(view) => Html(page::file(&view)).into_response(),
        None => (StatusCode::NOT_FOUND, Html(page::not_found(&sha256))).into_response(),
    })
}

async fn api_search(
    State(store): State<Store>,
    Query(s): Query<Search>,
) -> Result<Response, Failure> {
    let found = blocking(move || store.search(&s.q, s.page.unwrap_or(1))).await?;
    Ok(Json(found).into_response())
}

async fn api_file(
    State(store): State<Store>,
    Path(sha256): Path<String>,
) -> Result<Response, Failure> {
    let wanted = sha256.clone();
    Ok(match blocking(move || store.file(&wanted)).await? {
        Some(view) => Json(view).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "no such file", "sha256": sha256})),
        )
            .into_response(),
    })
}

async fn api_overview(State(store): State<Store>) -> Result<Response, Failure> {
    let overview = blocking(move || store.overview()).await?;
    Ok(Json(overview).into_response())
}

/// The page's routes over `store`.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/file/{sha256}", get(file))
        .route("/api/search", get(api_search))
        .route("/api/file/{sha256}", get(api_file))
        .route("/api/overview", get(api_overview))
        .layer(axum::middleware::map_response(
            |mut r: Response| async move {
                r.headers_mut().insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    header::HeaderValue::from_static("nosniff"),
                );
                r
            },
        ))
        .with_state(store)
}

/// Serve the page on `addr` until the process is stopped.
pub async fn serve(store: Store, addr: SocketAddr) -> Result<(), UiError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| UiError::Listen(addr, e))?;
    let local = listener.local_addr().map_err(UiError::Serve)?;
    tracing::info!(url = %format!("http://{local}/"), "results page");
    axum::serve(listener, router(store))
        .await
        .map_err(UiError::Serve)
}
