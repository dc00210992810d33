//! Who may call which REST route. The table is [`ROUTES`](super::ROUTES) (written by the same
//! macro that registers the routes); [`authorize`] is the one decision over it, taken by the
//! authentication middleware before a handler reads the body.

use crate::{Error, auth::Principal, auth::Role};

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Reads: viewer and up.
    Viewer,
    /// Plans, freezes, bindings, actions, defective marks: operator and up.
    Operator,
    /// Everything else: admin.
    Admin,
    /// An admin bound to no tenant (creating tenants).
    AllTenantAdmin,
}

impl Need {
    /// The lowest role that may call the route.
    pub fn role(self) -> Role {
        match self {
            Self::Viewer => Role::Viewer,
            Self::Operator => Role::Operator,
            Self::Admin | Self::AllTenantAdmin => Role::Admin,
        }
    }
}

/// One row of the table: a method and a route's path template (under `/api/v1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// HTTP method (`GET`, `POST`…).
    pub method: &'static str,
    /// Path template, as the router has it (`/tenants/{tenant}/plans`).
    pub path: &'static str,
    /// What the caller needs.
    pub need: Need,
}

/// What `method` on the route template `route` needs; `HEAD` needs what `GET` does.
pub fn need(method: &str, route: &str) -> Option<Need> {
    let method = if method == "HEAD" { "GET" } else { method };
    super::ROUTES.iter().find(|r| r.method == method && r.path == route).map(|r| r.need)
}

/// The tenant a path (under `/api/v1`) belongs to, as sent (`/tenants/{tenant}/…`).
fn path_tenant(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/tenants/")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// Whether `p` may call `method path`, where `route` is the template the router matched
/// (none: no route matches, the router answers 404). A principal bound to one tenant is
/// refused on every other tenant's path, whether that tenant exists or not; agents are refused
/// everywhere (they only sync).
pub fn authorize(p: &Principal, method: &str, route: Option<&str>, path: &str) -> Result<(), Error> {
    if p.role == Role::Agent {
        return Err(Error::forbidden(format!("{:?} has role agent: it may only open the agent sync stream", p.name)));
    }
    if let (Some(own), Some(asked)) = (&p.tenant, path_tenant(path))
        && own != asked
    {
        return Err(Error::forbidden(format!("{:?} is bound to tenant {own:?}; it may not use {path}", p.name)));
    }
    let Some(route) = route else { return Ok(()) };
    let need = need(method, route).ok_or(Error::MethodNotAllowed)?;
    if !p.role.covers(need.role()) {
        return Err(Error::forbidden(format!(
            "{method} {route} needs role {} or higher; {:?} has role {}",
            need.role(),
            p.name,
            p.role
        )));
    }
    if need == Need::AllTenantAdmin && p.tenant.is_some() {
        return Err(Error::forbidden(format!("{method} {route} needs an admin bound to no tenant")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, tenant: Option<&str>) -> Principal {
        Principal { name: "t".into(), tenant: tenant.map(str::to_owned), role }
    }

    /// `(role, tenant, method, route, path)` → allowed.
    fn check(role: Role, tenant: Option<&str>, method: &str, route: &str, path: &str) -> bool {
        authorize(&principal(role, tenant), method, Some(route), path).is_ok()
    }

    #[test]
    fn each_role_gets_what_the_table_says() {
        use Role::*;
        let plans = "/tenants/{tenant}/plans";
        let a_plans = "/tenants/a/plans";
        let cases = [
            (Viewer, "GET", plans, true),
            (Viewer, "HEAD", plans, true),
            (Viewer, "POST", plans, false),
            (Operator, "POST", plans, true),
            (Operator, "POST", "/tenants/{tenant}/sidecars", false),
            (Admin, "POST", "/tenants/{tenant}/sidecars", true),
            (Operator, "PUT", "/tenants/{tenant}/services/{service}/sidecars/{sidecar}", true),
            (Operator, "PUT", "/tenants/{tenant}/services/{service}", false),
            (Operator, "POST", "/tenants/{tenant}/sidecars/{sidecar}/versions/{version}/defective", true),
            (Operator, "POST", "/tenants/{tenant}/sidecars/{sidecar}/versions/{version}/admit", false),
            (Operator, "DELETE", "/tenants/{tenant}/instances/{instance}", false),
            (Operator, "GET", "/tokens", false),
            (Admin, "GET", "/tokens", true),
            (Agent, "GET", plans, false),
        ];
        for (role, method, route, allowed) in cases {
            let path = route.replace("{tenant}", "a");
            assert_eq!(check(role, None, method, route, &path), allowed, "{role} {method} {route}");
        }
        assert!(check(Viewer, Some("a"), "GET", plans, a_plans));
    }

    #[test]
    fn a_tenant_bound_principal_is_refused_on_other_tenants_and_tenant_creation() {
        let admin_a = principal(Role::Admin, Some("a"));
        let e = authorize(&admin_a, "GET", Some("/tenants/{tenant}/plans"), "/tenants/b/plans").unwrap_err();
        assert_eq!(e.code(), "forbidden");
        // Refused before any route matters: an unknown tenant or path is no different.
        assert!(authorize(&admin_a, "GET", None, "/tenants/nope/whatever").is_err());
        assert!(authorize(&admin_a, "POST", Some("/tenants"), "/tenants").is_err());
        assert!(authorize(&principal(Role::Admin, None), "POST", Some("/tenants"), "/tenants").is_ok());
        assert!(authorize(&admin_a, "GET", Some("/tenants"), "/tenants").is_ok());
    }

    #[test]
    fn a_method_without_a_rule_is_refused() {
        let admin = principal(Role::Admin, None);
        assert_eq!(authorize(&admin, "PATCH", Some("/tenants"), "/tenants"), Err(Error::MethodNotAllowed));
    }

    #[test]
    fn every_rule_is_unique() {
        for (i, r) in super::super::ROUTES.iter().enumerate() {
            assert!(!super::super::ROUTES[..i].iter().any(|o| o.method == r.method && o.path == r.path), "{r:?} twice");
        }
    }
}
