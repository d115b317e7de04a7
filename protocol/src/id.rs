//! Identifiers of sites and nodes.
//!
//! Ids appear as MQTT topic levels, InfluxDB tag values and file names, so they are restricted
//! to what is safe in all of them: 1 to 32 ASCII letters, digits, `-`, `_` and `.`. That rules
//! out the MQTT separators and wildcards (`/`, `+`, `#`), spaces, commas and `=` (which need
//! escaping in line protocol) and anything that could be mistaken for a path.

use core::fmt;
use core::ops::Deref;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest id in bytes.
pub const MAX_ID_LEN: usize = 32;

/// Why a string is not a valid id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdError {
    /// The id is empty.
    Empty,
    /// The id is longer than [`MAX_ID_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The id contains a character other than ASCII letters, digits, `-`, `_` and `.`.
    InvalidChar {
        /// Byte offset of the first offending character.
        at: usize,
    },
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Empty => f.write_str("id is empty"),
            IdError::TooLong { len } => {
                write!(
                    f,
                    "id is {len} bytes long; at most {MAX_ID_LEN} are allowed"
                )
            }
            IdError::InvalidChar { at } => write!(
                f,
                "id has a character other than ASCII letters, digits, '-', '_' and '.' at byte {at}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for IdError {}

fn validate(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { len: s.len() });
    }
    if let Some(at) = s
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'))
    {
        return Err(IdError::InvalidChar { at });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(heapless::String<MAX_ID_LEN>);

        impl $name {
            /// Validates and copies `s`.
            pub fn new(s: &str) -> Result<Self, IdError> {
                validate(s)?;
                let mut inner = heapless::String::new();
                // Cannot fail: validated to be at most MAX_ID_LEN bytes.
                let _ = inner.push_str(s);
                Ok($name(inner))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                self.as_str()
            }
        }

        impl core::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                $name::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct IdVisitor;
                impl<'de> Visitor<'de> for IdVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::new(v).map_err(|e| E::custom(e))
                    }
                }
                deserializer.deserialize_str(IdVisitor)
            }
        }
    };
}

id_type!(
    /// The id of a sensor node, unique in the network (e.g. `cp-gas-07`).
    NodeId,
    "a node id: 1 to 32 of ASCII letters, digits, '-', '_', '.'"
);
id_type!(
    /// The id of a site: a plant, a mine section, a station, a river basin.
    SiteId,
    "a site id: 1 to 32 of ASCII letters, digits, '-', '_', '.'"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_safe_set_and_say_what_is_wrong() {
        assert_eq!(NodeId::new("cp-gas_07.a").unwrap().as_str(), "cp-gas_07.a");
        assert_eq!(NodeId::new(""), Err(IdError::Empty));
        assert_eq!(NodeId::new("a/b"), Err(IdError::InvalidChar { at: 1 }));
        assert_eq!(SiteId::new("plant#1"), Err(IdError::InvalidChar { at: 5 }));
        assert_eq!(SiteId::new("x y"), Err(IdError::InvalidChar { at: 1 }));
        assert_eq!(NodeId::new("天中"), Err(IdError::InvalidChar { at: 0 }));
        let long = "a".repeat(33);
        assert_eq!(NodeId::new(&long), Err(IdError::TooLong { len: 33 }));
        assert!(NodeId::new(&long[..32]).is_ok());
    }
}
