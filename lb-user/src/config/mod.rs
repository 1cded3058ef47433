//! The config file (TOML): serde's raw view (`raw`), validation to
//! `FILE:LINE: reason` errors (`validate`), and the typed model the rest
//! of xlb runs from (`model`); `keys` lists every accepted key.

mod keys;
mod model;
mod raw;
mod validate;

pub use keys::accepted_keys;
pub use model::*;
pub use validate::{dynamic_cookie, load, load_text, parse, parse_duration, ConfigError, LoadError};
