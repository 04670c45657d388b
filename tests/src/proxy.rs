//! A TCP proxy a test can break: cut every connection and refuse new ones
//! (a link down), delay everything the server sends (a slow or hung
//! server), or stop listening (nothing there: connections refused). Bytes
//! pass unchanged, TLS included, so it sits in front of a real MQTT broker
//! or a real Kubernetes API server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    target: String,
    down: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    /// Bumped to cut every open connection.
    cut: watch::Sender<u64>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl FaultProxy {
    /// Proxies 127.0.0.1:<free port> to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (cut, _) = watch::channel(0u64);
        let p = Self {
            port,
            target: target.to_owned(),
            down: Arc::new(AtomicBool::new(false)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            cut,
            task: std::sync::Mutex::new(None),
        };
        p.serve(listener);
        p
    }

    fn serve(&self, listener: TcpListener) {
        let (down, delay, cut) = (self.down.clone(), self.delay_ms.clone(), self.cut.clone());
        let target = self.target.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if down.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (target, delay, mut cut_rx) = (target.clone(), delay.clone(), cut.subscribe());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = pipe(inbound, outbound, delay) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        if let Some(old) = self
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts every connection and accepts-and-closes new ones while `down`.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut.send_modify(|v| *v += 1);
        }
    }

    /// Delays everything the server sends by `d` (zero: none).
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Stops listening (connections refused) or listens again on the same
    /// port.
    pub async fn set_refusing(&self, refusing: bool) {
        if refusing {
            if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
                t.abort();
            }
            self.cut.send_modify(|v| *v += 1);
            // The aborted task drops the listener; wait until the port is free.
            crate::eventually("proxy port closed", Duration::from_secs(5), || async {
                TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_err()
                    .then_some(())
            })
            .await;
        } else {
            let listener =
                crate::eventually("proxy port bound again", Duration::from_secs(5), || async {
                    TcpListener::bind(("127.0.0.1", self.port)).await.ok()
                })
                .await;
            self.serve(listener);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
        self.cut.send_modify(|v| *v += 1);
    }
}

/// Copies both ways; what the server sends waits `delay` first.
async fn pipe(inbound: TcpStream, outbound: TcpStream, delay: Arc<AtomicU64>) {
    let (mut ci, mut co) = inbound.into_split();
    let (mut si, mut so) = outbound.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut ci, &mut so).await;
        let _ = so.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match si.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let d = delay.load(Ordering::SeqCst);
            if d > 0 {
                tokio::time::sleep(Duration::from_millis(d)).await;
            }
            if co.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = co.shutdown().await;
    };
    tokio::join!(up, down);
}
