//! The JSON of the values the manager stores.

use serde::{Serialize, de::DeserializeOwned};

use crate::Error;

/// JSON bytes of a value.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| Error::internal(format!("encode: {e}")))
}

/// A value from JSON bytes.
pub fn decode<T: DeserializeOwned>(key: &str, raw: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(raw).map_err(|e| Error::internal(format!("corrupt value at {key}: {e}")))
}
