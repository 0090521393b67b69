//! A least-recently-used cache bounded by bytes, not entries: what the viewer's
//! tiles and the segmenter's image encodings are kept in (their sizes differ by
//! orders of magnitude, so an entry count would bound nothing).

use std::hash::Hash;
use std::sync::Arc;

/// What an entry costs the cache.
pub trait ByteSize {
    fn byte_size(&self) -> usize;
}

/// LRU entries evicted once their bytes pass the cap. The newest entry always
/// stays, even alone past the cap: it was just needed.
#[derive(Debug)]
pub struct ByteLru<K: Hash + Eq, V> {
    lru: lru::LruCache<K, Arc<V>>,
    bytes: usize,
    cap_bytes: usize,
}

impl<K: Hash + Eq + Clone, V: ByteSize> ByteLru<K, V> {
    pub fn new(cap_bytes: usize) -> Self {
        Self { lru: lru::LruCache::unbounded(), bytes: 0, cap_bytes }
    }

    /// The entry, now the most recently used.
    pub fn get(&mut self, key: &K) -> Option<Arc<V>> {
        self.lru.get(key).cloned()
    }

    /// Inserts (or replaces) an entry, evicting the least recently used past the cap.
    pub fn insert(&mut self, key: K, value: Arc<V>) {
        self.bytes += value.byte_size();
        if let Some(old) = self.lru.put(key, value) {
            self.bytes -= old.byte_size();
        }
        while self.bytes > self.cap_bytes && self.lru.len() > 1 {
            if let Some((_, v)) = self.lru.pop_lru() {
                self.bytes -= v.byte_size();
            }
        }
    }

    /// Drops every entry whose key matches (e.g. all tiles of a closed raster).
    pub fn remove_where(&mut self, pred: impl Fn(&K) -> bool) {
        let keys: Vec<K> = self.lru.iter().filter(|(k, _)| pred(k)).map(|(k, _)| k.clone()).collect();
        for k in keys {
            if let Some(v) = self.lru.pop(&k) {
                self.bytes -= v.byte_size();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn cap_bytes(&self) -> usize {
        self.cap_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Blob(usize);
    impl ByteSize for Blob {
        fn byte_size(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn evicts_least_recently_used_past_the_cap_but_keeps_the_newest() {
        let mut c = ByteLru::new(30);
        for k in 0..3 {
            c.insert(k, Arc::new(Blob(10)));
        }
        assert!(c.get(&0).is_some()); // 0 is now the most recent
        c.insert(3, Arc::new(Blob(10)));
        assert_eq!((c.len(), c.bytes()), (3, 30));
        assert!(c.get(&1).is_none(), "least recently used evicted");
        c.insert(0, Arc::new(Blob(5))); // replacing re-counts its bytes
        assert_eq!(c.bytes(), 25);
        c.insert(9, Arc::new(Blob(100)));
        assert_eq!((c.len(), c.bytes()), (1, 100), "alone past the cap, the newest stays");
        c.remove_where(|k| *k == 9);
        assert!(c.is_empty() && c.bytes() == 0);
    }
}
