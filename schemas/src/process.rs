//! Process plumbing every binary shares: waiting for SIGINT/SIGTERM, and
//! behaving like a Unix tool in a pipe.

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    // Installing a SIGTERM handler only fails when the signal driver is gone,
    // which cannot happen inside a running Tokio runtime on Unix.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler succeeds on Unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Restores the default SIGPIPE action so `tool | head` ends quietly instead
/// of panicking on a closed stdout. Call first thing in `main`.
pub fn die_on_sigpipe() {
    // SAFETY: setting a signal's disposition to the default before any other
    // thread exists has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
