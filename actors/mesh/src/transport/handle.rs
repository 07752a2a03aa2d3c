//! Requests on live connections straight from the caller's task.

use std::sync::Arc;

use klf_proto::Frame;

use super::error::TransportError;
use super::shared::Shared;
use crate::stream::exchange;

/// Requests on live connections straight from the caller's task.
///
/// A request through [`super::TransportMsg::Request`] costs three task hand-offs (the actor's
/// mailbox, the task that runs the exchange, the reply); on a two-core machine each wakes a parked
/// thread. The router's invokes take this path instead when a connection is up, and fall back to
/// the actor (which dials, queues and backs off) when it is not.
#[derive(Clone)]
pub struct TransportHandle {
    shared: Arc<Shared>,
}

impl TransportHandle {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Sends `frame` to `node_id` on its live connection and waits for the answer; `None` when
    /// there is no live connection (use the actor then).
    pub async fn request_live(
        &self,
        node_id: &str,
        frame: &Frame,
    ) -> Option<Result<Frame, TransportError>> {
        if self.shared.is_partitioned(node_id) {
            return None;
        }
        let conn = self
            .shared
            .connections
            .read()
            .ok()?
            .get(node_id)
            .filter(|c| c.close_reason().is_none())
            .cloned()?;
        Some(exchange(&conn, frame, &self.shared.limits).await)
    }
}
