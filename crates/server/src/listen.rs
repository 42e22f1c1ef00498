//! The sockets the server answers on: `--host` is a comma-separated list of IP addresses
//! (each bound at `--port`) and UNIX socket paths ending in `.sock`, as llama-server reads it.

use crate::{Result, ServerError};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

/// One bound socket.
pub enum Bound {
    /// An IP address and port.
    Tcp(TcpListener),
    /// A UNIX socket file (removed again when the server stops).
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

impl Bound {
    /// The TCP address, if it is one.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Bound::Tcp(l) => l.local_addr().ok(),
            #[cfg(unix)]
            Bound::Unix(..) => None,
        }
    }

    /// How the server announces it: `http://ip:port` or `unix:PATH`.
    pub fn describe(&self) -> String {
        match self {
            Bound::Tcp(l) => l.local_addr().map_or_else(|_| "http://?".into(), |a| format!("http://{a}")),
            #[cfg(unix)]
            Bound::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }

    /// A second handle on the same socket (the loading answerer and the server share it).
    pub fn try_clone(&self) -> std::io::Result<Bound> {
        Ok(match self {
            Bound::Tcp(l) => Bound::Tcp(l.try_clone()?),
            #[cfg(unix)]
            Bound::Unix(l, p) => Bound::Unix(l.try_clone()?, p.clone()),
        })
    }

    /// Serve `app` here until `stop` completes.
    pub(crate) async fn serve(self, app: axum::Router, stop: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        match self {
            Bound::Tcp(l) => {
                l.set_nonblocking(true)?;
                axum::serve(tokio::net::TcpListener::from_std(l)?, app).with_graceful_shutdown(stop).await
            }
            #[cfg(unix)]
            Bound::Unix(l, _) => {
                l.set_nonblocking(true)?;
                axum::serve(tokio::net::UnixListener::from_std(l)?, app).with_graceful_shutdown(stop).await
            }
        }
    }

    /// A UNIX socket's file.
    pub(crate) fn socket_file(&self) -> Option<PathBuf> {
        match self {
            Bound::Tcp(_) => None,
            #[cfg(unix)]
            Bound::Unix(_, p) => Some(p.clone()),
        }
    }
}

/// The files of `listeners`' UNIX sockets.
pub(crate) fn socket_files(listeners: &[Bound]) -> Vec<PathBuf> {
    listeners.iter().filter_map(Bound::socket_file).collect()
}

/// Remove socket files (the server stopped, or never started).
pub(crate) fn remove_files(files: &[PathBuf]) {
    for f in files {
        let _ = std::fs::remove_file(f);
    }
}

/// Bind every address of `hosts` (comma-separated; blanks ignored) at `port`.
pub fn bind_all(hosts: &str, port: u16) -> Result<Vec<Bound>> {
    let list: Vec<&str> = hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
    if list.is_empty() {
        return Err(ServerError::Listen { addr: hosts.into(), source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "--host needs at least one address") });
    }
    let mut bound = Vec::new();
    for h in list {
        match bind(h, port) {
            Ok(b) => bound.push(b),
            Err(e) => {
                // Leave no socket file behind for the addresses already bound.
                remove_files(&socket_files(&bound));
                return Err(e);
            }
        }
    }
    Ok(bound)
}

fn bind(host: &str, port: u16) -> Result<Bound> {
    if host.ends_with(".sock") {
        #[cfg(unix)]
        {
            let l = std::os::unix::net::UnixListener::bind(host).map_err(|source| ServerError::Listen { addr: format!("unix:{host}"), source })?;
            return Ok(Bound::Unix(l, PathBuf::from(host)));
        }
        #[cfg(not(unix))]
        return Err(ServerError::Listen { addr: host.into(), source: std::io::Error::new(std::io::ErrorKind::Unsupported, "UNIX sockets need a UNIX system") });
    }
    // An IPv6 address may come bracketed ([::1]) or bare (::1).
    let ip = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let l = TcpListener::bind((ip, port)).map_err(|source| ServerError::Listen { addr: format!("{host}:{port}"), source })?;
    Ok(Bound::Tcp(l))
}
