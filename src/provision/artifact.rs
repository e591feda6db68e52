//! The Lambda's deployment zip: `bootstrap` built from this crate's Lambda
//! binary. Deterministic (fixed timestamps), so an unchanged binary gives the
//! same code hash and a re-run changes nothing.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// AL2023, the `provided.al2023` runtime, has glibc 2.34.
pub const MAX_GLIBC: (u32, u32) = (2, 34);
pub const LAMBDA_BINARY: &str = "cci-scaler-lambda";

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("cannot read {path}: {detail}")]
    Read { path: String, detail: String },
    #[error(
        "no Lambda binary found beside cci-scaler ({0}); build it with `cargo build --release --bin cci-scaler-lambda` or pass --lambda-binary/--lambda-zip"
    )]
    NotFound(String),
    #[error("{path} is not a zip holding `bootstrap`: {detail}")]
    BadZip { path: String, detail: String },
    #[error(
        "{path} needs glibc {found}, above the 2.34 of the provided.al2023 runtime; build a compatible one with `cargo lambda build --release --target x86_64-unknown-linux-gnu.2.34 --bin cci-scaler-lambda` (or build on Amazon Linux 2023)"
    )]
    Glibc { path: String, found: String },
    #[error("{path} is not an x86_64 Linux executable")]
    NotElf { path: String },
    #[error("building the Lambda zip failed: {0}")]
    Zip(String),
}

pub struct Artifact {
    pub zip: Vec<u8>,
    /// Base64 SHA-256 of the zip, as Lambda reports CodeSha256.
    pub sha256: String,
    pub source: String,
}

/// The default: the Lambda binary installed beside the running `cci-scaler`.
pub fn default_binary() -> Result<PathBuf, ArtifactError> {
    let exe = std::env::current_exe().map_err(|e| ArtifactError::NotFound(e.to_string()))?;
    let path = exe.with_file_name(LAMBDA_BINARY);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ArtifactError::NotFound(path.display().to_string()))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ArtifactError> {
    std::fs::read(path).map_err(|e| ArtifactError::Read {
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

/// The highest `GLIBC_2.x` version an ELF binary asks for.
pub fn max_glibc(bytes: &[u8]) -> Option<(u32, u32)> {
    let needle = b"GLIBC_2.";
    let mut best: Option<(u32, u32)> = None;
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(needle.len()).position(|w| w == needle) {
        let start = i + pos + needle.len();
        let minor: String = bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|b| *b as char)
            .collect();
        if let Ok(m) = minor.parse::<u32>() {
            best = best.max(Some((2, m)));
        }
        i = start;
    }
    best
}

fn check_binary(path: &str, bytes: &[u8]) -> Result<(), ArtifactError> {
    // ELF magic, 64-bit, x86-64 machine type (0x3e).
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[18] != 0x3e {
        return Err(ArtifactError::NotElf {
            path: path.to_string(),
        });
    }
    if let Some(v) = max_glibc(bytes)
        && v > MAX_GLIBC
    {
        return Err(ArtifactError::Glibc {
            path: path.to_string(),
            found: format!("{}.{}", v.0, v.1),
        });
    }
    Ok(())
}

fn sha(zip: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(zip))
}

/// Zip a binary as `bootstrap`.
pub fn from_binary(path: &Path) -> Result<Artifact, ArtifactError> {
    let bytes = read(path)?;
    check_binary(&path.display().to_string(), &bytes)?;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(zip::DateTime::default())
            .unix_permissions(0o755);
        zip.start_file("bootstrap", opts)
            .and_then(|_| zip.write_all(&bytes).map_err(Into::into))
            .and_then(|_| zip.finish().map(|_| ()))
            .map_err(|e| ArtifactError::Zip(e.to_string()))?;
    }
    let zip = buf.into_inner();
    Ok(Artifact {
        sha256: sha(&zip),
        zip,
        source: path.display().to_string(),
    })
}

/// A ready zip: must hold an acceptable `bootstrap`.
pub fn from_zip(path: &Path) -> Result<Artifact, ArtifactError> {
    let zip = read(path)?;
    let bad = |detail: String| ArtifactError::BadZip {
        path: path.display().to_string(),
        detail,
    };
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(&zip)).map_err(|e| bad(e.to_string()))?;
    let mut entry = archive
        .by_name("bootstrap")
        .map_err(|_| bad("no `bootstrap` entry".into()))?;
    let mut bytes = Vec::new();
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| bad(e.to_string()))?;
    drop(entry);
    check_binary(&format!("{}:bootstrap", path.display()), &bytes)?;
    Ok(Artifact {
        sha256: sha(&zip),
        zip,
        source: path.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(extra: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[18] = 0x3e;
        b.extend_from_slice(extra);
        b
    }

    #[test]
    fn glibc_versions_are_read_and_checked() {
        assert_eq!(
            max_glibc(b"xxGLIBC_2.17\0GLIBC_2.34\0GLIBC_2.3.4\0"),
            Some((2, 34))
        );
        assert!(check_binary("b", &elf(b"GLIBC_2.28\0GLIBC_2.34\0")).is_ok());
        let e = check_binary("b", &elf(b"GLIBC_2.38\0"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("needs glibc 2.38") && e.contains("cargo lambda build"),
            "{e}"
        );
        assert!(matches!(
            check_binary("b", b"#!/bin/sh\n"),
            Err(ArtifactError::NotElf { .. })
        ));
    }

    #[test]
    fn zips_are_deterministic_and_hold_bootstrap() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("cci-scaler-lambda");
        std::fs::write(&bin, elf(b"GLIBC_2.34\0payload")).unwrap();
        let a = from_binary(&bin).unwrap();
        let b = from_binary(&bin).unwrap();
        assert_eq!(a.sha256, b.sha256);
        let zip_path = dir.path().join("f.zip");
        std::fs::write(&zip_path, &a.zip).unwrap();
        assert_eq!(from_zip(&zip_path).unwrap().sha256, a.sha256);
        std::fs::write(&zip_path, b"not a zip").unwrap();
        assert!(from_zip(&zip_path).is_err());
    }
}
