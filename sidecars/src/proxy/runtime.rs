//! The proxy's own runtime: one thread that serves every client connection
//! of a bottle's proxy, apart from the runtime of whoever hands it the
//! connections (the bundle's netstack and its other guards).
//!
//! On one thread a connection's tasks (the client's TLS, the request, the
//! pooled upstream call) are never woken on, or stolen by, another worker
//! that then has to wait for a core (`docs/benchmarks/proxy.md`: on the
//! bundle's two workers the 99th percentile at 100 connections was higher
//! for the same requests per second). It is tokio's multi-thread scheduler
//! with one worker, not the current-thread one: a task woken by the one
//! running (a response handed from the upstream connection to its request)
//! runs next, not behind every other connection's task, which measured
//! lower at the 99th percentile. What would stall that thread, decoding and
//! scanning a big or encoded body, runs on the blocking pool
//! (`handler::inspect_inline`).

use std::future::Future;
use std::io;

use tokio::runtime::{Builder, Handle, Runtime};

/// A running proxy thread. Dropping it stops the thread's runtime: the
/// connections it serves are dropped with it.
#[derive(Debug)]
pub struct ProxyRuntime {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl ProxyRuntime {
    /// Starts the runtime and its one worker thread (named `proxy`).
    pub fn start() -> io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            // Body scans take at most four (`Proxy::off_thread`); the rest
            // is the resolver's.
            .max_blocking_threads(16)
            .thread_name("proxy")
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// The runtime's handle: `enter()` it to bind a listener whose
    /// readiness this thread should watch.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `task` on the proxy's thread.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

impl Drop for ProxyRuntime {
    fn drop(&mut self) {
        // Without waiting (a scan still running on the blocking pool is
        // not): this may run on another runtime's thread, which must not block.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_the_proxy_thread_and_stop_with_it() {
        let rt = ProxyRuntime::start().unwrap();
        let name = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let seen = name.clone();
        let done = rt.spawn(async move {
            *seen.lock().unwrap() = std::thread::current().name().unwrap_or("").to_string();
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = Builder::new_current_thread().build().unwrap();
            tx.send(r.block_on(done).is_ok()).unwrap();
        });
        assert!(rx.recv().unwrap());
        assert_eq!(*name.lock().unwrap(), "proxy");
        // A task still pending when the runtime stops is dropped with it.
        let pending = rt.spawn(std::future::pending::<()>());
        drop(rt);
        let r = Builder::new_current_thread().build().unwrap();
        let outcome = r.block_on(pending);
        assert!(outcome.unwrap_err().is_cancelled());
    }

    #[test]
    fn a_listener_bound_inside_the_handle_is_served_by_the_proxy_thread() {
        let rt = ProxyRuntime::start().unwrap();
        let listener = {
            let _in = rt.handle().enter();
            tokio::net::TcpListener::from_std({
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.set_nonblocking(true).unwrap();
                l
            })
            .unwrap()
        };
        let addr = listener.local_addr().unwrap();
        let accepted = rt.spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut s, b"hi")
                .await
                .unwrap();
        });
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        let mut buf = [0u8; 2];
        std::io::Read::read_exact(&mut c, &mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        let r = Builder::new_current_thread().build().unwrap();
        r.block_on(accepted).unwrap();
    }
}
