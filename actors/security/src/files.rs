//! Reading and writing secret files: keys and tokens are created with mode 0600.

use std::io::Write;
use std::path::Path;

use super::SecurityError;

/// Writes `contents` to `path` readable by the owner only (0600), replacing any older file atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), SecurityError> {
    let tmp = path.with_extension("tmp");
    let err = |source| SecurityError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Writes `value` as pretty JSON with [`write_private`]. A value that cannot be written as JSON
/// is an error, and the file is left as it was.
pub fn write_private_json<T: serde::Serialize + ?Sized>(
    path: &Path,
    value: &T,
) -> Result<(), SecurityError> {
    let json = serde_json::to_vec_pretty(value).map_err(|source| SecurityError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    write_private(path, &json)
}

/// Reads a JSON file, naming it in the error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SecurityError> {
    let text = read_string(path)?;
    serde_json::from_str(&text).map_err(|source| SecurityError::BadJson {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a UTF-8 file, naming it in the error.
pub fn read_string(path: &Path) -> Result<String, SecurityError> {
    String::from_utf8(read(path)?).map_err(|source| SecurityError::NotUtf8 {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::error::Error as _;

    #[test]
    fn a_value_that_is_not_json_leaves_the_file_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        write_private_json(&path, &["kept"]).unwrap();
        // JSON object keys must be strings: this map cannot be written.
        let unwritable = BTreeMap::from([((1, 2), "x")]);
        let error = write_private_json(&path, &unwritable).unwrap_err();
        assert!(matches!(error, SecurityError::Encode { .. }), "{error:?}");
        assert!(error.to_string().contains("settings.json"), "{error}");
        assert!(error.source().is_some());
        assert_eq!(read_json::<Vec<String>>(&path).unwrap(), ["kept"]);
    }

    #[test]
    fn a_file_that_is_not_json_names_itself_and_keeps_the_parser_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.json");
        write_private(&path, b"{not json").unwrap();
        let error = read_json::<Vec<String>>(&path).unwrap_err();
        assert!(matches!(error, SecurityError::BadJson { .. }), "{error:?}");
        assert!(error.to_string().starts_with(&path.display().to_string()));
        assert!(error.source().is_some());
    }
}
