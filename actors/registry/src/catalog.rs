//! The catalog every node holds whole, and the rules that make replicas converge.
//!
//! A catalog is a map from keys to versioned records. Every record carries a hybrid-logical-clock
//! stamp and merging keeps, per key, the record with the highest stamp (ties broken by the record's
//! hash), so merging is commutative, associative and idempotent: replicas that saw the same records
//! hold the same catalog, whatever the order or repetition of merges. Keys:
//!
//! - `release/NAME@VERSION` — a published version: manifest, artifact hash, signature. Immutable:
//!   publishing other content under the same key is refused where it is attempted ([`Catalog::check_publish`]).
//! - `deployment/NAME` — desired replicas and whether it is enabled.
//! - `canary/NAME` — a version on trial beside the served one.
//! - `yank/NAME@VERSION` — a published version that dependency resolution must no longer pick
//!   (`klf fn yank`), with the reason. The release stays published and keeps serving what already
//!   runs it; a tombstone under the key lifts the yank.
//! - `perf/NAME@VERSION` — what the validator's performance test measured for a release, stored
//!   beside it (`klf fn info` shows it; the ROI's scalability metric reads it).
//! - any of them may become a tombstone when removed.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use klf_functions::package::Manifest;
use klf_functions::perf::{PerfBudget, PerfFigures};

/// A published function version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub manifest: Manifest,
    /// blake3 of the artifact (the package bytes).
    pub artifact: [u8; 32],
    pub artifact_len: u64,
    /// Signature of the artifact hash by the publishing node's key.
    pub signature: Vec<u8>,
    /// The publishing node's id and certificate (verified against the mesh CA before trusting the
    /// signature).
    pub signer: String,
    pub signer_cert: Vec<u8>,
    /// The API principal that published it.
    pub owner: String,
    pub created_unix_ms: u64,
}

impl Release {
    pub fn key(&self) -> String {
        release_key(&self.manifest.name, &self.manifest.version)
    }

    /// A release record for code that is not published yet: what a host needs to serve a
    /// throwaway instance of it (validation, held tests). Its name is `kv_namespace`, so its
    /// key-value writes stay out of the function's own namespace.
    pub fn unpublished(manifest: &Manifest, kv_namespace: &str, owner: &str) -> Self {
        let mut manifest = manifest.clone();
        manifest.name = kv_namespace.to_string();
        Self {
            manifest,
            artifact: [0; 32],
            artifact_len: 0,
            signature: Vec::new(),
            signer: String::new(),
            signer_cert: Vec::new(),
            owner: owner.to_string(),
            created_unix_ms: 0,
        }
    }
}

/// What should run: the desired replica count of a function and the version it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub name: String,
    pub replicas: u32,
    pub enabled: bool,
    /// The version pinned by a rollback; `None` serves the highest live version. A deploy writes
    /// `None`, so publishing a new version after a rollback serves the new highest again.
    pub version: Option<semver::Version>,
}

/// The layout of a deployment record before pinning existed: still read from stores written then.
#[derive(Deserialize)]
struct LegacyDeployment {
    name: String,
    replicas: u32,
    enabled: bool,
}

#[derive(Deserialize)]
enum LegacyRecord {
    Release(#[allow(dead_code)] Box<Release>),
    Deployment(LegacyDeployment),
    Tombstone,
}

#[derive(Deserialize)]
struct LegacyVersioned {
    stamp: uhlc::Timestamp,
    record: LegacyRecord,
}

/// A record's payload. New kinds are appended, so records stored or sent by older nodes still
/// decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// Shared: the router takes the served release on every call without copying it.
    Release(Arc<Release>),
    Deployment(Deployment),
    Tombstone,
    Canary(Canary),
    Yank(Yank),
    Perf(PerfRecord),
}

/// The validator's performance figures for one release, and the budget they were held to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerfRecord {
    pub name: String,
    pub version: semver::Version,
    pub figures: PerfFigures,
    pub budget: PerfBudget,
    /// What the budget found (empty when within it); kept when the deploy only warned.
    pub over_budget: Vec<String>,
    /// The node that measured.
    pub node: String,
    pub measured_unix_ms: u64,
}

/// A yanked release: resolving a dependency skips it, and `klf fn audit` names the deployed
/// functions whose calls still reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Yank {
    pub name: String,
    pub version: semver::Version,
    pub reason: String,
    /// The API principal that yanked it.
    pub by: String,
    pub yanked_unix_ms: u64,
}

/// A version on trial beside the one the deployment serves: one node serves it (the router says
/// which) while the others keep serving `stable`, until the Monitor promotes it (the deployment
/// then serves it everywhere) or rolls it back (the record goes; `stable` stays pinned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    pub name: String,
    pub version: semver::Version,
    /// The version served everywhere else meanwhile (the deployment is pinned to it).
    pub stable: semver::Version,
    pub started_unix_ms: u64,
}

/// A record with its hybrid-logical-clock stamp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versioned {
    pub stamp: uhlc::Timestamp,
    pub record: Record,
}

impl Versioned {
    /// blake3 of the encoded record: what digests compare and what breaks ties between equal stamps.
    ///
    /// Every field of a record encodes, so the empty fallback (which keeps this infallible for
    /// comparisons) is unreachable; what is stored or sent goes through [`Versioned::encode`],
    /// which says when a record does not encode.
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(&self.encode().unwrap_or_default()).as_bytes()
    }

    /// The record's bytes (for the store and for anti-entropy).
    pub fn encode(&self) -> Result<Vec<u8>, klf_proto::ProtoError> {
        klf_proto::encode_value(self)
    }

    /// A record from bytes made by [`Versioned::encode`] (or by a node from before deployments
    /// could pin a version: such a deployment serves the highest version, as it did then).
    pub fn decode(bytes: &[u8]) -> Result<Self, klf_proto::ProtoError> {
        klf_proto::decode_value(bytes).or_else(|error| {
            match klf_proto::decode_value::<LegacyVersioned>(bytes) {
                Ok(LegacyVersioned {
                    stamp,
                    record: LegacyRecord::Deployment(d),
                }) => Ok(Self {
                    stamp,
                    record: Record::Deployment(Deployment {
                        name: d.name,
                        replicas: d.replicas,
                        enabled: d.enabled,
                        version: None,
                    }),
                }),
                _ => Err(error),
            }
        })
    }
}

pub fn release_key(name: &str, version: &semver::Version) -> String {
    format!("release/{name}@{version}")
}

pub fn deployment_key(name: &str) -> String {
    format!("deployment/{name}")
}

pub fn canary_key(name: &str) -> String {
    format!("canary/{name}")
}

pub fn yank_key(name: &str, version: &semver::Version) -> String {
    format!("yank/{name}@{version}")
}

pub fn perf_key(name: &str, version: &semver::Version) -> String {
    format!("perf/{name}@{version}")
}

/// Why a dependency graph cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DependencyError {
    #[error("{required_by} needs {name} {range}, but no published version matches")]
    Missing {
        name: String,
        range: String,
        required_by: String,
    },
    #[error(
        "{required_by} needs {name} {range}, but every matching version is yanked: {}",
        yanked.iter().map(|(v, reason)| format!("{v} ({reason})")).collect::<Vec<_>>().join(", ")
    )]
    Yanked {
        name: String,
        range: String,
        required_by: String,
        /// Each matching version and the reason it was yanked, highest first.
        yanked: Vec<(String, String)>,
    },
    #[error("dependency cycle: {}", path.join(" -> "))]
    Cycle { path: Vec<String> },
}

/// A deployed function whose calls to a dependency reach a yanked release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditFinding {
    /// The deployed function, `name@version` (the served one).
    pub function: String,
    pub dependency: String,
    /// The range its manifest declares.
    pub range: String,
    /// The yanked release its calls reach, `name@version`.
    pub resolves_to: String,
    /// Why it was yanked.
    pub reason: String,
    /// The release a new deploy would resolve to instead, when one exists.
    pub replacement: Option<String>,
}

/// Publishing refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishConflict {
    #[error(
        "{id} is already published with different content; publish a new version instead (versions are immutable)"
    )]
    DifferentContent { id: String },
}

/// The replicated catalog.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    entries: BTreeMap<String, Versioned>,
}

impl Catalog {
    /// Merges one record; returns whether the catalog changed.
    pub fn merge(&mut self, key: String, incoming: Versioned) -> bool {
        match self.entries.get(&key) {
            Some(current)
                if (current.stamp, current.hash()) >= (incoming.stamp, incoming.hash()) =>
            {
                false
            }
            _ => {
                self.entries.insert(key, incoming);
                true
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&Versioned> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every record, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Versioned)> {
        self.entries.iter()
    }

    /// Keys and hashes, for anti-entropy.
    pub fn digest(&self) -> Vec<(String, [u8; 32])> {
        self.entries
            .iter()
            .map(|(k, v)| (k.clone(), v.hash()))
            .collect()
    }

    /// The records this catalog holds that a peer with `remote` digest lacks or holds differently.
    pub fn newer_than(&self, remote: &[(String, [u8; 32])]) -> Vec<(String, Versioned)> {
        let theirs: BTreeMap<&str, &[u8; 32]> =
            remote.iter().map(|(k, h)| (k.as_str(), h)).collect();
        self.entries
            .iter()
            .filter(|(k, v)| theirs.get(k.as_str()).is_none_or(|h| **h != v.hash()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Keys of `remote` this catalog lacks or holds differently (what to pull from that peer).
    pub fn wanted_from(&self, remote: &[(String, [u8; 32])]) -> Vec<String> {
        remote
            .iter()
            .filter(|(k, h)| self.entries.get(k).is_none_or(|v| v.hash() != *h))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Refuses to publish `release` if its `name@version` exists (or existed) with other content.
    pub fn check_publish(&self, release: &Release) -> Result<bool, PublishConflict> {
        match self.entries.get(&release.key()).map(|v| &v.record) {
            Some(Record::Release(existing)) if existing.artifact == release.artifact => Ok(false),
            Some(Record::Release(_)) => Err(PublishConflict::DifferentContent {
                id: release.manifest.id(),
            }),
            _ => Ok(true),
        }
    }

    /// Live releases, newest version first per name.
    pub fn releases(&self) -> impl Iterator<Item = &Release> {
        self.entries.values().filter_map(|v| match &v.record {
            Record::Release(r) => Some(r.as_ref()),
            _ => None,
        })
    }

    /// Live versions of `name`, highest first.
    pub fn versions(&self, name: &str) -> Vec<&Release> {
        self.versions_of(name)
            .into_iter()
            .map(Arc::as_ref)
            .collect()
    }

    /// Live versions of `name`, highest first: a range of the key space (`release/NAME@…`), not a
    /// scan of the whole catalog, since the router asks on every call.
    fn versions_of(&self, name: &str) -> Vec<&Arc<Release>> {
        let prefix = format!("release/{name}@");
        let mut versions: Vec<&Arc<Release>> = self
            .entries
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(&prefix))
            .filter_map(|(_, v)| match &v.record {
                Record::Release(r) if r.manifest.name == name => Some(r),
                _ => None,
            })
            .collect();
        versions.sort_by(|a, b| b.manifest.version.cmp(&a.manifest.version));
        versions
    }

    /// The highest live version of `name` matching `range`.
    pub fn resolve(&self, name: &str, range: &semver::VersionReq) -> Option<&Release> {
        self.versions(name)
            .into_iter()
            .find(|r| range.matches(&r.manifest.version))
    }

    /// The yank of `name@version`, if it is yanked.
    pub fn yank(&self, name: &str, version: &semver::Version) -> Option<&Yank> {
        match self
            .entries
            .get(&yank_key(name, version))
            .map(|v| &v.record)
        {
            Some(Record::Yank(y)) => Some(y),
            _ => None,
        }
    }

    /// The performance figures measured for `name@version`, if any.
    pub fn perf(&self, name: &str, version: &semver::Version) -> Option<&PerfRecord> {
        match self
            .entries
            .get(&perf_key(name, version))
            .map(|v| &v.record)
        {
            Some(Record::Perf(p)) => Some(p),
            _ => None,
        }
    }

    /// Every live yank.
    pub fn yanks(&self) -> impl Iterator<Item = &Yank> {
        self.entries.values().filter_map(|v| match &v.record {
            Record::Yank(y) => Some(y),
            _ => None,
        })
    }

    /// What a dependency `name` `range` of `required_by` resolves to: the highest live version
    /// that matches and is not yanked. When only yanked versions match, the error names them with
    /// their reasons.
    pub fn resolve_dependency(
        &self,
        name: &str,
        range: &semver::VersionReq,
        required_by: &str,
    ) -> Result<&Release, DependencyError> {
        let matching: Vec<&Release> = self
            .versions(name)
            .into_iter()
            .filter(|r| range.matches(&r.manifest.version))
            .collect();
        if let Some(release) = matching
            .iter()
            .find(|r| self.yank(name, &r.manifest.version).is_none())
        {
            return Ok(release);
        }
        if matching.is_empty() {
            return Err(DependencyError::Missing {
                name: name.to_string(),
                range: range.to_string(),
                required_by: required_by.to_string(),
            });
        }
        Err(DependencyError::Yanked {
            name: name.to_string(),
            range: range.to_string(),
            required_by: required_by.to_string(),
            yanked: matching
                .iter()
                .map(|r| {
                    let reason = self
                        .yank(name, &r.manifest.version)
                        .map(|y| y.reason.clone())
                        .unwrap_or_default();
                    (r.manifest.version.to_string(), reason)
                })
                .collect(),
        })
    }

    /// The release a call of `name` within `range` reaches today (the served one when it
    /// matches, as the router picks it; else the highest matching live version).
    pub fn called(&self, name: &str, range: &semver::VersionReq) -> Option<&Release> {
        self.served(name)
            .map(Arc::as_ref)
            .filter(|r| range.matches(&r.manifest.version))
            .or_else(|| self.resolve(name, range))
    }

    /// Deployed functions whose served release depends on a yanked version: each dependency
    /// whose calls reach a yanked release today, by function name.
    pub fn audit(&self) -> Vec<AuditFinding> {
        let mut findings = Vec::new();
        for deployment in self.deployments() {
            let Some(release) = self.served(&deployment.name) else {
                continue;
            };
            for (name, range) in &release.manifest.dependencies {
                let Some(called) = self.called(name, range) else {
                    continue;
                };
                if let Some(yank) = self.yank(name, &called.manifest.version) {
                    findings.push(AuditFinding {
                        function: release.manifest.id(),
                        dependency: name.clone(),
                        range: range.to_string(),
                        resolves_to: called.manifest.id(),
                        reason: yank.reason.clone(),
                        replacement: self
                            .resolve_dependency(name, range, &release.manifest.id())
                            .ok()
                            .map(|r| r.manifest.id()),
                    });
                }
            }
        }
        findings
    }

    /// The deployment record of `name`, if it is deployed.
    pub fn deployment(&self, name: &str) -> Option<&Deployment> {
        match self.entries.get(&deployment_key(name)).map(|v| &v.record) {
            Some(Record::Deployment(d)) => Some(d),
            _ => None,
        }
    }

    /// The release the deployment of `name` serves: the pinned version when it is set and still
    /// live, else the highest live version. `None` when nothing of `name` is published.
    pub fn served(&self, name: &str) -> Option<&Arc<Release>> {
        let versions = self.versions_of(name);
        let pinned = self.deployment(name).and_then(|d| d.version.as_ref());
        pinned
            .and_then(|v| versions.iter().find(|r| &r.manifest.version == v))
            .or_else(|| versions.first())
            .copied()
    }

    /// The canary of `name` and its release, while both are live (an unregistered version ends
    /// its canary).
    pub fn canary(&self, name: &str) -> Option<(&Canary, &Arc<Release>)> {
        let Some(Record::Canary(canary)) = self.entries.get(&canary_key(name)).map(|v| &v.record)
        else {
            return None;
        };
        let release = self
            .versions_of(name)
            .into_iter()
            .find(|r| r.manifest.version == canary.version)?;
        Some((canary, release))
    }

    /// Every live deployment.
    pub fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        self.entries.values().filter_map(|v| match &v.record {
            Record::Deployment(d) => Some(d),
            _ => None,
        })
    }

    /// Live releases whose manifest `type` is `kind`.
    pub fn find_by_type<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Release> {
        self.releases().filter(move |r| r.manifest.kind == kind)
    }

    /// Resolves the whole dependency graph of `root` to concrete releases (dependencies first),
    /// naming every missing dependency and any cycle.
    pub fn resolve_dependencies(
        &self,
        root: &Manifest,
    ) -> Result<Vec<&Release>, Vec<DependencyError>> {
        let mut resolved = Vec::new();
        let mut errors = Vec::new();
        let mut done = BTreeSet::new();
        let mut path = vec![root.id()];
        self.visit(root, &mut path, &mut done, &mut resolved, &mut errors);
        if errors.is_empty() {
            Ok(resolved)
        } else {
            Err(errors)
        }
    }

    fn visit<'a>(
        &'a self,
        manifest: &Manifest,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        resolved: &mut Vec<&'a Release>,
        errors: &mut Vec<DependencyError>,
    ) {
        for (name, range) in &manifest.dependencies {
            let release = match self.resolve_dependency(name, range, &manifest.id()) {
                Ok(release) => release,
                Err(error) => {
                    if !errors.contains(&error) {
                        errors.push(error);
                    }
                    continue;
                }
            };
            let id = release.manifest.id();
            if let Some(start) = path
                .iter()
                .position(|p| p.split('@').next() == Some(name.as_str()))
            {
                let mut cycle = path[start..].to_vec();
                cycle.push(id);
                let error = DependencyError::Cycle { path: cycle };
                if !errors.contains(&error) {
                    errors.push(error);
                }
                continue;
            }
            if done.contains(&id) {
                continue;
            }
            path.push(id.clone());
            self.visit(&release.manifest, path, done, resolved, errors);
            path.pop();
            done.insert(id);
            resolved.push(release);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn manifest(name: &str, version: &str, deps: &[(&str, &str)]) -> Manifest {
        let mut text = format!(
            "name = \"{name}\"\nversion = \"{version}\"\ntype = \"t-{name}\"\ncapabilities = [\"call\"]\n[dependencies]\n"
        );
        for (dep, range) in deps {
            text.push_str(&format!("\"{dep}\" = \"{range}\"\n"));
        }
        Manifest::parse(&text, "klf.toml").unwrap()
    }

    pub(crate) fn release(
        name: &str,
        version: &str,
        deps: &[(&str, &str)],
        content: u8,
    ) -> Release {
        Release {
            manifest: manifest(name, version, deps),
            artifact: [content; 32],
            artifact_len: 1,
            signature: vec![],
            signer: "n".into(),
            signer_cert: vec![],
            owner: "admin".into(),
            created_unix_ms: 0,
        }
    }

    fn stamp(time: u64, node: u8) -> uhlc::Timestamp {
        uhlc::Timestamp::new(uhlc::NTP64(time), uhlc::ID::try_from(node.max(1)).unwrap())
    }

    fn publish(catalog: &mut Catalog, r: Release, time: u64) {
        catalog.merge(
            r.key(),
            Versioned {
                stamp: stamp(time, 1),
                record: Record::Release(Arc::new(r)),
            },
        );
    }

    #[test]
    fn every_kind_of_record_round_trips_through_its_encoding() {
        for record in [
            Record::Release(Arc::new(release("a", "1.0.0", &[("b", "^1")], 3))),
            Record::Deployment(Deployment {
                name: "a".into(),
                replicas: 2,
                enabled: true,
                version: None,
            }),
            Record::Deployment(Deployment {
                name: "a".into(),
                replicas: 1,
                enabled: true,
                version: Some(semver::Version::new(1, 2, 3)),
            }),
            Record::Tombstone,
            Record::Yank(yank_of("a", "1.0.0", "broken")),
            Record::Perf(PerfRecord {
                name: "a".into(),
                version: semver::Version::new(1, 0, 0),
                figures: PerfFigures {
                    runs: 50,
                    examples: 1,
                    p50_us: 120,
                    p99_us: 900,
                    peak_memory_bytes: 1 << 20,
                    max_output_bytes: 40,
                    load: vec![klf_functions::perf::LoadStep {
                        in_flight: 8,
                        calls: 16,
                        calls_per_sec: 812.5,
                    }],
                    failures: vec![("x".into(), "timeout".into())],
                    elapsed_ms: 70,
                },
                budget: PerfBudget {
                    latency_ms: Some(5),
                    timeout_ms: 1000,
                    memory_bytes: 32 << 20,
                    max_output_bytes: 1 << 20,
                },
                over_budget: vec!["p99".into()],
                node: "n1".into(),
                measured_unix_ms: 1,
            }),
        ] {
            let v = Versioned {
                stamp: stamp(5, 2),
                record,
            };
            let bytes = v.encode().unwrap();
            assert!(!bytes.is_empty());
            assert_eq!(Versioned::decode(&bytes).unwrap(), v);
        }
        assert!(Versioned::decode(&[0xff; 8]).is_err());
    }

    #[test]
    fn resolution_picks_the_highest_matching_version() {
        let mut c = Catalog::default();
        for (v, t) in [("1.0.0", 1), ("1.4.2", 2), ("2.0.0", 3)] {
            publish(&mut c, release("lib", v, &[], 1), t);
        }
        let req = |r: &str| semver::VersionReq::parse(r).unwrap();
        assert_eq!(
            c.resolve("lib", &req("^1"))
                .unwrap()
                .manifest
                .version
                .to_string(),
            "1.4.2"
        );
        assert_eq!(
            c.resolve("lib", &req("*"))
                .unwrap()
                .manifest
                .version
                .to_string(),
            "2.0.0"
        );
        assert!(c.resolve("lib", &req("^3")).is_none());
        assert!(c.resolve("nothing", &req("*")).is_none());
    }

    #[test]
    fn dependencies_resolve_in_order_and_name_what_is_missing_or_cyclic() {
        let mut c = Catalog::default();
        publish(&mut c, release("a", "1.0.0", &[("b", "^1")], 1), 1);
        publish(&mut c, release("b", "1.2.0", &[("c", "^1")], 1), 2);
        publish(&mut c, release("c", "1.0.0", &[], 1), 3);
        let root = manifest("app", "1.0.0", &[("a", "^1")]);
        let order: Vec<String> = c
            .resolve_dependencies(&root)
            .unwrap()
            .iter()
            .map(|r| r.manifest.id())
            .collect();
        assert_eq!(order, ["c@1.0.0", "b@1.2.0", "a@1.0.0"]);

        let missing = manifest("app", "1.0.0", &[("a", "^1"), ("zz", "^2")]);
        let errors = c.resolve_dependencies(&missing).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].to_string(),
            "app@1.0.0 needs zz ^2, but no published version matches"
        );

        publish(&mut c, release("c", "1.1.0", &[("a", "^1")], 2), 4);
        let errors = c.resolve_dependencies(&root).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.to_string()
                    == "dependency cycle: a@1.0.0 -> b@1.2.0 -> c@1.1.0 -> a@1.0.0"),
            "{errors:?}"
        );
    }

    fn yank_of(name: &str, version: &str, reason: &str) -> Yank {
        Yank {
            name: name.into(),
            version: semver::Version::parse(version).unwrap(),
            reason: reason.into(),
            by: "admin".into(),
            yanked_unix_ms: 0,
        }
    }

    fn yank(catalog: &mut Catalog, name: &str, version: &str, reason: &str, time: u64) {
        let y = yank_of(name, version, reason);
        catalog.merge(
            yank_key(name, &y.version),
            Versioned {
                stamp: stamp(time, 1),
                record: Record::Yank(y),
            },
        );
    }

    fn deploy(catalog: &mut Catalog, name: &str, time: u64) {
        catalog.merge(
            deployment_key(name),
            Versioned {
                stamp: stamp(time, 1),
                record: Record::Deployment(Deployment {
                    name: name.into(),
                    replicas: 1,
                    enabled: true,
                    version: None,
                }),
            },
        );
    }

    #[test]
    fn resolving_a_dependency_skips_yanked_versions_and_names_the_reason_when_none_is_left() {
        let mut c = Catalog::default();
        publish(&mut c, release("lib", "1.0.0", &[], 1), 1);
        publish(&mut c, release("lib", "1.1.0", &[], 2), 2);
        yank(&mut c, "lib", "1.1.0", "leaks keys", 3);
        let app = manifest("app", "1.0.0", &[("lib", "^1")]);
        let order: Vec<String> = c
            .resolve_dependencies(&app)
            .unwrap()
            .iter()
            .map(|r| r.manifest.id())
            .collect();
        assert_eq!(order, ["lib@1.0.0"]);
        // Yanking is not unpublishing: plain resolution (what serves calls) still sees it.
        let any = semver::VersionReq::STAR;
        assert_eq!(c.resolve("lib", &any).unwrap().manifest.id(), "lib@1.1.0");

        yank(&mut c, "lib", "1.0.0", "wrong sums", 4);
        let errors = c.resolve_dependencies(&app).unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "app@1.0.0 needs lib ^1, but every matching version is yanked: \
             1.1.0 (leaks keys), 1.0.0 (wrong sums)"
        );
        // A tombstone lifts a yank.
        c.merge(
            yank_key("lib", &semver::Version::new(1, 0, 0)),
            Versioned {
                stamp: stamp(5, 1),
                record: Record::Tombstone,
            },
        );
        assert!(c.resolve_dependencies(&app).is_ok());
        assert_eq!(c.yanks().count(), 1);
    }

    #[test]
    fn the_audit_names_deployed_functions_whose_calls_reach_a_yanked_version() {
        let mut c = Catalog::default();
        publish(&mut c, release("lib", "1.0.0", &[], 1), 1);
        publish(&mut c, release("app", "1.0.0", &[("lib", "^1")], 1), 2);
        publish(&mut c, release("other", "1.0.0", &[("lib", "^2")], 1), 3);
        deploy(&mut c, "lib", 4);
        deploy(&mut c, "app", 5);
        deploy(&mut c, "other", 6);
        assert!(c.audit().is_empty());
        yank(&mut c, "lib", "1.0.0", "wrong sums", 7);
        assert_eq!(
            c.audit(),
            [AuditFinding {
                function: "app@1.0.0".into(),
                dependency: "lib".into(),
                range: "^1".into(),
                resolves_to: "lib@1.0.0".into(),
                reason: "wrong sums".into(),
                replacement: None,
            }]
        );
        // A fixed version serves (the highest), so calls no longer reach the yanked one.
        publish(&mut c, release("lib", "1.0.1", &[], 2), 8);
        assert!(c.audit().is_empty());
    }

    #[test]
    fn republishing_a_version_with_other_content_is_a_conflict() {
        let mut c = Catalog::default();
        publish(&mut c, release("a", "1.0.0", &[], 1), 1);
        assert_eq!(c.check_publish(&release("a", "1.0.0", &[], 1)), Ok(false));
        let err = c.check_publish(&release("a", "1.0.0", &[], 2)).unwrap_err();
        assert!(
            err.to_string()
                .contains("a@1.0.0 is already published with different content")
        );
        assert_eq!(c.check_publish(&release("a", "1.0.1", &[], 2)), Ok(true));
    }

    #[test]
    fn a_deployment_serves_its_pinned_version_else_the_highest() {
        let mut c = Catalog::default();
        for (v, t) in [("1.0.0", 1), ("1.1.0", 2), ("2.0.0", 3)] {
            publish(&mut c, release("f", v, &[], 1), t);
        }
        let deploy = |c: &mut Catalog, version: Option<&str>, time: u64| {
            c.merge(
                deployment_key("f"),
                Versioned {
                    stamp: stamp(time, 1),
                    record: Record::Deployment(Deployment {
                        name: "f".into(),
                        replicas: 1,
                        enabled: true,
                        version: version.map(|v| semver::Version::parse(v).unwrap()),
                    }),
                },
            )
        };
        let served = |c: &Catalog| c.served("f").map(|r| r.manifest.version.to_string());
        deploy(&mut c, None, 4);
        assert_eq!(served(&c).as_deref(), Some("2.0.0"));
        deploy(&mut c, Some("1.1.0"), 5);
        assert_eq!(served(&c).as_deref(), Some("1.1.0"));
        // An older pin does not win over the newer record (last writer wins).
        assert!(!deploy(&mut c, Some("1.0.0"), 4));
        assert_eq!(served(&c).as_deref(), Some("1.1.0"));
        // A pinned version that was removed falls back to the highest.
        c.merge(
            release_key("f", &semver::Version::new(1, 1, 0)),
            Versioned {
                stamp: stamp(6, 1),
                record: Record::Tombstone,
            },
        );
        assert_eq!(served(&c).as_deref(), Some("2.0.0"));
        // A later deploy unpins.
        deploy(&mut c, Some("1.0.0"), 7);
        assert_eq!(served(&c).as_deref(), Some("1.0.0"));
        deploy(&mut c, None, 8);
        assert_eq!(served(&c).as_deref(), Some("2.0.0"));
        assert_eq!(Catalog::default().served("f"), None);
    }

    #[test]
    fn deployment_records_stored_before_pinning_still_decode() {
        #[derive(Serialize)]
        struct OldDeployment {
            name: String,
            replicas: u32,
            enabled: bool,
        }
        #[derive(Serialize)]
        #[allow(dead_code)]
        enum OldRecord {
            Release(Box<Release>),
            Deployment(OldDeployment),
            Tombstone,
        }
        #[derive(Serialize)]
        struct OldVersioned {
            stamp: uhlc::Timestamp,
            record: OldRecord,
        }
        let bytes = klf_proto::encode_value(&OldVersioned {
            stamp: stamp(3, 1),
            record: OldRecord::Deployment(OldDeployment {
                name: "a".into(),
                replicas: 3,
                enabled: true,
            }),
        })
        .unwrap();
        let decoded = Versioned::decode(&bytes).unwrap();
        assert_eq!(
            decoded.record,
            Record::Deployment(Deployment {
                name: "a".into(),
                replicas: 3,
                enabled: true,
                version: None,
            })
        );
    }

    fn record_strategy() -> impl Strategy<Value = (String, Versioned)> {
        let key = prop_oneof![
            Just("deployment/a"),
            Just("deployment/b"),
            Just("release/a@1.0.0")
        ];
        (key, 0u64..6, 1u8..4, 0u8..6).prop_map(|(key, time, node, payload)| {
            let record = match (key, payload) {
                (_, 0) => Record::Tombstone,
                ("release/a@1.0.0", p) => Record::Release(Arc::new(release("a", "1.0.0", &[], p))),
                (k, p) => Record::Deployment(Deployment {
                    name: k.trim_start_matches("deployment/").to_string(),
                    replicas: u32::from(p),
                    enabled: p % 2 == 1,
                    // Rollbacks pin versions; deploys unpin.
                    version: (p >= 3).then(|| semver::Version::new(1, 0, u64::from(p))),
                }),
            };
            (
                key.to_string(),
                Versioned {
                    stamp: stamp(time, node),
                    record,
                },
            )
        })
    }

    proptest! {
        #[test]
        fn replicas_converge_whatever_the_order_or_repetition_of_merges(
            records in proptest::collection::vec(record_strategy(), 1..24),
            seed in any::<u64>(),
        ) {
            let mut a = Catalog::default();
            for (k, v) in &records {
                a.merge(k.clone(), v.clone());
            }
            // Another replica: shuffled order, every record merged two or three times.
            let mut shuffled: Vec<_> = records.iter().chain(records.iter().step_by(2)).chain(records.iter()).collect();
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut b = Catalog::default();
            for (k, v) in shuffled {
                b.merge(k.clone(), v.clone());
            }
            prop_assert_eq!(&a, &b);
            // Anti-entropy between diverged replicas reaches the same state both ways.
            let (left, right) = records.split_at(records.len() / 2);
            let (mut x, mut y) = (Catalog::default(), Catalog::default());
            for (k, v) in left { x.merge(k.clone(), v.clone()); }
            for (k, v) in right { y.merge(k.clone(), v.clone()); }
            for (k, v) in y.newer_than(&x.digest()) { x.merge(k, v); }
            for (k, v) in x.newer_than(&y.digest()) { y.merge(k, v); }
            prop_assert_eq!(&x, &y);
            prop_assert_eq!(&x, &a);
        }
    }
}
