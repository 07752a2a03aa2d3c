//! Incoming connections: each is sent by its ALPN either through the join gate or, with a mesh
//! certificate, through `Hello` to be served as a member.

use std::sync::Arc;

use quinn::Endpoint;
use ractor::ActorRef;
use tracing::{Instrument, debug, info_span};

use super::actor::{Connected, TransportMsg};
use super::close;
use super::close_code::NO_CERT;
use super::error::TransportError;
use super::handshake::{answer_hello, peer_identity};
use super::join_gate::serve_join;
use super::serve::serve;
use super::shared::Shared;

/// Accepts connections until the endpoint closes, each on a task of its own.
pub(super) async fn accept_loop(
    endpoint: Endpoint,
    shared: Arc<Shared>,
    myself: ActorRef<TransportMsg>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        let myself = myself.clone();
        let remote = incoming.remote_address();
        tokio::spawn(
            async move {
                if let Err(error) = accept_one(incoming, shared, myself).await {
                    debug!(%error, "incoming connection refused");
                }
            }
            .instrument(info_span!("accept", %remote)),
        );
    }
}

async fn accept_one(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    myself: ActorRef<TransportMsg>,
) -> Result<(), TransportError> {
    let conn = incoming.await.map_err(TransportError::Connection)?;
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if alpn.as_deref() == Some(klf_proto::ALPN_JOIN) {
        return serve_join(conn, &shared).await;
    }
    let identity = match peer_identity(&conn) {
        Ok(identity) => identity,
        Err(e) => {
            close(
                &conn,
                NO_CERT,
                "klf/1 requires a client certificate from the mesh CA",
            );
            return Err(e);
        }
    };
    let version = answer_hello(&conn, &identity, &shared).await?;
    myself
        .cast(TransportMsg::Connected {
            dialed: None,
            result: Ok(Box::new(Connected {
                conn: conn.clone(),
                identity: identity.clone(),
                version,
            })),
        })
        // The actor only stops with the node.
        .map_err(|_| TransportError::ShuttingDown)?;
    serve(conn, identity, shared, myself).await;
    Ok(())
}
