//! Issued certificates on disk: `<state_dir>/acme/<directory id>/`, keys mode 0600.

use super::*;

impl Acme {
    /// Writes the key (0600) and then the chain, each replaced atomically.
    pub(super) fn persist(&self, name: &str, chain: &str, key_pem: &str) -> Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        write_private(&dir.join(format!("{name}.key")), key_pem.as_bytes())?;
        write_private(&dir.join(format!("{name}.crt")), chain.as_bytes())
    }

    /// Loads the certificates stored for this directory; unusable ones are skipped (and
    /// ordered again when a bind needs them).
    pub(super) fn load_stored(&self) {
        let Some(dir) = &self.dir else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("crt") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            match load_pair(&path, &path.with_extension("key"), &name) {
                Ok(issued) if issued.expired() => {
                    tracing::info!(%name, "stored certificate has expired; a bind orders a new one")
                }
                Ok(issued) => {
                    tracing::info!(%name, not_after = ?issued.not_after, "stored certificate loaded");
                    self.store.set_automatic(&name, issued);
                    self.counters.loaded.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(%name, error = %e, "stored certificate skipped"),
            }
        }
    }
}

/// A short stable id for a directory URL, naming its folder in the state directory.
pub(super) fn directory_id(url: &str) -> String {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in url.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub(super) fn load_pair(crt: &Path, key: &Path, name: &str) -> Result<Issued> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| Error::io(format!("reading {}", p.display()), e));
    let cert = CertKey::from_pem(&read(crt)?, &read(key)?)?;
    cert.check_covers(name)?;
    Issued::new(cert)
}

/// Writes `contents` to `path` with mode 0600, through a temporary file and a rename so a
/// reader never sees half a file.
pub(super) fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{:08x}", rand::random::<u32>()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = opts
        .open(&tmp)
        .and_then(|mut f| f.write_all(contents).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(format!("writing {}", path.display()), e));
    }
    Ok(())
}
