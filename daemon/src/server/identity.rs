//! The identity layer: the verified client certificate names the caller. Resolved once per call,
//! before any handler runs, and put in the request extensions as data; handlers read only that.

use crate::api::caller::CallerPartner;
use crate::config::Config;
use crate::services::error::ServiceError;
use coalition_certs::{Identity, Role};
use std::sync::Arc;
use tonic::{Request, Status};

/// An interceptor admitting only certificates of one role (and, for partners, only configured
/// partners). It puts the caller in the request extensions: [`CallerPartner`] for partners,
/// [`Identity`] for every role.
#[derive(Clone)]
pub struct RequireRole {
    config: Arc<Config>,
    role: Role,
    /// A second role admitted as well (operators may hold the programme role's rights).
    also: Option<Role>,
    limits: Option<Arc<crate::ops::limits::Limits>>,
}

impl RequireRole {
    /// Admits `role` only.
    pub fn new(config: Arc<Config>, role: Role) -> RequireRole {
        RequireRole {
            config,
            role,
            also: None,
            limits: None,
        }
    }

    /// Also admits `role`.
    pub fn or(mut self, role: Role) -> RequireRole {
        self.also = Some(role);
        self
    }

    /// Also checks each partner's suspension and rate limit, before any handler runs.
    pub fn with_limits(mut self, limits: Arc<crate::ops::limits::Limits>) -> RequireRole {
        self.limits = Some(limits);
        self
    }

    fn resolve<T>(&self, req: &Request<T>) -> Result<Identity, ServiceError> {
        let id = match req.extensions().get::<Identity>() {
            Some(id) => id.clone(), // read once by the observe layer
            None => self.identity_of(req)?,
        };
        if id.role != self.role && Some(id.role) != self.also {
            return Err(ServiceError::PermissionDenied(format!(
                "{id} may not call the {} API",
                self.role.as_str()
            )));
        }
        if id.role == Role::Partner && !self.config.partners.contains_key(&id.name) {
            return Err(ServiceError::Unauthenticated(format!(
                "certificate names partner {:?}, which is not a partner of this coalition",
                id.name
            )));
        }
        if let Some(limits) = &self.limits {
            use crate::ops::limits::Denied;
            match limits.check(&id.name) {
                Ok(()) => {}
                Err(Denied::Suspended) => {
                    return Err(ServiceError::PermissionDenied(format!(
                        "partner {} is suspended by the coalition's operators; nothing it sends is applied",
                        id.name
                    )));
                }
                Err(Denied::Throttled(wait)) => {
                    return Err(ServiceError::Throttled {
                        partner: id.name.clone(),
                        retry_after: wait,
                    });
                }
                Err(Denied::Unknown) => {
                    return Err(ServiceError::Unauthenticated(format!(
                        "partner {:?} is not a partner of this coalition",
                        id.name
                    )));
                }
            }
        }
        Ok(id)
    }

    fn identity_of<T>(&self, req: &Request<T>) -> Result<Identity, ServiceError> {
        let certs = req.peer_certs().ok_or_else(|| {
            ServiceError::Unauthenticated("no client certificate on this connection".into())
        })?;
        let leaf = certs.first().ok_or_else(|| {
            ServiceError::Unauthenticated("no client certificate on this connection".into())
        })?;
        crate::server::peer::identity_of(&self.config.coalition, leaf)
            .map_err(|e| ServiceError::Unauthenticated(format!("client certificate: {e}")))
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
