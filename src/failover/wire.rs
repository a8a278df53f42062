//! Failover messages on the wire: one UDP datagram each, a magic, an
//! HMAC-SHA256 of the body with the shared key, and the body as JSON.
//! Small datagrams on their own port: replication's bulk traffic on the
//! same link cannot hold them up behind it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::core::Message;
use super::key::FailoverKey;

/// Version 2: asks echo the voter's freshness token (version 1 had none).
const MAGIC: &[u8; 8] = b"sftpha2\n";
const TAG_LEN: usize = 32;
/// Far above any message; a bigger datagram is not ours.
pub const MAX_DATAGRAM: usize = 2048;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("not an sftp-ha failover message")]
    NotOurs,
    #[error(
        "a failover message of another version of sftp-ha: run the same version on all three hosts"
    )]
    OtherVersion,
    #[error(
        "the message is not signed with this host's failover key (a different /etc/sftp-ha/failover.key?)"
    )]
    BadKey,
    #[error("the message cannot be read: {0}")]
    Garbled(String),
}

fn mac(key: &FailoverKey) -> Hmac<Sha256> {
    // HMAC takes a key of any length: this cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(key.bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

pub fn encode(key: &FailoverKey, message: &Message) -> Vec<u8> {
    let body = serde_json::to_vec(message).unwrap_or_default();
    let mut m = mac(key);
    m.update(&body);
    let tag = m.finalize().into_bytes();
    let mut out = Vec::with_capacity(MAGIC.len() + TAG_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&tag);
    out.extend_from_slice(&body);
    out
}

/// Checks the tag (in constant time) before anything of the body is read.
pub fn decode(key: &FailoverKey, datagram: &[u8]) -> Result<Message, WireError> {
    let Some(rest) = datagram.strip_prefix(MAGIC) else {
        let other = datagram.len() >= MAGIC.len() && datagram.starts_with(b"sftpha");
        return Err(if other {
            WireError::OtherVersion
        } else {
            WireError::NotOurs
        });
    };
    if rest.len() < TAG_LEN {
        return Err(WireError::NotOurs);
    }
    let (tag, body) = rest.split_at(TAG_LEN);
    let mut m = mac(key);
    m.update(body);
    m.verify_slice(tag).map_err(|_| WireError::BadKey)?;
    serde_json::from_slice(body).map_err(|e| WireError::Garbled(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::core::Body;

    fn key(fill: char) -> FailoverKey {
        FailoverKey::parse(&fill.to_string().repeat(64)).unwrap()
    }

    fn message() -> Message {
        Message {
            from: "alpha".into(),
            fresh: 7 << 32 | 12,
            body: Body::Ask {
                epoch: 3,
                nonce: 42,
                after_ms: 3000,
                takeover: false,
                holding: true,
                echo: [("witness".to_owned(), 9 << 32 | 11)].into(),
                voted: None,
                voters: Vec::new(),
            },
        }
    }

    #[test]
    fn a_message_round_trips_with_the_same_key_only() {
        let datagram = encode(&key('a'), &message());
        assert!(datagram.len() < 200);
        assert_eq!(decode(&key('a'), &datagram), Ok(message()));
        assert_eq!(decode(&key('b'), &datagram), Err(WireError::BadKey));
    }

    #[test]
    fn a_changed_byte_or_a_stranger_is_refused() {
        let mut datagram = encode(&key('a'), &message());
        let last = datagram.len() - 3;
        datagram[last] ^= 1;
        assert_eq!(decode(&key('a'), &datagram), Err(WireError::BadKey));
        assert_eq!(
            decode(&key('a'), b"GET / HTTP/1.0\r\n"),
            Err(WireError::NotOurs)
        );
        assert_eq!(
            decode(&key('a'), b"sftpha2\nshort"),
            Err(WireError::NotOurs)
        );
        let mut older = datagram.clone();
        older[6] = b'1';
        assert_eq!(decode(&key('a'), &older), Err(WireError::OtherVersion));
    }
}
