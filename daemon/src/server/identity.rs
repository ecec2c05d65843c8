//! The identity layer: the verified client certificate names the caller. Resolved once per call,
//! before any handler runs, and put in the request extensions as data; handlers read only that.

use crate::api::CallerPartner;
use crate::api::error::ApiError;
use crate::config::Config;
use coalition_certs::{identity_from_der, Role};
use std::sync::Arc;
use tonic::{Request, Status};

/// An interceptor admitting only configured partners to the partner API.
#[derive(Clone)]
pub struct PartnerIdentity {
    config: Arc<Config>,
}

impl PartnerIdentity {
    /// Checks callers against `config`'s partners.
    pub fn new(config: Arc<Config>) -> PartnerIdentity {
        PartnerIdentity { config }
    }

    fn resolve<T>(&self, req: &Request<T>) -> Result<CallerPartner, ApiError> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| ApiError::Unauthenticated("no client certificate on this connection".into()))?;
        let leaf = certs
            .first()
            .ok_or_else(|| ApiError::Unauthenticated("no client certificate on this connection".into()))?;
        let id = identity_from_der(&self.config.coalition, leaf)
            .map_err(|e| ApiError::Unauthenticated(format!("client certificate: {e}")))?;
        if id.role != Role::Partner {
            return Err(ApiError::PermissionDenied(format!("{id} may not call the partner API")));
        }
        if !self.config.partners.contains_key(&id.name) {
            return Err(ApiError::Unauthenticated(format!(
                "certificate names partner {:?}, which is not a partner of this coalition",
                id.name
            )));
        }
        Ok(CallerPartner(id.name))
    }
}

impl tonic::service::Interceptor for PartnerIdentity {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.resolve(&req)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}
