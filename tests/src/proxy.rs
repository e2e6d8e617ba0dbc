//! A TCP relay the tests put between a coordinator and an agent, to cause the network's
//! failures on demand: hold the bytes of one direction (a stalled connection: the peer's
//! kernel keeps the socket open, nothing arrives), or cut every connection at once.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Which way bytes flow through the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the client that dialed the relay (the coordinator) to the target (the agent).
    Up,
    /// From the target back to the client.
    Down,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Flow {
    up_held: bool,
    down_held: bool,
    /// Bumped by `cut`: every connection open at that moment is closed.
    cuts: u64,
    /// New connections are closed at once, before a byte is relayed.
    refusing: bool,
}

/// A running relay from a free loopback port to a target address; stops when dropped.
pub struct Proxy {
    /// Where clients dial it (`127.0.0.1:PORT`).
    pub addr: String,
    flow: watch::Sender<Flow>,
    target: Arc<std::sync::Mutex<String>>,
    _runtime: tokio::runtime::Runtime,
}

impl Proxy {
    /// Starts relaying connections on a free port to `target`.
    pub fn start(target: &str) -> Proxy {
        let proxy = Proxy::bind();
        proxy.set_target(target);
        proxy
    }

    /// Where new connections go from now on (a restarted agent's new address).
    pub fn set_target(&self, target: &str) {
        *self.target.lock().unwrap() = target.to_owned();
    }

    /// Listens on a free port; connections are relayed to the target set with
    /// [`Proxy::set_target`] (refused until then).
    pub fn bind() -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the proxy");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("its address").to_string();
        let flow = watch::channel(Flow::default()).0;
        let target = Arc::new(std::sync::Mutex::new(String::new()));
        let (target_rx, flow_rx) = (target.clone(), flow.subscribe());
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if flow_rx.borrow().refusing {
                    drop(client);
                    continue;
                }
                let target = target_rx.lock().unwrap().clone();
                let flow = flow_rx.clone();
                // Owned by the proxy's runtime: dropping the proxy ends every relay.
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    relay(client, server, flow).await;
                });
            }
        });
        Proxy {
            addr,
            flow,
            target,
            _runtime: runtime,
        }
    }

    /// Holds the bytes going `direction` until [`Proxy::release`]: they are read from one
    /// side and kept, so neither socket closes or fills.
    pub fn hold(&self, direction: Direction) {
        self.flow.send_modify(|f| match direction {
            Direction::Up => f.up_held = true,
            Direction::Down => f.down_held = true,
        });
    }

    /// Lets held bytes go on, in order.
    pub fn release(&self) {
        self.flow.send_modify(|f| {
            f.up_held = false;
            f.down_held = false;
        });
    }

    /// Closes every connection open now (new ones are relayed as before).
    pub fn cut(&self) {
        self.flow.send_modify(|f| f.cuts += 1);
    }

    /// Closes every connection open now and every new one at once: the target looks gone.
    pub fn refuse(&self) {
        self.flow.send_modify(|f| {
            f.refusing = true;
            f.cuts += 1;
        });
    }
}

async fn relay(client: TcpStream, server: TcpStream, mut flow: watch::Receiver<Flow>) {
    let cuts = flow.borrow().cuts;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, Direction::Up, flow.clone());
    let down = pump(server_read, client_write, Direction::Down, flow.clone());
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = flow.wait_for(|f| f.cuts != cuts) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    direction: Direction,
    mut flow: watch::Receiver<Flow>,
) {
    let held = |f: &Flow| match direction {
        Direction::Up => f.up_held,
        Direction::Down => f.down_held,
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if flow.wait_for(|f| !held(f)).await.is_err() {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
