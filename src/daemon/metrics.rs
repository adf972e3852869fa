//! `-o metrics=ADDR`: the counters `mmapfs stats --format prometheus` prints, served over HTTP
//! at `/metrics` while the mount lives, for Prometheus (or the experiment harness) to scrape
//! during long runs. A bare port listens on loopback only (127.0.0.1 and ::1); any other
//! address only when it is named (docs/security.md). Each scrape takes a fresh snapshot.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Mounted, snapshot};
use crate::stats::Stats;
use crate::store::Store;

/// The addresses `-o metrics=SPEC` names: a bare port means both loopback addresses.
pub fn addresses(spec: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(port) = spec.parse::<u16>() {
        return Ok(vec![(Ipv4Addr::LOCALHOST, port).into(), (Ipv6Addr::LOCALHOST, port).into()]);
    }
    let v: Vec<SocketAddr> = spec
        .to_socket_addrs()
        .map_err(|e| format!("metrics={spec}: a port, or HOST:PORT to listen on ({e})"))?
        .collect();
    v.first().map(|a| vec![*a]).ok_or_else(|| format!("metrics={spec}: names no address"))
}

/// Sockets bound before the mount, so that an address in use fails the mount with a clear
/// error instead of a mount without its metrics.
pub struct Listeners(Vec<tiny_http::Server>);

/// Binds every address of `spec`. With a bare port, the IPv6 loopback may be missing on a
/// host without IPv6: one bound address is enough, and the log says which.
pub fn bind(spec: &str) -> Result<Listeners, String> {
    let addrs = addresses(spec)?;
    let bare = addrs.len() > 1;
    let mut servers = Vec::new();
    for a in addrs {
        match tiny_http::Server::http(a) {
            Ok(s) => {
                // Said once bound (before the mount): a scrape from now on is answered.
                if let Some(a) = s.server_addr().to_ip() {
                    log::info!("serving metrics at http://{a}/metrics");
                }
                servers.push(s)
            }
            Err(e) if bare && a.is_ipv6() && !servers.is_empty() => {
                log::warn!("metrics: cannot listen on {a} ({e}); serving on IPv4 loopback only")
            }
            Err(e) => return Err(format!("metrics={spec}: cannot listen on {a}: {e}")),
        }
    }
    Ok(Listeners(servers))
}

/// Serves `/metrics` from each listener until `stop` is set.
pub fn spawn(
    l: Listeners,
    stop: Arc<AtomicBool>,
    store: Arc<Store>,
    counters: Arc<Stats>,
    mount: Mounted,
) -> Result<Vec<JoinHandle<()>>, String> {
    let mut threads = Vec::new();
    for server in l.0 {
        let (stop, store, counters, mount) = (stop.clone(), store.clone(), counters.clone(), mount.clone());
        let t = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match server.recv_timeout(Duration::from_millis(200)) {
                        Ok(Some(req)) => answer(req, &store, &counters, &mount),
                        Ok(None) => {}
                        Err(e) => {
                            log::warn!("metrics: {e}");
                            return;
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
        threads.push(t);
    }
    Ok(threads)
}

fn answer(req: tiny_http::Request, store: &Store, counters: &Stats, mount: &Mounted) {
    let path = req.url().split('?').next().unwrap_or("");
    let r = if *req.method() == tiny_http::Method::Get && path == "/metrics" {
        let body = snapshot::take(counters, store, mount).prometheus();
        let kind = tiny_http::Header::from_bytes(&b"Content-Type"[..], crate::stats::OPENMETRICS_TYPE.as_bytes())
            .expect("a valid header");
        req.respond(tiny_http::Response::from_string(body).with_header(kind))
    } else {
        req.respond(tiny_http::Response::from_string("mmapfs serves /metrics only\n").with_status_code(404))
    };
    if let Err(e) = r {
        log::debug!("metrics: answering a scrape: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_is_loopback_only_and_bad_addresses_are_refused() {
        let a = addresses("9100").unwrap();
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|a| a.ip().is_loopback() && a.port() == 9100), "{a:?}");
        assert_eq!(addresses("0.0.0.0:9100").unwrap(), vec!["0.0.0.0:9100".parse().unwrap()]);
        assert_eq!(addresses("[::1]:80").unwrap(), vec!["[::1]:80".parse().unwrap()]);
        for bad in ["", "99999", "localhost", "1.2.3.4:x", "nonsense:1:2"] {
            let e = addresses(bad).unwrap_err();
            assert!(e.starts_with(&format!("metrics={bad}:")), "{e}");
        }
    }
}
