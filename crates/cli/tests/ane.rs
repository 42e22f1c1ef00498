//! The ANE path through the `tandem` binary (`--backend ane-sim`, the MIL interpreter):
//! `--kernel-cache` keeps the built programs, a second run reads them back (no entry is
//! rewritten) and prints the same text, and a corrupted entry is reported and rebuilt.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

fn model() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var_os("TANDEM_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("models"));
    let p = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/fetch-models.sh", p.display());
    p
}

fn run(m: &Path, cache: &Path) -> Output {
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(8);
    let args = ["run", "-m", m.to_str().unwrap(), "-p", &prompt, "-n", "4", "--temp", "0", "-t", "2", "--backend", "ane-sim"];
    Command::new(env!("CARGO_BIN_EXE_tandem")).args(args).args(["--kernel-cache", cache.to_str().unwrap()]).output().unwrap()
}

/// The ANE entries of the cache directory with their modification times.
fn entries(dir: &Path) -> Vec<(PathBuf, SystemTime)> {
    let mut v: Vec<(PathBuf, SystemTime)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("ane-v") && e.file_name().to_string_lossy().ends_with(".bin"))
        .map(|e| (e.path(), e.metadata().unwrap().modified().unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn ane_sim_kernel_cache_is_reused_and_repaired() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let first = run(&m, dir.path());
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{err}");
    assert!(err.lines().any(|l| l.starts_with("placement: ane-sim")), "{err}");
    let stored = entries(dir.path());
    assert!(!stored.is_empty(), "no ANE programs stored in the kernel cache");
    // Same text, and every entry read back, none rewritten.
    let second = run(&m, dir.path());
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(entries(dir.path()), stored);
    assert!(!String::from_utf8_lossy(&second.stderr).contains("kernel cache"));
    // A flipped byte: reported once, rebuilt, same text.
    let victim = &stored[0].0;
    let mut b = std::fs::read(victim).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(victim, &b).unwrap();
    let third = run(&m, dir.path());
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(third.status.success(), "{err}");
    assert!(err.contains("warning: ane: kernel cache") && err.contains("checksum"), "{err}");
    assert_eq!(third.stdout, first.stdout);
    assert_eq!(entries(dir.path()).len(), stored.len());
}
