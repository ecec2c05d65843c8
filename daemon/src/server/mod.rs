//! The network side: a TLS acceptor of our own (handshake per connection in its own task, with a
//! timeout) feeding tonic, the identity layer, health and reflection.

pub mod admission;
pub mod health;
pub mod identity;
pub mod observe;
pub mod peer;
pub mod tls;

use crate::api::finance::FinanceApi;
use crate::api::operator::OperatorApi;
use crate::api::partner::PartnerApi;
use crate::services::shared::Shared;
use coalition_proto::v1::finance_service_server::FinanceServiceServer;
use coalition_proto::v1::operator_service_server::OperatorServiceServer;
use coalition_proto::v1::partner_service_server::PartnerServiceServer;
use coalition_proto::v1::programme_service_server::ProgrammeServiceServer;
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
    let c = &shared.config;
    let admission = admission::Admission::new(admission::Bounds::from_limit(
        admission::nofile_limit(),
        c.max_pending_per_address,
        c.max_pending_handshakes,
        c.max_connections,
    ));
    tokio::spawn(admission.clone().log_summaries(shutdown.clone()));
    let (conn_tx, conn_rx) = mpsc::channel::<
        std::io::Result<
            admission::Admitted<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
        >,
    >(256);
    let mut accept_shutdown = shutdown.clone();
    let handshakes = tls.clone();
    let accept_loop = tokio::spawn(async move {
        let tls = handshakes;
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors, most likely: counted and summarised, and a pause
                        // so that the loop does not spin while none is free.
                        admission.note_accept_error(&e);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = accept_shutdown.changed() => break,
            };
            // Over a bound: closed at once, before it costs a handshake.
            let pending = match admission.try_pending(peer.ip()) {
                Ok(p) => p,
                Err(event) => {
                    admission.note(peer.ip(), event);
                    drop(tcp);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            // The configuration in force now: a reload applies to the next handshake.
            let acceptor = TlsAcceptor::from(tls.current());
            let conn_tx = conn_tx.clone();
            let admission = admission.clone();
            tokio::spawn(async move {
                let result = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
                drop(pending);
                match result {
                    Ok(Ok(stream)) => match admission.try_authenticated() {
                        Ok(place) => {
                            let _ = conn_tx
                                .send(Ok(admission::Admitted::new(stream, place)))
                                .await;
                        }
                        Err(event) => admission.note(peer.ip(), event),
                    },
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake refused");
                        admission.note(peer.ip(), admission::Event::HandshakeFailed);
                    }
                    Err(_) => admission.note(peer.ip(), admission::Event::HandshakeTimedOut),
                }
            });
        }
    });

    // Every service starts SERVING; `health::watch` judges them from the first second on.
    let (health, health_service) = tonic_health::server::health_reporter();
    for service in health::SERVICES {
        health
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    tokio::spawn(health::watch(
        shared.clone(),
        tls.clone(),
        health,
        shutdown.clone(),
    ));
    // Reflection in both versions: v1, and v1alpha that older grpcurl builds and Python's
    // grpcio-reflection still ask for.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(coalition_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(coalition_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let partner = PartnerServiceServer::new(PartnerApi::new(shared.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let partner = tonic::service::interceptor::InterceptedService::new(
        partner,
        identity::RequireRole::new(shared.config.clone(), coalition_certs::Role::Partner)
            .with_limits(shared.limits.clone()),
    );
    let operator = tonic::service::interceptor::InterceptedService::new(
        OperatorServiceServer::new(OperatorApi::new(shared.clone(), tls.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        identity::RequireRole::new(shared.config.clone(), coalition_certs::Role::Operator),
    );
    let finance = tonic::service::interceptor::InterceptedService::new(
        FinanceServiceServer::new(FinanceApi::new(shared.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        identity::RequireRole::new(shared.config.clone(), coalition_certs::Role::Finance),
    );
    let programme = tonic::service::interceptor::InterceptedService::new(
        ProgrammeServiceServer::new(crate::api::programme::ProgrammeApi::new(shared.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        identity::RequireRole::new(shared.config.clone(), coalition_certs::Role::Programme)
            .or(coalition_certs::Role::Operator),
    );
    tonic::transport::Server::builder()
        .layer(observe::ObserveLayer::new(&shared.config.coalition))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(Some(4096))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(partner)
        .add_service(finance)
        .add_service(operator)
        .add_service(programme)
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
