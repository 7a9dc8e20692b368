//! Benchmarks of the ESP data path, with the raw aws-lc-rs calls beside them.
//!
//! For every suite in [`Suite::ALL`] and payloads of 64, 1400 and 8900
//! bytes, four measurements sit next to each other in the output
//! (`<suite>/b<size>/...`):
//!
//! - `seal_esp`: [`Sa::seal_esp`], payload to `SPI..ICV`;
//! - `seal_raw`: the bare crypto on the same bytes: `LessSafeKey::
//!   seal_in_place_separate_tag` with an 8-byte AAD for the AEAD suites,
//!   AES-256-CBC `less_safe_encrypt` and HMAC-SHA-256 for the CBC suite;
//! - `open_esp`: [`Sa::open_esp`], `SPI..ICV` back to the payload;
//! - `open_raw`: `open_in_place_separate_tag`, or HMAC verify and CBC
//!   decrypt.
//!
//! The raw calls work on a buffer laid out exactly as the ESP packet (same
//! length, ciphertext at the same offset), and encrypt the same number of
//! bytes ESP does (payload, padding and the 2-byte trailer), so the
//! difference between the two is what the ESP layer adds: framing, padding,
//! the sequence number and replay window, lifetimes, counters, dispatch.
//!
//! Nothing is allocated in a timed closure. Seal works on one buffer whose
//! packet window is reset on every iteration. Open needs a freshly sealed
//! packet with a new sequence number every time, so the (untimed) input
//! generator seals packets into a ring of [`RING`] buffers and the timed
//! closure opens them in order; the sample size is fixed at [`RING`] so that
//! no slot is sealed again before it is opened. Any failure (a replay drop,
//! an ICV failure) is counted and makes the benchmark panic afterwards, so
//! the figures are those of the successful path.
//!
//! `replay/...` measures [`ReplayWindow`] alone: check and update in order,
//! with reordering, and check alone.
//!
//! Run with `cargo bench -p tunsec-esp --bench esp`; see
//! `docs/benchmarks.md`.

use std::cell::RefCell;
use std::time::Instant;

use aws_lc_rs::{aead, cipher, constant_time, hmac, rand};
use divan::counter::BytesCount;
use divan::{Bencher, black_box};
use tunsec_esp::{Direction, PacketBuf, ReplayWindow, Sa, SaConfig, SaKeys, Suite};

fn main() {
    // The suite modules below are written out by hand (divan needs them at
    // compile time): make sure they still cover every suite.
    for suite in Suite::ALL {
        assert!(COVERED.contains(&suite), "no benchmarks for {suite}");
    }
    divan::main();
}

/// The SPI of every benchmark SA.
const SPI: u32 = 0x0102_0304;
/// The next header ESP carries (UDP, as for VXLAN or Geneve payloads).
const NEXT_HEADER: u8 = 17;
/// How many packets the open benchmarks seal ahead; also their sample size.
const RING: usize = 32;
/// Iterations per sample for the crypto benchmarks.
const SAMPLE_SIZE: u32 = RING as u32;
/// Samples per crypto benchmark.
const SAMPLE_COUNT: u32 = 1000;
/// The fixed CBC IV of the raw CBC benchmarks (ESP draws a random one).
const RAW_CBC_IV: [u8; 16] = [0x42; 16];

/// Key material for `suite`: the same bytes for ESP and the raw calls.
fn keymat(suite: Suite) -> Vec<u8> {
    (0..suite.encryption_key_len() + suite.integrity_key_len())
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(1))
        .collect()
}

/// An SA with the default settings (transport mode, ESP in UDP, no ESN,
/// a 4096-packet replay window, no lifetimes).
fn new_sa(suite: Suite, direction: Direction, now: Instant) -> Sa {
    let keys = SaKeys::from_keymat(suite, &keymat(suite)).expect("key length");
    Sa::new(SaConfig::new(SPI, direction, suite, keys), now).expect("SA")
}

/// Where things are in an ESP packet of a given payload length.
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// Headroom ESP needs: header and IV.
    head: usize,
    /// The payload length.
    len: usize,
    /// The encrypted length: payload, padding and trailer.
    ct_len: usize,
    /// The ICV length.
    icv_len: usize,
    /// Tailroom ESP may need.
    tail: usize,
}

impl Layout {
    fn new(sa: &Sa, len: usize) -> Self {
        let suite = sa.suite();
        let overhead = sa.esp_overhead();
        Self {
            head: overhead.head,
            len,
            ct_len: (len + 2).next_multiple_of(suite.align()),
            icv_len: suite.icv_len(),
            tail: overhead.tail,
        }
    }

    /// A buffer with room for the payload and everything ESP adds.
    fn buffer(&self) -> Vec<u8> {
        vec![0x5a; self.head + self.len + self.tail]
    }

    /// The sealed ESP packet's length (from the SPI to the ICV).
    fn packet_len(&self) -> usize {
        self.head + self.ct_len + self.icv_len
    }
}

/// Benchmarks [`Sa::seal_esp`].
fn seal_esp(bencher: Bencher<'_, '_>, suite: Suite, len: usize) {
    let now = Instant::now();
    let mut sa = new_sa(suite, Direction::Outbound, now);
    let layout = Layout::new(&sa, len);
    let mut buf = layout.buffer();
    let mut failures = 0u64;
    bencher.counter(BytesCount::new(len)).bench_local(|| {
        // Reset the window onto the payload; the bytes are whatever the
        // previous iteration left, which costs the cipher the same.
        let mut packet = PacketBuf::new(&mut buf, layout.head, layout.head + layout.len);
        if sa.seal_esp(&mut packet, NEXT_HEADER, now).is_err() {
            failures += 1;
        }
    });
    assert_eq!(failures, 0, "seal_esp failed");
}

/// Benchmarks [`Sa::open_esp`] on packets sealed (untimed) just before.
fn open_esp(bencher: Bencher<'_, '_>, suite: Suite, len: usize) {
    let now = Instant::now();
    let mut tx = new_sa(suite, Direction::Outbound, now);
    let mut rx = new_sa(suite, Direction::Inbound, now);
    let layout = Layout::new(&tx, len);
    let ring = RefCell::new(vec![layout.buffer(); RING]);
    let mut next_slot = 0;
    let mut failures = 0u64;
    bencher
        .counter(BytesCount::new(len))
        .with_inputs(|| {
            let slot = next_slot;
            next_slot = (next_slot + 1) % RING;
            let mut ring = ring.borrow_mut();
            let mut packet = PacketBuf::new(&mut ring[slot], layout.head, layout.head + layout.len);
            tx.seal_esp(&mut packet, NEXT_HEADER, now).expect("seal");
            assert_eq!((packet.start(), packet.end()), (0, layout.packet_len()));
            slot
        })
        .bench_local_refs(|slot| {
            let mut ring = ring.borrow_mut();
            let mut packet = PacketBuf::new(&mut ring[*slot], 0, layout.packet_len());
            match rx.open_esp(&mut packet, now) {
                Ok(next_header) => next_header,
                Err(_) => {
                    failures += 1;
                    0
                }
            }
        });
    assert_eq!(failures, 0, "open_esp dropped packets");
    assert_eq!(rx.counters().drops.total(), 0);
}

/// The bare aws-lc-rs transform of a suite, keyed with the same bytes as
/// the SA.
// One value per benchmark; boxing the CBC keys would add an indirection
// to the measured path.
#[allow(clippy::large_enum_variant)]
enum Raw {
    /// AES-GCM or ChaCha20-Poly1305.
    Aead {
        key: aead::LessSafeKey,
        salt: [u8; 4],
    },
    /// AES-256-CBC and HMAC-SHA-256, ICV truncated to 16 bytes.
    Cbc {
        encrypt: cipher::EncryptingKey,
        decrypt: cipher::DecryptingKey,
        mac: hmac::Key,
    },
}

impl Raw {
    fn new(suite: Suite) -> Self {
        let keymat = keymat(suite);
        let enc = suite.encryption_key_len();
        match suite {
            Suite::AesGcm128 | Suite::AesGcm256 | Suite::ChaCha20Poly1305 => {
                let algorithm = match suite {
                    Suite::AesGcm128 => &aead::AES_128_GCM,
                    Suite::AesGcm256 => &aead::AES_256_GCM,
                    _ => &aead::CHACHA20_POLY1305,
                };
                let (key, salt) = keymat[..enc].split_at(enc - 4);
                let key = aead::UnboundKey::new(algorithm, key).expect("AEAD key");
                Self::Aead {
                    key: aead::LessSafeKey::new(key),
                    salt: salt.try_into().expect("salt"),
                }
            }
            Suite::AesCbc256HmacSha256 => {
                let key = || cipher::UnboundCipherKey::new(&cipher::AES_256, &keymat[..enc]);
                Self::Cbc {
                    encrypt: cipher::EncryptingKey::cbc(key().expect("key")).expect("CBC"),
                    decrypt: cipher::DecryptingKey::cbc(key().expect("key")).expect("CBC"),
                    mac: hmac::Key::new(hmac::HMAC_SHA256, &keymat[enc..]),
                }
            }
        }
    }

    /// The AEAD nonce (salt and 8-byte IV) and the 8-byte AAD (SPI and
    /// sequence number) for packet `seq`, as ESP builds them.
    fn nonce_aad(salt: &[u8; 4], seq: u64) -> (aead::Nonce, [u8; 8]) {
        let mut nonce = [0u8; aead::NONCE_LEN];
        nonce[..4].copy_from_slice(salt);
        nonce[4..].copy_from_slice(&seq.to_be_bytes());
        let mut aad = [0u8; 8];
        aad[..4].copy_from_slice(&SPI.to_be_bytes());
        aad[4..].copy_from_slice(&(seq as u32).to_be_bytes());
        (aead::Nonce::assume_unique_for_key(nonce), aad)
    }

    /// Encrypts `buf[head..head + ct_len]` and writes the ICV after it.
    fn seal(&self, buf: &mut [u8], layout: &Layout, seq: u64) -> Result<(), ()> {
        let (head, icv_start) = (layout.head, layout.head + layout.ct_len);
        let (body, icv) = buf[..layout.packet_len()].split_at_mut(icv_start);
        match self {
            Self::Aead { key, salt } => {
                let (nonce, aad) = Self::nonce_aad(salt, seq);
                let tag = key
                    .seal_in_place_separate_tag(nonce, aead::Aad::from(aad), &mut body[head..])
                    .map_err(|_| ())?;
                icv.copy_from_slice(tag.as_ref());
            }
            Self::Cbc { encrypt, mac, .. } => {
                encrypt
                    .less_safe_encrypt(
                        &mut body[head..],
                        cipher::EncryptionContext::Iv128(RAW_CBC_IV.into()),
                    )
                    .map_err(|_| ())?;
                let tag = hmac::sign(mac, body);
                icv.copy_from_slice(&tag.as_ref()[..icv.len()]);
            }
        }
        Ok(())
    }

    /// Verifies the ICV and decrypts `buf[head..head + ct_len]`.
    fn open(&self, buf: &mut [u8], layout: &Layout, seq: u64) -> Result<(), ()> {
        let (head, icv_start) = (layout.head, layout.head + layout.ct_len);
        let (body, icv) = buf[..layout.packet_len()].split_at_mut(icv_start);
        match self {
            Self::Aead { key, salt } => {
                let (nonce, aad) = Self::nonce_aad(salt, seq);
                key.open_in_place_separate_tag(nonce, aead::Aad::from(aad), icv, &mut body[head..])
                    .map_err(|_| ())?;
            }
            Self::Cbc { decrypt, mac, .. } => {
                let tag = hmac::sign(mac, body);
                constant_time::verify_slices_are_equal(&tag.as_ref()[..icv.len()], icv)
                    .map_err(|_| ())?;
                decrypt
                    .decrypt(
                        &mut body[head..],
                        cipher::DecryptionContext::Iv128(RAW_CBC_IV.into()),
                    )
                    .map_err(|_| ())?;
            }
        }
        Ok(())
    }
}

/// Benchmarks the raw seal on a buffer laid out as the ESP packet.
fn seal_raw(bencher: Bencher<'_, '_>, suite: Suite, len: usize) {
    let sa = new_sa(suite, Direction::Outbound, Instant::now());
    let layout = Layout::new(&sa, len);
    let raw = Raw::new(suite);
    let mut buf = layout.buffer();
    let mut seq = 0u64;
    let mut failures = 0u64;
    bencher.counter(BytesCount::new(len)).bench_local(|| {
        seq += 1;
        if raw.seal(&mut buf, &layout, seq).is_err() {
            failures += 1;
        }
    });
    assert_eq!(failures, 0, "raw seal failed");
}

/// Benchmarks the raw open on packets sealed (untimed) just before.
fn open_raw(bencher: Bencher<'_, '_>, suite: Suite, len: usize) {
    let sa = new_sa(suite, Direction::Outbound, Instant::now());
    let layout = Layout::new(&sa, len);
    let raw = Raw::new(suite);
    let ring = RefCell::new(vec![layout.buffer(); RING]);
    let mut next_slot = 0;
    let mut seq = 0u64;
    let mut failures = 0u64;
    bencher
        .counter(BytesCount::new(len))
        .with_inputs(|| {
            let slot = next_slot;
            next_slot = (next_slot + 1) % RING;
            seq += 1;
            raw.seal(&mut ring.borrow_mut()[slot], &layout, seq)
                .expect("raw seal");
            (slot, seq)
        })
        .bench_local_refs(|&mut (slot, seq)| {
            let mut ring = ring.borrow_mut();
            if raw.open(&mut ring[slot], &layout, seq).is_err() {
                failures += 1;
            }
        });
    assert_eq!(failures, 0, "raw open failed");
}

/// One module per suite, one per payload size inside it, and the four
/// measurements inside that, so that ESP and raw run back to back.
macro_rules! suite_benches {
    ($($module:ident => $suite:expr;)*) => {
        /// The suites that have benchmarks.
        const COVERED: &[Suite] = &[$($suite),*];
        $(
            #[doc = concat!("Benchmarks of `", stringify!($suite), "`.")]
            mod $module {
                use super::*;
                size_benches!($suite; b64 => 64, b1400 => 1400, b8900 => 8900);
            }
        )*
    };
}

/// The four measurements for one suite at each payload size.
macro_rules! size_benches {
    ($suite:expr; $($module:ident => $len:expr),*) => {
        $(
            #[doc = concat!(stringify!($len), "-byte payloads.")]
            mod $module {
                use super::*;

                /// [`Sa::seal_esp`].
                #[divan::bench(sample_size = SAMPLE_SIZE, sample_count = SAMPLE_COUNT)]
                fn seal_esp(bencher: Bencher<'_, '_>) {
                    super::super::seal_esp(bencher, $suite, $len);
                }

                /// The raw aws-lc-rs seal.
                #[divan::bench(sample_size = SAMPLE_SIZE, sample_count = SAMPLE_COUNT)]
                fn seal_raw(bencher: Bencher<'_, '_>) {
                    super::super::seal_raw(bencher, $suite, $len);
                }

                /// [`Sa::open_esp`].
                #[divan::bench(sample_size = SAMPLE_SIZE, sample_count = SAMPLE_COUNT)]
                fn open_esp(bencher: Bencher<'_, '_>) {
                    super::super::open_esp(bencher, $suite, $len);
                }

                /// The raw aws-lc-rs open.
                #[divan::bench(sample_size = SAMPLE_SIZE, sample_count = SAMPLE_COUNT)]
                fn open_raw(bencher: Bencher<'_, '_>) {
                    super::super::open_raw(bencher, $suite, $len);
                }
            }
        )*
    };
}

suite_benches! {
    aes128gcm16 => Suite::AesGcm128;
    aes256gcm16 => Suite::AesGcm256;
    chacha20poly1305 => Suite::ChaCha20Poly1305;
    aes256_sha256 => Suite::AesCbc256HmacSha256;
}

/// Pieces of the ESP path measured on their own, to attribute its
/// overhead.
mod parts {
    use super::*;

    /// The random 16-byte IV the CBC suite draws per packet (RFC 3602).
    #[divan::bench]
    fn rand_iv16() -> [u8; 16] {
        let mut iv = [0u8; 16];
        rand::fill(&mut iv).expect("rand");
        iv
    }

    /// `Instant::now()`, which a caller pays once per packet or batch.
    #[divan::bench]
    fn instant_now() -> Instant {
        Instant::now()
    }
}

/// [`ReplayWindow`] on its own, with the default 4096-packet window.
mod replay {
    use super::*;

    /// A deterministic xorshift generator, so runs see the same order.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// 1, 2, 3, ...: every number is new and moves the window.
    #[divan::bench]
    fn check_update_in_order(bencher: Bencher<'_, '_>) {
        let mut window = ReplayWindow::new(ReplayWindow::DEFAULT_SIZE).expect("window");
        let mut seq = 0u64;
        let mut failures = 0u64;
        bencher.bench_local(|| {
            seq += 1;
            let s = black_box(seq);
            if window.check(s) {
                window.update(s);
            } else {
                failures += 1;
            }
        });
        assert_eq!(failures, 0);
    }

    /// Every number once, but shuffled within runs of 32 (as packets spread
    /// over several paths or queues arrive): about half arrive below the
    /// top and take the in-window path, half move the window.
    #[divan::bench]
    fn check_update_reordered(bencher: Bencher<'_, '_>) {
        const PERIOD: u64 = 4096;
        const RUN: usize = 32;
        let mut offsets: Vec<u64> = (1..=PERIOD).collect();
        let mut state = 0x9e37_79b9_7f4a_7c15;
        for run in offsets.chunks_mut(RUN) {
            for i in (1..run.len()).rev() {
                let j = (xorshift(&mut state) % (i as u64 + 1)) as usize;
                run.swap(i, j);
            }
        }
        let mut window = ReplayWindow::new(ReplayWindow::DEFAULT_SIZE).expect("window");
        let (mut base, mut i) = (0u64, 0usize);
        let mut failures = 0u64;
        bencher.bench_local(|| {
            let s = black_box(base + offsets[i]);
            i += 1;
            if i == offsets.len() {
                i = 0;
                base += PERIOD;
            }
            if window.check(s) {
                window.update(s);
            } else {
                failures += 1;
            }
        });
        assert_eq!(failures, 0);
    }

    /// Check alone, on numbers inside a window whose bitmap is half full:
    /// the bitmap lookup path (half are replays).
    #[divan::bench]
    fn check_in_window(bencher: Bencher<'_, '_>) {
        let size = u64::from(ReplayWindow::DEFAULT_SIZE);
        let mut window = ReplayWindow::new(ReplayWindow::DEFAULT_SIZE).expect("window");
        let top = 10 * size;
        for s in (top - size + 1..=top).step_by(2) {
            window.update(s);
        }
        let mut state = 0x2545_f491_4f6c_dd1d;
        let seqs: Vec<u64> = (0..1024)
            .map(|_| top - xorshift(&mut state) % size)
            .collect();
        let mut i = 0;
        bencher.bench_local(|| {
            i = (i + 1) % seqs.len();
            window.check(black_box(seqs[i]))
        });
    }

    /// Check alone, on a number above the top (the common in-order case).
    #[divan::bench]
    fn check_ahead(bencher: Bencher<'_, '_>) {
        let mut window = ReplayWindow::new(ReplayWindow::DEFAULT_SIZE).expect("window");
        window.update(1000);
        bencher.bench_local(|| window.check(black_box(1001)));
    }
}
