//! Credentials: organization API keys, user passwords, and JWTs for users
//! (access, refresh) and browsers (a join token for one session).
//!
//! API keys and passwords are stored only as argon2 hashes. Keys carry 160
//! random bits, so they are hashed with light argon2 parameters (a brute
//! force is hopeless whatever the cost, and every request verifies one);
//! passwords, which people choose, get argon2's recommended defaults.

use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm as JwtAlgorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthSettings, Secret};
use crate::ids::{ApiKeyId, OrgId, SessionId, UserId};
use crate::model::Role;

/// Every API key starts with this, so a key is recognisable in a config file.
pub const API_KEY_PREFIX: &str = "pk_";
/// Hex characters after `pk_` that are stored in clear to find the key.
const VISIBLE_HEX: usize = 8;
/// Random bytes in a key.
const KEY_BYTES: usize = 20;

/// Fills a buffer from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS generator does not fail on Linux once booted; if it ever does,
    // continuing with predictable keys would be worse than stopping.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    bytes
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A freshly generated API key: show `secret` once, store `prefix` and hash.
#[derive(Debug)]
pub struct GeneratedKey {
    pub secret: Secret,
    pub prefix: String,
}

pub fn generate_api_key() -> GeneratedKey {
    let secret = format!("{API_KEY_PREFIX}{}", hex(&random_bytes::<KEY_BYTES>()));
    let prefix = secret[..API_KEY_PREFIX.len() + VISIBLE_HEX].to_owned();
    GeneratedKey {
        secret: Secret::new(secret),
        prefix,
    }
}

/// The visible prefix of a presented key, or `None` if it cannot be a key.
pub fn api_key_prefix(presented: &str) -> Option<&str> {
    let well_formed = presented.len() == API_KEY_PREFIX.len() + 2 * KEY_BYTES
        && presented.starts_with(API_KEY_PREFIX)
        && presented[API_KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit());
    well_formed.then(|| &presented[..API_KEY_PREFIX.len() + VISIBLE_HEX])
}

fn key_hasher() -> Argon2<'static> {
    // 4 MiB, one pass: ~1 ms. See the module doc for why this is enough.
    #[allow(clippy::expect_used)]
    let params = Params::new(4096, 1, 1, None).expect("constant argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_with(hasher: &Argon2<'_>, secret: &str) -> String {
    #[allow(clippy::expect_used)]
    let salt = SaltString::encode_b64(&random_bytes::<16>()).expect("16 bytes is a valid salt");
    #[allow(clippy::expect_used)]
    hasher
        .hash_password(secret.as_bytes(), &salt)
        .expect("argon2 hashing with valid parameters cannot fail")
        .to_string()
}

pub fn hash_api_key(secret: &str) -> String {
    hash_with(&key_hasher(), secret)
}

pub fn hash_password(password: &str) -> String {
    hash_with(&Argon2::default(), password)
}

/// Checks a secret against a stored PHC hash (its own parameters apply).
pub fn verify_secret(secret: &str, stored_hash: &str) -> bool {
    match PasswordHash::new(stored_hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Spends the same time as a password check, so a login for an unknown email
/// cannot be told apart from a wrong password by its timing.
pub fn burn_password_check(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("not a real password"));
    let _ = verify_secret(password, dummy);
}

/// The threads that run argon2 for requests (hashing and checking
/// passwords and keys): at most this many, whatever the load.
///
/// Not the async runtime's blocking pool: a password hash takes 19 MiB, and
/// glibc keeps what a thread freed in that thread's arena, so a burst of
/// sign-ups spread over dozens of blocking threads left that much resident
/// per thread (~1.8 GiB after 200 sign-ups). One thread per core (at most
/// four) keeps it to that many arenas, and argon2 is CPU-bound anyway: more
/// threads than cores would not hash faster.
fn hashing_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4))
}

/// Argon2 jobs waiting for a thread; past this, requests are refused
/// ([`HashingFailed::Busy`]) rather than queued for ever.
const HASHING_QUEUE: usize = 512;

/// Why argon2 work did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum HashingFailed {
    #[error("too many password and key checks waiting; retry shortly")]
    Busy,
    #[error("the argon2 work panicked")]
    Panicked,
}

type HashingJob = Box<dyn FnOnce() + Send>;

/// Runs `work` (argon2) on the hashing threads and waits for it without
/// blocking the caller's thread; requests queue in order when all are busy,
/// and a request whose caller went away meanwhile is skipped. Should the
/// threads fail to start, the work runs on the blocking pool instead.
pub async fn off_thread<R: Send + 'static>(
    work: impl FnOnce() -> R + Send + 'static,
) -> Result<R, HashingFailed> {
    static JOBS: std::sync::OnceLock<Option<std::sync::mpsc::SyncSender<HashingJob>>> =
        std::sync::OnceLock::new();
    let jobs = JOBS.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<HashingJob>(HASHING_QUEUE);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let mut started = 0;
        for n in 0..hashing_threads() {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while taking a job.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        let Ok(job) = job else { return };
                        // A panicking job drops its reply (the caller sees
                        // `HashingFailed`); the thread goes on.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            match spawned {
                Ok(_) => started += 1,
                Err(err) => tracing::error!(error = %err, "cannot start an argon2 thread"),
            }
        }
        (started > 0).then_some(tx)
    });
    let Some(jobs) = jobs else {
        return tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| HashingFailed::Panicked);
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job: HashingJob = Box::new(move || {
        // The request was dropped (the client went away): no one to answer.
        if !reply.is_closed() {
            let _ = reply.send(work());
        }
    });
    jobs.try_send(job).map_err(|err| match err {
        std::sync::mpsc::TrySendError::Full(_) => HashingFailed::Busy,
        std::sync::mpsc::TrySendError::Disconnected(_) => HashingFailed::Panicked,
    })?;
    answer.await.map_err(|_| HashingFailed::Panicked)
}

/// API keys verified recently, so a busy key costs one argon2 check per
/// `ttl` instead of one per request. Only a BLAKE2 digest of the key is kept,
/// in memory; revoking a key on this node forgets it at once, and other
/// nodes forget it within `ttl`.
pub struct VerifiedKeys {
    entries: std::sync::Mutex<std::collections::HashMap<String, VerifiedKey>>,
    ttl: std::time::Duration,
    capacity: usize,
}

#[derive(Clone, Copy)]
struct VerifiedKey {
    digest: [u8; 32],
    key: ApiKeyId,
    org: OrgId,
    verified_at: std::time::Instant,
}

impl std::fmt::Debug for VerifiedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedKeys")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn digest(secret: &str) -> [u8; 32] {
    use blake2::Digest;
    blake2::Blake2s256::digest(secret.as_bytes()).into()
}

impl VerifiedKeys {
    pub fn new(ttl: std::time::Duration, capacity: usize) -> Self {
        Self {
            entries: Default::default(),
            ttl,
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, VerifiedKey>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key and organization of `presented`, if it was verified within
    /// the TTL.
    pub fn get(&self, prefix: &str, presented: &str) -> Option<(ApiKeyId, OrgId)> {
        let entry = *self.lock().get(prefix)?;
        let fresh = entry.verified_at.elapsed() < self.ttl;
        (fresh && entry.digest == digest(presented)).then_some((entry.key, entry.org))
    }

    pub fn remember(&self, prefix: &str, presented: &str, key: ApiKeyId, org: OrgId) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            let ttl = self.ttl;
            entries.retain(|_, e| e.verified_at.elapsed() < ttl);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        let entry = VerifiedKey {
            digest: digest(presented),
            key,
            org,
            verified_at: std::time::Instant::now(),
        };
        entries.insert(prefix.to_owned(), entry);
    }

    pub fn forget(&self, prefix: &str) {
        self.lock().remove(prefix);
    }
}

/// What a JWT is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// A user's short-lived API credential.
    Access,
    /// Exchanged for a new access token.
    Refresh,
    /// Lets a browser join exactly one session.
    Session,
}

/// The claims of every Palaver JWT.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub typ: TokenKind,
    pub org: OrgId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<SessionId>,
    pub iat: i64,
    pub exp: i64,
}

/// Why a presented token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Signature and shape are fine, but `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Bad signature, malformed, or not a Palaver token.
    #[error("token invalid")]
    Invalid,
}

/// Why the JWT key could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot use JWT key file {path}: {source}")]
pub struct KeyFileError {
    path: String,
    source: std::io::Error,
}

/// Signs and checks tokens.
pub struct TokenSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// The same without the expiry: for [`TokenSigner::expired_join`].
    validation_past_expiry: Validation,
    settings: AuthSettings,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// Uses `auth.jwt_secret`, or the key kept in `auth.jwt_secret_file`
    /// (created with 256 random bits on first start).
    pub fn from_settings(settings: &AuthSettings) -> Result<Self, KeyFileError> {
        let secret = match &settings.jwt_secret {
            Some(secret) => secret.expose().to_owned(),
            None => load_or_create_key_file(&settings.jwt_secret_file)?,
        };
        let mut validation = Validation::new(JwtAlgorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp"]);
        let mut validation_past_expiry = validation.clone();
        validation_past_expiry.validate_exp = false;
        Ok(Self {
            validation_past_expiry,
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            settings: settings.clone(),
        })
    }

    fn sign(&self, claims: &Claims) -> String {
        // HS256 over serialisable claims cannot fail.
        #[allow(clippy::expect_used)]
        jsonwebtoken::encode(&Header::new(JwtAlgorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    fn issue(&self, mut claims: Claims, ttl_s: u64) -> (String, DateTime<Utc>) {
        let now = Utc::now().timestamp();
        claims.iat = now;
        claims.exp = now + ttl_s as i64;
        let expires = DateTime::from_timestamp(claims.exp, 0).unwrap_or_default();
        (self.sign(&claims), expires)
    }

    pub fn issue_access(&self, org: OrgId, user: UserId, role: Role) -> (String, DateTime<Utc>) {
        let claims = Claims {
            typ: TokenKind::Access,
            org,
            uid: Some(user),
            role: Some(role),
            sid: None,
            iat: 0,
            exp: 0,
        };
        self.issue(claims, self.settings.access_token_ttl_s)
    }

    pub fn issue_refresh(&self, org: OrgId, user: UserId) -> (String, DateTime<Utc>) {
        let claims = Claims {
            typ: TokenKind::Refresh,
            org,
            uid: Some(user),
            role: None,
            sid: None,
            iat: 0,
            exp: 0,
        };
        self.issue(claims, self.settings.refresh_token_ttl_s)
    }

    pub fn issue_session(&self, org: OrgId, session: SessionId) -> (String, DateTime<Utc>) {
        let claims = Claims {
            typ: TokenKind::Session,
            org,
            uid: None,
            role: None,
            sid: Some(session),
            iat: 0,
            exp: 0,
        };
        self.issue(claims, self.settings.session_token_ttl_s)
    }

    /// Signs arbitrary claims as given (tests use it for expired tokens).
    pub fn sign_claims(&self, claims: &Claims) -> String {
        self.sign(claims)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }

    /// The claims of a session join token this server signed that has
    /// expired (`None` for any other token, expired or not): a caller whose
    /// call outlived its token may still rejoin it (see `api::live`).
    pub fn expired_join(&self, token: &str) -> Option<Claims> {
        if !matches!(self.verify(token), Err(TokenError::Expired)) {
            return None;
        }
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation_past_expiry)
            .ok()
            .map(|data| data.claims)
            .filter(|claims| claims.typ == TokenKind::Session && claims.sid.is_some())
    }

    pub fn session_token_ttl_s(&self) -> u64 {
        self.settings.session_token_ttl_s
    }
}

fn load_or_create_key_file(path: &Path) -> Result<String, KeyFileError> {
    let fail = |source| KeyFileError {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() >= 32 => return Ok(text.trim().to_owned()),
        Ok(_) => {
            return Err(fail(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the file holds fewer than 32 characters; delete it to have a new key generated",
            )));
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(fail(err)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let key = hex(&random_bytes::<32>());
    write_private(path, &key).map_err(fail)?;
    tracing::info!(path = %path.display(), "generated a JWT signing key");
    Ok(key)
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> TokenSigner {
        let settings = AuthSettings {
            jwt_secret: Some(Secret::new("test-secret-test-secret-test-secret")),
            ..AuthSettings::default()
        };
        TokenSigner::from_settings(&settings).expect("signer")
    }

    #[tokio::test]
    async fn argon2_work_runs_on_a_few_threads_of_its_own_and_outlives_a_panic() {
        let names = futures_util::future::join_all((0..16).map(|_| {
            off_thread(|| {
                let hash = hash_api_key("pk_not_a_real_key");
                assert!(verify_secret("pk_not_a_real_key", &hash));
                std::thread::current().name().unwrap_or_default().to_owned()
            })
        }))
        .await;
        let mut names: Vec<String> = names.into_iter().map(|n| n.expect("hashed")).collect();
        assert!(names.iter().all(|n| n.starts_with("argon2-")), "{names:?}");
        names.sort();
        names.dedup();
        assert!(names.len() <= hashing_threads(), "{names:?}");

        let panicked = off_thread(|| -> u8 { panic!("argon2 job blew up") }).await;
        assert!(panicked.is_err());
        assert_eq!(off_thread(|| 7).await.expect("still working"), 7);
    }

    #[test]
    fn api_keys_verify_against_their_hash_only() {
        let key = generate_api_key();
        assert_eq!(
            api_key_prefix(key.secret.expose()),
            Some(key.prefix.as_str())
        );
        let hash = hash_api_key(key.secret.expose());
        assert!(!hash.contains(key.secret.expose()));
        assert!(verify_secret(key.secret.expose(), &hash));
        let other = generate_api_key();
        assert!(!verify_secret(other.secret.expose(), &hash));
    }

    #[test]
    fn verified_keys_answer_only_for_the_same_key_within_the_ttl() {
        let cache = VerifiedKeys::new(std::time::Duration::from_secs(60), 2);
        let key = generate_api_key();
        cache.remember(&key.prefix, key.secret.expose(), ApiKeyId(1), OrgId(7));
        assert_eq!(
            cache.get(&key.prefix, key.secret.expose()),
            Some((ApiKeyId(1), OrgId(7)))
        );
        let forged = format!("{}{}", &key.secret.expose()[..12], "0".repeat(31));
        assert_eq!(
            cache.get(&key.prefix, &forged),
            None,
            "same prefix, other key"
        );
        cache.forget(&key.prefix);
        assert_eq!(cache.get(&key.prefix, key.secret.expose()), None);

        let expired = VerifiedKeys::new(std::time::Duration::ZERO, 2);
        expired.remember(&key.prefix, key.secret.expose(), ApiKeyId(1), OrgId(7));
        assert_eq!(expired.get(&key.prefix, key.secret.expose()), None);
    }

    #[test]
    fn malformed_keys_have_no_prefix() {
        assert_eq!(api_key_prefix("pk_short"), None);
        assert_eq!(api_key_prefix(&format!("pk_{}", "z".repeat(40))), None);
        assert_eq!(api_key_prefix(&format!("sk_{}", "a".repeat(40))), None);
    }

    #[test]
    fn passwords_hash_with_salt() {
        let a = hash_password("correct horse");
        let b = hash_password("correct horse");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(verify_secret("correct horse", &a));
        assert!(!verify_secret("wrong horse", &a));
    }

    #[test]
    fn tokens_round_trip_and_expiry_is_told_apart_from_forgery() {
        let s = signer();
        let (token, _) = s.issue_session(OrgId(3), SessionId(9));
        let claims = s.verify(&token).expect("valid");
        assert_eq!(
            (claims.typ, claims.org, claims.sid),
            (TokenKind::Session, OrgId(3), Some(SessionId(9)))
        );

        let mut expired = claims.clone();
        expired.exp = Utc::now().timestamp() - 120;
        assert_eq!(
            s.verify(&s.sign_claims(&expired)).err(),
            Some(TokenError::Expired)
        );

        let mut forged = token.clone();
        forged.push('x');
        assert_eq!(s.verify(&forged).err(), Some(TokenError::Invalid));
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/jwt.key");
        let first = load_or_create_key_file(&path).expect("create");
        let second = load_or_create_key_file(&path).expect("reuse");
        assert_eq!(first, second);
    }
}
