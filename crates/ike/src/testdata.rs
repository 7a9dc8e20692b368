//! Real IKEv2 exchanges captured from two strongSwan 5.9.8 charons in
//! network namespaces (`testdata/strongswan/README.md` says how), with the
//! secrets the initiator logged at debug level 4.

use std::collections::HashMap;

/// Bytes from hex as RFCs and logs print it, with spaces and line breaks.
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.replace([' ', '\n'], "")).unwrap()
}

/// One captured IKE_SA_INIT and IKE_AUTH exchange.
pub(crate) struct Capture {
    pub(crate) name: &'static str,
    pub(crate) init_req: Vec<u8>,
    pub(crate) init_resp: Vec<u8>,
    pub(crate) auth_req: Vec<u8>,
    pub(crate) auth_resp: Vec<u8>,
    keys: HashMap<String, Vec<u8>>,
}

/// The captures, by directory name.
pub(crate) const CAPTURES: [&str; 4] = [
    "psk-x25519",
    "psk-modp2048",
    "cert-ecp384",
    "psk-chacha-ecp256",
];

fn read(name: &str, file: &str) -> String {
    let path = format!(
        "{}/testdata/strongswan/{name}/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

impl Capture {
    pub(crate) fn load(name: &'static str) -> Self {
        let msg = |file: &str| hex::decode(read(name, file).trim()).unwrap();
        let keys = read(name, "keys.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (k, v) = l.split_once(' ').unwrap();
                (k.to_owned(), hex::decode(v.trim()).unwrap())
            })
            .collect();
        Self {
            name,
            init_req: msg("init-req.hex"),
            init_resp: msg("init-resp.hex"),
            auth_req: msg("auth-req.hex"),
            auth_resp: msg("auth-resp.hex"),
            keys,
        }
    }

    pub(crate) fn all() -> impl Iterator<Item = Self> {
        CAPTURES.into_iter().map(Self::load)
    }

    /// A logged secret or plaintext, by name, if the capture has it.
    pub(crate) fn try_key(&self, name: &str) -> Option<&[u8]> {
        self.keys.get(name).map(Vec::as_slice)
    }

    /// A logged secret or plaintext, by name (see `keys.txt`).
    pub(crate) fn key(&self, name: &str) -> &[u8] {
        self.keys
            .get(name)
            .unwrap_or_else(|| panic!("{}: no {name}", self.name))
    }

    pub(crate) fn messages(&self) -> [&[u8]; 4] {
        [
            &self.init_req,
            &self.init_resp,
            &self.auth_req,
            &self.auth_resp,
        ]
    }
}
