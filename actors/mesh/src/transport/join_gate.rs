//! The `klf-join/1` ALPN: the one door a client may open without a certificate from the mesh CA,
//! and the only thing it can do there is redeem a join token.

use std::time::Duration;

use klf_proto::{ErrorCode, Frame};
use quinn::Connection;

use super::error::TransportError;
use super::shared::Shared;
use crate::stream::{error_frame_for, read_frame, write_frame};

/// How long a join client may take to open its request stream.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the node waits for a join client to close after its answer was sent.
const ANSWERED_LINGER: Duration = Duration::from_secs(2);

/// Serves one join request on a `klf-join/1` connection, then lets the client close.
pub(super) async fn serve_join(conn: Connection, shared: &Shared) -> Result<(), TransportError> {
    let (mut send, mut recv) = tokio::time::timeout(ACCEPT_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| TransportError::Timeout(ACCEPT_TIMEOUT))?
        .map_err(TransportError::Connection)?;
    let answer = match read_frame(&mut recv, &shared.limits).await {
        Ok(Frame::JoinRequest(request)) => match shared.handler.get() {
            Some(handler) => handler.join(request, conn.remote_address()).await,
            None => Frame::error(ErrorCode::Unavailable, "the node is still starting; retry"),
        },
        Ok(other) => Frame::error(
            ErrorCode::Unauthorized,
            format!(
                "only JoinRequest is allowed without a mesh certificate, got {}",
                other.kind_name()
            ),
        ),
        Err(TransportError::Proto(e)) => error_frame_for(&e),
        Err(e) => return Err(e),
    };
    write_frame(&mut send, &answer, &shared.limits).await?;
    let _ = tokio::time::timeout(ANSWERED_LINGER, conn.closed()).await;
    Ok(())
}
