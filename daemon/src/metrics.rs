//! Prometheus metrics: one process-wide recorder, served as text on `/metrics` at a separate,
//! configurable address (loopback by default).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::OnceLock;
use tokio::sync::watch;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder (once per process) and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
            ])
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (a test harness): keep ours for rendering.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Serves `/metrics` on `addr` until `stop`; returns the bound address. `before` runs before each
/// rendering, so that a counter of something due (holds that ran out) is written before it is read.
pub async fn serve<B, F>(
    addr: SocketAddr,
    before: B,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr>
where
    B: Fn() -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = handle();
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} (config key `metrics_listen`): {e}")
    })?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            before().await;
            (
                [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                handle.render(),
            )
        }),
    );
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(%bound, "metrics on /metrics");
    Ok(bound)
}
