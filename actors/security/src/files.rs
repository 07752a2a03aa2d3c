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

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a UTF-8 file, naming it in the error.
pub fn read_string(path: &Path) -> Result<String, SecurityError> {
    String::from_utf8(read(path)?).map_err(|_| SecurityError::BadFile {
        path: path.to_path_buf(),
        reason: "not UTF-8".into(),
    })
}
