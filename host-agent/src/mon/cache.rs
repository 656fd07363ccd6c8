//! MON's render cache: a rendered `/monapi` answer is kept and served again while the counters
//! it was made from have not changed, so that a busy poller costs a map lookup instead of a
//! round trip to the supervisor, a tree and a rendering.
//!
//! The supervisor, the one owner of the counters, bumps an [`Epoch`] whenever anything an
//! answer is made of changes (a counter schema or values frame taken, a VM's monitors
//! reported, a VM gone, the alarm rules changed, a reload). A handler reads the epoch *before*
//! it asks the supervisor and stores the answer under it, so an answer made while the counters
//! changed is never served as current. An entry is also only good within the Unix second it
//! was made in: the root's `timestamp` attribute (seconds) stays true.
//!
//! Keys are the request's path and query as sent (already checked by [`super::query::parse`]
//! and bounded by its URL limit); at most [`CAPACITY`] entries, the map is emptied when full.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

/// Entries kept at most.
pub const CAPACITY: usize = 4096;

/// The counters' version: bumped by the supervisor on every change an answer could show.
#[derive(Debug, Clone, Default)]
pub struct Epoch(Arc<AtomicU64>);

impl Epoch {
    /// Something an answer is made of changed.
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
struct Entry {
    epoch: u64,
    second: u64,
    body: Bytes,
}

/// The rendered answers.
#[derive(Debug)]
pub struct RenderCache {
    epoch: Epoch,
    entries: RwLock<HashMap<String, Entry>>,
}

impl RenderCache {
    pub fn new(epoch: Epoch) -> RenderCache {
        RenderCache {
            epoch,
            entries: RwLock::new(HashMap::new()),
        }
    }

    /// The epoch now, to be read before the answer is asked for.
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// The answer kept for `key`, if it was made at the current epoch within `second`.
    pub fn get(&self, key: &str, second: u64) -> Option<Bytes> {
        let epoch = self.epoch.get();
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|e| e.epoch == epoch && e.second == second)
            .map(|e| e.body.clone())
    }

    /// Keeps `body`, made from the counters at `epoch` within `second`.
    pub fn put(&self, key: String, epoch: u64, second: u64, body: Bytes) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CAPACITY && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(
            key,
            Entry {
                epoch,
                second,
                body,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_served_again_until_the_epoch_or_the_second_moves() {
        let epoch = Epoch::default();
        let cache = RenderCache::new(epoch.clone());
        let made_at = cache.epoch();
        cache.put("/monapi/val".into(), made_at, 100, Bytes::from_static(b"a"));

        assert_eq!(cache.get("/monapi/val", 100).as_deref(), Some(&b"a"[..]));
        assert_eq!(cache.get("/monapi/val?fmt=json", 100), None);
        assert_eq!(cache.get("/monapi/val", 101), None, "another second");
        epoch.bump();
        assert_eq!(cache.get("/monapi/val", 100), None, "the counters changed");
    }

    #[test]
    fn an_answer_made_while_the_counters_changed_is_not_served() {
        let epoch = Epoch::default();
        let cache = RenderCache::new(epoch.clone());
        let before = cache.epoch();
        epoch.bump(); // a values frame lands while the answer is being made
        cache.put("/monapi/val".into(), before, 7, Bytes::from_static(b"old"));

        assert_eq!(cache.get("/monapi/val", 7), None);
    }

    #[test]
    fn the_map_is_bounded() {
        let cache = RenderCache::new(Epoch::default());
        for i in 0..CAPACITY + 10 {
            cache.put(format!("/monapi/val/{i}"), 0, 0, Bytes::new());
        }

        let len = cache.entries.read().map(|e| e.len()).unwrap_or(0);
        assert!(len <= CAPACITY, "{len}");
        assert!(cache
            .get(&format!("/monapi/val/{}", CAPACITY + 9), 0)
            .is_some());
    }
}
