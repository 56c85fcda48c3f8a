//! Peers that fail the way real ones do, for the outage scenarios: a TCP
//! proxy in front of an emulator that can be taken down (connections
//! refused), frozen (connections accepted, nothing answered) and restored,
//! and a listener that never answers at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const UP: u8 = 0;
const DOWN: u8 = 1;
const FROZEN: u8 = 2;

/// A proxy to an upstream that a test switches between up, down and frozen.
/// Connections open when it goes down or freezes are cut or stalled too.
pub struct Switch {
    /// `http://127.0.0.1:PORT`, to use in place of the upstream endpoint.
    pub endpoint: String,
    /// `127.0.0.1:PORT`, for clients that take a host and port.
    pub host: String,
    state: Arc<AtomicU8>,
    task: JoinHandle<()>,
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Switch {
    /// Forwards to `upstream` (`host:port` or `http://host:port`), up.
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let state = Arc::new(AtomicU8::new(UP));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, state) = (upstream.clone(), shared.clone());
                tokio::spawn(async move { relay(client, &upstream, state).await });
            }
        });
        Self {
            endpoint: format!("http://{host}"),
            host,
            state,
            task,
        }
    }

    /// Refuses (resets) every connection, as a stopped service does.
    pub fn down(&self) {
        self.state.store(DOWN, Ordering::SeqCst);
    }

    /// Accepts connections and answers nothing, as a hung service does.
    pub fn freeze(&self) {
        self.state.store(FROZEN, Ordering::SeqCst);
    }

    /// Forwards again.
    pub fn up(&self) {
        self.state.store(UP, Ordering::SeqCst);
    }
}

async fn relay(client: TcpStream, upstream: &str, state: Arc<AtomicU8>) {
    match state.load(Ordering::SeqCst) {
        // Closed at once: the client's request fails at its start.
        DOWN => return,
        FROZEN => {
            hold(client, &state).await;
            return;
        }
        _ => {}
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let forward = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    };
    let back = async {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    // A connection in use when the switch turns is cut (down) or stalled
    // (frozen) as well.
    let watch = async {
        while state.load(Ordering::SeqCst) == UP {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if state.load(Ordering::SeqCst) == FROZEN {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(forward, back) } => {}
        () = watch => {}
    }
}

/// Keeps a connection open and silent until the switch changes.
async fn hold(client: TcpStream, state: &AtomicU8) {
    while state.load(Ordering::SeqCst) == FROZEN {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(client);
}

/// A listener that accepts connections and never answers: a service that
/// hangs. Returns `http://127.0.0.1:PORT` and the task that holds them.
pub async fn black_hole() -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (endpoint, task)
}

/// A loopback address where nothing listens: connections are refused.
pub fn refused() -> String {
    format!("127.0.0.1:{}", crate::process::free_port())
}
