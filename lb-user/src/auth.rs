//! Basic-auth credentials of the admin API (`global.admin_auth`): a user
//! and either a password or a crypt-style hash of it (`$6$`/`$5$`
//! SHA-crypt, `$2b$` bcrypt, `$argon2id$`), checked against an
//! `Authorization: Basic` header. A leaf: the config parses credentials
//! with it, the admin API checks them, the admin client sends them.

use std::{
    collections::VecDeque,
    sync::{Mutex, OnceLock},
};

use base64::Engine as _;
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("credentials must be \"user:password\" or \"user:HASH\"")]
    Shape,
    #[error("the user name is empty")]
    EmptyUser,
    #[error("the password is empty")]
    EmptyPassword,
    #[error("{0} is not a hash xlb reads ($6$, $5$, $2b$, $argon2id$) or is malformed")]
    Hash(String),
}

/// What a password is checked against.
#[derive(Clone, PartialEq, Eq)]
enum Secret {
    Plain(String),
    /// A crypt-style hash, checked as its prefix says.
    Hash(String),
}

/// A user and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    secret: Secret,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, not even hashed, in logs or errors.
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl std::str::FromStr for Credentials {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Credentials, AuthError> {
        let (user, secret) = s.split_once(':').ok_or(AuthError::Shape)?;
        if user.is_empty() {
            return Err(AuthError::EmptyUser);
        }
        if secret.is_empty() {
            return Err(AuthError::EmptyPassword);
        }
        let secret = if secret.starts_with('$') {
            // Checked now, so that a malformed hash is a config error and
            // not a silent "wrong password" later.
            if verify_hash(b"", secret).is_err() {
                return Err(AuthError::Hash(hash_label(secret)));
            }
            Secret::Hash(secret.to_string())
        } else {
            Secret::Plain(secret.to_string())
        };
        Ok(Credentials {
            user: user.to_string(),
            secret,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashKind {
    ShaCrypt,
    Bcrypt,
    Argon2,
}

fn hash_kind(h: &str) -> Option<HashKind> {
    match h.split('$').nth(1)? {
        "5" | "6" => Some(HashKind::ShaCrypt),
        "2a" | "2b" | "2y" => Some(HashKind::Bcrypt),
        "argon2id" | "argon2i" | "argon2d" => Some(HashKind::Argon2),
        _ => None,
    }
}

/// `$6$` and the like: the part of a hash that names its kind.
fn hash_label(h: &str) -> String {
    format!("${}$", h.split('$').nth(1).unwrap_or(""))
}

/// Whether `password` matches `hash`: Ok(true/false), or Err for a hash
/// that cannot be read.
fn verify_hash(password: &[u8], hash: &str) -> Result<bool, ()> {
    match hash_kind(hash).ok_or(())? {
        HashKind::ShaCrypt => {
            use sha_crypt::{PasswordVerifier, ShaCrypt};
            match ShaCrypt::default().verify_password(password, hash) {
                Ok(()) => Ok(true),
                Err(sha_crypt::password_hash::Error::PasswordInvalid) => Ok(false),
                Err(_) => Err(()),
            }
        }
        HashKind::Bcrypt => bcrypt::verify(password, hash).map_err(|_| ()),
        HashKind::Argon2 => {
            use argon2::password_hash::{phc::PasswordHash, PasswordVerifier};
            let parsed = PasswordHash::new(hash).map_err(|_| ())?;
            match argon2::Argon2::default().verify_password(password, &parsed) {
                Ok(()) => Ok(true),
                Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
                Err(_) => Err(()),
            }
        }
    }
}

impl Credentials {
    /// A user and a password taken as they are (the stats page's `auth`,
    /// HAProxy's `stats auth`, which has no hashes).
    pub fn plain(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.to_string(),
            secret: Secret::Plain(password.to_string()),
        }
    }

    /// Whether an `Authorization` header value carries these credentials.
    /// Hashes are slow on purpose (tens to hundreds of milliseconds): a
    /// header that passed is remembered (as a digest) so that a peer or a
    /// script sending the same one again is not slowed down.
    pub fn check(&self, authorization: Option<&[u8]>) -> bool {
        let Some((user, password)) = authorization.and_then(decode_basic) else {
            return false;
        };
        let user_ok: bool = user.as_bytes().ct_eq(self.user.as_bytes()).into();
        match &self.secret {
            Secret::Plain(p) => {
                let pw_ok: bool = password.as_bytes().ct_eq(p.as_bytes()).into();
                user_ok & pw_ok
            }
            Secret::Hash(h) => {
                let digest: [u8; 32] = sha2::Sha256::digest(authorization.unwrap_or_default()).into();
                if passed().lock().expect("auth cache lock").contains(&digest) {
                    return true;
                }
                let ok = user_ok && verify_hash(password.as_bytes(), h) == Ok(true);
                if ok {
                    let mut cache = passed().lock().expect("auth cache lock");
                    if cache.len() >= PASSED {
                        cache.pop_front();
                    }
                    cache.push_back(digest);
                }
                ok
            }
        }
    }

    /// The password, when the config holds it in the clear (a node can
    /// then present its own credentials to its peers).
    pub fn password(&self) -> Option<&str> {
        match &self.secret {
            Secret::Plain(p) => Some(p),
            Secret::Hash(_) => None,
        }
    }
}

/// Headers that passed a hash check, remembered at most.
const PASSED: usize = 16;

fn passed() -> &'static Mutex<VecDeque<[u8; 32]>> {
    static PASSED_CACHE: OnceLock<Mutex<VecDeque<[u8; 32]>>> = OnceLock::new();
    PASSED_CACHE.get_or_init(Default::default)
}

/// User and password of a `Basic` header value.
fn decode_basic(v: &[u8]) -> Option<(String, String)> {
    let v = std::str::from_utf8(v).ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(token.trim()).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// The `Authorization` header value for `user:password`.
pub fn basic_header(user_password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_password)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by other tools: `openssl passwd -6 -salt xlbsalt secret`,
    // Python's bcrypt (cost 4) and argon2-cffi (t=1, m=64 KiB).
    const SHA512: &str =
        "$6$xlbsalt$VBjoDxRjdjVlHebv1x08LI9vT7d0PnsTCDqOVjNDnP.nd.dtSc33pKaJP5rfNbhewjvOlXYoKqXMDl.zudXWp0";
    const BCRYPT: &str = "$2b$04$77pP3m3uiaq.Edo.mni86.zGo3vDFb48ykUTw/.dgk3bmQWsPOvYy";
    const ARGON2ID: &str =
        "$argon2id$v=19$m=64,t=1,p=1$Yi/trlcAyQiuwrvV3tJlcg$vqZUMyHQ54ALOr36g0h4Kz0TKzKS5c+AYwwFJw8G3fY";

    fn header(s: &str) -> Vec<u8> {
        basic_header(s).into_bytes()
    }

    #[test]
    fn plain_passwords() {
        let c: Credentials = "admin:s3cret".parse().unwrap();
        assert!(c.check(Some(&header("admin:s3cret"))));
        assert!(!c.check(Some(&header("admin:s3cret2"))));
        assert!(!c.check(Some(&header("root:s3cret"))));
        assert!(!c.check(Some(b"Bearer abc")));
        assert!(!c.check(Some(b"Basic !!!")));
        assert!(!c.check(None));
        assert_eq!(c.password(), Some("s3cret"));
        let stats = Credentials::plain("admin", "$6$x:y");
        assert!(
            stats.check(Some(&header("admin:$6$x:y"))),
            "plain, even if it looks like a hash"
        );
    }

    #[test]
    fn refused_shapes() {
        assert_eq!("admin".parse::<Credentials>(), Err(AuthError::Shape));
        assert_eq!(":pw".parse::<Credentials>(), Err(AuthError::EmptyUser));
        assert_eq!("admin:".parse::<Credentials>(), Err(AuthError::EmptyPassword));
        assert!(matches!(
            "admin:$1$abc$def".parse::<Credentials>(),
            Err(AuthError::Hash(_))
        ));
        assert!(matches!(
            "admin:$6$only".parse::<Credentials>(),
            Err(AuthError::Hash(_))
        ));
        assert!(matches!("admin:$2b$xx".parse::<Credentials>(), Err(AuthError::Hash(_))));
        assert!(matches!(
            "admin:$argon2id$bad".parse::<Credentials>(),
            Err(AuthError::Hash(_))
        ));
    }

    #[test]
    fn crypt_hashes() {
        for hash in [SHA512, BCRYPT, ARGON2ID] {
            let c: Credentials = format!("admin:{hash}").parse().unwrap();
            assert!(!c.check(Some(&header("admin:Secret"))), "{hash}");
            assert!(!c.check(Some(&header("root:secret"))), "{hash}");
            assert!(c.check(Some(&header("admin:secret"))), "{hash}");
            assert!(c.check(Some(&header("admin:secret"))), "again, from the cache");
            assert_eq!(c.password(), None);
        }
    }
}
