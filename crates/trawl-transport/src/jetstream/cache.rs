//! This node's recently fetched payload bytes, and fetches under way
//! shared by every group that asks for the same bytes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::OnceCell;

pub(super) use crate::bounded::BoundedCache as BlobCache;

/// Fetches under way, by sha256, each shared by everyone waiting for it.
pub(super) type Inflight =
    std::sync::Mutex<HashMap<String, Arc<OnceCell<Result<Bytes, FetchFailed>>>>>;

/// A shared fetch's failure, kept apart so that "gone" stays distinct from
/// "unreachable for now" for every caller.
#[derive(Clone)]
pub(super) enum FetchFailed {
    Missing(String),
    Corrupt(String, String),
    Unavailable(String),
}
