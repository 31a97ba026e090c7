//! `basic_auth_users`: HTTP basic authentication against bcrypt hashes.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), and
//! Prometheus sends the same credentials every scrape, so a pair that
//! verified once is remembered in memory; bcrypt itself runs off the event
//! loop. An unknown user costs the same bcrypt as a known one, so response
//! time does not say which user names exist.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use base64::Engine as _;

/// How many verified (user, password) pairs are remembered.
const CACHE_LIMIT: usize = 256;

pub struct BasicAuth {
    users: BTreeMap<String, String>,
    verified: Mutex<HashSet<(String, String)>>,
}

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>) -> BasicAuth {
        BasicAuth {
            users,
            verified: Mutex::default(),
        }
    }

    async fn allows(self: &Arc<Self>, user: String, password: String) -> bool {
        let key = (user, password);
        if self.cache().contains(&key) {
            return true;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let known = me.users.get(&key.0);
            // Any configured hash stands in for an unknown user's.
            let Some(hash) = known.or_else(|| me.users.values().next()) else {
                return false;
            };
            let matches = bcrypt::verify(&key.1, hash).unwrap_or(false);
            let ok = known.is_some() && matches;
            if ok {
                let mut cache = me.cache();
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
                cache.insert(key);
            }
            ok
        })
        .await
        .unwrap_or(false)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The middleware: passes the request on when its `Authorization` header
/// names a configured user with the right password; 401 otherwise.
pub async fn require(State(auth): State<Arc<BasicAuth>>, req: Request, next: Next) -> Response {
    let credentials = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic);
    let allowed = match credentials {
        Some((user, password)) => auth.allows(user, password).await,
        None => false,
    };
    if allowed {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"gapscoped\"")],
            "Unauthorized: this gapscoped requires basic auth (basic_auth_users in its web config)\n",
        )
            .into_response()
    }
}

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_parsed() {
        // "prom:sec:ret" — a password may contain ':'.
        assert_eq!(
            parse_basic("Basic cHJvbTpzZWM6cmV0"),
            Some(("prom".into(), "sec:ret".into()))
        );
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
        assert_eq!(parse_basic("Basic cHJvbQ=="), None); // no ':'
    }

    #[tokio::test]
    async fn only_the_right_password_of_a_known_user_passes() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let auth = Arc::new(BasicAuth::new(BTreeMap::from([("prom".to_string(), hash)])));
        assert!(auth.allows("prom".into(), "right".into()).await);
        // Remembered: the second time needs no bcrypt.
        assert!(auth.cache().contains(&("prom".into(), "right".into())));
        assert!(auth.allows("prom".into(), "right".into()).await);
        assert!(!auth.allows("prom".into(), "wrong".into()).await);
        // The right password under another name is still refused.
        assert!(!auth.allows("other".into(), "right".into()).await);
    }
}
