//! The awc client the WebSocket callers and chat users connect with: TCP
//! connections with `TCP_NODELAY`, as browsers open them.
//!
//! awc leaves Nagle's algorithm on. A caller's small frames (20 ms of audio,
//! a `typing` the server does not answer) then wait for the server's delayed
//! ACK (up to 40 ms) whenever an earlier one is unacknowledged, so the
//! figures would time the load generator's TCP stack instead of the server.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_rt::net::TcpStream;
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use awc::http::Uri;

/// The default TCP connector, setting `TCP_NODELAY` on every connection.
#[derive(Clone, Default)]
struct NoDelay(ConnectorService);

type Connecting = Pin<Box<dyn Future<Output = Result<Connection<Uri, TcpStream>, ConnectError>>>>;

impl Service<ConnectInfo<Uri>> for NoDelay {
    type Response = Connection<Uri, TcpStream>;
    type Error = ConnectError;
    type Future = Connecting;

    actix_service::always_ready!();

    fn call(&self, info: ConnectInfo<Uri>) -> Self::Future {
        let connecting = self.0.call(info);
        Box::pin(async move {
            let connection = connecting.await?;
            // Best effort: a socket that refuses is still a connection.
            let _ = connection.io_ref().set_nodelay(true);
            Ok(connection)
        })
    }
}

/// A client whose requests (and WebSocket handshakes) time out after
/// `timeout`.
pub(crate) fn client(timeout: Duration) -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().connector(NoDelay::default()))
        .timeout(timeout)
        .finish()
}
