//! SCRAM-SHA-256 (RFC 5802, RFC 7677), the client side, for the proxy's
//! own connections to an upstream that requires authentication. Pure
//! computation; `upstream::connect` runs the conversation.
//!
//! Passwords are used as given (no SASLprep), which is exact for ASCII.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub struct Scram {
    password: String,
    nonce: String,
    client_first_bare: String,
}

/// What the server must prove in its final message.
pub struct Expected {
    server_signature: Vec<u8>,
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn escape(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

impl Scram {
    /// Starts a conversation with a client nonce from `nonce_bytes`
    /// (random in production, fixed in tests).
    pub fn new(user: &str, password: &str, nonce_bytes: &[u8]) -> Scram {
        let nonce = B64.encode(nonce_bytes);
        Scram {
            password: password.to_string(),
            client_first_bare: format!("n={},r={nonce}", escape(user)),
            nonce,
        }
    }

    /// A fresh conversation with 24 random bytes of nonce.
    pub fn with_random_nonce(user: &str, password: &str) -> std::io::Result<Scram> {
        use std::io::Read;
        let mut bytes = [0u8; 24];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Scram::new(user, password, &bytes))
    }

    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// The client-final message for the server-first message.
    pub fn client_final(&self, server_first: &str) -> Result<(String, Expected), String> {
        let field = |name: &str| {
            server_first
                .split(',')
                .find_map(|part| part.strip_prefix(name))
                .ok_or_else(|| format!("SCRAM server message lacks '{name}'"))
        };
        let nonce = field("r=")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() <= self.nonce.len() {
            return Err("SCRAM server nonce does not extend ours".into());
        }
        let salt = B64
            .decode(field("s=")?)
            .map_err(|_| "SCRAM salt is not base64".to_string())?;
        let iterations: u32 = field("i=")?
            .parse()
            .map_err(|_| "SCRAM iteration count is not a number".to_string())?;
        if iterations < 4096 {
            return Err("SCRAM iteration count below 4096".into());
        }
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(self.password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        let expected = Expected {
            server_signature: hmac(&server_key, auth_message.as_bytes()),
        };
        Ok((format!("{without_proof},p={}", B64.encode(proof)), expected))
    }
}

impl Expected {
    /// Checks the server-final message (`v=<signature>`).
    pub fn verify(&self, server_final: &str) -> Result<(), String> {
        if let Some(error) = server_final.strip_prefix("e=") {
            return Err(format!("SCRAM server error: {error}"));
        }
        let given = server_final
            .split(',')
            .find_map(|p| p.strip_prefix("v="))
            .ok_or_else(|| "SCRAM server final message lacks 'v='".to_string())?;
        let given = B64
            .decode(given)
            .map_err(|_| "SCRAM server signature is not base64".to_string())?;
        if given != self.server_signature {
            return Err("SCRAM server signature does not match: not the server we trust".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SCRAM-SHA-256 example of RFC 7677 section 3.
    #[test]
    fn rfc_7677_example() {
        let scram = Scram {
            password: "pencil".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO".into(),
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
        };
        assert_eq!(scram.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (client_final, expected) = scram.client_final(server_first).unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        expected
            .verify("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(expected.verify("v=AAAA").is_err());
        assert!(expected.verify("e=invalid-proof").is_err());
    }

    #[test]
    fn names_are_escaped_and_nonces_checked() {
        let scram = Scram::new("a=b,c", "pw", b"0123456789");
        assert!(scram.client_first().starts_with("n,,n=a=3Db=2Cc,r="));
        assert!(scram.client_final("r=someone-else,s=AAAA,i=4096").is_err());
    }
}
