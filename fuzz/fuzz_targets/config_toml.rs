//! tunsec's config loader (`tunsec::config::Config::parse_with_env`, what
//! `Config::load` runs on a file's text) fed hostile TOML: any bytes, made
//! UTF-8 (invalid sequences replaced). Relative key files are looked up in
//! a scratch directory that holds one private PSK file (`keys/peer.psk`),
//! and every `psk_env` variable holds one fixed secret.
//!
//! Errors are fine; a panic is not. And:
//! - no error shows the secret, and neither does a parsed config's
//!   `Debug` (keys are redacted);
//! - a syntax error's line and column lie inside the text;
//! - parsing is deterministic: the same text gives the same outcome.
//!
//! Inputs that name `dev/`, `proc/` or `sys/` are skipped, so that the
//! fuzzer cannot make the loader read `/dev/zero` or a pipe forever.
#![no_main]

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tunsec::config::{Config, ConfigError};

/// What every `psk_env` variable holds, and what the PSK file holds.
const SECRET: &str = "fuzzing-secret-7f3a9c41d2e8b605";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if ["dev/", "proc/", "sys/"].iter().any(|p| text.contains(p)) {
        return;
    }
    let env = |_: &str| Some(OsString::from(SECRET));
    let outcome = Config::parse_with_env(&text, base_dir(), &env);
    match &outcome {
        Ok(config) => assert!(!format!("{config:?}").contains(SECRET)),
        Err(e) => {
            let shown = e.to_string();
            assert!(
                !shown.contains(SECRET),
                "the error shows the secret: {shown}"
            );
            if let ConfigError::Syntax {
                at: Some((line, column)),
                ..
            } = e
            {
                assert!(*line >= 1 && *line <= text.split('\n').count());
                assert!(*column >= 1);
            }
        }
    }
    let again = Config::parse_with_env(&text, base_dir(), &env);
    assert_eq!(
        outcome.map(|c| format!("{c:?}")).map_err(|e| e.to_string()),
        again.map(|c| format!("{c:?}")).map_err(|e| e.to_string()),
    );
});

/// The directory relative key file paths are taken from: made once per
/// process, with `keys/peer.psk` (mode 0600) in it.
fn base_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tunsec-fuzz-config-{}", std::process::id()));
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).expect("create the scratch directory");
        let psk = keys.join("peer.psk");
        std::fs::write(&psk, SECRET).expect("write the PSK file");
        std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600))
            .expect("make the PSK file private");
        dir
    })
}
