//! Reading and writing whole frames on QUIC streams, with the size limit checked before the body is
//! allocated. Used by the transport for every exchange and by the join client.

use klf_proto::{Frame, HEADER_LEN, Limits, ProtoError};
use quinn::{RecvStream, SendStream};

use super::transport::{StreamError, TransportError};

/// How long to wait for the end of an answered stream.
const FIN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads one frame. A length over the limit fails before anything is allocated for the body.
pub async fn read_frame(recv: &mut RecvStream, limits: &Limits) -> Result<Frame, TransportError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header)
        .await
        .map_err(StreamError::from)?;
    let header = klf_proto::parse_header(header, limits)?;
    let mut body = vec![0u8; header.body_len()];
    recv.read_exact(&mut body)
        .await
        .map_err(StreamError::from)?;
    Ok(klf_proto::decode_body(header, &body)?)
}

/// Writes one frame and finishes the send side.
pub async fn write_frame(
    send: &mut SendStream,
    frame: &Frame,
    limits: &Limits,
) -> Result<(), TransportError> {
    let bytes = klf_proto::encode(frame, limits)?;
    send.write_all(&bytes).await.map_err(StreamError::from)?;
    send.finish().map_err(StreamError::from)?;
    Ok(())
}

/// Sends `frame` on a new bidirectional stream of `conn` and reads the answer. An `Error` frame from
/// the peer becomes [`TransportError::Remote`].
pub async fn exchange(
    conn: &quinn::Connection,
    frame: &Frame,
    limits: &Limits,
) -> Result<Frame, TransportError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(TransportError::Connection)?;
    write_frame(&mut send, frame, limits).await?;
    let answer = read_frame(&mut recv, limits).await?;
    // Read the stream's end (it arrives with the answer). Dropping a stream before its end makes
    // quinn send STOP_SENDING in a datagram of its own ahead of the next request: measured, that
    // cost 15 us per call on loopback (see BENCHMARKS.md). Bounded, so a peer that never finishes
    // its stream cannot hold the caller.
    let _ = tokio::time::timeout(FIN_WAIT, recv.read_to_end(0)).await;
    match answer {
        Frame::Error(e) => Err(TransportError::Remote {
            code: e.code,
            message: e.message,
        }),
        answer => Ok(answer),
    }
}

/// The error frame that tells a peer why its frame was refused.
pub fn error_frame_for(err: &ProtoError) -> Frame {
    Frame::error(err.code(), err.to_string())
}
