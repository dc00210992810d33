//! What the CLI prints about tokens. A secret is printed once, when the token is created.

use comfy_table::Table;
use outrider_model::{IssuedToken, Token};

use super::{table, timestamp};

/// The tokens, one row each (`*`: every tenant).
pub(in crate::cli) fn tokens(tokens: &[Token]) -> Table {
    let mut t = table(&["NAME", "TENANT", "ROLE", "CREATED"]);
    for k in tokens {
        let tenant = k.tenant.clone().unwrap_or_else(|| "*".to_owned());
        t.add_row(vec![k.name.clone(), tenant, k.role.to_string(), timestamp(k.created_at)]);
    }
    t
}

/// A new token, its secret and the warning that it is not shown again.
pub(in crate::cli) fn issued(issued: &IssuedToken) -> String {
    format!(
        "{}\n\ntoken: {}\nstore it now (e.g. in a file of mode 0600 for --token-file): it is not shown again",
        tokens(std::slice::from_ref(&issued.info)).trim_fmt(),
        issued.token
    )
}
