//! `starling daemon` for tests: its own state directory and socket, the CLI pointed at it.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

use super::{json, s, Env};

/// `starling daemon` with its own state directory and socket; stopped (SIGTERM: a clean
/// shutdown that unmounts) on drop.
pub struct Daemon {
    child: Option<Child>,
    pub state: PathBuf,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(env: &Env, state: &Path, extra: &[&str]) -> Daemon {
        Daemon::try_start(env, state, extra).unwrap_or_else(|e| panic!("daemon: {e}"))
    }

    /// A daemon in a network namespace of its own (as root): its VMs' networks (`--net nat`,
    /// `starling run`'s default) are made there, never on this machine's interfaces. It does
    /// not reach servers on this machine's loopback.
    pub fn start_isolated(env: &Env, state: &Path, extra: &[&str]) -> Daemon {
        Daemon::spawn(env, state, extra, true).unwrap_or_else(|e| panic!("daemon: {e}"))
    }

    pub fn try_start(env: &Env, state: &Path, extra: &[&str]) -> Result<Daemon, String> {
        Daemon::spawn(env, state, extra, false)
    }

    /// A daemon in the named network namespace (`ip netns add NAME`), as one host of a test
    /// site: only its network is the namespace's; its mounts are visible here.
    pub fn start_in_netns(env: &Env, state: &Path, netns: &str, extra: &[&str]) -> Daemon {
        Daemon::spawn_with(
            env,
            state,
            extra,
            Some(vec![
                "nsenter".into(),
                format!("--net=/run/netns/{netns}"),
                "--".into(),
            ]),
        )
        .unwrap_or_else(|e| panic!("daemon in {netns}: {e}"))
    }

    fn spawn(env: &Env, state: &Path, extra: &[&str], isolated: bool) -> Result<Daemon, String> {
        let wrapper = (isolated && rustix::process::geteuid().is_root())
            .then(|| vec!["unshare".to_string(), "--net".into(), "--".into()]);
        Daemon::spawn_with(env, state, extra, wrapper)
    }

    fn spawn_with(
        env: &Env,
        state: &Path,
        extra: &[&str],
        wrapper: Option<Vec<String>>,
    ) -> Result<Daemon, String> {
        fs::create_dir_all(state).unwrap();
        let socket = state.join("api.sock");
        let log = state.join("daemon.log");
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = std::process::Command::new(&w[0]);
                c.args(&w[1..])
                    .arg(env!("CARGO_BIN_EXE_starling"))
                    .arg("--store")
                    .arg(&env.store);
                c
            }
            None => env.cmd(),
        };
        let mut child = cmd
            .env("STARLING_NET_STATE", state.join("net"))
            // Never the host's /etc/starling/starlingd.toml: a test says what it configures.
            .env("STARLING_CONFIG", "/dev/null")
            .args(["daemon", "--state", s(state), "--socket", s(&socket)])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("starling daemon");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if !line.starts_with("ready") {
            let _ = child.wait();
            return Err(fs::read_to_string(&log).unwrap_or_default());
        }
        Ok(Daemon {
            child: Some(child),
            state: state.to_path_buf(),
            socket,
        })
    }

    pub fn run(&self, env: &Env, args: &[&str]) -> Output {
        env.cmd()
            .args(args)
            .env("STARLING_SOCKET", &self.socket)
            .output()
            .unwrap()
    }

    pub fn ok(&self, env: &Env, args: &[&str]) -> String {
        let o = self.run(env, args);
        assert!(
            o.status.success(),
            "{args:?}: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&o.stderr),
            fs::read_to_string(self.state.join("daemon.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn fails(&self, env: &Env, args: &[&str]) -> String {
        let o = self.run(env, args);
        assert!(!o.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    pub fn mounts(&self, env: &Env) -> serde_json::Value {
        json(&self.ok(env, &["mounts", "--json"]))
    }

    pub fn cache(&self, env: &Env) -> serde_json::Value {
        json(&self.ok(env, &["cache", "stats", "--json"]))
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's network namespace (/proc/PID/ns/net), where its VMs' networks are.
    pub fn netns(&self) -> Option<PathBuf> {
        self.child
            .as_ref()
            .map(|c| PathBuf::from(format!("/proc/{}/ns/net", c.id())))
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = rustix::process::Pid::from_child(&c);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let _ = c.wait();
        }
    }

    /// Dies without cleaning up (SIGKILL), leaving its mounts stale.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
