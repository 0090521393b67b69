//! Paths in JSON byte for byte: a string when the path is UTF-8, else
//! `{"bytes": [...]}` (file names from old shares are often Latin-1, and
//! serde's own `PathBuf` support refuses them).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Stored {
    Text(String),
    Bytes { bytes: Vec<u8> },
}

fn stored(p: &Path) -> Stored {
    match p.to_str() {
        Some(t) => Stored::Text(t.to_owned()),
        None => Stored::Bytes { bytes: p.as_os_str().as_encoded_bytes().to_vec() },
    }
}

fn path(s: Stored) -> PathBuf {
    match s {
        Stored::Text(t) => PathBuf::from(t),
        #[cfg(unix)]
        Stored::Bytes { bytes } => {
            PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes))
        }
        #[cfg(not(unix))]
        Stored::Bytes { bytes } => PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

pub fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    stored(p).serialize(s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    Stored::deserialize(d).map(path)
}

/// The same for `Option<PathBuf>`.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        p.as_deref().map(stored).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        Ok(Option::<Stored>::deserialize(d)?.map(path))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct T {
        #[serde(with = "super")]
        p: PathBuf,
        #[serde(default, with = "super::option")]
        q: Option<PathBuf>,
    }

    #[test]
    fn latin1_names_round_trip() {
        let t = T { p: PathBuf::from(std::ffi::OsStr::from_bytes(b"/d/sc\xe8ne.tif")), q: Some("/d/é.tif".into()) };
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains(r#""q":"/d/é.tif""#), "{json}");
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), t);
    }
}
