//! [`Random`]: where an IKE SA's SPIs and nonces come from, so that tests
//! can make them deterministic.

use crate::error::{Error, Result};

/// A source of random bytes: SPIs, nonces and ESP SPIs come from here, so
/// that tests can make them deterministic. (The key exchanges and the SK
/// payload IVs still draw from aws-lc-rs.)
pub trait Random {
    /// Fills `dest` with random bytes.
    fn fill(&mut self, dest: &mut [u8]) -> Result<()>;
}

/// The system's random number generator, through aws-lc-rs.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRandom;

impl Random for SystemRandom {
    fn fill(&mut self, dest: &mut [u8]) -> Result<()> {
        aws_lc_rs::rand::fill(dest).map_err(|_| Error::Crypto("no randomness"))
    }
}

/// A deterministic generator (SplitMix64) for tests and simulations.
/// Never use it for real SAs: its output is predictable.
#[derive(Debug, Clone)]
pub struct SeededRandom {
    state: u64,
}

impl SeededRandom {
    /// A generator that starts from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Random for SeededRandom {
    fn fill(&mut self, dest: &mut [u8]) -> Result<()> {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_be_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

/// The length of our nonces: RFC 7296 section 2.10 asks for at least half
/// the key size of the negotiated prf, and at least 128 bits; 32 bytes
/// cover every prf here.
pub(super) const NONCE_LEN: usize = 32;

pub(super) fn random_u64(rng: &mut dyn Random) -> Result<u64> {
    let mut b = [0u8; 8];
    rng.fill(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// An IKE SPI: any value but zero (RFC 7296 section 3.1).
pub(super) fn random_ike_spi(rng: &mut dyn Random) -> Result<u64> {
    loop {
        let spi = random_u64(rng)?;
        if spi != 0 {
            return Ok(spi);
        }
    }
}

/// An ESP SPI: RFC 4303 section 2.1 reserves 1 to 255 for IANA and 0 for
/// local use.
pub(super) fn random_esp_spi(rng: &mut dyn Random) -> Result<u32> {
    loop {
        let mut b = [0u8; 4];
        rng.fill(&mut b)?;
        let spi = u32::from_be_bytes(b);
        if spi > 255 {
            return Ok(spi);
        }
    }
}

pub(super) fn random_nonce(rng: &mut dyn Random) -> Result<Vec<u8>> {
    let mut n = vec![0u8; NONCE_LEN];
    rng.fill(&mut n)?;
    Ok(n)
}
