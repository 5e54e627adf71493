//! A real S3-compatible server for tests: `moto_server` (moto from PyPI, installed by
//! scripts/moto-venv.sh, named in `CIFAR_MOTO`), started on a free loopback port and
//! killed when dropped. Included by the trainer's and the server's tests
//! (`#[path = "../../remote/testing/moto.rs"] mod moto;`), so both start it one way.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `moto_server` that checks credentials: only the key it made for the test
/// (`key_id`, `secret`) is accepted, so wrong credentials get the answer S3 gives them.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    port: u16,
    python: PathBuf,
    pub key_id: String,
    pub secret: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `moto_server` executable from `CIFAR_MOTO`, or `None` (the caller skips, saying so).
pub fn moto_exe() -> Option<PathBuf> {
    std::env::var_os("CIFAR_MOTO").map(PathBuf::from)
}

impl Moto {
    /// Starts the server (its log in `dir/moto.log`) and makes the test's access key.
    pub fn start(exe: &Path, dir: &Path) -> Moto {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("moto.log")).unwrap())
            .spawn()
            .expect("start moto_server");
        let python = exe.with_file_name("python");
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            python,
            key_id: String::new(),
            secret: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        // moto's own API: not an AWS action, so it does not use up the unauthenticated calls.
        while moto.request("GET", "/moto-api/").is_none() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("../remote/testing/moto_setup.py");
        let out = Command::new(&moto.python).arg(setup).arg(&moto.endpoint).output().expect("run moto_setup.py");
        assert!(out.status.success(), "moto_setup.py: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut words = text.split_whitespace();
        moto.key_id = words.next().expect("a key id").to_string();
        moto.secret = words.next().expect("a secret").to_string();
        moto
    }

    /// One plain HTTP request with an empty body; the status code.
    fn request(&self, method: &str, path: &str) -> Option<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    /// Creates a bucket (with the test's key, through boto3).
    pub fn create_bucket(&self, name: &str) {
        let script = format!(
            "import boto3; boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='{}', aws_secret_access_key='{}').create_bucket(Bucket='{name}')",
            self.endpoint, self.key_id, self.secret
        );
        let out = Command::new(&self.python).args(["-c", &script]).output().expect("run python");
        assert!(out.status.success(), "cannot create bucket {name}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The environment a client of this server needs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
        ]
    }
}
