//! Serving a member connection once its `Hello` is done: requests on bidirectional streams,
//! messages on datagrams and unidirectional streams, until it closes.

use std::sync::Arc;

use klf_proto::{ErrorCode, Frame};
use klf_security::PeerIdentity;
use quinn::{Connection, VarInt};
use ractor::ActorRef;
use tracing::debug;

use super::actor::TransportMsg;
use super::error::TransportError;
use super::shared::Shared;
use crate::stream::{error_frame_for, read_frame, write_frame};

/// Serves a member connection until it closes, then tells the actor.
pub(super) async fn serve(
    conn: Connection,
    peer: PeerIdentity,
    shared: Arc<Shared>,
    myself: ActorRef<TransportMsg>,
) {
    loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    tokio::spawn(serve_request(send, recv, peer.clone(), shared.clone()));
                }
                Err(_) => break,
            },
            uni = conn.accept_uni() => match uni {
                Ok(mut recv) => {
                    let (peer, shared) = (peer.clone(), shared.clone());
                    tokio::spawn(async move {
                        match read_frame(&mut recv, &shared.limits).await {
                            Ok(frame) => dispatch_message(&shared, peer, frame),
                            Err(error) => debug!(%error, node_id = %peer.node_id, "bad message stream"),
                        }
                    });
                }
                Err(_) => break,
            },
            datagram = conn.read_datagram() => match datagram {
                Ok(bytes) => match klf_proto::decode(&bytes, &shared.limits) {
                    Ok((frame, _)) => dispatch_message(&shared, peer.clone(), frame),
                    Err(error) => debug!(%error, node_id = %peer.node_id, "bad datagram"),
                },
                Err(_) => break,
            },
        }
    }
    // The actor being gone means the node is stopping; nobody needs to hear of this connection.
    let _ = myself.cast(TransportMsg::Disconnected {
        node_id: peer.node_id,
        stable_id: conn.stable_id(),
    });
}

fn dispatch_message(shared: &Shared, peer: PeerIdentity, frame: Frame) {
    if shared.is_partitioned(&peer.node_id) {
        return;
    }
    match shared.handler.get() {
        Some(handler) => handler.message(peer, frame),
        None => debug!(
            kind = frame.kind_name(),
            "message before the handler was installed"
        ),
    }
}

async fn serve_request(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: PeerIdentity,
    shared: Arc<Shared>,
) {
    if shared.is_partitioned(&peer.node_id) {
        return;
    }
    let answer = match read_frame(&mut recv, &shared.limits).await {
        Ok(Frame::Ping(ping)) => Frame::Pong(klf_proto::Pong {
            payload: ping.payload,
        }),
        Ok(Frame::Hello(_)) => Frame::error(ErrorCode::Malformed, "Hello was already exchanged"),
        Ok(frame) => match shared.handler.get() {
            Some(handler) => handler.request(peer, frame).await,
            None => Frame::error(ErrorCode::Unavailable, "the node is still starting; retry"),
        },
        Err(TransportError::Proto(error)) => {
            debug!(%error, node_id = %peer.node_id, "refusing a bad frame");
            // Stop reading whatever else the peer sends on this stream (for example the body
            // behind a huge length prefix); the connection and its other streams go on.
            let _ = recv.stop(VarInt::from(error.code().to_u16()));
            error_frame_for(&error)
        }
        Err(error) => {
            debug!(%error, "request stream failed");
            return;
        }
    };
    if let Err(error) = write_frame(&mut send, &answer, &shared.limits).await {
        debug!(%error, "could not answer");
    }
}
