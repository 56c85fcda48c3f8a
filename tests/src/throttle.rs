//! A TCP proxy that slows the bytes flowing back from a server to a given
//! rate, so a test can stop a process in the middle of a transfer without
//! racing a copy that is faster than the test can watch it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running proxy; it stops when dropped.
pub struct Throttle {
    /// `http://127.0.0.1:PORT`, to use in place of the upstream endpoint.
    pub endpoint: String,
    relayed: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Throttle {
    /// Bytes of responses passed back so far, over every connection.
    pub fn bytes_relayed(&self) -> u64 {
        self.relayed.load(Ordering::SeqCst)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards connections to `upstream` (`host:port` or `http://host:port`),
/// passing requests through untouched and responses at about
/// `bytes_per_second` per connection.
pub async fn start(upstream: &str, bytes_per_second: u64) -> Throttle {
    let upstream = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let relayed = Arc::new(AtomicU64::new(0));
    let counter = relayed.clone();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, counter) = (upstream.clone(), counter.clone());
            tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(&upstream).await {
                    relay(client, server, bytes_per_second, &counter).await;
                }
            });
        }
    });
    Throttle {
        endpoint,
        relayed,
        task,
    }
}

async fn relay(client: TcpStream, server: TcpStream, bytes_per_second: u64, relayed: &AtomicU64) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    });
    // The budget is spent in windows of 100 ms, so the rate holds without a
    // busy loop and small answers (metadata, errors) are not held back.
    let window = Duration::from_millis(100);
    let budget = usize::try_from(bytes_per_second / 10).unwrap().max(1);
    let mut buffer = vec![0u8; budget.min(64 * 1024)];
    let mut window_start = tokio::time::Instant::now();
    let mut spent = 0;
    loop {
        if spent >= budget {
            tokio::time::sleep_until(window_start + window).await;
            window_start = tokio::time::Instant::now();
            spent = 0;
        }
        let want = buffer.len().min(budget - spent);
        let n = match server_read.read(&mut buffer[..want]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if client_write.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        relayed.fetch_add(n as u64, Ordering::SeqCst);
        spent += n;
    }
    requests.abort();
}
