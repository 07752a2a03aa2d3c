//! Several nodes in one process, each with its own temporary data dir, joined by tokens exactly as
//! separate machines would be, each with its Kitchen. Used by `klf demo`, the in-process tests and
//! the benchmarks.

use std::sync::Arc;
use std::time::Duration;

use klf_chef::kitchen::{Kitchen, KitchenError, KitchenOptions};
use klf_mesh::{MemberState, MembershipConfig};
use klf_node_core::{DataDir, Node, NodeError, RunOptions, init_mesh, join_mesh};

/// Polls `check` every 50 ms until it returns true or `timeout` passes; returns whether it did.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A mesh of nodes inside this process, on loopback with free ports.
pub struct LocalMesh {
    /// Holds every node's data dir (`node0`, `node1`, ...); removed when dropped.
    pub dir: tempfile::TempDir,
    /// Shared so that layers above (the Chef) can hold a node too.
    pub nodes: Vec<Arc<Node>>,
    /// Node `i`'s Kitchen (ingredients, ledger, Monitor), started on `nodes[i]`.
    pub kitchens: Vec<Arc<Kitchen>>,
    /// How every node runs (listen addresses are replaced by free loopback ports).
    options: RunOptions,
    kitchen: KitchenOptions,
}

/// Why a local mesh could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalMeshError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Kitchen(#[from] KitchenError),
    #[error("temporary data dir: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("node{0} did not start: {1}")]
    Start(usize, #[source] tokio::task::JoinError),
}

impl LocalMesh {
    /// Creates a mesh on the first node and joins `n - 1` more to it.
    pub async fn start(n: usize) -> Result<Self, LocalMeshError> {
        Self::start_with(n, MembershipConfig::default()).await
    }

    /// Like [`LocalMesh::start`], with given membership timings.
    pub async fn start_with(
        n: usize,
        membership: MembershipConfig,
    ) -> Result<Self, LocalMeshError> {
        Self::start_with_options(
            n,
            RunOptions {
                membership,
                ..RunOptions::loopback()
            },
        )
        .await
    }

    /// Like [`LocalMesh::start`], every node run with `options` (for example a model provider).
    pub async fn start_with_options(n: usize, options: RunOptions) -> Result<Self, LocalMeshError> {
        Self::start_inner(n, options, KitchenOptions::default(), &[]).await
    }

    /// Like [`LocalMesh::start_with_options`], every Kitchen started with `kitchen` (for example
    /// the Monitor's thresholds).
    pub async fn start_with_kitchen(
        n: usize,
        options: RunOptions,
        kitchen: KitchenOptions,
    ) -> Result<Self, LocalMeshError> {
        Self::start_inner(n, options, kitchen, &[]).await
    }

    /// One node per runtime: node `i` runs its actors, connections and instances on
    /// `runtimes[i]`, as separate processes would, instead of all sharing the caller's threads.
    /// Benchmarks use it so that one node's work does not wait for another node's threads.
    pub async fn start_on_runtimes(
        runtimes: &[tokio::runtime::Handle],
    ) -> Result<Self, LocalMeshError> {
        Self::start_inner(
            runtimes.len(),
            RunOptions::loopback(),
            KitchenOptions::default(),
            runtimes,
        )
        .await
    }

    async fn start_inner(
        n: usize,
        options: RunOptions,
        kitchen: KitchenOptions,
        runtimes: &[tokio::runtime::Handle],
    ) -> Result<Self, LocalMeshError> {
        // Node `i` starts on `runtimes[i]` if given, else on the caller's runtime.
        let start = |data: DataDir, i: usize| {
            let options = options.clone();
            let runtime = runtimes.get(i).cloned();
            async move {
                match runtime {
                    Some(runtime) => runtime
                        .spawn(async move { Node::start(&data, options).await })
                        .await
                        .map_err(|e| LocalMeshError::Start(i, e))?
                        .map_err(LocalMeshError::from),
                    None => Node::start(&data, options)
                        .await
                        .map_err(LocalMeshError::from),
                }
            }
        };
        let dir = tempfile::tempdir().map_err(LocalMeshError::TempDir)?;
        let first = DataDir::new(dir.path().join("node0"));
        init_mesh(&first, "node0", "local")?;
        let mut nodes = vec![Arc::new(start(first, 0).await?)];
        for i in 1..n {
            let name = format!("node{i}");
            let data = DataDir::new(dir.path().join(&name));
            let token = nodes[0].create_join_token(Duration::from_secs(60))?;
            // Local nodes bind port 0 and advertise the port they get when they start.
            join_mesh(&data, &token.encode(), &name, "127.0.0.1:0", "").await?;
            nodes.push(Arc::new(start(data, i).await?));
        }
        let mut kitchens = Vec::with_capacity(nodes.len());
        for node in &nodes {
            kitchens.push(Kitchen::start(node.clone(), kitchen.clone()).await?);
        }
        Ok(Self {
            dir,
            nodes,
            kitchens,
            options,
            kitchen,
        })
    }

    /// Starts node `i` again from its data dir (after [`Node::kill`] or [`Node::shutdown`]), on a
    /// new free port, as a restarted process would.
    pub async fn restart(&mut self, i: usize) -> Result<(), LocalMeshError> {
        let data = DataDir::new(self.dir.path().join(format!("node{i}")));
        self.kitchens[i].stop().await;
        self.nodes[i] = Arc::new(Node::start(&data, self.options.clone()).await?);
        self.kitchens[i] = Kitchen::start(self.nodes[i].clone(), self.kitchen.clone()).await?;
        Ok(())
    }

    /// Node `i`'s data dir.
    pub fn data_dir(&self, i: usize) -> DataDir {
        DataDir::new(self.dir.path().join(format!("node{i}")))
    }

    /// How many members `node` sees in `state`.
    pub async fn count(&self, node: usize, state: MemberState) -> usize {
        match self.nodes[node].members().await {
            Ok(members) => members.iter().filter(|m| m.state == state).count(),
            Err(_) => 0,
        }
    }

    /// The state `observer` sees for the node named `name` (None if absent).
    pub async fn state_of(&self, observer: usize, name: &str) -> Option<MemberState> {
        self.nodes[observer]
            .members()
            .await
            .ok()?
            .into_iter()
            .find(|m| m.name == name)
            .map(|m| m.state)
    }

    /// Waits until every listed node sees `want` members alive.
    pub async fn wait_all_alive(&self, nodes: &[usize], want: usize, timeout: Duration) -> bool {
        wait_until(timeout, || async {
            for &i in nodes {
                if self.count(i, MemberState::Alive).await != want {
                    return false;
                }
            }
            true
        })
        .await
    }

    /// Leaves the mesh gracefully, node by node.
    pub async fn shutdown(&self) {
        for (node, kitchen) in self.nodes.iter().zip(&self.kitchens) {
            kitchen.stop().await;
            node.shutdown().await;
        }
    }
}
