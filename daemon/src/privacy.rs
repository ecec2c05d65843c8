//! Keyed hashes of member ids: the irreversible pseudonym a forgotten member becomes, and the
//! reference that stands for a member in log lines. HMAC-SHA-256 with the coalition's secret
//! (`privacy.member_key`): without the key nobody can tell which id a pseudonym or a log
//! reference stands for, not even by trying every id.

use ring::hmac;
use std::sync::OnceLock;

/// The coalition's member key (`privacy.member_key`).
#[derive(Clone)]
pub struct MemberKey(hmac::Key);

impl std::fmt::Debug for MemberKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemberKey(…)")
    }
}

/// Shortest key accepted, in bytes of its text.
pub const MIN_KEY_LEN: usize = 32;

impl MemberKey {
    /// From the config's text (at least [`MIN_KEY_LEN`] characters, e.g. `openssl rand -hex 32`).
    pub fn from_secret(secret: &str) -> Option<MemberKey> {
        (secret.len() >= MIN_KEY_LEN)
            .then(|| MemberKey(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())))
    }

    fn tag(&self, domain: &str, member: &str) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.0);
        // A domain per use: a log reference says nothing about the pseudonym and back.
        ctx.update(domain.as_bytes());
        ctx.update(&[0]);
        ctx.update(member.as_bytes());
        ctx.sign().as_ref().to_vec()
    }

    /// The pseudonym a forgotten member becomes: `~` and 32 hex digits, the same shape as the
    /// random pseudonyms of retention.
    pub fn pseudonym(&self, member: &str) -> String {
        format!("~{}", hex::encode(&self.tag("forget", member)[..16]))
    }

    /// What stands for a member in log lines: `m:` and 16 hex digits.
    pub fn log_ref(&self, member: &str) -> String {
        format!("m:{}", hex::encode(&self.tag("log", member)[..8]))
    }
}

/// A key for log references when none is configured: random per process (references then match
/// only within one run of the daemon).
fn process_key() -> &'static MemberKey {
    static KEY: OnceLock<MemberKey> = OnceLock::new();
    KEY.get_or_init(|| {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 32];
        // Without randomness the reference is still a keyed hash, of a fixed key: never the id.
        let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
        MemberKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
    })
}

/// A member as a log line may name it: a keyed hash, never the id.
pub fn log_ref(key: Option<&MemberKey>, member: &str) -> String {
    key.unwrap_or_else(|| process_key()).log_ref(member)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_keyed_stable_and_apart_from_log_references() {
        let k = MemberKey::from_secret(&"k".repeat(32)).unwrap();
        let other = MemberKey::from_secret(&"j".repeat(32)).unwrap();
        let p = k.pseudonym("alice");
        assert_eq!(p, k.pseudonym("alice"));
        assert_eq!(p.len(), 33);
        assert!(p.starts_with('~'));
        assert_ne!(p, other.pseudonym("alice"));
        assert_ne!(p, k.pseudonym("bob"));
        assert!(!k.log_ref("alice").contains(&p[1..17]));
        assert!(MemberKey::from_secret("short").is_none());
    }
}
