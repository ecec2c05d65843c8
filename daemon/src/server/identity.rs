//! The identity layer: the verified client certificate names the caller. Resolved once per call,
//! before any handler runs, and put in the request extensions as data; handlers read only that.

use crate::api::CallerPartner;
use crate::api::error::ApiError;
use crate::config::Config;
use coalition_certs::{identity_from_der, Identity, Role};
use std::sync::Arc;
use tonic::{Request, Status};

/// An interceptor admitting only certificates of one role (and, for partners, only configured
/// partners). It puts the caller in the request extensions: [`CallerPartner`] for partners,
/// [`Identity`] for every role.
#[derive(Clone)]
pub struct RequireRole {
    config: Arc<Config>,
    role: Role,
}

impl RequireRole {
    /// Admits `role` only.
    pub fn new(config: Arc<Config>, role: Role) -> RequireRole {
        RequireRole { config, role }
    }

    fn resolve<T>(&self, req: &Request<T>) -> Result<Identity, ApiError> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| ApiError::Unauthenticated("no client certificate on this connection".into()))?;
        let leaf = certs
            .first()
            .ok_or_else(|| ApiError::Unauthenticated("no client certificate on this connection".into()))?;
        let id = identity_from_der(&self.config.coalition, leaf)
            .map_err(|e| ApiError::Unauthenticated(format!("client certificate: {e}")))?;
        if id.role != self.role {
            return Err(ApiError::PermissionDenied(format!("{id} may not call the {} API", self.role.as_str())));
        }
        if id.role == Role::Partner && !self.config.partners.contains_key(&id.name) {
            return Err(ApiError::Unauthenticated(format!(
                "certificate names partner {:?}, which is not a partner of this coalition",
                id.name
            )));
        }
        Ok(id)
    }
}

impl tonic::service::Interceptor for RequireRole {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let id = self.resolve(&req)?;
        if id.role == Role::Partner {
            req.extensions_mut().insert(CallerPartner(id.name.clone()));
        }
        req.extensions_mut().insert(id);
        Ok(req)
    }
}
