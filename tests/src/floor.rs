//! Raw quinn servers and clients with the mesh's own TLS and QUIC settings: the floors the
//! benchmarks measure the mesh against, in the same run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use klf_actors::mesh::stream::{read_frame, write_frame};
use klf_actors::mesh::transport::quic_transport_config;
use klf_actors::security::{NodeCredentials, tls};
use klf_proto::{Frame, Limits, Pong};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};

/// Largest message a floor server accepts (a bench peer is trusted, but reads stay bounded).
pub const MAX_MESSAGE: usize = 1024;

/// What a floor server does with each bidirectional stream.
#[derive(Clone, Copy)]
pub enum ServerMode {
    /// Read to the end, write the bytes back, finish (floor A).
    Raw,
    /// Read a KLF frame, answer `Ping` with `Pong` as the transport does (floor A+frames).
    Frames,
    /// The same, reading the request stream to its end (FIN) before dropping it.
    FramesDrained,
    /// Length-prefixed messages echoed until the client finishes the stream (floor B).
    LongLived,
}

/// A raw quinn server for one floor, with the TLS of the mesh's node1.
pub struct FloorServer {
    endpoint: Endpoint,
    pub addr: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl FloorServer {
    pub fn start(creds: &NodeCredentials, mode: ServerMode) -> anyhow::Result<Self> {
        let tls = QuicServerConfig::try_from(tls::server_config(creds)?)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(tls));
        config.transport_config(quic_transport_config());
        let endpoint = Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = endpoint.local_addr()?;
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), mode));
        Ok(Self {
            endpoint,
            addr,
            accept_task,
        })
    }

    pub async fn close(self) {
        self.accept_task.abort();
        self.endpoint.close(VarInt::from_u32(0), b"bench done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

async fn accept_loop(endpoint: Endpoint, mode: ServerMode) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            // Like the transport's `serve`: one task per incoming stream.
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    // A failing stream only ends that stream; the client reports its own errors.
                    let _ = serve_stream(mode, send, recv).await;
                });
            }
        });
    }
}

async fn serve_stream(
    mode: ServerMode,
    mut send: SendStream,
    mut recv: RecvStream,
) -> anyhow::Result<()> {
    let limits = Limits::default();
    match mode {
        ServerMode::Raw => {
            let request = recv.read_to_end(MAX_MESSAGE).await?;
            send.write_all(&request).await?;
            send.finish()?;
        }
        ServerMode::Frames | ServerMode::FramesDrained => {
            let answer = match read_frame(&mut recv, &limits).await? {
                Frame::Ping(ping) => Frame::Pong(Pong {
                    payload: ping.payload,
                }),
                other => bail!("unexpected {} frame", other.kind_name()),
            };
            if matches!(mode, ServerMode::FramesDrained) {
                // Nothing may follow the frame: this only consumes the FIN, so that dropping the
                // stream does not send STOP_SENDING.
                recv.read_to_end(0).await?;
            }
            write_frame(&mut send, &answer, &limits).await?;
        }
        ServerMode::LongLived => {
            let mut message = vec![0u8; 4 + MAX_MESSAGE];
            loop {
                let mut len = [0u8; 4];
                if recv.read_exact(&mut len).await.is_err() {
                    break; // The client finished the stream (or the connection closed).
                }
                let n = u32::from_be_bytes(len) as usize;
                ensure!(n <= MAX_MESSAGE, "message of {n} bytes is over the limit");
                message[..4].copy_from_slice(&len);
                recv.read_exact(&mut message[4..4 + n]).await?;
                send.write_all(&message[..4 + n]).await?;
            }
            let _ = send.finish();
        }
    }
    Ok(())
}

/// A client endpoint with the TLS of the mesh's node0, connected to `server`.
pub async fn floor_client(
    creds: &NodeCredentials,
    server: SocketAddr,
) -> anyhow::Result<(Endpoint, Connection)> {
    let tls = QuicClientConfig::try_from(tls::mesh_client_config(creds)?)?;
    let mut config = quinn::ClientConfig::new(Arc::new(tls));
    config.transport_config(quic_transport_config());
    let endpoint = Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let conn = endpoint
        .connect_with(config, server, &tls::server_name().to_str())?
        .await
        .context("floor handshake (mutual TLS, ALPN klf/1)")?;
    Ok((endpoint, conn))
}

/// One floor-A request: a new stream, `request` out, everything back.
pub async fn raw_request(conn: &Connection, request: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(request).await?;
    send.finish()?;
    Ok(recv.read_to_end(MAX_MESSAGE).await?)
}
