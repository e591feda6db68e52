//! A real boot: QEMU (software emulation) on the image `scripts/vm-image.sh`
//! builds (Debian with real systemd and cloud-init's EC2 datasource), a
//! copy-on-write overlay per boot, its network restricted to two forwarded
//! addresses: instance metadata (169.254.169.254:80) and the rig's TLS
//! gateway to AWS (169.254.169.10:443, where the image's /etc/hosts sends the
//! AWS endpoint names). The guest reaches nothing else. Killed on drop.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

/// At most this many guests at once (each takes a core under emulation).
static VMS: Semaphore = Semaphore::const_new(2);

pub struct Vm {
    child: Child,
    pub console: PathBuf,
    monitor: PathBuf,
    _dir: tempfile::TempDir,
    _permit: SemaphorePermit<'static>,
    pub started: Instant,
    ports: (u16, u16),
    boots: u32,
}

/// QEMU on the folder's overlay, its console and monitor at the given paths.
fn spawn(
    dir: &std::path::Path,
    console: &std::path::Path,
    monitor: &std::path::Path,
    imds_port: u16,
    aws_https_port: u16,
) -> Child {
    let img = image();
    let overlay = dir.join("overlay.qcow2");
    let net = format!(
        "user,id=n0,net=169.254.169.0/24,host=169.254.169.2,dhcpstart=169.254.169.15,restrict=on,\
         guestfwd=tcp:169.254.169.254:80-cmd:socat - TCP:127.0.0.1:{imds_port},\
         guestfwd=tcp:169.254.169.10:443-cmd:socat - TCP:127.0.0.1:{aws_https_port}"
    );
    Command::new("qemu-system-x86_64")
        .args(["-machine", "q35,accel=tcg", "-m", "1024", "-smp", "1"])
        // A guest reboot reboots (the reset and reboot scenarios); a
        // power-off ends QEMU (bake mode, a stop into a warm pool).
        .args(["-display", "none", "-no-user-config", "-nodefaults"])
        .arg("-kernel")
        .arg(img.join("vmlinuz"))
        .arg("-initrd")
        .arg(img.join("initrd.img"))
        .args(["-append", "root=/dev/vda rw console=ttyS0 net.ifnames=1"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        // cloud-init identifies AWS by an "ec2" system UUID and serial.
        .args([
            "-smbios",
            "type=1,manufacturer=Amazon EC2,product=t3.medium,serial=ec2f0000-0000-4000-8000-000000000001,uuid=ec2f0000-0000-4000-8000-000000000001",
        ])
        .args(["-netdev", &net, "-device", "virtio-net-pci,netdev=n0"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-monitor")
        .arg(format!("unix:{},server=on,wait=off", monitor.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-system-x86_64 (scripts/test-env.sh installs it)")
}

/// The cached image folder (`scripts/test-env.sh` builds it and exports
/// CCI_SCALER_VM_IMAGE).
pub fn image() -> PathBuf {
    PathBuf::from(std::env::var("CCI_SCALER_VM_IMAGE").expect(
        "CCI_SCALER_VM_IMAGE is not set: run the tests with scripts/test.sh (it builds the real-boot VM image)",
    ))
}

impl Vm {
    pub async fn boot(imds_port: u16, aws_https_port: u16) -> Vm {
        let permit = VMS.acquire().await.unwrap();
        let img = image();
        let dir = tempfile::tempdir().unwrap();
        let overlay = dir.path().join("overlay.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(img.join("rootfs.ext4"))
            .arg(&overlay)
            .status()
            .expect("qemu-img");
        assert!(st.success(), "qemu-img create failed");
        let console = dir.path().join("console.log");
        let monitor = dir.path().join("monitor.sock");
        let child = spawn(dir.path(), &console, &monitor, imds_port, aws_https_port);
        Vm {
            child,
            console,
            monitor,
            _dir: dir,
            _permit: permit,
            started: Instant::now(),
            ports: (imds_port, aws_https_port),
            boots: 1,
        }
    }

    /// Start the same disk again after the guest powered off (an instance
    /// started from its stopped state); the console of this boot is a new
    /// file.
    pub fn start_again(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_some(),
            "start_again: the VM is still running"
        );
        self.boots += 1;
        let dir = self._dir.path().to_path_buf();
        self.console = dir.join(format!("console-{}.log", self.boots));
        self.monitor = dir.join(format!("monitor-{}.sock", self.boots));
        self.child = spawn(
            &dir,
            &self.console,
            &self.monitor,
            self.ports.0,
            self.ports.1,
        );
        self.started = Instant::now();
    }

    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Waits until the console has a line containing `what`, returning the
    /// console's text.
    pub async fn wait_for(&mut self, what: &str, within: Duration) -> String {
        self.wait_for_nth(what, 1, within).await
    }

    /// Waits until the console has `n` lines containing `what`.
    pub async fn wait_for_nth(&mut self, what: &str, n: usize, within: Duration) -> String {
        let end = Instant::now() + within;
        loop {
            let text = self.console_text();
            if lines_with(&text, what).len() >= n {
                return text;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "the VM stopped ({st}) before {what:?} (#{n}) appeared on its console:\n{}",
                    tail(&text, 80)
                );
            }
            if Instant::now() > end {
                panic!(
                    "no {what:?} (#{n}) on the console within {within:?}:\n{}",
                    tail(&text, 80)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits for the guest to power itself off (QEMU then exits).
    pub async fn wait_exit(&mut self, within: Duration) {
        let end = Instant::now() + within;
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > end {
                panic!(
                    "the VM did not power off within {within:?}:\n{}",
                    tail(&self.console_text(), 60)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A hard reset (the reset button: no shutdown runs in the guest).
    pub fn reset(&self) {
        self.monitor_command("system_reset");
    }

    fn monitor_command(&self, cmd: &str) {
        let mut s = std::os::unix::net::UnixStream::connect(&self.monitor).expect("QEMU monitor");
        s.write_all(format!("{cmd}\n").as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Lines of the console that contain `what`.
pub fn lines_with<'a>(text: &'a str, what: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(what)).collect()
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
