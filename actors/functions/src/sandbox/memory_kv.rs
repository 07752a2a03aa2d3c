//! A `ctx.kv` namespace held in memory, for hosts that have no store: the Code Validator's dry
//! run and the sandbox's tests. The node's own host keeps kv in redb.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;

/// One function's keys and values, in key order (so `list` is ordered like the store's).
#[derive(Default)]
pub struct MemoryKv(Mutex<BTreeMap<String, Value>>);

impl MemoryKv {
    pub fn get(&self, key: &str) -> Option<Value> {
        self.0.lock().ok().and_then(|kv| kv.get(key).cloned())
    }

    pub fn put(&self, key: &str, value: Value) {
        if let Ok(mut kv) = self.0.lock() {
            kv.insert(key.to_string(), value);
        }
    }

    pub fn delete(&self, key: &str) {
        if let Ok(mut kv) = self.0.lock() {
            kv.remove(key);
        }
    }

    /// The keys that start with `prefix`.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        self.0
            .lock()
            .map(|kv| {
                kv.range(prefix.to_string()..)
                    .map(|(k, _)| k)
                    .take_while(|k| k.starts_with(prefix))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_by_prefix_in_key_order() {
        let kv = MemoryKv::default();
        for key in ["b/2", "a/1", "b/1", "c"] {
            kv.put(key, Value::from(key));
        }
        assert_eq!(kv.list("b/"), ["b/1", "b/2"]);
        assert_eq!(kv.list(""), ["a/1", "b/1", "b/2", "c"]);
        kv.delete("b/1");
        assert_eq!(kv.list("b"), ["b/2"]);
        assert_eq!(kv.get("c"), Some(Value::from("c")));
        assert_eq!(kv.get("b/1"), None);
    }
}
