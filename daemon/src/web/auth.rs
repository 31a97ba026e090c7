//! `basic_auth_users`: HTTP basic authentication against bcrypt hashes.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), and
//! Prometheus sends the same credentials every scrape, so a pair that
//! verified once is remembered in memory; bcrypt itself runs off the event
//! loop. An unknown user costs the same bcrypt as a known one, so response
//! time does not say which user names exist.
//!
//! At most [`BCRYPT_AT_ONCE`] bcrypts run at a time: a request waits for
//! one in turn (tokio's semaphore is fair) for at most a second, then is
//! answered 429 instead of queueing more CPU work, so a flood of wrong
//! passwords cannot stall the scrapes whose credentials are already
//! remembered (those need no bcrypt). Each client address has at most one
//! check waiting or running: another from the same address while it does
//! is answered 429 at once, so a flood from one host holds one slot and
//! new credentials from any other host find the other free.

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
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
/// Most bcrypt verifications running at once.
pub const BCRYPT_AT_ONCE: usize = 2;
/// How long new credentials wait for a bcrypt slot before a 429.
const BCRYPT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Requests refused, for `/metrics`: wrong or missing credentials, and
/// credentials left unchecked because every bcrypt slot was busy.
pub static REFUSED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
pub const REFUSED_REASONS: [&str; 2] = ["credentials", "busy"];

pub struct BasicAuth {
    users: BTreeMap<String, String>,
    verified: Mutex<HashSet<(String, String)>>,
    bcrypt_slots: Arc<tokio::sync::Semaphore>,
    /// Client addresses with a check waiting or running.
    checking: Mutex<HashSet<IpAddr>>,
}

/// The client's address, put on each request by the server.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub IpAddr);

/// Holds an address's turn; gives it back when dropped.
struct Turn<'a>(&'a BasicAuth, IpAddr);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.checking().remove(&self.1);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Allowed,
    Refused,
    /// Every bcrypt slot was taken; the credentials were not checked.
    Busy,
}

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>) -> BasicAuth {
        // One set of slots for the process: a reload's new users share
        // them with the old ones' checks still running.
        static SLOTS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
        let slots = SLOTS.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(BCRYPT_AT_ONCE)));
        Self::with_slots(users, slots.clone())
    }

    fn with_slots(
        users: BTreeMap<String, String>,
        bcrypt_slots: Arc<tokio::sync::Semaphore>,
    ) -> BasicAuth {
        BasicAuth {
            users,
            verified: Mutex::default(),
            bcrypt_slots,
            checking: Mutex::default(),
        }
    }

    async fn allows(
        self: &Arc<Self>,
        user: String,
        password: String,
        peer: Option<IpAddr>,
    ) -> Verdict {
        let key = (user, password);
        if self.cache().contains(&key) {
            return Verdict::Allowed;
        }
        // One check at a time per address.
        let _turn = match peer {
            Some(ip) if !self.checking().insert(ip) => return Verdict::Busy,
            Some(ip) => Some(Turn(self, ip)),
            None => None,
        };
        // A short wait, in turn: new credentials (a Prometheus after a
        // restart) still get in during a flood, most of the time.
        let slot =
            tokio::time::timeout(BCRYPT_WAIT, self.bcrypt_slots.clone().acquire_owned()).await;
        let Ok(Ok(slot)) = slot else {
            return Verdict::Busy;
        };
        let me = self.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let _slot = slot;
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
        .unwrap_or(false);
        if ok {
            Verdict::Allowed
        } else {
            Verdict::Refused
        }
    }

    fn checking(&self) -> std::sync::MutexGuard<'_, HashSet<IpAddr>> {
        self.checking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    let verdict = match credentials {
        Some((user, password)) => auth.allows(user, password, peer).await,
        None => Verdict::Refused,
    };
    match verdict {
        Verdict::Allowed => next.run(req).await,
        Verdict::Refused => {
            REFUSED[0].fetch_add(1, Relaxed);
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"gapscoped\"")],
                "Unauthorized: this gapscoped requires basic auth (basic_auth_users in its web config)\n",
            )
                .into_response()
        }
        Verdict::Busy => {
            REFUSED[1].fetch_add(1, Relaxed);
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "1")],
                "Too many credential checks at once, or one from this address is still running: retry in a second (remembered credentials are never refused this way)\n",
            )
                .into_response()
        }
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
        let auth = Arc::new(BasicAuth::with_slots(
            BTreeMap::from([("prom".to_string(), hash)]),
            Arc::new(tokio::sync::Semaphore::new(BCRYPT_AT_ONCE)),
        ));
        assert_eq!(
            auth.allows("prom".into(), "right".into(), None).await,
            Verdict::Allowed
        );
        // Remembered: the second time needs no bcrypt.
        assert!(auth.cache().contains(&("prom".into(), "right".into())));
        assert_eq!(
            auth.allows("prom".into(), "right".into(), None).await,
            Verdict::Allowed
        );
        assert_eq!(
            auth.allows("prom".into(), "wrong".into(), None).await,
            Verdict::Refused
        );
        // The right password under another name is still refused.
        assert_eq!(
            auth.allows("other".into(), "right".into(), None).await,
            Verdict::Refused
        );
    }

    #[tokio::test]
    async fn with_every_bcrypt_slot_taken_new_credentials_wait_for_none() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let auth = Arc::new(BasicAuth::with_slots(
            BTreeMap::from([("prom".to_string(), hash)]),
            Arc::new(tokio::sync::Semaphore::new(BCRYPT_AT_ONCE)),
        ));
        assert_eq!(
            auth.allows("prom".into(), "right".into(), None).await,
            Verdict::Allowed
        );
        let taken: Vec<_> = (0..BCRYPT_AT_ONCE)
            .map(|_| auth.bcrypt_slots.clone().try_acquire_owned().unwrap())
            .collect();
        assert_eq!(
            auth.allows("prom".into(), "wrong".into(), None).await,
            Verdict::Busy
        );
        // Remembered credentials need no slot.
        assert_eq!(
            auth.allows("prom".into(), "right".into(), None).await,
            Verdict::Allowed
        );
        drop(taken);
        assert_eq!(
            auth.allows("prom".into(), "wrong".into(), None).await,
            Verdict::Refused
        );
    }

    #[tokio::test]
    async fn one_check_at_a_time_per_address() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let auth = Arc::new(BasicAuth::with_slots(
            BTreeMap::from([("prom".to_string(), hash)]),
            Arc::new(tokio::sync::Semaphore::new(BCRYPT_AT_ONCE)),
        ));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        // A check from `a` is waiting (every slot taken).
        let taken: Vec<_> = (0..BCRYPT_AT_ONCE)
            .map(|_| auth.bcrypt_slots.clone().try_acquire_owned().unwrap())
            .collect();
        let waiting = {
            let auth = auth.clone();
            tokio::spawn(async move { auth.allows("prom".into(), "wrong".into(), Some(a)).await })
        };
        tokio::task::yield_now().await;
        // A second from `a` is turned away at once; `b` waits its turn.
        assert_eq!(
            auth.allows("prom".into(), "x".into(), Some(a)).await,
            Verdict::Busy
        );
        let from_b = {
            let auth = auth.clone();
            tokio::spawn(async move { auth.allows("prom".into(), "right".into(), Some(b)).await })
        };
        drop(taken);
        assert_eq!(waiting.await.unwrap(), Verdict::Refused);
        assert_eq!(from_b.await.unwrap(), Verdict::Allowed);
        // Done: `a` may ask again.
        assert!(auth.checking().is_empty());
        assert_eq!(
            auth.allows("prom".into(), "wrong".into(), Some(a)).await,
            Verdict::Refused
        );
    }
}
