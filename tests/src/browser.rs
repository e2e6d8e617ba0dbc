//! A real headless Chromium (Debian's `chromium`) driven over the DevTools protocol by
//! `tests/py/browser.py`: load a page, evaluate JavaScript in it, read its console errors,
//! take a screenshot.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::build::{python, workspace};
use crate::process::wait_for;

/// A running browser with one page, closed on drop.
pub struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// Chromium's own log.
    pub log: PathBuf,
}

impl Browser {
    /// Starts Chromium with a fresh profile in `dir`.
    pub fn start(dir: &Path) -> Browser {
        let log = dir.join("chromium.log");
        let mut child = Command::new(python())
            .arg(workspace().join("tests/py/browser.py"))
            .arg(dir.join("chromium-profile"))
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/py/browser.py");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("its stdout"));
        Browser {
            child,
            stdin,
            stdout,
            log,
        }
    }

    fn send(&mut self, command: Value) -> Value {
        let stdin = self.stdin.as_mut().expect("the browser is open");
        writeln!(stdin, "{command}").expect("write to the browser driver");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read the browser driver");
        let reply: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "the browser driver said {line:?} ({e}); chromium log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        });
        if let Some(e) = reply.get("error") {
            panic!("{command}: {e}");
        }
        reply
    }

    /// Loads `url` and waits for its load event.
    pub fn goto(&mut self, url: &str) {
        self.send(json!({"op": "goto", "url": url}));
    }

    /// The value of the JavaScript expression `js` in the page.
    pub fn eval(&mut self, js: &str) -> Value {
        self.send(json!({"op": "eval", "expr": js}))["value"].take()
    }

    /// Polls `js` until it is true; `false` after `limit`.
    pub fn wait_until(&mut self, limit: Duration, js: &str) -> bool {
        wait_for(limit, || (self.eval(js) == true).then_some(())).is_some()
    }

    /// Console errors, uncaught exceptions and failed loads so far.
    pub fn errors(&mut self) -> Vec<String> {
        let reply = self.send(json!({"op": "errors"}));
        serde_json::from_value(reply["errors"].clone()).unwrap_or_default()
    }

    /// A PNG of the page at `path`.
    pub fn screenshot(&mut self, path: &Path) {
        self.send(json!({"op": "screenshot", "path": path}));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End of input closes Chromium; kill the driver if it does not go in time.
        self.stdin.take();
        let gone = wait_for(Duration::from_secs(15), || {
            self.child.try_wait().ok().flatten().map(|_| ())
        });
        if gone.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
