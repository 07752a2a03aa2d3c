//! The node's embedded store (redb, one file in the data dir): catalog records, artifacts by
//! blake3 hash, and each function's own key-value namespace.
//!
//! A write commits with an fsync, which can take milliseconds on a busy disk. The store's own
//! methods are synchronous; async callers run them with [`Store::unblocked`] (on tokio's blocking
//! pool) or, where a synchronous API is called from async code and cannot become async,
//! [`off_worker`]. Either way a slow disk holds up the one caller that writes, not the runtime
//! worker that also serves every other task.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

const CATALOG: TableDefinition<&str, &[u8]> = TableDefinition::new("catalog");
const ARTIFACTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("artifacts");
/// Keys are `namespace \0 key`, so one namespace is one contiguous range.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// Largest key a function may use in its namespace, and largest value.
pub const MAX_KV_KEY_BYTES: usize = 512;
pub const MAX_KV_VALUE_BYTES: usize = 1024 * 1024;

/// Store failures. The database's own error is kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(#[source] redb::Error),
    /// A key or value a function offered is over a limit; the message says which.
    #[error("key-value: {0}")]
    Limit(String),
    #[error("the store is open elsewhere (another klf process on the same data dir?)")]
    AlreadyOpen,
    /// The blocking task that ran a store operation panicked or was cancelled (the runtime is
    /// shutting down): whether the operation happened is unknown.
    #[error("store: the task running the operation did not finish: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl From<redb::DatabaseError> for StoreError {
    fn from(e: redb::DatabaseError) -> Self {
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Self::AlreadyOpen,
            other => Self::Db(other.into()),
        }
    }
}

macro_rules! db_err {
    ($($t:ty),*) => { $( impl From<$t> for StoreError { fn from(e: $t) -> Self { Self::Db(e.into()) } } )* };
}

db_err!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Runs `blocking` (store work that may wait for the disk) without holding up the other tasks of
/// the current runtime worker.
///
/// For synchronous APIs that async code calls and that cannot become async themselves (a
/// function's `ctx.kv`, which the sandbox calls from inside the JavaScript engine; the ledger):
/// on a multi-threaded tokio runtime the worker hands its queued tasks to another thread for the
/// duration (`block_in_place`). Elsewhere (a current-thread runtime, or no runtime) it simply
/// runs `blocking`. Async callers use [`Store::unblocked`] instead.
pub fn off_worker<T>(blocking: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(blocking),
        _ => blocking(),
    }
}

/// A gate every write transaction of a store waits at before it begins, for tests that need a
/// slow disk on demand (see [`Store::set_commit_gate`]). Closed when made; [`CommitGate::open`]
/// lets the held writes and every later one through.
///
/// A held write waits before it takes the database's write lock, so several can be held at once,
/// each occupying the thread that runs it, as an fsync that does not return would.
#[doc(hidden)]
pub struct CommitGate {
    open: Mutex<bool>,
    opened: Condvar,
    held: tokio::sync::watch::Sender<usize>,
}

#[doc(hidden)]
impl CommitGate {
    /// A closed gate.
    pub fn closed() -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(false),
            opened: Condvar::new(),
            held: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Opens the gate for good.
    pub fn open(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.opened.notify_all();
    }

    /// How many writes wait at the gate now.
    pub fn held(&self) -> usize {
        *self.held.borrow()
    }

    /// Waits until at least `count` writes wait at the gate.
    pub async fn wait_held(&self, count: usize) {
        let mut held = self.held.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = held.wait_for(|n| *n >= count).await;
    }

    /// Blocks the calling thread while the gate is closed.
    fn pass(&self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if *open {
            return;
        }
        self.held.send_modify(|n| *n += 1);
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|p| p.into_inner());
        }
        self.held.send_modify(|n| *n -= 1);
    }
}

/// The store of one node.
pub struct Store {
    db: Database,
    gate: Mutex<Option<Arc<CommitGate>>>,
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
            // Opening creates the tables in a first write transaction: a commit like any other.
            let opening = path.to_path_buf();
            let opened = tokio::task::spawn_blocking(move || Self::open(&opening))
                .await
                .map_err(StoreError::Task)
                .and_then(|result| result);
            match opened {
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
        Ok(Self {
            db,
            gate: Mutex::new(None),
        })
    }

    /// The database, for modules that keep their own tables in it (the ledger). Those begin their
    /// write transactions with [`Store::begin_write`].
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Begins a write transaction (after the commit gate, if a test set one).
    pub fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let gate = self.gate.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(gate) = gate {
            gate.pass();
        }
        Ok(self.db.begin_write()?)
    }

    /// Makes every later write transaction wait at `gate` until it opens (`None` removes the
    /// gate). For tests of what a slow disk does to the rest of the node.
    #[doc(hidden)]
    pub fn set_commit_gate(&self, gate: Option<Arc<CommitGate>>) {
        *self.gate.lock().unwrap_or_else(|p| p.into_inner()) = gate;
    }

    /// Runs `operation` on this store on tokio's blocking pool and waits for it, so that a commit
    /// waiting for the disk occupies a blocking thread instead of a runtime worker. Operations
    /// awaited one after another by one caller still happen in that order.
    pub async fn unblocked<T, F>(self: &Arc<Self>, operation: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || operation(&store))
            .await
            .map_err(StoreError::Task)?
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
        let txn = self.begin_write()?;
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
        let txn = self.begin_write()?;
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
        let txn = self.begin_write()?;
        {
            txn.open_table(KV)?
                .insert(kv_key(namespace, key).as_str(), value)?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn kv_delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let txn = self.begin_write()?;
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
    use std::error::Error as _;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_gate_holds_a_write_while_reads_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store.redb")).unwrap());
        let gate = CommitGate::closed();
        store.set_commit_gate(Some(gate.clone()));
        let write = tokio::spawn({
            let store = store.clone();
            async move { store.unblocked(|s| s.kv_put("f", "k", b"1")).await }
        });
        gate.wait_held(1).await;
        assert_eq!(store.kv_get("f", "k").unwrap(), None);
        assert!(!write.is_finished());
        gate.open();
        write.await.unwrap().unwrap();
        assert_eq!(gate.held(), 0);
        assert_eq!(store.kv_get("f", "k").unwrap().as_deref(), Some(&b"1"[..]));
    }

    #[tokio::test]
    async fn off_worker_runs_in_place_on_a_current_thread_runtime() {
        assert_eq!(off_worker(|| 7), 7);
    }

    #[test]
    fn a_file_that_is_not_a_store_keeps_the_database_error_as_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let Err(error) = Store::open(&path) else {
            panic!("garbage opened as a store")
        };
        assert!(matches!(error, StoreError::Db(_)), "{error:?}");
        assert!(error.to_string().starts_with("store: "), "{error}");
        assert!(error.source().is_some());
    }

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
