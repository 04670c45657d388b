//! Git sources: the `GitRepo` manifest an operator applies, and what the hub
//! says of each source (the commit it fetched, the one in force, why not).

use edgefleet_protocol::Duration;
use serde::{Deserialize, Serialize};

/// `kind: GitRepo`: deployments kept in sync with a path of a Git repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitRepo {
    /// `edgefleet.io/v1`.
    pub api_version: String,
    /// `GitRepo`.
    pub kind: String,
    pub metadata: SourceMetadata,
    pub spec: GitRepoSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceMetadata {
    #[schema(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63)]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitRepoSpec {
    /// `https://`, `http://`, `ssh://` (or `user@host:path`), `git://` or
    /// `file://`.
    pub url: String,
    #[serde(rename = "ref")]
    pub reference: GitRef,
    /// The directory whose `*.yaml`/`*.yml` files (recursively) hold the
    /// deployments; the repository's root when empty.
    #[serde(default)]
    pub path: String,
    /// How often the hub polls (default 1m; each wait is jittered by up
    /// to a tenth). A webhook fetches at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Delete deployments of this source that a new commit no longer has.
    #[serde(default)]
    pub prune: bool,
    /// Stop fetching and applying; the deployments stay as they are and
    /// may be changed through the API while suspended.
    #[serde(default)]
    pub suspend: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<GitAuth>,
    /// A PEM bundle on the hub the https server's certificate must chain
    /// to (default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<GitVerify>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<GitWebhook>,
}

/// Exactly one of `branch`, `tag`, `semver` (a range over the repository's
/// tags, e.g. `>=1.2, <2`) or `commit` (a full hex id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// Files on the hub holding credentials (the manifest never holds a secret).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitAuth {
    /// A token, sent as the password of HTTP basic auth (user `git`), as
    /// GitHub, GitLab and Gitea take it. Credentials go over https only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// `username:password` on one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_file: Option<String>,
    /// A private key for ssh:// URLs (run through the system `ssh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key_file: Option<String>,
    /// The server's host keys; required with `sshKeyFile` (no trust on
    /// first use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts_file: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitVerify {
    /// ssh-keygen's allowed_signers format: only commits SSH-signed by a
    /// key listed there (for the `git` namespace) are applied.
    pub allowed_signers_file: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitWebhook {
    /// The shared secret of `X-Hub-Signature-256` (HMAC-SHA256 of the body).
    pub secret_file: String,
}

/// The first problem a manifest has, by field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SourceInvalid {
    pub field: &'static str,
    pub message: String,
}

pub const SOURCE_KIND: &str = "GitRepo";
/// Polling interval when the manifest names none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

impl GitRepo {
    /// Every rule a manifest must satisfy (what the hub checks before it
    /// stores one; the files named are checked when they are read).
    pub fn validate(&self) -> Result<(), SourceInvalid> {
        let bad = |field, message: String| Err(SourceInvalid { field, message });
        if self.api_version != edgefleet_protocol::deployment::API_VERSION {
            return bad(
                "apiVersion",
                format!("must be {:?}", edgefleet_protocol::deployment::API_VERSION),
            );
        }
        if self.kind != SOURCE_KIND {
            return bad("kind", format!("must be {SOURCE_KIND:?}"));
        }
        let name = &self.metadata.name;
        if let Err(e) = edgefleet_protocol::name::check_dns_label(name, 63) {
            return bad("metadata.name", format!("must be a DNS label: {e}"));
        }
        let s = &self.spec;
        let url = s.url.as_str();
        let scp_like = !url.contains("://") && url.contains('@') && url.contains(':');
        let scheme_ok = ["https://", "http://", "ssh://", "git://", "file://"]
            .iter()
            .any(|p| url.starts_with(p));
        if !(scheme_ok || scp_like) || url.len() > 2048 || url.chars().any(char::is_whitespace) {
            return bad(
                "spec.url",
                "must be an https://, http://, ssh://, git:// or file:// URL (or user@host:path)"
                    .into(),
            );
        }
        let r = &s.reference;
        let set = [&r.branch, &r.tag, &r.semver, &r.commit]
            .iter()
            .filter(|x| x.is_some())
            .count();
        if set != 1 {
            return bad(
                "spec.ref",
                "name exactly one of branch, tag, semver or commit".into(),
            );
        }
        for (field, v) in [("spec.ref.branch", &r.branch), ("spec.ref.tag", &r.tag)] {
            if let Some(v) = v
                && !ref_name_ok(v)
            {
                return bad(field, format!("{v:?} is not a valid Git ref name"));
            }
        }
        if let Some(c) = &r.commit
            && !(c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return bad("spec.ref.commit", "must be a full 40-hex commit id".into());
        }
        if let Some(v) = &r.semver
            && (v.is_empty() || v.len() > 256)
        {
            return bad("spec.ref.semver", "must be a version range".into());
        }
        let path = s.path.trim_matches('/');
        if s.path.len() > 1024
            || path
                .split('/')
                .any(|c| c == ".." || c == "." || (c.is_empty() && !path.is_empty()))
        {
            return bad(
                "spec.path",
                "must be a relative path inside the repository".into(),
            );
        }
        if let Some(i) = s.interval
            && !(1..=86_400).contains(&i.as_secs())
        {
            return bad("spec.interval", "must be between 1s and 24h".into());
        }
        let files = s
            .auth
            .iter()
            .flat_map(|a| {
                [
                    ("spec.auth.tokenFile", &a.token_file),
                    ("spec.auth.basicAuthFile", &a.basic_auth_file),
                    ("spec.auth.sshKeyFile", &a.ssh_key_file),
                    ("spec.auth.knownHostsFile", &a.known_hosts_file),
                ]
            })
            .filter_map(|(f, p)| p.as_deref().map(|p| (f, p)))
            .chain(s.ca_file.iter().map(|p| ("spec.caFile", p.as_str())))
            .chain(s.verify.iter().map(|v| {
                (
                    "spec.verify.allowedSignersFile",
                    v.allowed_signers_file.as_str(),
                )
            }))
            .chain(
                s.webhook
                    .iter()
                    .map(|w| ("spec.webhook.secretFile", w.secret_file.as_str())),
            );
        for (field, p) in files {
            if !p.starts_with('/') || p.len() > 1024 {
                return bad(field, "must be an absolute path on the hub".into());
            }
        }
        if let Some(a) = &s.auth {
            if a.token_file.is_some() && a.basic_auth_file.is_some() {
                return bad(
                    "spec.auth",
                    "name tokenFile or basicAuthFile, not both".into(),
                );
            }
            if a.ssh_key_file.is_some() != a.known_hosts_file.is_some() {
                return bad(
                    "spec.auth",
                    "sshKeyFile and knownHostsFile go together (host keys are never trusted on first use)"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// The polling interval.
    pub fn interval(&self) -> Duration {
        self.spec.interval.unwrap_or(DEFAULT_INTERVAL)
    }

    /// The ref as one line: `branch main`, `semver >=1.2`.
    pub fn ref_text(&self) -> String {
        self.spec.reference.text()
    }
}

impl GitRef {
    /// One line: `branch main`, `semver >=1.2`, `commit 3f2a1c9`.
    pub fn text(&self) -> String {
        match (&self.branch, &self.tag, &self.semver, &self.commit) {
            (Some(b), ..) => format!("branch {b}"),
            (_, Some(t), ..) => format!("tag {t}"),
            (_, _, Some(s), _) => format!("semver {s}"),
            (.., Some(c)) => format!("commit {}", short(c)),
            _ => String::new(),
        }
    }
}

/// A branch or tag name as `git check-ref-format` would take it (the
/// subset a fetch refspec can carry safely).
fn ref_name_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 255
        && !v.starts_with(['-', '/'])
        && !v.ends_with(['/', '.'])
        && !v.contains("..")
        && !v.contains("//")
        && !v.contains("@{")
        && !v.ends_with(".lock")
        && v.bytes().all(|b| b > b' ' && !b"~^:?*[\\\x7f".contains(&b))
}

/// The first 7 hex digits of a commit id, as Git shows it.
pub fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

/// Where a failed commit went wrong: the file and line when one file was
/// the cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceFailure {
    /// `fetch`, `verify` (signature), `manifest` (a file of the commit),
    /// or `apply` (the hub refused the commit's deployments as a whole).
    pub stage: String,
    pub message: String,
    /// The commit it happened on (none when the fetch failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    pub at_ms: u64,
}

/// A source as the hub keeps it: the manifest and where its sync is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    pub name: String,
    pub spec: GitRepoSpec,
    /// The commit the last successful fetch found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_commit: Option<String>,
    /// The commit whose deployments are in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetch_ms: Option<u64>,
    /// Why the fetched commit is not the applied one, or the last fetch
    /// failed; cleared by the next commit applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<SourceFailure>,
    /// Failures in a row (the backoff grows with them).
    pub failures: u32,
    /// When the hub fetches next (a webhook or `reconcile` is sooner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fetch_ms: Option<u64>,
    /// Commits refused because their signature did not verify.
    pub refused_commits: u64,
    /// The deployments this source owns.
    pub deployments: Vec<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl SourceStatus {
    pub fn ref_text(&self) -> String {
        self.spec.reference.text()
    }

    /// `Ready` (the fetched commit is applied), `Failed`, `Suspended` or
    /// `Pending` (never fetched).
    pub fn state(&self) -> &'static str {
        if self.spec.suspend {
            "Suspended"
        } else if self.failure.is_some() {
            "Failed"
        } else if self.applied_commit.is_some() {
            "Ready"
        } else {
            "Pending"
        }
    }
}

/// The Git source a deployment came from, and the commit in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceRef {
    pub name: String,
    pub commit: String,
}

/// What `POST /sources/{name}/webhook` and `/reconcile` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceTriggered {
    pub name: String,
    /// `fetching`: a fetch starts now (or right after the one running).
    pub result: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(yaml: &str) -> Result<(), SourceInvalid> {
        let r: GitRepo = serde_yaml::from_str(yaml).unwrap();
        r.validate()
    }

    #[test]
    fn manifests_are_checked_field_by_field() {
        let ok = "apiVersion: edgefleet.io/v1\nkind: GitRepo\nmetadata: {name: fleet}\nspec: {url: https://h/r.git, ref: {branch: main}, path: deployments/}\n";
        repo(ok).unwrap();
        for (from, to, field) in [
            ("ref: {branch: main}", "ref: {}", "spec.ref"),
            (
                "ref: {branch: main}",
                "ref: {branch: main, tag: v1}",
                "spec.ref",
            ),
            (
                "ref: {branch: main}",
                "ref: {branch: 'a..b'}",
                "spec.ref.branch",
            ),
            (
                "ref: {branch: main}",
                "ref: {commit: abc}",
                "spec.ref.commit",
            ),
            ("https://h/r.git", "ftp://h/r.git", "spec.url"),
            ("path: deployments/", "path: ../x", "spec.path"),
            ("name: fleet", "name: Fleet", "metadata.name"),
            (
                "path: deployments/",
                "auth: {tokenFile: rel}",
                "spec.auth.tokenFile",
            ),
            ("path: deployments/", "auth: {sshKeyFile: /k}", "spec.auth"),
            ("path: deployments/", "interval: 0s", "spec.interval"),
        ] {
            let e = repo(&ok.replace(from, to)).unwrap_err();
            assert_eq!(e.field, field, "{to}: {e}");
        }
        repo(&ok.replace("https://h/r.git", "git@h:ops/r.git")).unwrap();
    }
}
