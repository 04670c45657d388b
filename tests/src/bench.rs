//! Writing benchmark figures to `BENCHMARKS.md` at the workspace root.
//!
//! Each benchmark owns one section, delimited by `<!-- bench:ID -->` and
//! `<!-- /bench:ID -->`, and replaces only that section, so benchmarks run
//! separately never overwrite each other's figures. Every section states the
//! command that produced it, the machine and the date.

use std::path::{Path, PathBuf};

/// `BENCHMARKS.md` at the workspace root.
pub fn benchmarks_md() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("BENCHMARKS.md")
}

/// One line describing this machine: CPU model, cores, memory, kernel,
/// rustc.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|s| s.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0.0, |kb| kb as f64 / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let rustc = std::process::Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB RAM, Linux {kernel}, {rustc}")
}

/// Today's date (UTC) as `YYYY-MM-DD`.
pub fn today() -> String {
    edgefleet_daemon::time::Utc::from_unix_ms(edgefleet_protocol::now_ms()).date()
}

/// Replaces (or appends) section `id` of `BENCHMARKS.md` with `title`, the
/// command, machine and date, then `body` (Markdown). Returns the path.
pub fn write_section(id: &str, title: &str, command: &str, body: &str) -> std::io::Result<PathBuf> {
    let path = benchmarks_md();
    let existing = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "# Benchmarks\n\nEvery section below was written by the command it names; \
             rerun that command to refresh it.\n"
                .to_string()
        }
        Err(e) => return Err(e),
    };
    let begin = format!("<!-- bench:{id} -->");
    let end = format!("<!-- /bench:{id} -->");
    let section = format!(
        "{begin}\n## {title}\n\n- Command: `{command}`\n- Machine: {}\n- Date: {}\n\n{}\n{end}",
        machine(),
        today(),
        body.trim_end()
    );
    let updated = match (existing.find(&begin), existing.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{section}{}", &existing[..b], &existing[e + end.len()..])
        }
        _ => format!("{}\n{section}\n", existing.trim_end()),
    };
    std::fs::write(&path, updated)?;
    Ok(path)
}

/// Prints `body` and writes it as section `id` of BENCHMARKS.md, under the
/// `fleet-sim` command line `args`.
pub fn write_fleet_sim_section(
    id: &str,
    title: &str,
    args: &str,
    body: &str,
) -> std::io::Result<()> {
    println!("{body}");
    let path = write_section(
        id,
        title,
        &format!(
            "cargo build --release -p cloudcore -p edge-agent -p edgefleet-tests && target/release/fleet-sim {args}"
        ),
        body,
    )?;
    eprintln!("fleet-sim: wrote {}", path.display());
    Ok(())
}

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The "weyl-v1" input of models/bench_ort.py (float32 variant).
pub fn weyl(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let h = ((i + 1) * 2_654_435_761 + seed * 40_503) & 0xFFFF_FFFF;
            #[allow(clippy::cast_precision_loss)]
            let u = (h >> 8) as f32 / 16_777_216.0;
            lo + (hi - lo) * u
        })
        .collect()
}

/// Nearest-rank percentile of sorted values (as bench_ort.py computes it).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

/// p50 and p99 of some latencies.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
}

pub fn latency(mut samples: Vec<f64>) -> Latency {
    samples.sort_by(f64::total_cmp);
    Latency {
        p50: percentile(&samples, 50.0),
        p99: percentile(&samples, 99.0),
    }
}

/// The python of the repository's venv (`models/venv.sh` creates it).
pub fn venv_python() -> anyhow::Result<PathBuf> {
    let venv = repo().join("models/venv.sh");
    let out = std::process::Command::new(&venv)
        .output()
        .map_err(|e| anyhow::anyhow!("run models/venv.sh: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "models/venv.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The venv's python when it can `import modules` (a comma-separated
/// import list). When the suite is required (`EDGEFLEET_REQUIRE_<WHAT>`),
/// `models/venv.sh` makes the venv first; otherwise an existing one is used
/// and the error says how to make it.
pub fn venv_python_with(what: &str, modules: &str) -> Result<PathBuf, String> {
    let python = if crate::required(what) {
        venv_python().map_err(|e| format!("{e:#}"))?
    } else {
        repo().join(".venv/bin/python")
    };
    let ok = std::process::Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(python)
    } else {
        Err(format!(
            "{} cannot import {modules} (run models/venv.sh)",
            python.display()
        ))
    }
}

/// Generates MobileNetV2 at `path` unless it is there (`dynamic`: a
/// symbolic batch dimension).
pub fn generate_mobilenet(python: &Path, path: &Path, dynamic: bool) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    eprintln!("generating {}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut cmd = std::process::Command::new(python);
    cmd.arg(repo().join("models/mobilenetv2/generate.py"))
        .arg(path);
    if dynamic {
        cmd.arg("--dynamic-batch");
    }
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("run generate.py: {e}"))?;
    anyhow::ensure!(status.success(), "generate.py failed ({status})");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn today_is_a_plausible_date() {
        let d = super::today();
        assert_eq!(d.len(), 10, "{d}");
        assert!(d.as_str() >= "2024-01-01", "{d}");
    }
}
