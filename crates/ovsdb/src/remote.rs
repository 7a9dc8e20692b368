//! Where the server is: `unix:PATH` or `tcp:HOST:PORT`, in the notation
//! of ovsdb-server's `--remote` and `ovs-vsctl --db`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::RemoteError;

/// An active OVSDB remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// `unix:PATH`: a Unix domain stream socket.
    Unix(PathBuf),
    /// `tcp:HOST:PORT`: a TCP connection; HOST is an IPv4 address, an
    /// IPv6 address in brackets, or a name resolved at each connection.
    Tcp {
        /// The host, without brackets.
        host: String,
        /// The port.
        port: u16,
    },
}

impl FromStr for Remote {
    type Err = RemoteError;

    /// Parses `unix:PATH` or `tcp:HOST:PORT` (`tcp:[::1]:6640` for IPv6).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| RemoteError {
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let Some((scheme, rest)) = s.split_once(':') else {
            return Err(err("expected unix:PATH or tcp:HOST:PORT"));
        };
        match scheme {
            "unix" => {
                if rest.is_empty() {
                    return Err(err("the path is empty"));
                }
                if rest.contains('\0') {
                    return Err(err("the path contains a NUL byte"));
                }
                Ok(Self::Unix(PathBuf::from(rest)))
            }
            "tcp" => {
                let Some((host, port)) = rest.rsplit_once(':') else {
                    return Err(err("expected tcp:HOST:PORT"));
                };
                let host = match host.strip_prefix('[') {
                    Some(h) => h
                        .strip_suffix(']')
                        .filter(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
                        .ok_or_else(|| err("a bracketed host must be an IPv6 address"))?,
                    None if host.contains(':') => {
                        return Err(err("an IPv6 host goes in brackets: tcp:[ADDR]:PORT"));
                    }
                    None => host,
                };
                if host.is_empty() {
                    return Err(err("the host is empty"));
                }
                if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(err("the host contains a space or a control character"));
                }
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| err("the port must be a number from 1 to 65535"))?;
                Ok(Self::Tcp {
                    host: host.to_owned(),
                    port,
                })
            }
            "ssl" => Err(err("ssl: remotes are not supported; use unix: or tcp:")),
            "punix" | "ptcp" | "pssl" => Err(err(
                "a passive (listening) remote; the client needs unix: or tcp:",
            )),
            _ => Err(err("unknown scheme; expected unix:PATH or tcp:HOST:PORT")),
        }
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (s, want) in [
            (
                "unix:/var/run/openvswitch/db.sock",
                Remote::Unix("/var/run/openvswitch/db.sock".into()),
            ),
            ("unix:db.sock", Remote::Unix("db.sock".into())),
            (
                "tcp:127.0.0.1:6640",
                Remote::Tcp {
                    host: "127.0.0.1".into(),
                    port: 6640,
                },
            ),
            (
                "tcp:[::1]:6640",
                Remote::Tcp {
                    host: "::1".into(),
                    port: 6640,
                },
            ),
            (
                "tcp:ovsdb.example:1",
                Remote::Tcp {
                    host: "ovsdb.example".into(),
                    port: 1,
                },
            ),
        ] {
            let r: Remote = s.parse().unwrap();
            assert_eq!(r, want);
            assert_eq!(r.to_string(), s);
        }
    }

    #[test]
    fn errors_name_the_value_and_the_fault() {
        for (s, why) in [
            ("", "expected unix:PATH"),
            ("/var/run/db.sock", "expected unix:PATH"),
            ("unix:", "path is empty"),
            ("tcp:1.2.3.4", "expected tcp:HOST:PORT"),
            ("tcp::6640", "host is empty"),
            ("tcp:1.2.3.4:0", "1 to 65535"),
            ("tcp:1.2.3.4:65536", "1 to 65535"),
            ("tcp:1.2.3.4:http", "1 to 65535"),
            ("tcp:::1:6640", "in brackets"),
            ("tcp:[1.2.3.4]:6640", "IPv6"),
            ("tcp:[::1:6640", "IPv6"),
            ("tcp:a b:1", "space"),
            ("ssl:1.2.3.4:6640", "not supported"),
            ("punix:/x", "passive"),
            ("udp:1.2.3.4:1", "unknown scheme"),
        ] {
            let e = s.parse::<Remote>().unwrap_err();
            assert_eq!(e.value, s);
            let text = e.to_string();
            assert!(text.contains(why), "{s}: {text}");
            assert!(text.contains(&format!("{s:?}")), "{text}");
        }
    }
}
