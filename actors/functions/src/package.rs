//! Function packages: a folder with `klf.toml` (the manifest), the JavaScript entry module and an
//! optional `examples/` folder of sample inputs: the contract every deploy relies on.
//!
//! Loading validates everything a deploy depends on and names the field (or file) at fault, so a
//! person can fix a package from the error alone.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Host capabilities a manifest may grant. `config` and `now` are always available.
pub const CAPABILITIES: &[&str] = &[
    "call", "kv", "log", "crypto", "secret", "model", "schedule", "http",
];

/// Largest entry module accepted.
pub const MAX_SOURCE_BYTES: usize = 1024 * 1024;
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// Largest example input accepted.
pub const MAX_EXAMPLE_BYTES: usize = 256 * 1024;
/// Bounds of the `[limits]` table.
const MAX_MEMORY_MB: u64 = 1024;
const MAX_TIMEOUT_MS: u64 = 5 * 60 * 1000;
const MAX_CONCURRENCY: u64 = 4096;

/// What is wrong with a package, naming the field or file. Where a parser or the file system
/// refused something, its error is the source (shared, so that the error stays `Clone`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PackageError {
    #[error("{file}: missing required field `{field}`")]
    MissingField { file: String, field: String },
    /// A field whose value breaks a rule of the manifest (the message says which).
    #[error("{file}: field `{field}`: {message}")]
    InvalidField {
        file: String,
        field: String,
        message: String,
    },
    #[error("{file}: cannot be read as a manifest: {}", .source.message())]
    Syntax {
        file: String,
        #[source]
        source: toml::de::Error,
    },
    /// A version or version range that is not semver; `expected` says what would be.
    #[error("{file}: field `{field}`: {text:?} is not a {expected} ({source})")]
    Semver {
        file: String,
        field: String,
        text: String,
        expected: &'static str,
        #[source]
        source: Arc<semver::Error>,
    },
    #[error("{file}: field `config`: cannot be expressed as JSON: {source}")]
    Config {
        file: String,
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// A file that breaks a rule of packages (too large, not a JSON object).
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{path}: not UTF-8 text")]
    NotUtf8 {
        path: String,
        #[source]
        source: std::str::Utf8Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: String,
        #[source]
        source: Arc<serde_json::Error>,
    },
}

/// `[limits]`: what the sandbox enforces for every instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_mb: u64,
    pub timeout_ms: u64,
    pub concurrency: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mb: 32,
            timeout_ms: 1000,
            concurrency: 64,
        }
    }
}

/// A validated `klf.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: semver::Version,
    /// Free-form kind, used by find-by-type (`type` in the file).
    pub kind: String,
    pub description: String,
    pub entry: String,
    pub idempotent: bool,
    pub capabilities: Vec<String>,
    /// Node secrets `ctx.secret` may read, by name.
    pub secrets: Vec<String>,
    /// Functions this one may `ctx.call`, with the semver range each must satisfy.
    pub dependencies: BTreeMap<String, semver::VersionReq>,
    pub limits: Limits,
    #[serde(with = "json_text")]
    pub config: serde_json::Value,
    /// Declared value of one successful call, for ROI.
    pub value_per_call: f64,
    /// `[http]`: where `ctx.http.fetch` may go, and its limits. Not part of the encoded manifest
    /// (catalog records and artifacts keep the layout older nodes read): it is parsed again from
    /// the package's `klf.toml` text when the artifact is unpacked ([`Package::restore_http`]).
    #[serde(skip)]
    pub http: crate::http::HttpGrant,
}

/// The raw file, every field optional so that validation can name what is missing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Option<toml::Value>,
    version: Option<toml::Value>,
    #[serde(rename = "type")]
    kind: Option<toml::Value>,
    description: Option<toml::Value>,
    entry: Option<toml::Value>,
    idempotent: Option<toml::Value>,
    capabilities: Option<toml::Value>,
    secrets: Option<toml::Value>,
    dependencies: Option<toml::Value>,
    limits: Option<toml::Value>,
    config: Option<toml::Value>,
    value: Option<toml::Value>,
    http: Option<toml::Value>,
}

/// Whether `name` is a valid secret name: 1 to 64 of `a-z 0-9 - _ .`, starting with a letter or
/// digit (it names a file in the node's secrets directory, so no `/` and no leading `.`).
pub fn is_valid_secret_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// Whether `name` is a valid function name: 1 to 64 of `a-z 0-9 -`, starting with a letter.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

struct Fields<'a> {
    file: &'a str,
}

impl Fields<'_> {
    fn invalid(&self, field: &str, message: impl Into<String>) -> PackageError {
        PackageError::InvalidField {
            file: self.file.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn semver(
        &self,
        field: &str,
        text: &str,
        expected: &'static str,
        source: semver::Error,
    ) -> PackageError {
        PackageError::Semver {
            file: self.file.to_string(),
            field: field.to_string(),
            text: text.to_string(),
            expected,
            source: Arc::new(source),
        }
    }

    fn required<'v>(
        &self,
        field: &str,
        value: &'v Option<toml::Value>,
    ) -> Result<&'v toml::Value, PackageError> {
        value.as_ref().ok_or_else(|| PackageError::MissingField {
            file: self.file.to_string(),
            field: field.to_string(),
        })
    }

    fn string(&self, field: &str, value: &toml::Value) -> Result<String, PackageError> {
        value.as_str().map(str::to_string).ok_or_else(|| {
            self.invalid(
                field,
                format!("expected a string, found {}", value.type_str()),
            )
        })
    }

    fn bounded(
        &self,
        field: &str,
        value: Option<&toml::Value>,
        default: u64,
        max: u64,
    ) -> Result<u64, PackageError> {
        let Some(value) = value else {
            return Ok(default);
        };
        match value.as_integer() {
            Some(n) if n >= 1 && (n as u64) <= max => Ok(n as u64),
            Some(n) => Err(self.invalid(field, format!("{n} is out of range (1 to {max})"))),
            None => Err(self.invalid(
                field,
                format!("expected an integer, found {}", value.type_str()),
            )),
        }
    }
}

impl Manifest {
    /// Parses and validates a manifest; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, PackageError> {
        let raw: RawManifest = toml::from_str(text).map_err(|source| PackageError::Syntax {
            file: file.to_string(),
            source,
        })?;
        let f = Fields { file };

        let name = f.string("name", f.required("name", &raw.name)?)?;
        if !is_valid_name(&name) {
            return Err(f.invalid(
                "name",
                format!("{name:?} must be 1 to 64 characters of a-z, 0-9 and '-', starting with a letter"),
            ));
        }
        let version_text = f.string("version", f.required("version", &raw.version)?)?;
        let version = semver::Version::parse(&version_text).map_err(|source| {
            f.semver(
                "version",
                &version_text,
                "semantic version like 1.2.0",
                source,
            )
        })?;
        let kind = f.string("type", f.required("type", &raw.kind)?)?;
        if kind.is_empty() {
            return Err(f.invalid("type", "must not be empty"));
        }
        let description = match &raw.description {
            Some(v) => f.string("description", v)?,
            None => String::new(),
        };
        let entry = match &raw.entry {
            Some(v) => f.string("entry", v)?,
            None => "main.js".to_string(),
        };
        if super::native::is_native(&entry) {
            if super::native::builtin(&entry).is_none() {
                return Err(f.invalid(
                    "entry",
                    format!(
                        "{entry:?} is not a native built-in (known: {})",
                        super::native::BUILTINS
                            .iter()
                            .map(|b| format!("native:{b}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        } else if !is_plain_relative(&entry) || !(entry.ends_with(".js") || entry.ends_with(".mjs"))
        {
            return Err(f.invalid(
                "entry",
                format!(
                    "{entry:?} must be a .js file inside the package (no absolute path, no `..`)"
                ),
            ));
        }
        let idempotent = match &raw.idempotent {
            Some(v) => v.as_bool().ok_or_else(|| {
                f.invalid(
                    "idempotent",
                    format!("expected true or false, found {}", v.type_str()),
                )
            })?,
            None => false,
        };
        let capabilities = match &raw.capabilities {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => {
                let mut caps = Vec::new();
                for item in items {
                    let cap = f.string("capabilities", item)?;
                    if !CAPABILITIES.contains(&cap.as_str()) {
                        return Err(f.invalid(
                            "capabilities",
                            format!(
                                "unknown capability {cap:?} (known: {})",
                                CAPABILITIES.join(", ")
                            ),
                        ));
                    }
                    if !caps.contains(&cap) {
                        caps.push(cap);
                    }
                }
                caps
            }
            Some(other) => {
                return Err(f.invalid(
                    "capabilities",
                    format!("expected an array of strings, found {}", other.type_str()),
                ));
            }
        };
        let secrets = match &raw.secrets {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => {
                let mut names = Vec::new();
                for item in items {
                    let secret = f.string("secrets", item)?;
                    if !is_valid_secret_name(&secret) {
                        return Err(f.invalid(
                            "secrets",
                            format!(
                                "{secret:?} must be 1 to 64 characters of a-z, 0-9, '-', '_' and \
                                 '.', starting with a letter or digit"
                            ),
                        ));
                    }
                    if !names.contains(&secret) {
                        names.push(secret);
                    }
                }
                names
            }
            Some(other) => {
                return Err(f.invalid(
                    "secrets",
                    format!("expected an array of strings, found {}", other.type_str()),
                ));
            }
        };
        if !secrets.is_empty() && !capabilities.iter().any(|c| c == "secret") {
            return Err(f.invalid(
                "capabilities",
                "declares secrets but does not grant \"secret\"",
            ));
        }
        let dependencies = match &raw.dependencies {
            None => BTreeMap::new(),
            Some(toml::Value::Table(table)) => {
                let mut deps = BTreeMap::new();
                for (dep, range) in table {
                    let field = format!("dependencies.{dep}");
                    if !is_valid_name(dep) {
                        return Err(
                            f.invalid(&field, format!("{dep:?} is not a valid function name"))
                        );
                    }
                    let range_text = f.string(&field, range)?;
                    let req = semver::VersionReq::parse(&range_text).map_err(|source| {
                        f.semver(&field, &range_text, "semver range like ^1.2", source)
                    })?;
                    deps.insert(dep.clone(), req);
                }
                deps
            }
            Some(other) => {
                return Err(f.invalid(
                    "dependencies",
                    format!(
                        "expected a table of name = \"range\", found {}",
                        other.type_str()
                    ),
                ));
            }
        };
        if dependencies.contains_key(&name) {
            return Err(f.invalid(
                &format!("dependencies.{name}"),
                "a function cannot depend on itself",
            ));
        }
        if !dependencies.is_empty() && !capabilities.iter().any(|c| c == "call") {
            return Err(f.invalid(
                "capabilities",
                "declares dependencies but does not grant \"call\"",
            ));
        }
        let limits = match &raw.limits {
            None => Limits::default(),
            Some(toml::Value::Table(table)) => {
                if let Some(unknown) = table
                    .keys()
                    .find(|k| !["memory_mb", "timeout_ms", "concurrency"].contains(&k.as_str()))
                {
                    return Err(f.invalid(
                        &format!("limits.{unknown}"),
                        "unknown limit (known: memory_mb, timeout_ms, concurrency)",
                    ));
                }
                let d = Limits::default();
                Limits {
                    memory_mb: f.bounded(
                        "limits.memory_mb",
                        table.get("memory_mb"),
                        d.memory_mb,
                        MAX_MEMORY_MB,
                    )?,
                    timeout_ms: f.bounded(
                        "limits.timeout_ms",
                        table.get("timeout_ms"),
                        d.timeout_ms,
                        MAX_TIMEOUT_MS,
                    )?,
                    concurrency: f.bounded(
                        "limits.concurrency",
                        table.get("concurrency"),
                        d.concurrency,
                        MAX_CONCURRENCY,
                    )?,
                }
            }
            Some(other) => {
                return Err(f.invalid(
                    "limits",
                    format!("expected a table, found {}", other.type_str()),
                ));
            }
        };
        let config = match &raw.config {
            None => serde_json::Value::Object(Default::default()),
            Some(v @ toml::Value::Table(_)) => {
                serde_json::to_value(v).map_err(|source| PackageError::Config {
                    file: file.to_string(),
                    source: Arc::new(source),
                })?
            }
            Some(other) => {
                return Err(f.invalid(
                    "config",
                    format!("expected a table, found {}", other.type_str()),
                ));
            }
        };
        let value_per_call = match &raw.value {
            None => 0.0,
            Some(toml::Value::Table(table)) if table.keys().any(|k| k != "per_call") => {
                let unknown = table
                    .keys()
                    .find(|k| *k != "per_call")
                    .cloned()
                    .unwrap_or_default();
                return Err(f.invalid(&format!("value.{unknown}"), "unknown key (known: per_call)"));
            }
            Some(toml::Value::Table(table)) => match table.get("per_call") {
                None => 0.0,
                Some(v) => {
                    let n = v
                        .as_float()
                        .or_else(|| v.as_integer().map(|i| i as f64))
                        .ok_or_else(|| {
                            f.invalid(
                                "value.per_call",
                                format!("expected a number, found {}", v.type_str()),
                            )
                        })?;
                    if !n.is_finite() || n < 0.0 {
                        return Err(f.invalid("value.per_call", "must be a non-negative number"));
                    }
                    n
                }
            },
            Some(other) => {
                return Err(f.invalid(
                    "value",
                    format!("expected a table, found {}", other.type_str()),
                ));
            }
        };
        let http = http_grant(&f, raw.http.as_ref())?;
        let grants_http = capabilities.iter().any(|c| c == "http");
        if grants_http && http.allow.is_empty() {
            return Err(f.invalid(
                "http.allow",
                "grants \"http\" but allows no URL; list them as allow = [\"https://api.example.com/v1/*\"]",
            ));
        }
        if !grants_http && raw.http.is_some() {
            return Err(f.invalid(
                "capabilities",
                "has an [http] table but does not grant \"http\"",
            ));
        }
        Ok(Self {
            name,
            version,
            kind,
            description,
            entry,
            idempotent,
            capabilities,
            secrets,
            dependencies,
            limits,
            config,
            value_per_call,
            http,
        })
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// The `[http]` table: `allow` (rules, see [`crate::http::AllowRule`]) and the limits.
fn http_grant(
    f: &Fields<'_>,
    value: Option<&toml::Value>,
) -> Result<crate::http::HttpGrant, PackageError> {
    use crate::http::{self, AllowRule, HttpGrant};
    let d = HttpGrant::default();
    let table = match value {
        None => return Ok(d),
        Some(toml::Value::Table(table)) => table,
        Some(other) => {
            return Err(f.invalid(
                "http",
                format!("expected a table, found {}", other.type_str()),
            ));
        }
    };
    const KNOWN: [&str; 5] = [
        "allow",
        "max_request_bytes",
        "max_response_bytes",
        "concurrency",
        "per_second",
    ];
    if let Some(unknown) = table.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(f.invalid(
            &format!("http.{unknown}"),
            format!("unknown key (known: {})", KNOWN.join(", ")),
        ));
    }
    let allow = match table.get("allow") {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => {
            let mut rules = Vec::new();
            for (index, item) in items.iter().enumerate() {
                let field = format!("http.allow[{index}]");
                let text = f.string(&field, item)?;
                rules.push(AllowRule::parse(&text).map_err(|m| f.invalid(&field, m))?);
            }
            rules
        }
        Some(other) => {
            return Err(f.invalid(
                "http.allow",
                format!("expected an array of URL rules, found {}", other.type_str()),
            ));
        }
    };
    Ok(HttpGrant {
        allow,
        max_request_bytes: f.bounded(
            "http.max_request_bytes",
            table.get("max_request_bytes"),
            d.max_request_bytes,
            http::MAX_MAX_REQUEST_BYTES,
        )?,
        max_response_bytes: f.bounded(
            "http.max_response_bytes",
            table.get("max_response_bytes"),
            d.max_response_bytes,
            http::MAX_MAX_RESPONSE_BYTES,
        )?,
        concurrency: f.bounded(
            "http.concurrency",
            table.get("concurrency"),
            d.concurrency,
            http::MAX_CONCURRENCY,
        )?,
        per_second: f.bounded(
            "http.per_second",
            table.get("per_second"),
            d.per_second,
            http::MAX_PER_SECOND,
        )?,
    })
}

fn is_plain_relative(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// A sample input from `examples/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub name: String,
    #[serde(with = "json_text")]
    pub input: serde_json::Value,
}

/// JSON values travel as JSON text inside binary encodings (bincode cannot carry a self-describing
/// value), so manifests, releases and artifacts encode with the one codec of `klf-proto`.
mod json_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &serde_json::Value, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

/// A loaded, validated package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Package {
    pub manifest: Manifest,
    /// The manifest text as written (kept so the artifact is what the author wrote).
    pub manifest_text: String,
    pub source: String,
    pub examples: Vec<Example>,
    /// `schema/input.json` and `schema/output.json` (JSON Schema text), when the package has
    /// them: what `klf fn info` shows callers. Kept as text because the artifact codec cannot
    /// carry free JSON values.
    pub input_schema: Option<String>,
    pub output_schema: Option<String>,
}

impl Package {
    /// Sets `manifest.http` from the manifest text: what unpacking an artifact does, since the
    /// encoded manifest leaves `[http]` out (see [`Manifest::http`]).
    pub fn restore_http(&mut self) -> Result<(), PackageError> {
        self.manifest.http = Manifest::parse(&self.manifest_text, "klf.toml")?.http;
        Ok(())
    }

    /// Loads the package in `dir`, validating the manifest, the entry file and the examples.
    pub fn load(dir: &Path) -> Result<Self, PackageError> {
        let manifest_path = dir.join("klf.toml");
        let manifest_text = read_text(&manifest_path, MAX_MANIFEST_BYTES)?;
        // Parse first: the manifest names the entry file.
        let manifest = Manifest::parse(&manifest_text, &manifest_path.display().to_string())?;
        // A native built-in has no source file.
        let source = if super::native::is_native(&manifest.entry) {
            String::new()
        } else {
            read_text(&dir.join(&manifest.entry), MAX_SOURCE_BYTES)?
        };
        let mut examples = Vec::new();
        let examples_dir = dir.join("examples");
        if examples_dir.is_dir() {
            let mut paths: Vec<PathBuf> = std::fs::read_dir(&examples_dir)
                .map_err(|e| read_error(&examples_dir, e))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            paths.sort();
            for path in paths {
                let text = read_text(&path, MAX_EXAMPLE_BYTES)?;
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                examples.push((name, text));
            }
        }
        let schema = |name: &str| -> Result<Option<String>, PackageError> {
            let path = dir.join("schema").join(name);
            if path.is_file() {
                read_text(&path, MAX_EXAMPLE_BYTES).map(Some)
            } else {
                Ok(None)
            }
        };
        let (input, output) = (schema("input.json")?, schema("output.json")?);
        Self::from_parts(manifest_text, source, examples)
            .and_then(|package| package.with_schemas(input, output))
            .map_err(|e| relabel(e, &manifest_path, &examples_dir))
    }

    /// Builds a package from the text of its files (as the API receives them): `klf.toml`, the entry
    /// module, and `examples/NAME.json` contents by name.
    pub fn from_parts(
        manifest_text: String,
        source: String,
        examples: Vec<(String, String)>,
    ) -> Result<Self, PackageError> {
        if manifest_text.len() > MAX_MANIFEST_BYTES {
            return Err(PackageError::File {
                path: "klf.toml".into(),
                message: format!(
                    "{} bytes exceeds the limit of {MAX_MANIFEST_BYTES}",
                    manifest_text.len()
                ),
            });
        }
        let manifest = Manifest::parse(&manifest_text, "klf.toml")?;
        if source.len() > MAX_SOURCE_BYTES {
            return Err(PackageError::File {
                path: manifest.entry.clone(),
                message: format!(
                    "{} bytes exceeds the limit of {MAX_SOURCE_BYTES}",
                    source.len()
                ),
            });
        }
        let mut parsed = Vec::new();
        for (name, text) in examples {
            let path = format!("examples/{name}.json");
            if text.len() > MAX_EXAMPLE_BYTES {
                return Err(PackageError::File {
                    path,
                    message: format!(
                        "{} bytes exceeds the limit of {MAX_EXAMPLE_BYTES}",
                        text.len()
                    ),
                });
            }
            let input = serde_json::from_str(&text).map_err(|source| PackageError::Json {
                path,
                source: Arc::new(source),
            })?;
            parsed.push(Example { name, input });
        }
        Ok(Self {
            manifest,
            manifest_text,
            source,
            examples: parsed,
            input_schema: None,
            output_schema: None,
        })
    }

    /// Adds the package's input and output JSON Schemas (the text of `schema/input.json` and
    /// `schema/output.json`); each must be a JSON object.
    pub fn with_schemas(
        mut self,
        input: Option<String>,
        output: Option<String>,
    ) -> Result<Self, PackageError> {
        for (path, text) in [
            ("schema/input.json", &input),
            ("schema/output.json", &output),
        ] {
            let Some(text) = text else { continue };
            if text.len() > MAX_EXAMPLE_BYTES {
                return Err(PackageError::File {
                    path: path.into(),
                    message: format!(
                        "{} bytes exceeds the limit of {MAX_EXAMPLE_BYTES}",
                        text.len()
                    ),
                });
            }
            match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(_)) => {}
                Ok(_) => {
                    return Err(PackageError::File {
                        path: path.into(),
                        message: "a JSON Schema must be a JSON object".into(),
                    });
                }
                Err(source) => {
                    return Err(PackageError::Json {
                        path: path.into(),
                        source: Arc::new(source),
                    });
                }
            }
        }
        self.input_schema = input;
        self.output_schema = output;
        Ok(self)
    }
}

/// Errors of [`Package::from_parts`] name files relative to the package; [`Package::load`] names
/// them by their real paths.
fn relabel(error: PackageError, manifest_path: &Path, examples_dir: &Path) -> PackageError {
    let full = |file: String| {
        if file == "klf.toml" {
            manifest_path.display().to_string()
        } else if let Some(rest) = file.strip_prefix("examples/") {
            examples_dir.join(rest).display().to_string()
        } else {
            file
        }
    };
    match error {
        PackageError::MissingField { file, field } => PackageError::MissingField {
            file: full(file),
            field,
        },
        PackageError::InvalidField {
            file,
            field,
            message,
        } => PackageError::InvalidField {
            file: full(file),
            field,
            message,
        },
        PackageError::Syntax { file, source } => PackageError::Syntax {
            file: full(file),
            source,
        },
        PackageError::Semver {
            file,
            field,
            text,
            expected,
            source,
        } => PackageError::Semver {
            file: full(file),
            field,
            text,
            expected,
            source,
        },
        PackageError::Config { file, source } => PackageError::Config {
            file: full(file),
            source,
        },
        PackageError::File { path, message } => PackageError::File {
            path: full(path),
            message,
        },
        PackageError::Read { path, source } => PackageError::Read {
            path: full(path),
            source,
        },
        PackageError::NotUtf8 { path, source } => PackageError::NotUtf8 {
            path: full(path),
            source,
        },
        PackageError::Json { path, source } => PackageError::Json {
            path: full(path),
            source,
        },
    }
}

fn file_error(path: &Path, message: String) -> PackageError {
    PackageError::File {
        path: path.display().to_string(),
        message,
    }
}

fn read_error(path: &Path, source: std::io::Error) -> PackageError {
    PackageError::Read {
        path: path.display().to_string(),
        source: Arc::new(source),
    }
}

fn read_text(path: &Path, max: usize) -> Result<String, PackageError> {
    let meta = std::fs::metadata(path).map_err(|e| read_error(path, e))?;
    if meta.len() as usize > max {
        return Err(file_error(
            path,
            format!("{} bytes exceeds the limit of {max}", meta.len()),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| read_error(path, e))?;
    String::from_utf8(bytes).map_err(|e| PackageError::NotUtf8 {
        path: path.display().to_string(),
        source: e.utf8_error(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "moving-average"
version = "1.2.0"
type = "data-processor"
description = "Moving average of a numeric series"
entry = "main.js"
idempotent = true
capabilities = ["call", "kv", "log"]
[dependencies]
"series-cleaner" = "^1"
[limits]
memory_mb = 32
timeout_ms = 1000
concurrency = 64
[config]
window = 5
[value]
per_call = 0.001
"#;

    #[test]
    fn the_design_example_parses() {
        let m = Manifest::parse(GOOD, "klf.toml").unwrap();
        assert_eq!(m.id(), "moving-average@1.2.0");
        assert_eq!(m.kind, "data-processor");
        assert!(m.idempotent);
        assert_eq!(m.dependencies["series-cleaner"].to_string(), "^1");
        assert_eq!(
            m.limits,
            Limits {
                memory_mb: 32,
                timeout_ms: 1000,
                concurrency: 64
            }
        );
        assert_eq!(m.config["window"], 5);
        assert_eq!(m.value_per_call, 0.001);
    }

    fn error_of(text: &str) -> String {
        Manifest::parse(text, "klf.toml").unwrap_err().to_string()
    }

    #[test]
    fn the_http_table_grants_urls_and_limits_and_survives_an_artifact() {
        let head = "name = \"feed\"\nversion = \"1.0.0\"\ntype = \"t\"\n";
        let text = format!(
            "{head}capabilities = [\"http\"]\n[http]\nallow = [\"https://api.example.com/v1/*\"]\n\
             max_response_bytes = 2048\nper_second = 5\n"
        );
        let m = Manifest::parse(&text, "klf.toml").unwrap();
        assert_eq!(m.http.allow[0].host, "api.example.com");
        assert_eq!(m.http.max_response_bytes, 2048);
        assert_eq!(m.http.per_second, 5);
        assert_eq!(m.http.concurrency, crate::http::DEFAULT_CONCURRENCY);
        // The encoded manifest leaves [http] out; restore_http reads it back from the text.
        let package =
            Package::from_parts(text.clone(), "export default 1;".into(), Vec::new()).unwrap();
        let bytes = serde_json::to_vec(&package).unwrap();
        let mut decoded: Package = serde_json::from_slice(&bytes).unwrap();
        assert!(decoded.manifest.http.allow.is_empty());
        decoded.restore_http().unwrap();
        assert_eq!(decoded.manifest.http, m.http);

        for (body, expected) in [
            (
                "capabilities = [\"http\"]\n",
                "field `http.allow`: grants \"http\" but allows no URL",
            ),
            (
                "[http]\nallow = [\"https://x.com/\"]\n",
                "field `capabilities`: has an [http] table",
            ),
            (
                "capabilities = [\"http\"]\n[http]\nallow = [\"x.com\"]\n",
                "field `http.allow[0]`: \"x.com\" must start with",
            ),
            (
                "capabilities = [\"http\"]\n[http]\nallow = [\"https://x.com/\"]\nretries = 1\n",
                "field `http.retries`: unknown key",
            ),
            (
                "capabilities = [\"http\"]\n[http]\nallow = [\"https://x.com/\"]\nconcurrency = 0\n",
                "field `http.concurrency`: 0 is out of range",
            ),
        ] {
            let error = error_of(&format!("{head}{body}"));
            assert!(error.contains(expected), "{body}: {error}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let without = |field: &str| {
            GOOD.lines()
                .filter(|l| !l.starts_with(&format!("{field} =")))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            error_of(&without("name")),
            "klf.toml: missing required field `name`"
        );
        assert_eq!(
            error_of(&without("version")),
            "klf.toml: missing required field `version`"
        );
        assert_eq!(
            error_of(&without("type")),
            "klf.toml: missing required field `type`"
        );
        let cases = [
            (GOOD.replace("1.2.0", "1.x"), "field `version`"),
            (
                GOOD.replace("\"moving-average\"", "\"Moving Average\""),
                "field `name`",
            ),
            (
                GOOD.replace("\"^1\"", "\"one\""),
                "field `dependencies.series-cleaner`",
            ),
            (
                GOOD.replace("\"kv\"", "\"net\""),
                "unknown capability \"net\"",
            ),
            (
                GOOD.replace("memory_mb = 32", "memory_mb = 0"),
                "field `limits.memory_mb`",
            ),
            (
                GOOD.replace("timeout_ms = 1000", "timeout_ms = \"1s\""),
                "field `limits.timeout_ms`",
            ),
            (
                GOOD.replace("entry = \"main.js\"", "entry = \"../x.js\""),
                "field `entry`",
            ),
            (
                GOOD.replace("per_call = 0.001", "per_call = -1"),
                "field `value.per_call`",
            ),
            (
                GOOD.replace("idempotent = true", "idempotent = \"yes\""),
                "field `idempotent`",
            ),
            (format!("{GOOD}\nextra = 1"), "field `value.extra`"),
            (format!("extra = 1\n{GOOD}"), "unknown field `extra`"),
            ("name = ".to_string(), "cannot be read as a manifest"),
        ];
        for (text, needle) in cases {
            let err = error_of(&text);
            assert!(err.contains(needle), "expected {needle:?} in {err:?}");
        }
    }

    #[test]
    fn dependencies_need_the_call_capability() {
        let err = error_of(&GOOD.replace(
            "capabilities = [\"call\", \"kv\", \"log\"]",
            "capabilities = [\"log\"]",
        ));
        assert!(err.contains("does not grant \"call\""), "{err}");
    }

    #[test]
    fn a_package_loads_with_examples_and_names_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("klf.toml"), GOOD).unwrap();
        let err = Package::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("main.js") && err.contains("cannot read"),
            "{err}"
        );
        std::fs::write(dir.path().join("main.js"), "export default class {}").unwrap();
        std::fs::create_dir(dir.path().join("examples")).unwrap();
        std::fs::write(dir.path().join("examples/a.json"), r#"{"xs":[1,2,3]}"#).unwrap();
        let package = Package::load(dir.path()).unwrap();
        assert_eq!(package.examples.len(), 1);
        assert_eq!(package.examples[0].name, "a");
        std::fs::write(dir.path().join("examples/b.json"), "{not json").unwrap();
        let err = Package::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("b.json") && err.contains("not valid JSON"),
            "{err}"
        );
    }

    #[test]
    fn errors_keep_what_the_parser_or_the_file_system_said_as_source() {
        use std::error::Error as _;
        let source_of = |error: PackageError| error.source().map(ToString::to_string);
        let bad_version = Manifest::parse(&GOOD.replace("1.2.0", "1.x"), "klf.toml").unwrap_err();
        assert!(matches!(bad_version, PackageError::Semver { .. }));
        assert!(source_of(bad_version).is_some());
        let syntax = Manifest::parse("name = ", "klf.toml").unwrap_err();
        assert!(matches!(syntax, PackageError::Syntax { .. }));
        assert!(source_of(syntax).is_some());

        let dir = tempfile::tempdir().unwrap();
        let missing = Package::load(dir.path()).unwrap_err();
        let Some(PackageError::Read { source, .. }) = Some(&missing) else {
            panic!("{missing:?}")
        };
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        std::fs::write(dir.path().join("klf.toml"), GOOD).unwrap();
        std::fs::write(dir.path().join("main.js"), [0xff, 0xfe]).unwrap();
        let binary = Package::load(dir.path()).unwrap_err();
        assert!(binary.to_string().contains("not UTF-8"), "{binary}");
        assert!(source_of(binary).is_some());
    }
}
