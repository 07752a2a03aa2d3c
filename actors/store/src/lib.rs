//! The node's embedded store (redb, one file in the data dir): catalog records, artifacts by
//! blake3 hash, and each function's own key-value namespace.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const CATALOG: TableDefinition<&str, &[u8]> = TableDefinition::new("catalog");
const ARTIFACTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("artifacts");
/// Keys are `namespace \0 key`, so one namespace is one contiguous range.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// Largest key a function may use in its namespace, and largest value.
pub const MAX_KV_KEY_BYTES: usize = 512;
pub const MAX_KV_VALUE_BYTES: usize = 1024 * 1024;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(String),
    #[error("key-value: {0}")]
    Limit(String),
    #[error("the store is open elsewhere (another klf process on the same data dir?)")]
    AlreadyOpen,
}

macro_rules! db_err {
    ($($t:ty),*) => { $( impl From<$t> for StoreError { fn from(e: $t) -> Self { Self::Db(e.to_string()) } } )* };
}
impl From<redb::DatabaseError> for StoreError {
    fn from(e: redb::DatabaseError) -> Self {
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Self::AlreadyOpen,
            other => Self::Db(other.to_string()),
        }
    }
}

db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The store of one node.
pub struct Store {
    db: Database,
}

fn kv_key(namespace: &str, key: &str) -> String {
    format!("{namespace}\0{key}")
}

impl Store {
    /// Opens the store, waiting up to `patience` while another owner in this process (a node that
    /// is still stopping) releases it.
    pub async fn open_patiently(
        path: &Path,
        patience: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match Self::open(path) {
                Err(StoreError::AlreadyOpen) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Opens (or creates) the store file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(CATALOG)?;
            txn.open_table(ARTIFACTS)?;
            txn.open_table(KV)?;
        }
        txn.commit()?;
        Ok(Self { db })
    }

    /// The database, for modules that keep their own tables in it (the ledger).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Every catalog record, as stored bytes by key.
    pub fn catalog_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CATALOG)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Stores catalog records in one transaction.
    pub fn put_catalog_records(&self, records: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(CATALOG)?;
            for (k, v) in records {
                table.insert(k.as_str(), v.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn put_artifact(&self, hash: &[u8; 32], bytes: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            txn.open_table(ARTIFACTS)?.insert(hash, bytes)?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn artifact(&self, hash: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ARTIFACTS)?;
        Ok(table.get(hash)?.map(|v| v.value().to_vec()))
    }

    pub fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KV)?;
        Ok(table
            .get(kv_key(namespace, key).as_str())?
            .map(|v| v.value().to_vec()))
    }

    pub fn kv_put(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        if key.len() > MAX_KV_KEY_BYTES || key.contains('\0') {
            return Err(StoreError::Limit(format!(
                "keys are at most {MAX_KV_KEY_BYTES} bytes without NUL characters"
            )));
        }
        if value.len() > MAX_KV_VALUE_BYTES {
            return Err(StoreError::Limit(format!(
                "a value of {} bytes exceeds the limit of {MAX_KV_VALUE_BYTES}",
                value.len()
            )));
        }
        let txn = self.db.begin_write()?;
        {
            txn.open_table(KV)?
                .insert(kv_key(namespace, key).as_str(), value)?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn kv_delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let existed = {
            let mut table = txn.open_table(KV)?;
            table.remove(kv_key(namespace, key).as_str())?.is_some()
        };
        txn.commit()?;
        Ok(existed)
    }

    /// Keys of `namespace` starting with `prefix`, in order (at most `limit`).
    pub fn kv_list(
        &self,
        namespace: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KV)?;
        let start = kv_key(namespace, prefix);
        let mut out = Vec::new();
        for item in table.range(start.as_str()..)? {
            let (k, _) = item?;
            let full = k.value();
            let Some(key) = full.strip_prefix(&format!("{namespace}\0")) else {
                break;
            };
            if !key.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push(key.to_string());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_do_not_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        store.kv_put("fn-a", "k1", b"1").unwrap();
        store.kv_put("fn-a", "k2", b"2").unwrap();
        store.kv_put("fn-ab", "k1", b"x").unwrap();
        store.kv_put("fn-b", "k1", b"3").unwrap();
        assert_eq!(
            store.kv_get("fn-a", "k1").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(store.kv_list("fn-a", "", 10).unwrap(), ["k1", "k2"]);
        assert_eq!(store.kv_list("fn-a", "k2", 10).unwrap(), ["k2"]);
        assert!(store.kv_delete("fn-a", "k1").unwrap());
        assert_eq!(store.kv_get("fn-a", "k1").unwrap(), None);
        assert_eq!(
            store.kv_get("fn-b", "k1").unwrap().as_deref(),
            Some(&b"3"[..])
        );
        assert!(store.kv_put("fn-a", "bad\0key", b"").is_err());
        assert!(
            store
                .kv_put("fn-a", "big", &vec![0; MAX_KV_VALUE_BYTES + 1])
                .is_err()
        );
    }

    #[test]
    fn records_and_artifacts_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let store = Store::open(&path).unwrap();
            store
                .put_catalog_records(&[("release/a@1.0.0".into(), vec![1, 2])])
                .unwrap();
            store.put_artifact(&[7; 32], b"package").unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.catalog_records().unwrap(),
            vec![("release/a@1.0.0".to_string(), vec![1, 2])]
        );
        assert_eq!(
            store.artifact(&[7; 32]).unwrap().as_deref(),
            Some(&b"package"[..])
        );
        assert_eq!(store.artifact(&[8; 32]).unwrap(), None);
    }
}
