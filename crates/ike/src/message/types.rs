//! Registry numbers: payload types, exchange types, notify types, transform
//! types and IDs, and the rest of IANA's IKEv2 tables that this crate uses.
//!
//! Each is a rustls-style enum: the values this crate knows by name, and
//! `Unknown(n)` for every other value, so that decoding never fails on a
//! number alone and encoding gives back the same number. `Unknown` holds
//! only values that have no name; `From<u8>`/`From<u16>` never builds an
//! `Unknown` of a named value.

use crate::error::{Error, Fault};

/// Defines a registry enum with `From` conversions both ways.
macro_rules! registry {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value without a name here.
            Unknown($repr),
        }

        impl From<$repr> for $name {
            fn from(value: $repr) -> Self {
                match value {
                    $( $value => Self::$variant, )*
                    other => Self::Unknown(other),
                }
            }
        }

        impl From<$name> for $repr {
            fn from(value: $name) -> Self {
                match value {
                    $( $name::$variant => $value, )*
                    $name::Unknown(other) => other,
                }
            }
        }

        impl $name {
            /// The number on the wire.
            pub fn value(self) -> $repr {
                self.into()
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self {
                    Self::Unknown(v) => write!(f, "{}({v})", stringify!($name)),
                    known => write!(f, "{known:?}({})", <$repr>::from(*known)),
                }
            }
        }
    };
}

registry! {
    /// Payload types (RFC 7296 section 3.2, "Next Payload").
    pub enum PayloadType: u8 {
        /// No next payload.
        None = 0,
        /// Security Association (SA).
        SecurityAssociation = 33,
        /// Key Exchange (KE).
        KeyExchange = 34,
        /// Identification - Initiator (IDi).
        IdInitiator = 35,
        /// Identification - Responder (IDr).
        IdResponder = 36,
        /// Certificate (CERT).
        Certificate = 37,
        /// Certificate Request (CERTREQ).
        CertificateRequest = 38,
        /// Authentication (AUTH).
        Authentication = 39,
        /// Nonce (Ni, Nr).
        Nonce = 40,
        /// Notify (N).
        Notify = 41,
        /// Delete (D).
        Delete = 42,
        /// Vendor ID (V).
        VendorId = 43,
        /// Traffic Selector - Initiator (TSi).
        TsInitiator = 44,
        /// Traffic Selector - Responder (TSr).
        TsResponder = 45,
        /// Encrypted and Authenticated (SK).
        Encrypted = 46,
        /// Configuration (CP).
        Configuration = 47,
        /// Extensible Authentication (EAP).
        Eap = 48,
        /// Encrypted and Authenticated Fragment (SKF, RFC 7383 section 2.5).
        EncryptedFragment = 53,
    }
}

registry! {
    /// Exchange types (RFC 7296 section 3.1; RFC 9242; RFC 9370).
    pub enum ExchangeType: u8 {
        /// IKE_SA_INIT.
        IkeSaInit = 34,
        /// IKE_AUTH.
        IkeAuth = 35,
        /// CREATE_CHILD_SA.
        CreateChildSa = 36,
        /// INFORMATIONAL.
        Informational = 37,
        /// IKE_INTERMEDIATE (RFC 9242).
        IkeIntermediate = 43,
        /// IKE_FOLLOWUP_KE (RFC 9370).
        IkeFollowupKe = 44,
    }
}

registry! {
    /// Security protocol identifiers (RFC 7296 section 3.3.1).
    pub enum ProtocolId: u8 {
        /// IKE.
        Ike = 1,
        /// AH.
        Ah = 2,
        /// ESP.
        Esp = 3,
    }
}

registry! {
    /// Transform types (RFC 7296 section 3.3.2).
    pub enum TransformType: u8 {
        /// Encryption algorithm (ENCR).
        Encr = 1,
        /// Pseudorandom function (PRF).
        Prf = 2,
        /// Integrity algorithm (INTEG).
        Integ = 3,
        /// Diffie-Hellman group (D-H; "Key Exchange Method" since RFC 9370).
        Dh = 4,
        /// Extended sequence numbers (ESN).
        Esn = 5,
        /// Additional Key Exchange 1 (RFC 9370): a key exchange method run
        /// in IKE_INTERMEDIATE (or IKE_FOLLOWUP_KE) after the first.
        AddKe1 = 6,
        /// Additional Key Exchange 2.
        AddKe2 = 7,
        /// Additional Key Exchange 3.
        AddKe3 = 8,
        /// Additional Key Exchange 4.
        AddKe4 = 9,
        /// Additional Key Exchange 5.
        AddKe5 = 10,
        /// Additional Key Exchange 6.
        AddKe6 = 11,
        /// Additional Key Exchange 7.
        AddKe7 = 12,
    }
}

registry! {
    /// Transform IDs of type 1, encryption algorithms.
    pub enum EncrId: u16 {
        /// ENCR_AES_CBC (RFC 3602); needs a key length attribute.
        AesCbc = 12,
        /// ENCR_AES_GCM_16 (RFC 4106, RFC 5282); needs a key length attribute.
        AesGcm16 = 20,
        /// ENCR_CHACHA20_POLY1305 (RFC 7634); no key length attribute.
        ChaCha20Poly1305 = 28,
    }
}

registry! {
    /// Transform IDs of type 2, pseudorandom functions.
    pub enum PrfId: u16 {
        /// PRF_HMAC_SHA2_256 (RFC 4868).
        HmacSha2_256 = 5,
        /// PRF_HMAC_SHA2_384 (RFC 4868).
        HmacSha2_384 = 6,
        /// PRF_HMAC_SHA2_512 (RFC 4868).
        HmacSha2_512 = 7,
    }
}

registry! {
    /// Transform IDs of type 3, integrity algorithms.
    pub enum IntegId: u16 {
        /// NONE (with an AEAD cipher).
        None = 0,
        /// AUTH_HMAC_SHA2_256_128 (RFC 4868).
        HmacSha2_256_128 = 12,
        /// AUTH_HMAC_SHA2_384_192 (RFC 4868).
        HmacSha2_384_192 = 13,
        /// AUTH_HMAC_SHA2_512_256 (RFC 4868).
        HmacSha2_512_256 = 14,
    }
}

registry! {
    /// Transform IDs of type 4, Diffie-Hellman groups.
    pub enum DhGroup: u16 {
        /// NONE (no key exchange: a Child SA without PFS).
        None = 0,
        /// 2048-bit MODP group (RFC 3526 section 3).
        Modp2048 = 14,
        /// 256-bit random ECP group, NIST P-256 (RFC 5903).
        Ecp256 = 19,
        /// 384-bit random ECP group, NIST P-384 (RFC 5903).
        Ecp384 = 20,
        /// Curve25519 (RFC 8031).
        Curve25519 = 31,
        /// ML-KEM-512 (FIPS 203, draft-ietf-ipsecme-ikev2-mlkem; strongSwan
        /// 6's `ML_KEM_512`).
        MlKem512 = 35,
        /// ML-KEM-768.
        MlKem768 = 36,
        /// ML-KEM-1024.
        MlKem1024 = 37,
    }
}

registry! {
    /// Transform IDs of type 5, extended sequence numbers.
    pub enum EsnId: u16 {
        /// No extended sequence numbers.
        NoEsn = 0,
        /// Extended sequence numbers.
        Esn = 1,
    }
}

registry! {
    /// Transform attribute types (RFC 7296 section 3.3.5).
    pub enum AttributeType: u16 {
        /// Key Length in bits, a TV attribute.
        KeyLength = 14,
    }
}

registry! {
    /// Identification types (RFC 7296 section 3.5).
    pub enum IdType: u8 {
        /// ID_IPV4_ADDR: four octets.
        Ipv4Addr = 1,
        /// ID_FQDN: a fully qualified domain name.
        Fqdn = 2,
        /// ID_RFC822_ADDR: an email address.
        Rfc822Addr = 3,
        /// ID_IPV6_ADDR: sixteen octets.
        Ipv6Addr = 5,
        /// ID_DER_ASN1_DN: a DER-encoded X.500 distinguished name.
        DerAsn1Dn = 9,
        /// ID_DER_ASN1_GN: a DER-encoded X.509 GeneralName.
        DerAsn1Gn = 10,
        /// ID_KEY_ID: opaque octets.
        KeyId = 11,
    }
}

registry! {
    /// Authentication methods (RFC 7296 section 3.8; RFC 4754; RFC 7427).
    pub enum AuthMethod: u8 {
        /// RSA digital signature (PKCS #1 v1.5 over SHA-1).
        RsaSignature = 1,
        /// Shared key message integrity code (PSK).
        SharedKey = 2,
        /// DSS digital signature.
        DssSignature = 3,
        /// ECDSA with SHA-256 on P-256 (RFC 4754).
        EcdsaSha256P256 = 9,
        /// ECDSA with SHA-384 on P-384 (RFC 4754).
        EcdsaSha384P384 = 10,
        /// ECDSA with SHA-512 on P-521 (RFC 4754).
        EcdsaSha512P521 = 11,
        /// Digital signature (RFC 7427).
        DigitalSignature = 14,
    }
}

registry! {
    /// Certificate encodings (RFC 7296 section 3.6; RFC 7670).
    pub enum CertEncoding: u8 {
        /// PKCS #7 wrapped X.509 certificate.
        Pkcs7 = 1,
        /// X.509 certificate - signature (DER).
        X509Signature = 4,
        /// Certificate revocation list.
        Crl = 7,
        /// Raw RSA key (deprecated).
        RawRsaKey = 11,
        /// Hash and URL of an X.509 certificate.
        HashUrlX509 = 12,
        /// Hash and URL of an X.509 bundle.
        HashUrlBundle = 13,
        /// Raw public key (RFC 7670).
        RawPublicKey = 15,
    }
}

registry! {
    /// Traffic selector types (RFC 7296 section 3.13.1).
    pub enum TsType: u8 {
        /// TS_IPV4_ADDR_RANGE.
        Ipv4AddrRange = 7,
        /// TS_IPV6_ADDR_RANGE.
        Ipv6AddrRange = 8,
    }
}

registry! {
    /// Configuration payload types (RFC 7296 section 3.15).
    pub enum CfgType: u8 {
        /// CFG_REQUEST.
        Request = 1,
        /// CFG_REPLY.
        Reply = 2,
        /// CFG_SET.
        Set = 3,
        /// CFG_ACK.
        Ack = 4,
    }
}

registry! {
    /// Notify message types (RFC 7296 section 3.10.1, and the status types
    /// of later RFCs that strongSwan sends). Types below 16384 are errors.
    /// The numbers were checked against Wireshark's IKEv2 dissector.
    pub enum NotifyType: u16 {
        /// UNSUPPORTED_CRITICAL_PAYLOAD; the data is the one-octet payload type.
        UnsupportedCriticalPayload = 1,
        /// INVALID_IKE_SPI.
        InvalidIkeSpi = 4,
        /// INVALID_MAJOR_VERSION.
        InvalidMajorVersion = 5,
        /// INVALID_SYNTAX.
        InvalidSyntax = 7,
        /// INVALID_MESSAGE_ID.
        InvalidMessageId = 9,
        /// INVALID_SPI.
        InvalidSpi = 11,
        /// NO_PROPOSAL_CHOSEN.
        NoProposalChosen = 14,
        /// INVALID_KE_PAYLOAD; the data is the two-octet accepted group.
        InvalidKePayload = 17,
        /// AUTHENTICATION_FAILED.
        AuthenticationFailed = 24,
        /// SINGLE_PAIR_REQUIRED.
        SinglePairRequired = 34,
        /// NO_ADDITIONAL_SAS.
        NoAdditionalSas = 35,
        /// INTERNAL_ADDRESS_FAILURE.
        InternalAddressFailure = 36,
        /// FAILED_CP_REQUIRED.
        FailedCpRequired = 37,
        /// TS_UNACCEPTABLE.
        TsUnacceptable = 38,
        /// INVALID_SELECTORS.
        InvalidSelectors = 39,
        /// TEMPORARY_FAILURE.
        TemporaryFailure = 43,
        /// CHILD_SA_NOT_FOUND.
        ChildSaNotFound = 44,
        /// STATE_NOT_FOUND (RFC 9370 section 2.2.2): an IKE_FOLLOWUP_KE
        /// request that names no exchange the responder is in.
        StateNotFound = 47,
        /// INITIAL_CONTACT.
        InitialContact = 16384,
        /// SET_WINDOW_SIZE.
        SetWindowSize = 16385,
        /// ADDITIONAL_TS_POSSIBLE.
        AdditionalTsPossible = 16386,
        /// IPCOMP_SUPPORTED.
        IpcompSupported = 16387,
        /// NAT_DETECTION_SOURCE_IP.
        NatDetectionSourceIp = 16388,
        /// NAT_DETECTION_DESTINATION_IP.
        NatDetectionDestinationIp = 16389,
        /// COOKIE.
        Cookie = 16390,
        /// USE_TRANSPORT_MODE.
        UseTransportMode = 16391,
        /// HTTP_CERT_LOOKUP_SUPPORTED.
        HttpCertLookupSupported = 16392,
        /// REKEY_SA.
        RekeySa = 16393,
        /// ESP_TFC_PADDING_NOT_SUPPORTED.
        EspTfcPaddingNotSupported = 16394,
        /// NON_FIRST_FRAGMENTS_ALSO.
        NonFirstFragmentsAlso = 16395,
        /// MOBIKE_SUPPORTED (RFC 4555).
        MobikeSupported = 16396,
        /// MULTIPLE_AUTH_SUPPORTED (RFC 4739).
        MultipleAuthSupported = 16404,
        /// INTERMEDIATE_EXCHANGE_SUPPORTED (RFC 9242 section 3): the
        /// sender can do IKE_INTERMEDIATE exchanges.
        IntermediateExchangeSupported = 16438,
        /// ADDITIONAL_KEY_EXCHANGE (RFC 9370 section 2.2.2): links the
        /// IKE_FOLLOWUP_KE exchanges of a CREATE_CHILD_SA; the data is
        /// opaque, chosen by the responder and copied by the initiator.
        AdditionalKeyExchange = 16441,
        /// REDIRECT_SUPPORTED (RFC 5685).
        RedirectSupported = 16406,
        /// EAP_ONLY_AUTHENTICATION (RFC 5998).
        EapOnlyAuthentication = 16417,
        /// CHILDLESS_IKEV2_SUPPORTED (RFC 6023).
        ChildlessIkev2Supported = 16418,
        /// IKEV2_MESSAGE_ID_SYNC_SUPPORTED (RFC 6311).
        Ikev2MessageIdSyncSupported = 16420,
        /// IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383).
        Ikev2FragmentationSupported = 16430,
        /// SIGNATURE_HASH_ALGORITHMS (RFC 7427).
        SignatureHashAlgorithms = 16431,
    }
}

impl NotifyType {
    /// Whether this is an error type (RFC 7296 section 3.10.1: types below
    /// 16384 report errors, the others status).
    pub fn is_error(self) -> bool {
        self.value() < 16384
    }
}

// The notify that answers an error lives here, beside the notify types,
// so that `error` needs nothing from `message` (which uses `Error`).
impl Error {
    /// The notify type an IKE responder answers this error with, if any.
    ///
    /// Messages that fail their integrity check get no answer: they are
    /// dropped. An unsupported transform or group is answered by the
    /// exchange that negotiates it (`NO_PROPOSAL_CHOSEN`,
    /// `INVALID_KE_PAYLOAD`), which only the state machine knows. Local and
    /// configuration errors are not the peer's business.
    pub fn notify(&self) -> Option<NotifyType> {
        match self {
            Self::UnsupportedCriticalPayload(_) => Some(NotifyType::UnsupportedCriticalPayload),
            Self::UnsupportedVersion { .. } => Some(NotifyType::InvalidMajorVersion),
            Self::InvalidPublicValue { .. } => Some(NotifyType::InvalidSyntax),
            _ if self.fault() == Fault::Malformed => Some(NotifyType::InvalidSyntax),
            _ => None,
        }
    }
}
