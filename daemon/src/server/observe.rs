//! A tower layer over every call: gives it a request id, reads the caller out of the verified
//! client certificate once (into the request extensions, for the interceptors and handlers), and
//! records per-caller, per-method counts and latency (metrics) and a log line.

use coalition_certs::Identity;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The id of one call, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(pub u64);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The layer.
#[derive(Clone)]
pub struct ObserveLayer {
    coalition: Arc<str>,
}

impl ObserveLayer {
    /// Reads identities of `coalition`.
    pub fn new(coalition: &str) -> ObserveLayer {
        ObserveLayer {
            coalition: coalition.into(),
        }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            coalition: self.coalition.clone(),
        }
    }
}

/// The service the layer makes.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    coalition: Arc<str>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let id = RequestId(NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let caller: Option<Identity> = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .and_then(|certs| {
                certs
                    .first()
                    .and_then(|c| crate::server::peer::identity_of(&self.coalition, c).ok())
            });
        let label = caller
            .as_ref()
            .map_or_else(|| "-".to_string(), |c| c.name.clone());
        if let Some(c) = caller {
            req.extensions_mut().insert(c);
        }
        req.extensions_mut().insert(id);
        // The ready service answers this call; a fresh clone waits for the next readiness check.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        // The caller's name for what counts refusals (`api::error`), both while the interceptors
        // run (synchronously, in `call`) and while the handler's future runs.
        let call = crate::api::caller::CALLER.sync_scope(label.clone(), || inner.call(req));
        Box::pin(async move {
            let response = crate::api::caller::CALLER.scope(label.clone(), call).await;
            // Errors from handlers come trailers-only: grpc-status in the headers. OK comes in trailers.
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("OK", |c| {
                        crate::api::error::code_name(tonic::Code::from_i32(c))
                    }),
                Err(_) => "TRANSPORT_ERROR",
            };
            let elapsed = started.elapsed();
            // The label names of the Prometheus gRPC middlewares (go-grpc-prometheus and kin):
            // `grpc_code` as the code's name, so rules and dashboards read the same everywhere.
            metrics::counter!("coalition_calls_total", "partner" => label.clone(), "method" => method.clone(), "grpc_code" => code)
                .increment(1);
            if code != "OK" {
                metrics::counter!("coalition_call_errors_total", "partner" => label.clone(), "method" => method.clone(), "grpc_code" => code)
                    .increment(1);
            }
            metrics::histogram!("coalition_call_seconds", "partner" => label.clone(), "method" => method.clone())
                .record(elapsed.as_secs_f64());
            let micros = elapsed.as_micros() as u64;
            // Every call is logged with its id; failures (except throttling, which floods) at info.
            if code == "OK" || code == "RESOURCE_EXHAUSTED" {
                tracing::debug!(request_id = id.0, caller = %label, %method, grpc_status = code, micros, "call");
            } else {
                tracing::info!(request_id = id.0, caller = %label, %method, grpc_status = code, micros, "call failed");
            }
            response
        })
    }
}
