//! The Security Association Database, inbound side: SPI to SA in O(1).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use crate::Error;
use crate::direction::Direction;
use crate::sa::Sa;

/// Inbound SAs by SPI.
///
/// RFC 4301 section 4.1: for unicast traffic the SPI alone identifies the
/// SA.
#[derive(Debug, Default)]
pub struct Sad {
    by_spi: HashMap<u32, Sa>,
}

impl Sad {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an inbound SA. Its SPI must be free.
    pub fn insert(&mut self, sa: Sa) -> Result<(), Error> {
        if sa.direction() != Direction::Inbound {
            return Err(Error::Direction {
                spi: sa.spi(),
                expected: Direction::Inbound,
            });
        }
        match self.by_spi.entry(sa.spi()) {
            Entry::Occupied(_) => Err(Error::DuplicateSpi(sa.spi())),
            Entry::Vacant(v) => {
                v.insert(sa);
                Ok(())
            }
        }
    }

    /// Removes and returns the SA with this SPI.
    pub fn remove(&mut self, spi: u32) -> Option<Sa> {
        self.by_spi.remove(&spi)
    }

    /// The SA with this SPI.
    pub fn get(&self, spi: u32) -> Option<&Sa> {
        self.by_spi.get(&spi)
    }

    /// The SA with this SPI, for processing.
    pub fn get_mut(&mut self, spi: u32) -> Option<&mut Sa> {
        self.by_spi.get_mut(&spi)
    }

    /// How many SAs there are.
    pub fn len(&self) -> usize {
        self.by_spi.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_spi.is_empty()
    }

    /// Every SA, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Sa> {
        self.by_spi.values()
    }
}
