//! The socket server's request handling: arbitrary bytes from a peer of the daemon's own
//! user, through the real hyper connection and routes (over an in-memory pipe). Every input
//! ends in a response or a closed connection, never a panic or a hang.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backupnizza::broker::{Broker, Limits, Peer, Secrets};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn broker() -> Arc<Broker> {
    static BROKER: OnceLock<Arc<Broker>> = OnceLock::new();
    BROKER
        .get_or_init(|| {
            let mut secrets = Secrets::empty();
            secrets.insert("repo", b"fuzz-secret").unwrap();
            let limits = Limits {
                header_timeout: Duration::from_millis(50),
                request_timeout: Duration::from_millis(100),
                connection_lifetime: Duration::from_secs(1),
                ..Limits::default()
            };
            Arc::new(Broker::new(Arc::new(secrets), Duration::from_secs(30), limits))
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let peer = Peer { pid: None, uid: 0, gid: 0, started: None };
        let serving = tokio::spawn(backupnizza::broker::serve_http(server, broker(), peer));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut response)).await;
        // The connection task must finish on its own (bounded by the limits above).
        tokio::time::timeout(Duration::from_secs(5), serving).await.expect("connection task hung").unwrap();
    });
});
