//! Signed policies: Ed25519 keys, detached signatures over a manifest of the policy file and
//! every list it includes, and the host's trust store (format and threat model:
//! `docs/accountability.md`).
//!
//! # API
//!
//! - [`generate_key`]`(out)` writes `OUT.key` (PKCS#8 PEM, 0600) and `OUT.pub` (SPKI PEM); both
//!   are what `openssl pkey` reads.
//! - [`PolicyFiles::read`]`(path)` reads the policy and its includes once; the same bytes are then
//!   validated (`policy::parse` with [`PolicyFiles::include`]) and checked against the
//!   signatures, so nothing can change in between. [`PolicyFiles::manifest`] is what is signed.
//! - [`sign`]`(files, key_path)` appends one signature to `POLICY.sig` (several signatures, one
//!   per line, for the two-person rule).
//! - [`TrustStore::load`]`(dir)` reads `*.pub` and the optional `trust.toml` thresholds.
//! - [`verify`]`(files, trust, required)` and [`verify_policy`]`(path, trust)` check the
//!   signatures: unsigned, unknown key, altered after signing and too few distinct signers are
//!   each a [`SignatureError`] saying which.
//! - [`load_checked`]`(path, now, trust)`: read, validate, verify: what `apply`, the daemon and
//!   the fleet path share.
//! - [`Bundle`]: the policy, its includes and its signatures in one JSON document, for
//!   publishing to a fleet; it verifies exactly as the files it was made from.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs, io,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use ed25519_dalek::{
    Signature, Signer as _, SigningKey, VerifyingKey,
    pkcs8::{
        DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
        spki::der::pem::LineEnding,
    },
};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::policy::{self, Policy, PolicyErrors};

/// Where a host keeps the public keys it trusts; `--trusted-dir` / `EDGEBLOCK_TRUSTED_DIR`.
pub const DEFAULT_TRUSTED_DIR: &str = "/etc/edgeblock/trusted.d";
/// Appended to the policy path to name its detached signature file.
pub const SIG_SUFFIX: &str = ".sig";
/// The optional host thresholds in the trusted directory.
pub const TRUST_FILE: &str = "trust.toml";
/// First line of every manifest: names the format, so a signature cannot be replayed as
/// something else.
const MANIFEST_HEADER: &str = "edgeblock policy manifest v1";

#[derive(Debug, Error)]
pub enum SignatureError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("{}: cannot read the policy file: {error}", path.display())]
    ReadPolicy { path: PathBuf, error: io::Error },
    #[error("{}: not UTF-8 text", path.display())]
    NotText { path: PathBuf },
    #[error("{}: not a {kind} key in PEM form: {problem}", path.display())]
    BadKey {
        path: PathBuf,
        kind: &'static str,
        problem: String,
    },
    #[error("{}: refusing to overwrite an existing key", path.display())]
    KeyExists { path: PathBuf },
    #[error("{}:{line}: not a signature line: {problem}", path.display())]
    BadSignatureLine {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("{}: {problem}", path.display())]
    BadTrustConfig { path: PathBuf, problem: String },
    #[error(
        "{}: unsigned, and this host accepts only policies signed by a key in {}; sign it with \
         `edgeblock sign {} --key KEY`",
        policy.display(),
        trusted_dir.display(),
        policy.display()
    )]
    Unsigned {
        policy: PathBuf,
        trusted_dir: PathBuf,
    },
    #[error(
        "{}: signed only by key(s) this host does not trust ({}); trusted keys are the *.pub \
         files in {}",
        policy.display(),
        keys.join(", "),
        trusted_dir.display()
    )]
    UntrustedKey {
        policy: PathBuf,
        keys: Vec<String>,
        trusted_dir: PathBuf,
    },
    #[error(
        "{}: altered after it was signed by {signer}: {}; sign the new version, or restore the \
         signed one",
        policy.display(),
        changes.join("; ")
    )]
    Altered {
        policy: PathBuf,
        signer: String,
        changes: Vec<String>,
    },
    #[error(
        "{}: a signature by {signer} in {} does not match even the files it claims to cover: the \
         signature file is damaged or forged",
        policy.display(),
        sig.display()
    )]
    Forged {
        policy: PathBuf,
        sig: PathBuf,
        signer: String,
    },
    #[error(
        "{}: needs signatures from {required} distinct trusted keys ({why}), has {}{}",
        policy.display(),
        signers.len(),
        if signers.is_empty() { String::new() } else { format!(" ({})", signers.join(", ")) }
    )]
    TooFew {
        policy: PathBuf,
        required: u32,
        why: String,
        signers: Vec<String>,
    },
    #[error("{}: not an edgeblock policy bundle: {problem}", path.display())]
    BadBundle { path: PathBuf, problem: String },
}

/// Write a new key pair: `OUT.key` (PKCS#8 PEM, mode 0600) and `OUT.pub` (SPKI PEM). Refuses
/// to overwrite either. Returns the public key's fingerprint.
pub fn generate_key(out: &Path) -> Result<String, SignatureError> {
    let (key_path, pub_path) = (with_suffix(out, ".key"), with_suffix(out, ".pub"));
    for p in [&key_path, &pub_path] {
        if p.exists() {
            return Err(SignatureError::KeyExists { path: p.clone() });
        }
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| SignatureError::Io {
                path: dir.to_path_buf(),
                error,
            })?;
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| SignatureError::Io {
        path: key_path.clone(),
        error: io::Error::other(e.to_string()),
    })?;
    let key = SigningKey::from_bytes(&seed);
    let bad = |problem: String| SignatureError::BadKey {
        path: key_path.clone(),
        kind: "private",
        problem,
    };
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| bad(e.to_string()))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| bad(e.to_string()))?;
    let write = |path: &Path, text: &str, mode: u32| {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .map_err(|source| SignatureError::Io {
                path: path.to_path_buf(),
                error: source,
            })
    };
    write(&key_path, &private, 0o600)?;
    write(&pub_path, &public, 0o644)?;
    Ok(fingerprint(&key.verifying_key()))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `POLICY.sig`.
pub fn sig_path(policy: &Path) -> PathBuf {
    with_suffix(policy, SIG_SUFFIX)
}

/// A short, stable name for a public key: `ed25519:` and the first 16 hex digits of the
/// SHA-256 of its 32 bytes.
pub fn fingerprint(key: &VerifyingKey) -> String {
    format!(
        "ed25519:{}",
        &hex::encode(Sha256::digest(key.as_bytes()))[..16]
    )
}

pub fn read_signing_key(path: &Path) -> Result<SigningKey, SignatureError> {
    let text = read_text(path)?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| SignatureError::BadKey {
        path: path.to_path_buf(),
        kind: "private Ed25519",
        problem: e.to_string(),
    })
}

pub fn read_public_key(path: &Path) -> Result<VerifyingKey, SignatureError> {
    let text = read_text(path)?;
    VerifyingKey::from_public_key_pem(&text).map_err(|e| SignatureError::BadKey {
        path: path.to_path_buf(),
        kind: "public Ed25519",
        problem: e.to_string(),
    })
}

fn read_text(path: &Path) -> Result<String, SignatureError> {
    let bytes = fs::read(path).map_err(|source| SignatureError::Io {
        path: path.to_path_buf(),
        error: source,
    })?;
    String::from_utf8(bytes).map_err(|_| SignatureError::NotText {
        path: path.to_path_buf(),
    })
}

/// A policy's text and its includes' texts, read once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFiles {
    pub path: PathBuf,
    pub text: String,
    /// Include path as written in the policy -> its text, or `None` if it could not be read
    /// (validation reports that with its line).
    pub includes: BTreeMap<String, Option<String>>,
}

impl PolicyFiles {
    /// Read the policy and every include named by any rule (expired ones too: they are part of
    /// what was signed). A policy that is not valid TOML has no includes here; validation
    /// reports the syntax error.
    pub fn read(path: &Path) -> Result<Self, SignatureError> {
        let text = read_text(path).map_err(|e| match e {
            SignatureError::Io { path, error } => SignatureError::ReadPolicy { path, error },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        let includes = include_paths(&text)
            .into_iter()
            .map(|inc| {
                let content = fs::read_to_string(base.join(&inc)).ok();
                (inc, content)
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            text,
            includes,
        })
    }

    /// Serve `policy::parse`'s include reads from what was read (and signed), never from disk
    /// again. `resolved` is the include joined to the policy's directory.
    pub fn include(&self, resolved: &Path) -> io::Result<String> {
        let base = self.path.parent().unwrap_or(Path::new(""));
        self.includes
            .iter()
            .find(|(inc, _)| base.join(inc) == resolved)
            .and_then(|(_, text)| text.clone())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "cannot read the file"))
    }

    /// Validate the policy from these bytes.
    pub fn parse(&self, now: Timestamp) -> Result<Policy, PolicyErrors> {
        policy::parse(&self.text, &self.path, now, |p| self.include(p))
    }

    /// What a signature covers: the format, the policy's SHA-256, then each include's path as
    /// written (JSON-quoted) and SHA-256, sorted by path. The policy's own name is left out,
    /// so a signed policy can be copied or renamed (with its includes beside it).
    pub fn manifest(&self) -> String {
        let mut m = format!("{MANIFEST_HEADER}\npolicy {}\n", sha256_hex(&self.text));
        for (inc, text) in &self.includes {
            let hash = text.as_deref().map_or_else(|| "missing".into(), sha256_hex);
            let quoted = serde_json::to_string(inc).unwrap_or_else(|_| format!("{inc:?}"));
            m.push_str(&format!("include {quoted} {hash}\n"));
        }
        m
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Every `include` of every `[[rule]]`, as written.
fn include_paths(text: &str) -> BTreeSet<String> {
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return BTreeSet::new();
    };
    let rules = table.get("rule").and_then(toml::Value::as_array);
    rules
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("include").and_then(toml::Value::as_array))
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// One line of a `.sig` file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureLine {
    /// The public key, hex.
    pub key: String,
    /// Ed25519 signature of `manifest`, hex.
    pub signature: String,
    /// The manifest that was signed, kept so a refusal can say which file changed.
    pub manifest: String,
    /// When it was signed (informational: not covered by the signature).
    pub signed_at: Timestamp,
}

/// Sign `files` with the key at `key_path`, appending to `POLICY.sig`. Returns the key's
/// fingerprint. Signing again with the same key adds a line that counts once.
pub fn sign(files: &PolicyFiles, key_path: &Path) -> Result<String, SignatureError> {
    let key = read_signing_key(key_path)?;
    let manifest = files.manifest();
    let line = SignatureLine {
        key: hex::encode(key.verifying_key().as_bytes()),
        signature: hex::encode(key.sign(manifest.as_bytes()).to_bytes()),
        manifest,
        signed_at: Timestamp::now(),
    };
    let path = sig_path(&files.path);
    let mut text = serde_json::to_string(&line).map_err(|e| SignatureError::BadSignatureLine {
        path: path.clone(),
        line: 0,
        problem: e.to_string(),
    })?;
    text.push('\n');
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .map_err(|source| SignatureError::Io {
            path,
            error: source,
        })?;
    Ok(fingerprint(&key.verifying_key()))
}

/// Read the signature lines of `POLICY.sig`; an absent file is no signatures.
pub fn read_signatures(policy: &Path) -> Result<Vec<SignatureLine>, SignatureError> {
    let path = sig_path(policy);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(SignatureError::Io {
                path,
                error: source,
            });
        }
    };
    parse_signatures(&text, &path)
}

fn parse_signatures(text: &str, path: &Path) -> Result<Vec<SignatureLine>, SignatureError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| SignatureError::BadSignatureLine {
                path: path.to_path_buf(),
                line: i + 1,
                problem: e.to_string(),
            })
        })
        .collect()
}

/// The host's thresholds (`trust.toml` in the trusted directory).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Distinct trusted signatures every policy needs (at least 1; a policy may ask for more).
    #[serde(default)]
    pub signatures_required: Option<u32>,
    /// A change that newly blocks more than `blocked_addresses` addresses needs
    /// `signatures_required` signatures.
    #[serde(default)]
    pub large_change: Option<LargeChange>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LargeChange {
    /// IPv4 addresses plus IPv6 /64s newly blocked ([`crate::apply::Plan::newly_blocked`]).
    pub blocked_addresses: u64,
    pub signatures_required: u32,
}

/// The public keys a host trusts, by key bytes, with the file each came from.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    pub dir: PathBuf,
    keys: BTreeMap<[u8; 32], String>,
    pub thresholds: Thresholds,
}

impl TrustStore {
    /// Every `*.pub` in `dir` (a missing directory trusts nothing: signatures are not
    /// checked) and `trust.toml`. A file that is there but unreadable is an error, not
    /// silently skipped.
    pub fn load(dir: &Path) -> Result<Self, SignatureError> {
        let mut store = Self {
            dir: dir.to_path_buf(),
            ..Self::default()
        };
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(store),
            Err(source) => {
                return Err(SignatureError::Io {
                    path: dir.to_path_buf(),
                    error: source,
                });
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|source| SignatureError::Io {
                path: dir.to_path_buf(),
                error: source,
            })?;
        paths.sort();
        for path in paths {
            if path.extension().is_some_and(|e| e == "pub") {
                let key = read_public_key(&path)?;
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                store.keys.entry(key.to_bytes()).or_insert(name);
            } else if path.file_name().is_some_and(|n| n == TRUST_FILE) {
                let text = read_text(&path)?;
                store.thresholds =
                    toml::from_str(&text).map_err(|e| SignatureError::BadTrustConfig {
                        path: path.clone(),
                        problem: e.message().to_owned(),
                    })?;
            }
        }
        Ok(store)
    }

    /// A store holding `keys`, named; for tests and tools.
    pub fn from_keys<'a>(
        dir: &Path,
        keys: impl IntoIterator<Item = (&'a str, VerifyingKey)>,
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            keys: keys
                .into_iter()
                .map(|(n, k)| (k.to_bytes(), n.to_owned()))
                .collect(),
            thresholds: Thresholds::default(),
        }
    }

    /// No keys: this host does not check signatures.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    fn name(&self, key: &[u8; 32]) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }

    /// Signatures every policy needs on this host: the policy's own demand or the host's,
    /// whichever is higher.
    pub fn required(&self, policy: &Policy) -> (u32, String) {
        let host = self.thresholds.signatures_required.unwrap_or(1);
        if policy.signatures_required >= host {
            (
                policy.signatures_required,
                format!(
                    "the policy's signatures_required = {}",
                    policy.signatures_required
                ),
            )
        } else {
            (
                host,
                format!(
                    "{}/{TRUST_FILE}: signatures_required = {host}",
                    self.dir.display()
                ),
            )
        }
    }

    /// Signatures a change that newly blocks `blocked` addresses needs, if the host's
    /// large-change threshold applies.
    pub fn required_for_change(&self, blocked: u64) -> Option<(u32, String)> {
        let lc = self.thresholds.large_change.as_ref()?;
        (blocked > lc.blocked_addresses).then(|| {
            (
                lc.signatures_required,
                format!(
                    "it blocks {blocked} new addresses, more than the {} of {}/{TRUST_FILE}",
                    lc.blocked_addresses,
                    self.dir.display()
                ),
            )
        })
    }
}

/// A policy whose signatures were checked.
#[derive(Clone, Debug)]
pub struct Verified {
    pub files: PolicyFiles,
    /// Names (key file stems) of the distinct trusted keys with a valid signature.
    pub signers: Vec<String>,
}

impl Verified {
    /// Refuse unless at least `required` distinct trusted keys signed.
    pub fn require(&self, required: u32, why: &str) -> Result<(), SignatureError> {
        if (self.signers.len() as u64) < u64::from(required) {
            return Err(SignatureError::TooFew {
                policy: self.files.path.clone(),
                required,
                why: why.to_owned(),
                signers: self.signers.clone(),
            });
        }
        Ok(())
    }
}

/// Check `signatures` against `files`: at least one valid signature by a trusted key, and
/// `required` distinct trusted keys in all (the same key twice counts once).
pub fn verify(
    files: &PolicyFiles,
    signatures: &[SignatureLine],
    trust: &TrustStore,
    required: (u32, &str),
) -> Result<Verified, SignatureError> {
    let policy = files.path.clone();
    if signatures.is_empty() {
        return Err(SignatureError::Unsigned {
            policy,
            trusted_dir: trust.dir.clone(),
        });
    }
    let manifest = files.manifest();
    let mut signers = BTreeSet::new();
    let mut untrusted = BTreeSet::new();
    let mut altered = None;
    for (i, line) in signatures.iter().enumerate() {
        let bad = |problem: &str| SignatureError::BadSignatureLine {
            path: sig_path(&policy),
            line: i + 1,
            problem: problem.to_owned(),
        };
        let key_bytes: [u8; 32] = hex::decode(&line.key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| bad("key is not 32 bytes of hex"))?;
        let sig_bytes: [u8; 64] = hex::decode(&line.signature)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad("signature is not 64 bytes of hex"))?;
        let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| bad("not an Ed25519 key"))?;
        let signature = Signature::from_bytes(&sig_bytes);
        let Some(name) = trust.name(&key_bytes) else {
            untrusted.insert(fingerprint(&key));
            continue;
        };
        let signer = format!("{name} ({})", fingerprint(&key));
        if key.verify_strict(manifest.as_bytes(), &signature).is_ok() {
            signers.insert(name.to_owned());
        } else if key
            .verify_strict(line.manifest.as_bytes(), &signature)
            .is_ok()
        {
            altered.get_or_insert((signer, describe_changes(&line.manifest, &manifest)));
        } else {
            return Err(SignatureError::Forged {
                policy,
                sig: sig_path(&files.path),
                signer,
            });
        }
    }
    if signers.is_empty() {
        if let Some((signer, changes)) = altered {
            return Err(SignatureError::Altered {
                policy,
                signer,
                changes,
            });
        }
        return Err(SignatureError::UntrustedKey {
            policy,
            keys: untrusted.into_iter().collect(),
            trusted_dir: trust.dir.clone(),
        });
    }
    let verified = Verified {
        files: files.clone(),
        signers: signers.into_iter().collect(),
    };
    verified.require(required.0, required.1)?;
    Ok(verified)
}

/// Which files differ between the manifest that was signed and the current one.
fn describe_changes(signed: &str, now: &str) -> Vec<String> {
    let entries = |m: &str| -> BTreeMap<String, String> {
        m.lines()
            .skip(1)
            .filter_map(|l| {
                let (kind_name, hash) = l.rsplit_once(' ')?;
                Some((kind_name.to_owned(), hash.to_owned()))
            })
            .collect()
    };
    let (then, now) = (entries(signed), entries(now));
    let show = |k: &str| match k.strip_prefix("include ") {
        Some(inc) => format!("included list {inc}"),
        None => "the policy file".to_owned(),
    };
    let mut out = Vec::new();
    for (k, h) in &now {
        match then.get(k) {
            None => out.push(format!("{} was added", show(k))),
            Some(old) if old != h => out.push(format!("{} changed", show(k))),
            Some(_) => {}
        }
    }
    for k in then.keys().filter(|k| !now.contains_key(*k)) {
        out.push(format!("{} was removed", show(k)));
    }
    if out.is_empty() {
        out.push("the manifest changed".into());
    }
    out
}

/// Read `path` and its `.sig`, and verify them (the policy's own `signatures_required` is
/// applied once the policy is parsed: see [`load_checked`]).
pub fn verify_policy(path: &Path, trust: &TrustStore) -> Result<Verified, SignatureError> {
    let files = PolicyFiles::read(path)?;
    let signatures = read_signatures(path)?;
    verify(&files, &signatures, trust, (1, "every signed policy"))
}

/// Why a policy could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("{0}")]
    Invalid(PolicyErrors),
}

/// Read a policy once, validate it, and, if `trust` holds keys, verify its signatures against
/// the same bytes, including the number of signers the policy and the host require. `None`
/// for the signature part when the host does not check signatures.
pub fn load_checked(
    path: &Path,
    now: Timestamp,
    trust: &TrustStore,
) -> Result<(Policy, Option<Verified>), LoadError> {
    let files = PolicyFiles::read(path)?;
    let policy = files.parse(now).map_err(LoadError::Invalid)?;
    let verified = check(&files, &policy, trust)?;
    Ok((policy, verified))
}

/// If `trust` holds keys, verify `files` (whose parse is `policy`) against their `.sig`, with
/// as many signers as the policy and the host require, whichever is higher. `None` when the
/// host does not check signatures.
pub fn check(
    files: &PolicyFiles,
    policy: &Policy,
    trust: &TrustStore,
) -> Result<Option<Verified>, SignatureError> {
    if trust.is_empty() {
        return Ok(None);
    }
    check_signatures(files, policy, &read_signatures(&files.path)?, trust)
}

/// [`check`] with signatures that came with the policy rather than from its `.sig` (a
/// [`Bundle`] from the fleet).
pub fn check_signatures(
    files: &PolicyFiles,
    policy: &Policy,
    signatures: &[SignatureLine],
    trust: &TrustStore,
) -> Result<Option<Verified>, SignatureError> {
    if trust.is_empty() {
        return Ok(None);
    }
    let (required, why) = trust.required(policy);
    verify(files, signatures, trust, (required, &why)).map(Some)
}

/// A signed policy in one document: the policy text, its includes and its signatures. Verifies
/// exactly as the files it was made from (the manifest is computed from the embedded texts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub format: String,
    /// File name of the policy, for messages.
    pub name: String,
    pub policy: String,
    /// Include path as written -> text (`None`: missing when bundled).
    pub includes: BTreeMap<String, Option<String>>,
    pub signatures: Vec<SignatureLine>,
}

const BUNDLE_FORMAT: &str = "edgeblock-policy-bundle-1";

impl Bundle {
    /// Bundle a policy, its includes and its `.sig`.
    pub fn from_files(path: &Path) -> Result<Self, SignatureError> {
        let files = PolicyFiles::read(path)?;
        let signatures = read_signatures(path)?;
        Ok(Self::new(files, signatures))
    }

    /// Bundle files already read (and validated) with their signatures.
    pub fn new(files: PolicyFiles, signatures: Vec<SignatureLine>) -> Self {
        Self {
            format: BUNDLE_FORMAT.into(),
            name: files
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            policy: files.text,
            includes: files.includes,
            signatures,
        }
    }

    /// Check the format field of a bundle that was deserialised as part of something else.
    pub fn check_format(&self, path: &Path) -> Result<(), SignatureError> {
        if self.format != BUNDLE_FORMAT {
            return Err(SignatureError::BadBundle {
                path: path.to_path_buf(),
                problem: format!("format {:?}, expected {BUNDLE_FORMAT:?}", self.format),
            });
        }
        Ok(())
    }

    pub fn from_json(text: &str, path: &Path) -> Result<Self, SignatureError> {
        let bundle: Self = serde_json::from_str(text).map_err(|e| SignatureError::BadBundle {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
        bundle.check_format(path)?;
        Ok(bundle)
    }

    /// The bundled files, as if read from `dir`.
    pub fn files(&self, dir: &Path) -> PolicyFiles {
        PolicyFiles {
            path: dir.join(&self.name),
            text: self.policy.clone(),
            includes: self.includes.clone(),
        }
    }
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "signed by {}", self.signers.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[[rule]]
name = "r"
action = "drop"
prefixes = ["203.0.113.0/24"]
include = ["lists/extra.netset"]
"#;

    struct Fixture {
        dir: PathBuf,
        policy: PathBuf,
    }

    impl Fixture {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("edgeblock-sign-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("lists")).expect("mkdir");
            fs::create_dir_all(dir.join("keys")).expect("mkdir");
            fs::create_dir_all(dir.join("trusted")).expect("mkdir");
            fs::write(dir.join("lists/extra.netset"), "198.51.100.0/24\n").expect("write");
            let policy = dir.join("policy.toml");
            fs::write(&policy, POLICY).expect("write");
            Self { dir, policy }
        }

        /// A key pair; trusted if `trusted`.
        fn key(&self, name: &str, trusted: bool) -> PathBuf {
            let out = self.dir.join("keys").join(name);
            generate_key(&out).expect("keygen");
            if trusted {
                fs::copy(
                    with_suffix(&out, ".pub"),
                    self.dir.join("trusted").join(format!("{name}.pub")),
                )
                .expect("trust");
            }
            with_suffix(&out, ".key")
        }

        fn sign(&self, key: &Path) {
            sign(&PolicyFiles::read(&self.policy).expect("read"), key).expect("sign");
        }

        fn trust(&self) -> TrustStore {
            TrustStore::load(&self.dir.join("trusted")).expect("trust store")
        }

        fn load(&self) -> Result<(Policy, Option<Verified>), LoadError> {
            load_checked(
                &self.policy,
                "2026-06-01T00:00:00Z".parse().expect("ts"),
                &self.trust(),
            )
        }

        fn refused(&self, needles: &[&str]) {
            match self.load() {
                Ok(_) => panic!("the policy must be refused ({needles:?})"),
                Err(e) => {
                    let msg = e.to_string();
                    for n in needles {
                        assert!(msg.contains(n), "{msg:?} lacks {n:?}");
                    }
                }
            }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn keys_are_written_private_0600_and_not_overwritten() {
        let f = Fixture::new("keygen");
        let key = f.key("alice", false);
        let mode = fs::metadata(&key).expect("meta");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        assert!(
            fs::read_to_string(&key)
                .expect("key")
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        match generate_key(&f.dir.join("keys/alice")) {
            Err(SignatureError::KeyExists { .. }) => {}
            other => panic!("keygen over an existing key must refuse, got {other:?}"),
        }
    }

    #[test]
    fn without_trusted_keys_signatures_are_not_checked() {
        let f = Fixture::new("off");
        let (_, verified) = f
            .load()
            .expect("an unsigned policy loads when nothing is trusted");
        assert!(verified.is_none());
    }

    #[test]
    fn a_signed_policy_is_accepted_and_its_bytes_are_the_ones_checked() {
        let f = Fixture::new("ok");
        let key = f.key("alice", true);
        f.sign(&key);
        let (policy, verified) = f.load().expect("signed by a trusted key");
        assert_eq!(
            verified.expect("verified").signers,
            vec!["alice".to_owned()]
        );
        assert_eq!(policy.rules[0].prefixes.len(), 2, "the include was served");
        // The bundle verifies like the files.
        let bundle = Bundle::from_files(&f.policy).expect("bundle");
        let json = serde_json::to_string(&bundle).expect("json");
        let back = Bundle::from_json(&json, Path::new("b.json")).expect("parse bundle");
        let v = verify(
            &back.files(Path::new("/elsewhere")),
            &back.signatures,
            &f.trust(),
            (1, "x"),
        )
        .expect("bundle verifies");
        assert_eq!(v.signers, vec!["alice".to_owned()]);
    }

    #[test]
    fn unsigned_untrusted_and_tampered_policies_are_refused() {
        let f = Fixture::new("refuse");
        let _trusted = f.key("alice", true);
        f.refused(&["unsigned", "edgeblock sign"]);

        let mallory = f.key("mallory", false);
        f.sign(&mallory);
        f.refused(&["not trust", "ed25519:"]);
        fs::remove_file(sig_path(&f.policy)).expect("rm sig");

        f.sign(&_trusted);
        f.load().expect("signed by alice");
        // One prefix changed after signing, in the policy itself ...
        fs::write(
            &f.policy,
            POLICY.replace("203.0.113.0/24", "203.0.114.0/24"),
        )
        .expect("edit");
        f.refused(&[
            "altered after it was signed by alice",
            "the policy file changed",
        ]);
        fs::write(&f.policy, POLICY).expect("restore");
        f.load().expect("restored");
        // ... or in an included list.
        fs::write(f.dir.join("lists/extra.netset"), "198.51.101.0/24\n").expect("edit list");
        f.refused(&["altered", "included list \"lists/extra.netset\" changed"]);
    }

    #[test]
    fn a_forged_signature_line_is_refused() {
        let f = Fixture::new("forged");
        let key = f.key("alice", true);
        f.sign(&key);
        let sig = sig_path(&f.policy);
        let mut line: SignatureLine =
            serde_json::from_str(fs::read_to_string(&sig).expect("sig").trim()).expect("line");
        line.manifest = line.manifest.replace("policy ", "policy 00");
        fs::write(&f.policy, POLICY.replace("drop", "reject")).expect("edit");
        fs::write(&sig, serde_json::to_string(&line).expect("json") + "\n").expect("write");
        f.refused(&["damaged or forged"]);
    }

    #[test]
    fn two_person_rule_counts_distinct_trusted_keys() {
        let f = Fixture::new("two");
        fs::write(&f.policy, format!("signatures_required = 2\n{POLICY}")).expect("write");
        let alice = f.key("alice", true);
        let bob = f.key("bob", true);
        f.sign(&alice);
        f.refused(&[
            "needs signatures from 2 distinct trusted keys",
            "has 1 (alice)",
        ]);
        // The same key twice still counts once.
        f.sign(&alice);
        f.refused(&["has 1 (alice)"]);
        f.sign(&bob);
        let (_, v) = f.load().expect("two distinct keys");
        assert_eq!(
            v.expect("verified").signers,
            vec!["alice".to_owned(), "bob".to_owned()]
        );
    }

    #[test]
    fn host_thresholds_raise_the_count() {
        let f = Fixture::new("host");
        let alice = f.key("alice", true);
        f.sign(&alice);
        fs::write(
            f.dir.join("trusted").join(TRUST_FILE),
            "[large_change]\nblocked_addresses = 256\nsignatures_required = 2\n",
        )
        .expect("trust.toml");
        let trust = f.trust();
        assert_eq!(trust.required_for_change(256), None);
        let (n, why) = trust.required_for_change(257).expect("over the threshold");
        assert_eq!(n, 2);
        assert!(why.contains("257"), "{why}");
        let (_, v) = f.load().expect("the base requirement is one");
        let err = v
            .expect("verified")
            .require(n, &why)
            .expect_err("one is not two");
        assert!(err.to_string().contains("has 1 (alice)"), "{err}");
        fs::write(
            f.dir.join("trusted").join(TRUST_FILE),
            "signatures_required = 2\n",
        )
        .expect("trust.toml");
        f.refused(&["trust.toml: signatures_required = 2"]);
    }
}
