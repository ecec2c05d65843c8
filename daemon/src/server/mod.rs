//! The network side: a TLS acceptor of our own (handshake per connection in its own task, with a
//! timeout) feeding tonic, the identity layer, health and reflection.

pub mod identity;
pub mod observe;
pub mod tls;

use crate::api::Shared;
use crate::api::finance::FinanceApi;
use crate::api::operator::OperatorApi;
use crate::api::partner::PartnerApi;
use coalition_proto::v1::finance_service_server::FinanceServiceServer;
use coalition_proto::v1::operator_service_server::OperatorServiceServer;
use coalition_proto::v1::partner_service_server::PartnerServiceServer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

/// Largest request the partner API decodes.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Serves the gRPC API on `listener` until `shutdown` turns true, then drains calls in flight.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<tls::TlsState>,
    shared: Shared,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let handshake_timeout = Duration::from_millis(shared.config.handshake_timeout_ms);
    let (conn_tx, conn_rx) = mpsc::channel::<
        std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    >(256);
    let mut accept_shutdown = shutdown.clone();
    let accept_loop = tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => { tracing::warn!(error = %e, "accept failed"); tokio::time::sleep(Duration::from_millis(50)).await; continue; }
                },
                _ = accept_shutdown.changed() => break,
            };
            let _ = tcp.set_nodelay(true);
            // The configuration in force now: a reload applies to the next handshake.
            let acceptor = TlsAcceptor::from(tls.current());
            let conn_tx = conn_tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = conn_tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(
            "coalition.v1.PartnerService",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    health
        .set_service_status(
            "coalition.v1.FinanceService",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    health
        .set_service_status(
            "coalition.v1.OperatorService",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(coalition_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let partner = PartnerServiceServer::new(PartnerApi::new(shared.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let partner = tonic::service::interceptor::InterceptedService::new(
        partner,
        identity::RequireRole::new(shared.config.clone(), coalition_certs::Role::Partner)
            .with_limits(shared.limits.clone()),
    );
    let operator = tonic::service::interceptor::InterceptedService::new(
        OperatorServiceServer::new(OperatorApi::new(shared.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        identity::RequireRole::new(shared.config.clone(), coalition_certs::Role::Operator),
    );
    let finance = tonic::service::interceptor::InterceptedService::new(
        FinanceServiceServer::new(FinanceApi::new(shared.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        identity::RequireRole::new(shared.config.clone(), coalition_certs::Role::Finance),
    );
    tonic::transport::Server::builder()
        .layer(observe::ObserveLayer::new(&shared.config.coalition))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(Some(4096))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(partner)
        .add_service(finance)
        .add_service(operator)
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await?;
    accept_loop.abort();
    Ok(())
}

/// The address a listener is bound to, for logs and tests.
pub fn local_addr(l: &TcpListener) -> SocketAddr {
    l.local_addr().expect("bound listener has an address")
}
