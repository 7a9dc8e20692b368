//! Seeds of `config_toml` and `control_request`: the repository's example
//! configs and the TOML blocks of `docs/config.md`, and every control
//! request and a few answers, serialized from `tunsec::control` values.

use std::fs;
use std::path::Path;

use tunsec::control::{Request, Response};

use super::{corpus_dir, write};

/// `config_toml`: `examples/*.toml` as they are, the same with their
/// `psk_file` lines pointed at the target's private PSK file or at
/// `psk_env` (so that validation gets past the key), and every ```toml
/// block of `docs/config.md`.
pub(crate) fn config_seeds() {
    let dir = corpus_dir("config_toml");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut examples: Vec<_> = fs::read_dir(root.join("examples"))
        .expect("examples/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    examples.sort();
    for path in examples {
        let name = path.file_stem().expect("a file name").to_string_lossy();
        let text = fs::read_to_string(&path).expect("an example config");
        write(&dir, &format!("example_{name}"), text.as_bytes());
        let local = with_psk(&text, "psk_file = \"keys/peer.psk\"");
        write(&dir, &format!("example_{name}_psk_file"), local.as_bytes());
        let env = with_psk(&text, "psk_env = \"TUNSEC_PSK\"");
        write(&dir, &format!("example_{name}_psk_env"), env.as_bytes());
    }
    let doc = fs::read_to_string(root.join("docs/config.md")).expect("docs/config.md");
    for (i, block) in doc.split("```toml\n").skip(1).enumerate() {
        let block = block.split("```").next().unwrap_or_default();
        write(&dir, &format!("config_md_{i}"), block.as_bytes());
    }
}

/// `text` with each `psk_file = ...` line replaced by `line`.
fn with_psk(text: &str, line: &str) -> String {
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with("psk_file") {
                line
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `control_request`: each request as the CLI sends it (one line of
/// JSON and its newline), and the answers `Done`, `Error`, `Keys` and a
/// minimal `Status`.
pub(crate) fn control_seeds() {
    let dir = corpus_dir("control_request");
    let peer = || "host-b".to_owned();
    let requests = [
        ("status", Request::Status),
        ("delete_sa", Request::DeleteSa { peer: peer() }),
        ("down", Request::Down { peer: peer() }),
        ("up", Request::Up { peer: peer() }),
        (
            "rekey",
            Request::Rekey {
                peer: peer(),
                ike: false,
                network: None,
            },
        ),
        (
            "rekey_network",
            Request::Rekey {
                peer: peer(),
                ike: false,
                network: Some("blue".to_owned()),
            },
        ),
        (
            "rekey_ike",
            Request::Rekey {
                peer: peer(),
                ike: true,
                network: None,
            },
        ),
        ("reauth", Request::Reauth { peer: peer() }),
        ("reload", Request::Reload),
        ("export_keys", Request::ExportKeys),
    ];
    for (name, request) in requests {
        let mut line = serde_json::to_vec(&request).expect("a request encodes");
        line.push(b'\n');
        write(&dir, &format!("request_{name}"), &line);
    }
    let status = serde_json::json!({
        "result": "status",
        "node": {"name": "n1", "underlay": "192.0.2.1", "esp": "udp:4500", "uptime_secs": 1},
        "networks": [], "peers": [], "drops": {}, "keepalives": 0,
        "ike_on_esp_port": 0, "fdb": []
    });
    let status: Response = serde_json::from_value(status).expect("a minimal status");
    let answers = [
        ("status", status),
        (
            "done",
            Response::Done {
                message: "reloaded".into(),
            },
        ),
        (
            "error",
            Response::Error {
                message: "peer: \"x\" is not an IKE peer".into(),
            },
        ),
        ("keys", Response::Keys(Box::default())),
    ];
    for (name, answer) in answers {
        let mut line = serde_json::to_vec(&answer).expect("an answer encodes");
        line.push(b'\n');
        write(&dir, &format!("answer_{name}"), &line);
    }
}
