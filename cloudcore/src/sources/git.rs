//! Fetching one ref of a Git repository, shallow, with gitoxide (`gix`:
//! pure Rust, https over the hub's reqwest and rustls, ssh through the
//! system `ssh`), into a bare repository in the hub's data dir; and reading
//! the manifests under a path of the fetched commit straight from the
//! object database (there is no working copy to keep in step).

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use edgefleet_api::{GitAuth, GitRepo, GitRepoSpec};
use gix::bstr::ByteSlice;
use gix::remote::Direction;

/// The local ref the fetched commit is written to.
const TARGET: &str = "refs/edgefleet/target";
/// A repository with more packs than this is fetched afresh: each shallow
/// fetch adds one, and nothing here repacks.
const MAX_PACKS: usize = 16;
/// Manifest files under the path: more is refused, not truncated.
pub const MAX_FILES: usize = 1000;
/// Bytes of YAML under the path, in all.
pub const MAX_TOTAL_BYTES: u64 = 16 << 20;

/// A manifest file of the fetched commit.
#[derive(Debug, Clone)]
pub struct File {
    /// Relative to the repository's root.
    pub path: String,
    pub text: String,
}

/// The fetched commit, what is under the source's path, and its signature.
#[derive(Debug)]
pub struct Fetched {
    pub commit: String,
    pub files: Vec<File>,
    /// The `gpgsig` header and the bytes it signs, when the commit is signed.
    pub signature: Option<(String, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server, the network, credentials, or the ref.
    #[error("{0}")]
    Fetch(String),
    /// What the commit holds under the path cannot be read as manifests.
    #[error("{message}")]
    Content {
        message: String,
        file: Option<String>,
        commit: String,
    },
}

fn fetch_err(context: &str) -> impl FnOnce(gix::Error) -> FetchError + '_ {
    move |e| FetchError::Fetch(format!("{context}: {}", crate::error_chain(&e)))
}

/// An ssh remote that hung up before the Git protocol began: ssh said why
/// on its stderr, which is the hub's.
fn ssh_hint(url: &str, e: FetchError) -> FetchError {
    match e {
        FetchError::Fetch(m) if is_ssh(url) && m.contains("failed to fill whole buffer") => {
            FetchError::Fetch(format!(
                "{m} (ssh closed the connection: check sshKeyFile, knownHostsFile and the \
                 server's host key; ssh's own message is in the hub's log)"
            ))
        }
        e => e,
    }
}

fn is_ssh(url: &str) -> bool {
    url.starts_with("ssh://") || (!url.contains("://") && url.contains('@'))
}

/// Fetches the source's ref into `dir` and reads its manifests.
/// `interrupt` set from another thread stops the transfer.
pub fn fetch(dir: &Path, source: &GitRepo, interrupt: &AtomicBool) -> Result<Fetched, FetchError> {
    fetch_inner(dir, source, interrupt).map_err(|e| ssh_hint(&source.spec.url, e))
}

fn fetch_inner(
    dir: &Path,
    source: &GitRepo,
    interrupt: &AtomicBool,
) -> Result<Fetched, FetchError> {
    let repo = open(dir, source.spec.auth.as_ref(), true)?;
    let spec = &source.spec;
    let r = &spec.reference;
    let src = match (&r.branch, &r.tag, &r.semver, &r.commit) {
        (Some(b), ..) => format!("refs/heads/{b}"),
        (_, Some(t), ..) => format!("refs/tags/{t}"),
        (_, _, Some(range), _) => format!("refs/tags/{}", newest_tag(&repo, source, range)?),
        (.., Some(c)) => c.clone(),
        _ => return Err(FetchError::Fetch("the source names no ref".into())),
    };
    let refspec = format!("+{src}:{TARGET}");
    let remote = repo
        .remote_at(spec.url.as_str())
        .map_err(fetch_err("bad URL"))?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs([refspec.as_str()], Direction::Fetch)
        .map_err(fetch_err("bad ref"))?;
    let mut conn = remote
        .connect(Direction::Fetch)
        .map_err(fetch_err("cannot connect"))?;
    configure(&repo, spec, &mut conn)?;
    let prepared = conn
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(fetch_err("cannot list the remote's refs"))?;
    if prepared.ref_map().mappings.is_empty() {
        return Err(FetchError::Fetch(format!(
            "the remote has no {src} (ref {})",
            source.ref_text()
        )));
    }
    prepared
        .with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(NonZeroU32::MIN))
        .receive(gix::progress::Discard, interrupt)
        .map_err(fetch_err("fetch failed"))?;

    // A fresh handle sees the pack just written (and keeps it, however
    // many packs there are now).
    let repo = open(dir, spec.auth.as_ref(), false)?;
    let mut target = repo
        .find_reference(TARGET)
        .map_err(|e| FetchError::Fetch(format!("the fetch wrote no {TARGET}: {e}")))?;
    let commit = target
        .peel_to_commit()
        .map_err(|e| FetchError::Fetch(format!("{} is not a commit: {e}", source.ref_text())))?;
    let id = commit.id.to_string();
    if let Some(pinned) = &r.commit
        && !pinned.eq_ignore_ascii_case(&id)
    {
        return Err(FetchError::Fetch(format!(
            "asked for commit {pinned}, the remote gave {id}"
        )));
    }
    let in_commit = |(message, file)| FetchError::Content {
        message,
        file,
        commit: id.clone(),
    };
    let signature = commit
        .signature()
        .map_err(|e| in_commit((format!("unreadable signature: {e}"), None)))?
        .map(|(sig, signed)| (sig.to_str_lossy().into_owned(), signed.to_bstring().into()));
    let tree = commit
        .tree()
        .map_err(|e| in_commit((format!("no tree: {e}"), None)))?;
    let files = read_manifests(&repo, &tree, &spec.path).map_err(in_commit)?;
    Ok(Fetched {
        commit: id,
        files,
        signature,
    })
}

/// A problem with what a commit holds: the message, and the file.
type ContentError = (String, Option<String>);

fn content(message: String, file: Option<String>) -> ContentError {
    (message, file)
}

/// The bare repository in `dir`, created if missing. A repository that
/// cannot be opened, or (with `reset_when_large`, before a fetch) holds too
/// many packs, is started afresh: it is a cache of the remote.
fn open(
    dir: &Path,
    auth: Option<&GitAuth>,
    reset_when_large: bool,
) -> Result<gix::Repository, FetchError> {
    let packs = std::fs::read_dir(dir.join("objects/pack"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .count()
        })
        .unwrap_or(0);
    let fresh = (reset_when_large && packs > MAX_PACKS) || !dir.join("HEAD").is_file();
    if fresh {
        let _ = std::fs::remove_dir_all(dir);
        gix::init_bare(dir)
            .map_err(|e| FetchError::Fetch(format!("cannot create {}: {e}", dir.display())))?;
    }
    // Isolated: no user or system git config, credential helpers or
    // environment take part; only what the manifest says.
    let mut overrides = vec![
        // A server that goes quiet is given up on.
        "http.lowSpeedLimit=1".to_owned(),
        "http.lowSpeedTime=30".to_owned(),
        "gitoxide.http.connectTimeout=10000".to_owned(),
    ];
    if let Some(a) = auth
        && let (Some(key), Some(hosts)) = (&a.ssh_key_file, &a.known_hosts_file)
    {
        overrides.push(format!(
            "core.sshCommand=ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} \
             -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=10",
            shell_word(key),
            shell_word(hosts)
        ));
    }
    gix::open_opts(
        dir,
        gix::open::Options::isolated().config_overrides(overrides),
    )
    .map_err(|e| {
        let _ = std::fs::remove_dir_all(dir);
        FetchError::Fetch(format!("cannot open {}: {e}", dir.display()))
    })
}

fn shell_word(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Credentials from the manifest's files (and no credential helper, no
/// prompt), and the CA bundle for https when it names one.
fn configure<T: gix::protocol::transport::client::blocking_io::Transport>(
    repo: &gix::Repository,
    spec: &GitRepoSpec,
    conn: &mut gix::remote::Connection<'_, '_, '_, T>,
) -> Result<(), FetchError> {
    let auth = credentials(spec.auth.as_ref())?;
    conn.set_credentials(move |action| match action {
        gix::credentials::helper::Action::Get(ctx) => {
            Ok(auth
                .clone()
                .map(|(user, pass)| gix::credentials::protocol::Outcome {
                    credentials: gix::sec::identity::Credentials::UsernamePassword {
                        username: user,
                        password: pass,
                        oauth_refresh_token: None,
                    },
                    next: ctx.into(),
                }))
        }
        _ => Ok(None),
    });
    let Some(ca) = &spec.ca_file else {
        return Ok(());
    };
    if !spec.url.starts_with("https://") {
        return Ok(());
    }
    let pem = std::fs::read(ca).map_err(|e| FetchError::Fetch(format!("cannot read {ca}: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| FetchError::Fetch(format!("{ca}: {e}")))?;
    let mut opts = repo
        .transport_options(spec.url.as_str(), None)
        .map_err(fetch_err("transport options"))?
        .and_then(|o| {
            o.downcast::<gix::protocol::transport::client::blocking_io::http::Options>()
                .ok()
        })
        .map(|o| *o)
        .unwrap_or_default();
    let backend = gix::protocol::transport::client::blocking_io::http::reqwest::Options {
        configure_client: Some(Box::new(move |b| Ok(b.tls_certs_only(certs.clone())))),
        configure_request: None,
    };
    opts.backend = Some(std::sync::Arc::new(std::sync::Mutex::new(backend)));
    conn.set_transport_options(Box::new(opts));
    Ok(())
}

/// The user and password the manifest's auth files give, read now (a
/// rotated token is picked up at the next fetch).
fn credentials(auth: Option<&GitAuth>) -> Result<Option<(String, String)>, FetchError> {
    let Some(a) = auth else { return Ok(None) };
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .map_err(|e| FetchError::Fetch(format!("cannot read {p}: {e}")))
    };
    if let Some(p) = &a.token_file {
        return Ok(Some(("git".into(), read(p)?)));
    }
    if let Some(p) = &a.basic_auth_file {
        let line = read(p)?;
        let (u, pw) = line
            .split_once(':')
            .ok_or_else(|| FetchError::Fetch(format!("{p}: write username:password")))?;
        return Ok(Some((u.to_owned(), pw.to_owned())));
    }
    Ok(None)
}

/// The remote's newest tag within the semver range.
fn newest_tag(repo: &gix::Repository, source: &GitRepo, range: &str) -> Result<String, FetchError> {
    let req = semver::VersionReq::parse(range)
        .map_err(|e| FetchError::Fetch(format!("ref.semver {range:?}: {e}")))?;
    let remote = repo
        .remote_at(source.spec.url.as_str())
        .map_err(fetch_err("bad URL"))?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs(["refs/tags/*:refs/tags/*"], Direction::Fetch)
        .map_err(fetch_err("bad ref"))?;
    let mut conn = remote
        .connect(Direction::Fetch)
        .map_err(fetch_err("cannot connect"))?;
    configure(repo, &source.spec, &mut conn)?;
    let (map, _) = conn
        .ref_map(gix::progress::Discard, Default::default())
        .map_err(fetch_err("cannot list the remote's tags"))?;
    map.remote_refs
        .iter()
        .filter_map(|r| {
            let (name, _, _) = r.unpack();
            let tag = name.to_str().ok()?.strip_prefix("refs/tags/")?;
            let v = semver::Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()?;
            req.matches(&v).then(|| (v, tag.to_owned()))
        })
        .max()
        .map(|(_, tag)| tag)
        .ok_or_else(|| FetchError::Fetch(format!("no tag matches semver {range:?}")))
}

/// Every `*.yaml`/`*.yml` blob under `path` of `tree`, read one at a time
/// within the bounds above.
fn read_manifests(
    repo: &gix::Repository,
    tree: &gix::Tree<'_>,
    path: &str,
) -> Result<Vec<File>, ContentError> {
    let prefix = path.trim_matches('/');
    let sub = if prefix.is_empty() {
        tree.clone()
    } else {
        let entry = tree
            .lookup_entry_by_path(PathBuf::from(prefix))
            .map_err(|e| content(format!("cannot read {prefix}/: {e}"), None))?
            .ok_or_else(|| content(format!("the commit has no {prefix}/"), None))?;
        entry
            .object()
            .map_err(|e| content(format!("cannot read {prefix}/: {e}"), None))?
            .try_into_tree()
            .map_err(|_| content(format!("{prefix} is not a directory"), None))?
    };
    let mut rec = gix::traverse::tree::Recorder::default();
    sub.traverse()
        .breadthfirst(&mut rec)
        .map_err(|e| content(format!("cannot walk {prefix}/: {e}"), None))?;
    let mut entries: Vec<_> = rec
        .records
        .into_iter()
        .filter(|e| e.mode.is_blob())
        .filter(|e| e.filepath.ends_with(b".yaml") || e.filepath.ends_with(b".yml"))
        .collect();
    entries.sort_by(|a, b| a.filepath.cmp(&b.filepath));
    if entries.len() > MAX_FILES {
        return Err(content(
            format!(
                "{} YAML files under {prefix}/: at most {MAX_FILES} are read",
                entries.len()
            ),
            None,
        ));
    }
    let mut total = 0u64;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let rel = e.filepath.to_str_lossy();
        let file = if prefix.is_empty() {
            rel.into_owned()
        } else {
            format!("{prefix}/{rel}")
        };
        let header = repo
            .find_header(e.oid)
            .map_err(|err| content(format!("cannot read: {err}"), Some(file.clone())))?;
        total += header.size();
        if header.size() > edgefleet_protocol::limits::MAX_PAYLOAD_BYTES as u64
            || total > MAX_TOTAL_BYTES
        {
            return Err(content(
                format!(
                    "{} bytes: a manifest may have {} and all of them {MAX_TOTAL_BYTES}",
                    header.size(),
                    edgefleet_protocol::limits::MAX_PAYLOAD_BYTES
                ),
                Some(file),
            ));
        }
        let blob = repo
            .find_object(e.oid)
            .map_err(|err| content(format!("cannot read: {err}"), Some(file.clone())))?;
        let text = String::from_utf8(blob.data.clone())
            .map_err(|_| content("not UTF-8".into(), Some(file.clone())))?;
        out.push(File { path: file, text });
    }
    Ok(out)
}
