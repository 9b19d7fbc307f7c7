//! The daemon's side of the control socket: a thread that accepts one client at a time, reads
//! one request line (bounded, with a timeout), hands it to the daemon's loop and writes the
//! answer back. Only root or the daemon's own user may talk to it: the socket is 0600 in a 0700
//! directory and every client's credentials are checked (`SO_PEERCRED`).

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};

use super::{Command, ErrorKind, MAX_REQUEST, Response, parse_request};

/// How long a client may take to send its request or read the answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon's loop may take to answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests waiting for the daemon's loop.
const QUEUE: usize = 8;

/// A request for the daemon's loop, with where its answer goes.
#[derive(Debug)]
pub struct Job {
    /// What was asked.
    pub command: Command,
    /// Where the answer goes (the client waits at most [`ANSWER_TIMEOUT`]).
    pub reply: Sender<Response>,
}

/// The running control socket; dropping it stops the thread and removes the socket file.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Creates the socket at `path` (and its directory, 0700, if missing) and starts serving;
/// requests arrive on the returned receiver.
///
/// # Errors
/// The directory cannot be made, `path` exists and is not a socket, or binding fails.
pub fn start(path: &Path) -> io::Result<(ControlServer, Receiver<Job>)> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    match fs::symlink_metadata(path) {
        // A socket left by a daemon that did not exit cleanly.
        Ok(m) if m.file_type().is_socket() => fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let (tx, rx) = bounded(QUEUE);
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("iketcp-control".into())
        .spawn(move || serve(&listener, &tx, &s))?;
    Ok((
        ControlServer {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        },
        rx,
    ))
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

fn serve(listener: &UnixListener, jobs: &Sender<Job>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = client(stream, jobs) {
                    tracing::debug!(error = %e, "control client");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Whether the peer is root or our own user.
fn allowed(stream: &UnixStream) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    use std::os::fd::AsRawFd;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; the fd is open for the
    // duration of the call (borrowed from `stream`).
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    rc == 0 && (cred.uid == 0 || cred.uid == me)
}

fn client(stream: UnixStream, jobs: &Sender<Job>) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let response = if allowed(&stream) {
        let mut line = Vec::new();
        let n =
            BufReader::new((&stream).take(MAX_REQUEST as u64 + 1)).read_until(b'\n', &mut line)?;
        if n > MAX_REQUEST {
            Response::error(ErrorKind::BadRequest, "request too long")
        } else {
            match parse_request(line.trim_ascii()) {
                Ok(command) => ask(jobs, command),
                Err(r) => r,
            }
        }
    } else {
        Response::error(ErrorKind::BadRequest, "permission denied")
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    (&stream).write_all(&out)
}

/// Hands `command` to the daemon's loop and waits for its answer.
fn ask(jobs: &Sender<Job>, command: Command) -> Response {
    let (tx, rx) = bounded(1);
    if jobs
        .send_timeout(Job { command, reply: tx }, ANSWER_TIMEOUT)
        .is_err()
    {
        return Response::error(ErrorKind::Busy, "the daemon is not taking requests");
    }
    rx.recv_timeout(ANSWER_TIMEOUT)
        .unwrap_or_else(|_| Response::error(ErrorKind::Busy, "the daemon did not answer in time"))
}
