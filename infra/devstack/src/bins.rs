//! The workspace binaries devstack runs (`broker`, `worker`, `producer`),
//! found beside the running program — and built there first when it runs
//! under `cargo run` and they are missing, with the same cargo, target dir
//! and profile, so `cargo run --bin devstack -- demo` (or `up`) is one
//! command on a fresh clone.

use std::path::{Path, PathBuf};

/// The directory of the running program, after building any of `names`
/// missing from it (only under `cargo run`: `CARGO` names the cargo).
pub fn beside_current_exe(names: &[&str]) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or_else(|| anyhow::anyhow!("{} has no directory", exe.display()))?.to_path_buf();
    let missing: Vec<&str> = names.iter().copied().filter(|n| !dir.join(n).is_file()).collect();
    if missing.is_empty() {
        return Ok(dir);
    }
    // Only a program cargo built into a profile directory (`target/debug`),
    // not a test binary in `target/debug/deps`.
    let profile_dir = dir.file_name().is_some_and(|n| n == "debug" || n == "release");
    let (Some(cargo), Some(target), true) = (std::env::var_os("CARGO"), dir.parent(), profile_dir) else {
        anyhow::bail!(
            "the {} binaries are not beside {}: build them with `cargo build --workspace --bins` \
             (in the same profile as devstack)",
            missing.join(", "),
            exe.display()
        );
    };
    build(&cargo, target, &dir, &missing)?;
    Ok(dir)
}

fn build(cargo: &std::ffi::OsStr, target: &Path, dir: &Path, names: &[&str]) -> anyhow::Result<()> {
    let mut cmd = std::process::Command::new(cargo);
    cmd.arg("build").env("CARGO_TARGET_DIR", target);
    for n in names {
        cmd.args(["--bin", n]);
    }
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    eprintln!("devstack: building {} ({cmd:?})…", names.join(", "));
    let status = cmd.status()?;
    let still: Vec<&&str> = names.iter().filter(|n| !dir.join(n).is_file()).collect();
    anyhow::ensure!(status.success() && still.is_empty(), "building {} failed ({status})", names.join(", "));
    Ok(())
}
