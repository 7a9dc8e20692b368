//! The crate's one error type. Each variant says who is at fault, so that
//! the state machine knows whether to answer with a notify, drop the
//! message, or report a bug or a bad configuration: see [`Error::fault`] and
//! [`Error::notify`].

/// Who is responsible for an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The peer sent bytes that do not parse (answer `INVALID_SYNTAX`, or
    /// drop the message if it is not yet authenticated).
    Malformed,
    /// The peer sent something well formed that this implementation does
    /// not support (a critical payload, a version, a group).
    Unsupported,
    /// A cryptographic check failed: an ICV did not verify, or a public
    /// value is invalid. Such messages are dropped without an answer.
    Crypto,
    /// The caller passed something inconsistent (a key of the wrong length,
    /// a value too long to encode), or the crypto library failed.
    Local,
    /// A configuration value (a proposal string) is wrong.
    Config,
}

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A structure is shorter than its fixed part or than a length field
    /// says.
    #[error("{what}: truncated: needs {needed} bytes, {available} available")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// The bytes it needs.
        needed: usize,
        /// The bytes that were there.
        available: usize,
    },
    /// A length field holds an impossible value.
    #[error("{what}: length {length} is invalid")]
    InvalidLength {
        /// The structure whose length is wrong.
        what: &'static str,
        /// The length found.
        length: usize,
    },
    /// Bytes after the end of a structure where none may be.
    #[error("{what}: {count} trailing bytes")]
    TrailingBytes {
        /// The structure that should have ended.
        what: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
    /// A field holds a value the protocol does not allow.
    #[error("{what}: invalid value {value}")]
    InvalidValue {
        /// The field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// A payload this implementation does not know, with the critical bit
    /// set. RFC 7296 section 2.5: the message must be rejected with an
    /// `UNSUPPORTED_CRITICAL_PAYLOAD` notify whose data is this type.
    #[error("unsupported critical payload of type {0}")]
    UnsupportedCriticalPayload(u8),
    /// An IKE major version other than 2 (answer `INVALID_MAJOR_VERSION`,
    /// RFC 7296 section 2.5).
    #[error("unsupported IKE version {major}.{minor}")]
    UnsupportedVersion {
        /// The major version found.
        major: u8,
        /// The minor version found.
        minor: u8,
    },
    /// A well-formed value this implementation does not support (a
    /// transform, a group).
    #[error("{what}: {value} is not supported")]
    Unsupported {
        /// What kind of thing.
        what: &'static str,
        /// Its number on the wire.
        value: u64,
    },
    /// The integrity check of an SK payload failed, or its decrypted
    /// padding is inconsistent.
    #[error("SK payload: integrity check failed")]
    IntegrityCheckFailed,
    /// The peer's key exchange public value is not valid for its group.
    #[error("KE payload: invalid public value for group {group} ({reason})")]
    InvalidPublicValue {
        /// The group number.
        group: u16,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value too long for its length field, or otherwise impossible to
    /// encode.
    #[error("{what}: cannot encode {length} bytes")]
    Encode {
        /// The structure being encoded.
        what: &'static str,
        /// Its length.
        length: usize,
    },
    /// Key material of the wrong length.
    #[error("{what}: needs {expected} bytes of key material, got {actual}")]
    KeyLength {
        /// The key.
        what: &'static str,
        /// The length needed.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// The crypto library refused an operation that should not fail.
    #[error("crypto library failure: {0}")]
    Crypto(&'static str),
    /// A call that does not fit the IKE SA's state (it is not established,
    /// or a request is still waiting for its response).
    #[error("IKE SA: {0}")]
    InvalidState(&'static str),
    /// A proposal string that does not parse.
    #[error("proposal {proposal:?}: {token:?}: {reason}")]
    Proposal {
        /// The whole proposal string.
        proposal: String,
        /// The offending token (or the whole proposal if none is to blame).
        token: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl Error {
    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Truncated { .. }
            | Self::InvalidLength { .. }
            | Self::TrailingBytes { .. }
            | Self::InvalidValue { .. } => Fault::Malformed,
            Self::UnsupportedCriticalPayload(_)
            | Self::UnsupportedVersion { .. }
            | Self::Unsupported { .. } => Fault::Unsupported,
            Self::IntegrityCheckFailed | Self::InvalidPublicValue { .. } => Fault::Crypto,
            Self::Encode { .. }
            | Self::KeyLength { .. }
            | Self::Crypto(_)
            | Self::InvalidState(_) => Fault::Local,
            Self::Proposal { .. } => Fault::Config,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
