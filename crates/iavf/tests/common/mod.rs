//! What the data-path integration tests share: a served VF with a data path and a driver over
//! a real socket in a temporary directory ([`Vf`], [`serve`]), test frames, and bounded
//! send/receive helpers. Each test file uses the parts it needs.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use emudev_iavf::datapath::{AttachDatapathError, DatapathStats};
use emudev_iavf::driver::{DriverConfig, IavfDriver};
use emudev_iavf::{IavfConfig, IavfDevice, IavfHandle};
use emudev_vfio_user::server::{RunningServer, ServerConfig};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A number no other call in this process returned.
pub fn unique_number() -> usize {
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// A fresh directory for one test (removed by the [`Vf`] that uses it).
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "iavf-test-{tag}-{}-{}",
        std::process::id(),
        unique_number()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A served VF with a data path attached and its driver brought up; dropping it shuts the
/// driver, the server and the directory.
pub struct Vf {
    pub dir: PathBuf,
    pub handle: IavfHandle,
    pub stats: DatapathStats,
    pub server: Option<RunningServer<IavfDevice>>,
    pub driver: Option<IavfDriver>,
}

impl Drop for Vf {
    fn drop(&mut self) {
        drop(self.driver.take());
        if let Some(s) = self.server.take() {
            let _ = s.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Vf {
    /// The driver.
    pub fn d(&mut self) -> &mut IavfDriver {
        self.driver.as_mut().expect("driver")
    }
}

/// Serves a VF built from `device` in a fresh directory, attaches its data path with
/// `attach`, connects a driver (mapping the doorbell pages first when `map`), and brings it up
/// with `driver`. Returns the VF and whether the driver mapped anything.
pub fn serve(
    tag: &str,
    device: IavfConfig,
    attach: impl FnOnce(&IavfHandle) -> Result<DatapathStats, AttachDatapathError>,
    driver: &DriverConfig,
    map: bool,
) -> (Vf, bool) {
    let dir = temp_dir(tag);
    let path = dir.join("vf.sock");
    let dev = IavfDevice::new(device).expect("device");
    let handle = dev.handle();
    let server = dev.serve(&path, ServerConfig::default()).expect("bind");
    let stats = attach(&handle).expect("attach data path");
    let server = server.spawn().expect("spawn");
    let mut d = IavfDriver::connect(&path).expect("connect");
    let mapped = map && d.map_doorbells().expect("map doorbells");
    d.bring_up(driver).expect("bring-up");
    let vf = Vf {
        dir,
        handle,
        stats,
        server: Some(server),
        driver: Some(d),
    };
    (vf, mapped)
}

/// A `len`-byte frame whose bytes depend on `seed`, with a unicast destination.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    f[0] = 0x02;
    f
}

/// Receives on `q` until `want` frames arrived or two seconds passed.
pub fn rx_wait(vf: &mut Vf, q: u16, want: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(2);
    while out.len() < want && Instant::now() < end {
        if vf.d().rx_burst(q, &mut out, 32).expect("rx_burst") == 0 {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    out
}

/// Receives on `q` until nothing more comes.
pub fn rx_all(vf: &mut Vf, q: u16) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while vf.d().rx_burst(q, &mut out, 32).expect("rx_burst") > 0 {}
    out
}

/// Sends every frame on `q`, retrying while the TX ring is full (two seconds at most).
pub fn tx_all(vf: &mut Vf, q: u16, frames: &[Vec<u8>]) {
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let mut sent = 0;
    let end = Instant::now() + Duration::from_secs(2);
    while sent < refs.len() && Instant::now() < end {
        sent += vf.d().tx_burst(q, &refs[sent..]).expect("tx_burst");
    }
    assert_eq!(sent, refs.len(), "TX ring never drained");
}
