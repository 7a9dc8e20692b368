//! Secret files: pre-shared keys (`psk_file`), manual key material
//! (`key_in`, `key_out`) and private keys (`key`). Each is opened once,
//! its mode checked on the open file, and read from it; a file that every
//! user can read or write is refused, as ssh refuses such a private key.
//! A group bit is allowed (0640): a group is a choice the owner made.

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{ConfigError, invalid, quoted};

/// A relative path is taken from the config file's directory.
pub(super) fn resolve(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

/// Reads the secret file that `field` names, refusing it if every user
/// can read it (the secret would be anyone's) or write it (anyone could
/// put in a key of their own). The error names the field, the file as
/// written, its mode and the command that fixes it.
pub(super) fn read(
    field: &str,
    base_dir: &Path,
    path: &Path,
) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    let shown = quoted(&path.display().to_string());
    let full = resolve(base_dir, path);
    let cannot_read = |e: std::io::Error| invalid(field, &shown, format!("cannot be read: {e}"));
    let mut file = std::fs::File::open(&full).map_err(cannot_read)?;
    // The mode of the file that is read, not of whatever the path names
    // a moment later.
    let mode = file.metadata().map_err(cannot_read)?.permissions().mode() & 0o7777;
    let who = match (mode & 0o004 != 0, mode & 0o002 != 0) {
        (true, true) => Some("readable and writable"),
        (true, false) => Some("readable"),
        (false, true) => Some("writable"),
        (false, false) => None,
    };
    if let Some(who) = who {
        // Absolute, so that the command works from any directory.
        let full = std::path::absolute(&full).unwrap_or(full);
        return Err(invalid(
            field,
            &shown,
            format!(
                "is {who} by every user (mode {mode:04o}): a secret must be private to its owner; fix it with chmod 600 {}",
                full.display()
            ),
        ));
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes).map_err(cannot_read)?;
    Ok(bytes)
}

/// Writes a secret file (a pre-shared key or key material) as tunsecd
/// wants it: mode 0600, whatever the umask, and made 0600 if it already
/// existed with another mode.
pub fn write_secret(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path.as_ref())?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    std::io::Write::write_all(&mut file, contents.as_ref())
}

#[cfg(test)]
mod test {
    use super::super::testing::refused;
    use super::*;

    fn file_with_mode(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "correct horse").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn private_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in [("a", 0o600), ("b", 0o400), ("c", 0o640), ("d", 0o660)] {
            file_with_mode(dir.path(), name, mode);
            let bytes = read("peer[0].ike.psk_file", dir.path(), Path::new(name)).unwrap();
            assert_eq!(bytes.as_slice(), b"correct horse", "mode {mode:o}");
        }
    }

    #[test]
    fn files_others_can_read_or_write_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (mode, who) in [
            (0o644, "readable by"),
            (0o604, "readable by"),
            (0o602, "writable by"),
            (0o666, "readable and writable by"),
        ] {
            let full = file_with_mode(dir.path(), "k", mode);
            let err = read("peer[0].sa.key_in", dir.path(), Path::new("k")).unwrap_err();
            assert!(!err.to_string().contains("horse"), "{err}");
            let (field, value, reason) = refused(Err::<(), _>(err));
            assert_eq!(
                (field.as_str(), value.as_str()),
                ("peer[0].sa.key_in", "\"k\"")
            );
            assert!(reason.contains(who), "{reason}");
            assert!(reason.contains(&format!("mode {mode:04o}")), "{reason}");
            assert!(
                reason.contains(&format!("chmod 600 {}", full.display())),
                "{reason}"
            );
        }
    }

    #[test]
    fn write_secret_makes_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh");
        write_secret(&fresh, "k1").unwrap();
        let wide = file_with_mode(dir.path(), "wide", 0o666);
        write_secret(&wide, "k2").unwrap();
        for (path, want) in [(fresh, "k1"), (wide, "k2")] {
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
        }
    }
}
